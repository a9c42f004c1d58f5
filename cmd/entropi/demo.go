package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/server"
)

func runDemo(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return demoMain(ctx, args, os.Stdout, os.Stderr)
}

// demoReport is the --json output.
type demoReport struct {
	Model  string `json:"model"`
	Preset struct {
		Name         string `json:"name"`
		LogN         int    `json:"logN"`
		SecurityBits int    `json:"security_bits"`
	} `json:"preset"`
	PromptTokens     int    `json:"prompt_tokens"`
	Tokens           []int  `json:"tokens"`
	Text             string `json:"text"`
	MatchesPlaintext bool   `json:"matches_plaintext"`
	// MatchesApprox compares with the plaintext model run with the same
	// polynomial approximations as the encrypted one.
	MatchesApprox bool `json:"matches_plaintext_approx"`
	Bytes         struct {
		Setup uint64 `json:"setup"`
		Up    uint64 `json:"up"`
		Down  uint64 `json:"down"`
	} `json:"bytes"`
	Seconds struct {
		Setup    float64 `json:"setup"`
		Prefill  float64 `json:"prefill"`
		PerToken float64 `json:"per_token"`
	} `json:"seconds"`
}

// Shipped model size (entropi train's defaults).
const (
	shippedVocab   = 1024
	shippedContext = 128
	shippedDim     = 256
	shippedLayers  = 4
	shippedHeads   = 4
)

func demoMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("demo", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi demo [flags]

Runs private inference end to end in one process: an entropi server on a
random loopback port and a client talking to it over real gRPC. The client
generates keys, uploads the public ones, encrypts the prompt; the server runs
the decoder on ciphertexts; the client decrypts each token's logits, samples,
and sends the next token encrypted. Each token is printed as it is decrypted,
with its latency and bytes; then a summary, and whether the tokens match the
plaintext model.

flags:
`)
		fl.PrintDefaults()
	}
	modelPath := fl.String("model", "", "checkpoint (default: the shipped models/*.safetensors)")
	presetName := fl.String("preset", "auto", "CKKS preset: auto (n14-128 if the model's approximations fit its levels, else n15-128) | n14-128 | n15-128")
	allowInsecure := fl.Bool("allow-insecure-presets", false, "allow insecure-… presets (NO SECURITY: quick looks only)")
	n := fl.Int("n", 16, "tokens to generate")
	prompt := fl.String("prompt", "func main() {", "prompt text")
	jsonOut := fl.Bool("json", false, "print a JSON summary instead of text")
	random := fl.Bool("random", false, "random weights of the shipped size (to show the machinery before a model is trained)")
	rVocab := fl.Int("random-vocab", shippedVocab, "with --random: vocabulary")
	rContext := fl.Int("random-context", shippedContext, "with --random: context")
	rDim := fl.Int("random-dim", shippedDim, "with --random: width")
	rLayers := fl.Int("random-layers", shippedLayers, "with --random: layers")
	rHeads := fl.Int("random-heads", shippedHeads, "with --random: heads")
	clientEmb := fl.Bool("client-side-embedding", false, "client looks up embeddings (faster; reveals the embedding table)")
	workers := fl.Int("workers", 0, "server goroutines per session (0: all CPUs)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		fl.Usage()
		return fmt.Errorf("unexpected arguments %v", fl.Args())
	}
	var preset he.Preset // zero: auto
	var err error
	if *presetName != "auto" {
		if preset, err = he.PresetByName(*presetName); err != nil {
			return err
		}
	}
	if preset.Insecure() && preset.Name != "" && !*allowInsecure {
		return fmt.Errorf("preset %s is insecure (test use only): pass --allow-insecure-presets to use it", preset.Name)
	}
	say := func(format string, a ...any) {
		if !*jsonOut {
			fmt.Fprintf(stdout, format, a...)
		}
	}

	// The model.
	var ck *model.Checkpoint
	name := "random"
	if !*random && *modelPath == "" {
		if _, err := shippedModel(); err != nil {
			// No trained model is shipped yet: show the real cryptography on a
			// small random-weights model rather than fail (a fresh clone's
			// `go run ./cmd/entropi demo` must work); say so loudly.
			say("NOTE: %v\n\nRunning the demo on a SMALL RANDOM-WEIGHTS model instead (d 64, 2 layers, 2 heads, vocab 256, context 32).\n\n", err)
			*random = true
			*rVocab, *rContext, *rDim, *rLayers, *rHeads = 256, 32, 64, 2, 2
			set := map[string]bool{}
			fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
			if !set["n"] {
				*n = 4
			}
			if !set["prompt"] {
				*prompt = "go" // prefill runs token by token: keep it short
			}
		}
	}
	switch {
	case *random:
		cfg := model.EntropyGuided(*rVocab, *rContext, *rDim, *rLayers, *rHeads)
		cfg.Name = "random-entropy-guided"
		w, err := model.NewRandom(cfg, 1)
		if err != nil {
			return err
		}
		ck = &model.Checkpoint{Weights: w}
		say("model: RANDOM weights (entropy-guided, vocab %d, context %d, d %d, %d layers, %d heads): the text is noise; the cryptography is real\n",
			cfg.Vocab, cfg.Context, cfg.Dim, cfg.Layers, cfg.Heads)
	default:
		path := *modelPath
		if path == "" {
			if path, err = shippedModel(); err != nil {
				return err
			}
		}
		if ck, err = model.Load(path); err != nil {
			return err
		}
		name = strings.TrimSuffix(filepath.Base(path), ".safetensors")
		say("model: %s (%s)\n", path, describeConfig(ck.Weights.Config))
	}
	cfg := ck.Weights.Config
	set := ck.Approx
	if set == nil {
		say("calibrating the polynomial approximations on random tokens (the checkpoint has none)…\n")
		if set, err = server.CalibrateRandom(ck.Weights, 1); err != nil {
			return err
		}
	}
	say("building the encrypted decoder…\n")
	t0 := time.Now()
	eng, set, notes, err := server.NewEngine(ck.Weights, set, server.LoadOptions{Preset: preset, AllowInsecure: *allowInsecure, ClientSideEmbedding: *clientEmb, Workers: *workers})
	if err != nil {
		return err
	}
	for _, n := range notes {
		say("  refitted to the preset's levels between refreshes: %s\n", n)
	}
	preset = eng.Spec().Preset
	say("preset: %s (N=2^%d, %d-bit security)\n", preset.Name, preset.LogN, preset.SecurityBits)
	m, err := server.EngineModel(name, eng, ck.Tokenizer)
	if err != nil {
		return err
	}
	say("  built in %.1fs\n", time.Since(t0).Seconds())

	// The server, on a random loopback port.
	srv, err := server.New(server.Config{AllowInsecure: *allowInsecure, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, m)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stopServer := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis, 5*time.Second) }()
	defer func() { stopServer(); <-served }()
	say("server: listening on %s (gRPC)\n", lis.Addr())

	// The prompt.
	var ids []int
	if ck.Tokenizer != nil {
		ids = ck.Tokenizer.Encode([]byte(*prompt))
	} else { // no tokenizer (random model): bytes as token ids
		for _, b := range []byte(*prompt) {
			ids = append(ids, int(b)%cfg.Vocab)
		}
	}
	if len(ids) == 0 {
		return errors.New("the prompt encodes to no tokens")
	}
	if len(ids) > cfg.Context {
		ids = ids[len(ids)-cfg.Context:]
	}
	detok := func(t int) string {
		if ck.Tokenizer == nil {
			return fmt.Sprintf("<%d>", t)
		}
		if t == ck.Tokenizer.EndOfText() {
			return "<|endoftext|>"
		}
		b, _ := ck.Tokenizer.Decode([]int{t})
		return string(b)
	}

	// The client.
	c, err := client.Dial(ctx, lis.Addr().String(), &client.Options{AllowInsecurePresets: *allowInsecure})
	if err != nil {
		return err
	}
	defer c.Close()
	say("client: generating keys (the secret key stays here) and uploading the public ones…\n")
	sess, err := c.NewSession(ctx, name)
	if err != nil {
		return err
	}
	defer sess.Close()
	say("  session %s…; prompt %q = %d tokens\n\n", sess.ID()[:8], *prompt, len(ids))
	say("%5s  %-16s %10s %12s %12s\n", "pos", "token", "latency", "bytes up", "bytes down")
	res, err := sess.Generate(ctx, ids, *n, client.GenerateOptions{}, func(t client.Token) error {
		say("%5d  %-16q %9.2fs %12d %12d\n", t.Pos, detok(t.ID), t.Latency.Seconds(), t.BytesUp, t.BytesDown)
		return nil
	})
	if err != nil {
		return err
	}

	// The plaintext model, exact and with the same approximations.
	plain, err := plainGreedy(ck.Weights, nil, ids, len(res.Tokens))
	if err != nil {
		return err
	}
	plainApprox, err := plainGreedy(ck.Weights, set, ids, len(res.Tokens))
	if err != nil {
		return err
	}
	rep := demoReport{Model: name, PromptTokens: len(ids), Tokens: res.Tokens,
		MatchesPlaintext: equalTokens(res.Tokens, plain), MatchesApprox: equalTokens(res.Tokens, plainApprox)}
	rep.Preset.Name, rep.Preset.LogN, rep.Preset.SecurityBits = preset.Name, preset.LogN, preset.SecurityBits
	var text strings.Builder
	for _, t := range res.Tokens {
		text.WriteString(detok(t))
	}
	rep.Text = text.String()
	st := res.Stats
	rep.Bytes.Setup = st.Setup.BytesUp + st.Setup.BytesDown
	rep.Bytes.Up = st.Prefill.BytesUp + st.Decode.BytesUp
	rep.Bytes.Down = st.Prefill.BytesDown + st.Decode.BytesDown
	rep.Seconds.Setup, rep.Seconds.Prefill = st.Setup.Seconds, st.Prefill.Seconds
	if len(res.Tokens) > 1 {
		rep.Seconds.PerToken = st.Decode.Seconds / float64(len(res.Tokens)-1)
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(rep)
	}
	say("\ntext: %q\n", rep.Text)
	printStats(stdout, res)
	var es engine.Stats
	if json.Unmarshal(res.Stats.EngineStats, &es) == nil {
		for _, ph := range []string{"prefill", "decode"} {
			sum, n := es.Phase(ph)
			if n == 0 {
				continue
			}
			kinds := make([]string, 0, len(sum.ByKind))
			for k := range sum.ByKind {
				kinds = append(kinds, k)
			}
			sort.Strings(kinds)
			var parts []string
			for _, k := range kinds {
				parts = append(parts, fmt.Sprintf("%s %.2fs", k, sum.ByKind[k].Seconds()/float64(n)))
			}
			say("server %s, per token (%d): %.2fs = %s; %d rotations, %d ct×ct, %d refresh rounds\n", ph, n,
				sum.Time.Seconds()/float64(n), strings.Join(parts, ", "), sum.Rotations/int64(n), sum.CtCt/int64(n), sum.Refreshes/n)
		}
	}
	say("\nplaintext model (exact):             %v → match: %v\n", plain, rep.MatchesPlaintext)
	say("plaintext model (same approximations): %v → match: %v\n", plainApprox, rep.MatchesApprox)
	return nil
}

// shippedEntropyGuided is the shipped entropy-guided checkpoint (models/README.md).
const shippedEntropyGuided = "models/ereg-sm-t-scfuffn.safetensors"

// shippedModel finds the shipped checkpoint, or says how to make one.
func shippedModel() (string, error) {
	// The entropy-guided model is the demo's; the other shipped checkpoints
	// (baseline, ablation) are for benchmarks and the model card.
	if _, err := os.Stat(shippedEntropyGuided); err == nil {
		return shippedEntropyGuided, nil
	}
	files, _ := filepath.Glob(filepath.Join("models", "*.safetensors"))
	sort.Strings(files)
	if len(files) == 0 {
		return "", errors.New("no shipped model in models/ yet: train the entropy-guided model with\n\n" +
			"    go run ./cmd/entropi train --variant ereg-sm-t-scfuffn --out models/ereg-sm-t-scfuffn.safetensors\n\n" +
			"(then calibrate it with `entropi eval --save`)")
	}
	return files[0], nil
}

// plainGreedy runs the plaintext model greedily (set nil: exact).
func plainGreedy(w *model.Weights, set *approx.Set, prompt []int, n int) ([]int, error) {
	var b *model.Plain
	if set != nil {
		var err error
		if b, err = model.NewApprox(w.Config, set); err != nil {
			return nil, err
		}
	}
	smp, err := model.NewSampler(model.SampleOptions{}, 0)
	if err != nil {
		return nil, err
	}
	return model.Generate(model.NewSession(w, b), prompt, n, smp, nil)
}

func equalTokens(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
