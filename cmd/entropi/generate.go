package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/model"
)

func init() {
	commands["generate"] = command{"generate text on an entropi server: the prompt is encrypted here, the server sees ciphertexts only", runGenerate}
}

func runGenerate(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return generateMain(ctx, args, os.Stdout, os.Stderr)
}

func generateMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("generate", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi generate --server ADDR --prompt TEXT [flags]

Generates text with a model on an entropi server (entropi serve). Keys are
generated here and the secret key never leaves this process; the server
receives the public evaluation keys and ciphertexts only. Tokens stream as
they are decrypted; a summary of bytes and seconds per phase follows on
stderr.

flags:
`)
		fl.PrintDefaults()
	}
	addr := fl.String("server", "127.0.0.1:7300", "server address")
	name := fl.String("model", "", "model name (empty: the server's only model)")
	prompt := fl.String("prompt", "", "prompt text")
	n := fl.Int("n", 16, "tokens to generate")
	temp := fl.Float64("temperature", 0, "sampling temperature (0: greedy)")
	topK := fl.Int("top-k", 0, "keep the k most likely tokens (0: all)")
	topP := fl.Float64("top-p", 1, "nucleus: keep the most likely tokens up to this probability (1: all)")
	seed := fl.Uint64("seed", 1, "sampling seed")
	useTLS := fl.Bool("tls", false, "connect with TLS (system roots, or --tls-ca)")
	caFile := fl.String("tls-ca", "", "CA certificate (PEM) to verify the server; implies --tls")
	allowInsecure := fl.Bool("allow-insecure-presets", false, "accept a server's insecure test preset (NO SECURITY)")
	stats := fl.Bool("stats", true, "print bytes and seconds per phase on stderr")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 || *prompt == "" {
		fl.Usage()
		return errors.New("need --prompt, and no other arguments")
	}
	opts := &client.Options{AllowInsecurePresets: *allowInsecure}
	if *useTLS || *caFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				return err
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%s: no certificate", *caFile)
			}
		}
		opts.TLS = cfg
	}
	c, err := client.Dial(ctx, *addr, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	mi, err := c.Model(*name)
	if err != nil {
		return err
	}
	var ids []int
	tok := mi.Tokenizer
	if tok != nil {
		ids = tok.Encode([]byte(*prompt))
	} else { // no tokenizer (a random model): bytes as token ids
		fmt.Fprintf(stderr, "model %q has no tokenizer: prompt bytes are the token ids, output is token ids\n", mi.Name)
		for _, b := range []byte(*prompt) {
			ids = append(ids, int(b)%mi.Config.Vocab)
		}
	}
	if len(ids) == 0 {
		return errors.New("the prompt encodes to no tokens")
	}
	if len(ids) > mi.Config.Context {
		fmt.Fprintf(stderr, "prompt of %d tokens cut to its last %d (the context)\n", len(ids), mi.Config.Context)
		ids = ids[len(ids)-mi.Config.Context:]
	}
	mode := "interactive refresh"
	if mi.Bootstrap {
		mode = "bootstrap mode: bootstrapping keys go up with the others, no refresh rounds"
	}
	fmt.Fprintf(stderr, "model %s, preset %s (%d-bit), %s, %d prompt tokens; generating keys and uploading them…\n",
		mi.Name, mi.Preset.Name, mi.Preset.SecurityBits, mode, len(ids))
	sess, err := c.NewSession(ctx, mi.Name)
	if err != nil {
		return err
	}
	defer sess.Close()
	eot := -1
	if tok != nil {
		eot = tok.EndOfText()
	}
	fmt.Fprint(stdout, *prompt)
	res, err := sess.Generate(ctx, ids, *n, client.GenerateOptions{
		Sample: model.SampleOptions{Temperature: *temp, TopK: *topK, TopP: *topP}, Seed: *seed,
		Stop: func(t int) bool { return t == eot },
	}, func(t client.Token) error {
		switch {
		case tok == nil:
			fmt.Fprintf(stdout, "<%d>", t.ID)
		case t.ID != eot:
			b, _ := tok.Decode([]int{t.ID})
			fmt.Fprint(stdout, string(b))
		}
		return nil
	})
	fmt.Fprintln(stdout)
	if err != nil {
		return err
	}
	if *stats {
		printStats(stderr, res)
	}
	return nil
}

// printStats writes the per-phase summary of a generation.
func printStats(w io.Writer, res *client.Result) {
	st := res.Stats
	perTok := 0.0
	if res.Stats.Tokens > 1 {
		perTok = st.Decode.Seconds / float64(res.Stats.Tokens-1)
	}
	fmt.Fprintf(w, "\n%-8s %14s %14s %10s\n", "phase", "bytes up", "bytes down", "seconds")
	fmt.Fprintf(w, "%-8s %14d %14d %10.2f\n", "setup", st.Setup.BytesUp, st.Setup.BytesDown, st.Setup.Seconds)
	fmt.Fprintf(w, "%-8s %14d %14d %10.2f\n", "prefill", st.Prefill.BytesUp, st.Prefill.BytesDown, st.Prefill.Seconds)
	fmt.Fprintf(w, "%-8s %14d %14d %10.2f  (%d tokens, %.2f s/token)\n", "decode", st.Decode.BytesUp, st.Decode.BytesDown, st.Decode.Seconds, max(res.Stats.Tokens-1, 0), perTok)
	fmt.Fprintf(w, "\nby kind:\n%v", st.Traffic)
	fmt.Fprintf(w, "server: prefill %.2fs, decode %.2fs of computation\n", st.ServerPrefillSeconds, st.ServerDecodeSeconds)
}
