package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/model/train"
)

func init() {
	commands["eval"] = command{"held-out perplexity, exact and with the HE approximations (range violations)", runEval}
}

func runEval(args []string) error { return evalMain(args, os.Stdout, os.Stderr) }

// goHeldOut names the held-out split of the Go standard-library corpus
// (model/train/corpus.go) as a --data source.
const goHeldOut = "go-heldout"

const dataHelp = "token source: a text file, a directory (its files with --ext, sorted by path, each followed by end-of-text when the tokenizer has one), or '" +
	goHeldOut + "' (the held-out split of the Go standard-library training corpus)"

func evalMain(args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("eval", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi eval --model FILE --data FILE_OR_DIR [flags]

Measures held-out perplexity of a checkpoint over sliding windows of its
context length, exactly (float64 reference) and with the HE polynomial
approximations of the checkpoint (or, when it has none or with --calibrate,
ones calibrated on the first --calib-tokens tokens of the data, which are then
not evaluated), and counts inputs outside the approximations' ranges.

flags:
`)
		fl.PrintDefaults()
	}
	modelPath := fl.String("model", "", "checkpoint (safetensors)")
	data := fl.String("data", "", dataHelp)
	ext := fl.String("ext", ".go", "file suffix selected in a --data directory ('' : every file)")
	nTokens := fl.Int("tokens", 16384, "tokens evaluated (0: all)")
	stride := fl.Int("stride", 0, "window stride (default: context−1, every token predicted once)")
	exactOnly := fl.Bool("exact", false, "only the exact (float64) perplexity, on the same tokens a checkpoint with approximations is evaluated on: no calibration, no approximations (for checkpoints whose ranges no polynomial covers, e.g. before the score-range phase)")
	calibrate := fl.Bool("calibrate", false, "calibrate the approximations even if the checkpoint has some")
	calibTokens := fl.Int("calib-tokens", 4096, "tokens used for calibration (taken before the evaluated ones)")
	save := fl.String("save", "", "write the checkpoint with the calibrated approximations to this file")
	quiet := fl.Bool("quiet", false, "no progress bar (there is none when stderr is not a terminal)")
	fitPreset := fl.String("preset", "", "evaluate the approximations as this CKKS preset runs them (refitted to its levels between refreshes, as `entropi plan` and the server do)")
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
	cfg := w.Config
	if *exactOnly && (*calibrate || *save != "" || *fitPreset != "") {
		return errors.New("--exact measures the float64 model only: it takes none of --calibrate, --save, --preset")
	}
	need := 0
	if *nTokens > 0 {
		need = *nTokens + *calibTokens
	}
	tokens, err := readTokens(ck.Tokenizer, *data, *ext, need)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "model %s: %s\ndata %s: %d tokens\n", *modelPath, describeConfig(cfg), *data, len(tokens))
	if *exactOnly {
		if *nTokens > 0 && len(tokens) > *nTokens {
			tokens = tokens[:*nTokens]
		}
		bar := newBar(stderr, "eval", len(tokens)-1, "tokens", *quiet)
		r, err := model.Perplexity(cfg, model.PlainLogits(w, model.NewReference(cfg)), tokens, model.PerplexityOptions{Stride: *stride, Progress: bar.set})
		bar.finish()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "evaluated %d predictions over windows of %d tokens\nexact:  %v\n", r.Tokens, cfg.Context, r)
		return nil
	}

	set := ck.Approx
	if set == nil || *calibrate {
		n := min(*calibTokens, len(tokens)/2)
		seqs := windowsOf(tokens[:n], cfg.Context)
		if len(seqs) == 0 {
			return fmt.Errorf("not enough tokens to calibrate (%d)", n)
		}
		cal, err := model.Calibrate(w, seqs, model.CalibrateOptions{})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "calibrated on %d tokens (%d windows), which are not evaluated:\n%v", n, len(seqs), cal)
		set, tokens = cal.Set, tokens[n:]
		if *save != "" {
			ck.Approx = set
			if err := model.Save(*save, ck); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %s with the calibrated approximations\n", *save)
		}
	} else {
		fmt.Fprintln(stdout, "approximations: from the checkpoint")
	}
	if *fitPreset != "" {
		p, err := he.PresetByName(*fitPreset)
		if err != nil {
			return err
		}
		fit, notes, err := engine.FitToPreset(set, p, true, cfg.Context)
		if err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintf(stdout, "refit for %s: %s\n", p.Name, n)
		}
		set = fit
	}
	if *nTokens > 0 && len(tokens) > *nTokens {
		tokens = tokens[:*nTokens]
	}
	bar := newBar(stderr, "eval", len(tokens)-1, "tokens", *quiet)
	ev, err := model.EvalApprox(w, set, tokens, model.PerplexityOptions{Stride: *stride, Progress: bar.set})
	bar.finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "evaluated %d predictions over windows of %d tokens\n%v", ev.Exact.Tokens, cfg.Context, ev)
	return nil
}

// loadCheckpoint loads a checkpoint that can run on text: it needs a
// tokenizer.
func loadCheckpoint(path string) (*model.Checkpoint, error) {
	ck, err := model.Load(path)
	if err != nil {
		return nil, err
	}
	if ck.Tokenizer == nil {
		return nil, fmt.Errorf("%s has no tokenizer", path)
	}
	return ck, nil
}

func describeConfig(c model.Config) string {
	return fmt.Sprintf("%s, vocab %d, context %d, d %d, %d layers, %d heads, layernorm %v, activation %s, fused FFN %v, FFN scaling %v, temperature %v, final %s",
		c.Name, c.Vocab, c.Context, c.Dim, c.Layers, c.Heads, c.LayerNorm, c.Activation, c.FusedFFN, c.FFNScaling, c.Temperature, c.FinalNorm)
}

// readTokens tokenizes a --data source. need > 0 lets the Go corpus stop
// early: it encodes a prefix of the held-out text large enough for need
// tokens.
func readTokens(tok *model.Tokenizer, src, ext string, need int) ([]int, error) {
	if src == goHeldOut {
		root, err := train.GoRoot()
		if err != nil {
			return nil, err
		}
		c, err := train.LoadGoCorpus(root, train.DefaultHeldOutBasisPoints)
		if err != nil {
			return nil, err
		}
		if need > 0 {
			for n := 4 * need; ; n *= 2 {
				if n >= len(c.HeldOut) {
					break
				}
				if ids := tok.Encode(c.HeldOut[:n]); len(ids) > need {
					return ids[:need], nil
				}
			}
		}
		ids, err := c.EncodeFiles(tok, true, 0)
		if err != nil {
			return nil, err
		}
		out := make([]int, len(ids))
		for i, id := range ids {
			out[i] = int(id)
		}
		return out, nil
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		return tok.Encode(b), nil
	}
	var paths []string
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ext) {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, tok.Encode(b)...)
		if eot := tok.EndOfText(); eot >= 0 {
			out = append(out, eot)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %q files under %s", ext, src)
	}
	return out, nil
}

// windowsOf cuts tokens into consecutive windows of the context length.
func windowsOf(tokens []int, n int) [][]int {
	var out [][]int
	for i := 0; i+n <= len(tokens); i += n {
		out = append(out, tokens[i:i+n])
	}
	return out
}
