package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/entropi-ai/entropi/model"
)

func init() {
	commands["sample"] = command{"plaintext generation from a checkpoint, streamed (greedy, temperature, top-k, top-p)", runSample}
}

func runSample(args []string) error { return sampleMain(args, os.Stdout, os.Stderr) }

// errEndOfText stops generation at the end-of-text token.
var errEndOfText = errors.New("end of text")

func sampleMain(args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("sample", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi sample --model FILE --prompt TEXT [flags]

Generates text in plaintext (no encryption) with the exact float64 model, or
with the HE approximations (--approx), streaming tokens as they are drawn.
Generation stops after --n tokens, at end-of-text, or when the context window
is full. Deterministic for a seed.

flags:
`)
		fl.PrintDefaults()
	}
	modelPath := fl.String("model", "", "checkpoint (safetensors)")
	prompt := fl.String("prompt", "", "prompt text")
	n := fl.Int("n", 64, "tokens to generate")
	temp := fl.Float64("temperature", 0.8, "sampling temperature (0: greedy)")
	topK := fl.Int("top-k", 0, "keep the k most likely tokens (0: all)")
	topP := fl.Float64("top-p", 0.95, "nucleus: keep the most likely tokens up to this probability (1: all)")
	seed := fl.Uint64("seed", 1, "random seed")
	useApprox := fl.Bool("approx", false, "use the checkpoint's HE approximations instead of exact nonlinearities")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 || *modelPath == "" || *prompt == "" {
		fl.Usage()
		return errors.New("need --model and --prompt, and no other arguments")
	}
	ck, err := loadCheckpoint(*modelPath)
	if err != nil {
		return err
	}
	w, tok := ck.Weights, ck.Tokenizer
	smp, err := model.NewSampler(model.SampleOptions{Temperature: *temp, TopK: *topK, TopP: *topP}, *seed)
	if err != nil {
		return err
	}
	var b *model.Plain
	if *useApprox {
		if ck.Approx == nil {
			return fmt.Errorf("%s has no approximations: calibrate with `entropi eval --save`", *modelPath)
		}
		if b, err = model.NewApprox(w.Config, ck.Approx); err != nil {
			return err
		}
	}
	ids := tok.Encode([]byte(*prompt))
	if len(ids) > w.Config.Context {
		fmt.Fprintf(stderr, "prompt of %d tokens cut to its last %d (the context)\n", len(ids), w.Config.Context)
		ids = ids[len(ids)-w.Config.Context:]
	}
	fmt.Fprint(stdout, *prompt)
	s := model.NewSession(w, b)
	out, err := model.Generate(s, ids, *n, smp, func(t int) error {
		if t == tok.EndOfText() {
			return errEndOfText
		}
		_, err := stdout.Write(tok.Token(t))
		return err
	})
	fmt.Fprintln(stdout)
	switch {
	case errors.Is(err, errEndOfText):
		fmt.Fprintf(stderr, "[end of text after %d tokens]\n", len(out)-1)
	case err != nil:
		return err
	case len(out) < *n:
		fmt.Fprintf(stderr, "[context window of %d tokens full after %d tokens]\n", w.Config.Context, len(out))
	}
	if b != nil && b.Ranges.Violations() > 0 {
		fmt.Fprintf(stderr, "[%d approximation range violations]\n%v", b.Ranges.Violations(), b.Ranges)
	}
	return nil
}
