package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/entropi-ai/entropi/model"
)

func init() {
	commands["entropy"] = command{"per-head attention entropy: table, paper buckets, collapse/overload flags, heatmap PNG", runEntropy}
}

func runEntropy(args []string) error { return entropyMain(args, os.Stdout, os.Stderr) }

func entropyMain(args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("entropy", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi entropy --model FILE --data FILE_OR_DIR [--png out.png] [flags]

Runs the exact model over consecutive windows of its context length and
reports the mean attention entropy of every head (nats, averaged over query
rows), the share of heads in the paper's buckets [0,M/4) [M/4,M/2) [M/2,3M/4)
[3M/4,M] (M = the largest head entropy), and flags entropy collapse and
entropic overload (thresholds: model/entropy.go).

flags:
`)
		fl.PrintDefaults()
	}
	modelPath := fl.String("model", "", "checkpoint (safetensors)")
	data := fl.String("data", "", dataHelp)
	ext := fl.String("ext", ".go", "file suffix selected in a --data directory ('' : every file)")
	nTokens := fl.Int("tokens", 8192, "tokens to run (whole windows; 0: all)")
	pngPath := fl.String("png", "", "write the heatmap (layers × heads) to this PNG file")
	title := fl.String("title", "", "heatmap title (default: Attention entropy: MODEL)")
	quiet := fl.Bool("quiet", false, "no progress bar (there is none when stderr is not a terminal)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 || *modelPath == "" || *data == "" {
		fl.Usage()
		return errors.New("need --model and --data, and no other arguments")
	}
	ck, err := loadCheckpoint(*modelPath)
	if err != nil {
		return err
	}
	w := ck.Weights
	tokens, err := readTokens(ck.Tokenizer, *data, *ext, *nTokens)
	if err != nil {
		return err
	}
	if *nTokens > 0 && len(tokens) > *nTokens {
		tokens = tokens[:*nTokens]
	}
	seqs := windowsOf(tokens, w.Config.Context)
	if len(seqs) == 0 {
		return fmt.Errorf("%d tokens do not fill one window of %d", len(tokens), w.Config.Context)
	}
	fmt.Fprintf(stdout, "model %s: %s\ndata %s: %d windows of %d tokens\n", *modelPath, describeConfig(w.Config), *data, len(seqs), w.Config.Context)
	bar := newBar(stderr, "entropy", len(seqs), "windows", *quiet)
	st, err := model.AttentionEntropy(w, seqs, bar.set)
	bar.finish()
	if err != nil {
		return err
	}
	r := st.Report()
	fmt.Fprint(stdout, r)
	if *pngPath != "" {
		if *title == "" {
			*title = "Attention entropy: " + filepath.Base(*modelPath) + " (" + w.Config.Name + ")"
		}
		if err := r.SaveHeatmapPNG(*pngPath, *title); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *pngPath)
	}
	return nil
}
