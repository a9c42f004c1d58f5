package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/entropi-ai/entropi/bench"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

func init() {
	commands["bench"] = command{"measure latency and communication per token: baseline vs entropy-guided, presets, contexts (server and client over loopback gRPC)", runBench}
}

func runBench(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return benchMain(ctx, args, os.Stdout, os.Stderr)
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// benchSummary is the --json output: per model, the per-token latency and
// bytes, and the baseline/entropy-guided ratios.
type benchSummary struct {
	Schema  string           `json:"schema"`
	Random  bool             `json:"random_weights"`
	Machine bench.Machine    `json:"machine"`
	Out     string           `json:"out,omitempty"`
	Runs    []benchSummRun   `json:"runs"`
	Ratios  []benchSummRatio `json:"ratios"`
	Paper   bench.Paper      `json:"paper"`
	Skipped []bench.Skip     `json:"skipped,omitempty"`
}

type benchSummRun struct {
	Model           string             `json:"model"`
	Kind            string             `json:"kind"`
	Preset          string             `json:"preset"`
	Mode            string             `json:"mode"`
	Context         int                `json:"context"`
	SecondsPerToken float64            `json:"seconds_per_token"`
	CPUPerToken     float64            `json:"cpu_seconds_per_token"`
	BytesPerToken   uint64             `json:"bytes_per_token"`
	BytesUp         uint64             `json:"bytes_up_per_token"`
	BytesDown       uint64             `json:"bytes_down_per_token"`
	RoundTrips      float64            `json:"round_trips_per_token"`
	Bootstraps      float64            `json:"bootstraps_per_token,omitempty"`
	Projected       map[string]float64 `json:"projected_seconds_per_token"`
	AgreeExact      string             `json:"agree_exact"`
	MaxLogitErr     float64            `json:"max_logit_err_approx"`
}

type benchSummRatio struct {
	Preset        string             `json:"preset"`
	Mode          string             `json:"mode"`
	Context       int                `json:"context"`
	Communication float64            `json:"communication"`
	Latency       float64            `json:"latency"`
	CPU           float64            `json:"cpu"`
	LatencyByNet  map[string]float64 `json:"latency_by_network"`
}

func benchMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("bench", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi bench [flags]

Measures private inference end to end: for each model × refresh mode ×
preset × context, an entropi server on a loopback port and a client over
real gRPC; key generation and upload, prefill, and per decode token the
latency (median, min, max), CPU time, bytes up and down, refresh rounds,
where the time goes, and the accuracy against the plaintext model. The
bytes and rounds are projected onto a LAN (1 Gbps, 0.5 ms) and the
paper's WAN (100 Mbps, 80 ms). Writes results.json, results.md and PNG
charts into --out.

Models: --model FILE (repeatable), else the pair the paper compares from
models/: baseline.safetensors and ereg-sm-t-scfuffn.safetensors (any other
checkpoint there only with --model); with
--random, random weights of the shipped size stand in for every block type
(baseline, entropy-guided) that has no checkpoint (the output says so).

flags:
`)
		fl.PrintDefaults()
	}
	var modelFiles stringList
	fl.Var(&modelFiles, "model", "checkpoint to measure (repeatable; default: models/baseline.safetensors and models/ereg-sm-t-scfuffn.safetensors, else every models/*.safetensors)")
	random := fl.Bool("random", false, "random weights of the shipped size for block types without a checkpoint")
	presets := fl.String("presets", "n14-128,n15-128", "CKKS presets, comma-separated")
	allowInsecure := fl.Bool("allow-insecure-presets", false, "allow insecure-… presets (NO SECURITY: tests and quick looks only)")
	contexts := fl.String("contexts", "16,32,64,128", "context lengths (prompt + decode tokens), comma-separated")
	decode := fl.Int("decode", 3, "decode tokens per run (the median needs ≥ 3)")
	bootstrap := fl.Bool("bootstrap", false, "also the bootstrapped (non-interactive) mode, at the bootstrapping presets of --presets (n16-boot-128 when ≥ 24 GiB are available; insecure-boot-deep with --allow-insecure-presets for a quick look); other presets are skipped with the reason")
	quick := fl.Bool("quick", false, "reduced matrix: n14-128, context 8, 3 decode tokens, both block types (random weights of the shipped size stand in for one without a checkpoint)")
	jsonOut := fl.Bool("json", false, "print a JSON summary on stdout (progress still goes to stderr)")
	out := fl.String("out", filepath.Join("bench", "results", "latest"), "directory for results.json, results.md and the charts")
	workers := fl.Int("workers", 0, "server goroutines per session (0: all CPUs)")
	seed := fl.Uint64("seed", 1, "seed of the random weights and prompts")
	note := fl.String("note", "", "a note on the machine (load, other jobs) to keep with the results")
	render := fl.String("render", "", "only redraw results.md and the charts of DIR/results.json (no measurement)")
	rVocab := fl.Int("random-vocab", shippedVocab, "with --random: vocabulary")
	rContext := fl.Int("random-context", shippedContext, "with --random: context")
	rDim := fl.Int("random-dim", shippedDim, "with --random: width")
	rLayers := fl.Int("random-layers", shippedLayers, "with --random: layers")
	rHeads := fl.Int("random-heads", shippedHeads, "with --random: heads")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		fl.Usage()
		return fmt.Errorf("unexpected arguments %v", fl.Args())
	}
	if *render != "" {
		f, err := os.Open(filepath.Join(*render, "results.json"))
		if err != nil {
			return err
		}
		res, err := bench.ReadResults(f)
		f.Close()
		if err != nil {
			return err
		}
		if err := writeBenchOutputs(res, *render); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "redrew %s/results.md and the charts\n", *render)
		return nil
	}
	set := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["presets"] {
			*presets = he.N14.Name
		}
		if !set["random"] {
			*random = true
		}
		if !set["contexts"] {
			*contexts = "8"
		}
		if !set["decode"] {
			*decode = 3
		}
	}

	cfg := bench.Config{AllowInsecure: *allowInsecure, DecodeTokens: *decode, Workers: *workers, Seed: *seed,
		Log: stderr, MachineNote: *note, Command: "entropi bench " + strings.Join(args, " ")}
	for _, name := range splitList(*presets) {
		p, err := he.PresetByName(name)
		if err != nil {
			return err
		}
		if p.Insecure() && !*allowInsecure {
			return fmt.Errorf("preset %s is insecure (test use only): pass --allow-insecure-presets to use it", p.Name)
		}
		cfg.Presets = append(cfg.Presets, p)
	}
	for _, s := range splitList(*contexts) {
		c, err := strconv.Atoi(s)
		if err != nil || c < 2 {
			return fmt.Errorf("bad context %q", s)
		}
		cfg.Contexts = append(cfg.Contexts, c)
	}
	cfg.Modes = []string{bench.ModeInteractive}
	if *bootstrap {
		cfg.Modes = append(cfg.Modes, bench.ModeBootstrap)
	}

	// The models.
	files := []string(modelFiles)
	if len(files) == 0 {
		files = defaultBenchModels("models")
	}
	have := map[string]bool{}
	for _, f := range files {
		ck, err := model.Load(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		m := &bench.ModelSpec{Name: strings.TrimSuffix(filepath.Base(f), ".safetensors"), Source: f,
			Weights: ck.Weights, Approx: ck.Approx, Tokenizer: ck.Tokenizer}
		have[m.Kind()] = true
		cfg.Models = append(cfg.Models, m)
		fmt.Fprintf(stderr, "model: %s (%s, %s)\n", f, m.Kind(), describeConfig(ck.Weights.Config))
	}
	if *random {
		for _, kind := range []string{bench.KindBaseline, bench.KindEntropyGuided} {
			if have[kind] {
				continue
			}
			m, err := bench.RandomModel(kind, *rVocab, *rContext, *rDim, *rLayers, *rHeads, *seed)
			if err != nil {
				return err
			}
			cfg.Models = append(cfg.Models, m)
			fmt.Fprintf(stderr, "model: %s: RANDOM weights (vocab %d, context %d, d %d, %d layers, %d heads): costs are real, text and accuracy are not those of a trained model\n",
				m.Name, *rVocab, *rContext, *rDim, *rLayers, *rHeads)
		}
	}
	if len(cfg.Models) == 0 {
		return errors.New("no checkpoint in models/ and no --model: train one (`entropi train`), or measure random weights of the shipped size with --random")
	}

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	res, err := bench.Measure(ctx, cfg)
	if err != nil {
		return err
	}
	if err := writeBenchOutputs(res, *out); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", strings.Join([]string{filepath.Join(*out, "results.json"), filepath.Join(*out, "results.md"), filepath.Join(*out, "*.png")}, ", "))
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(summarize(res, *out))
	}
	return res.WriteMarkdown(stdout)
}

// benchModels are the default pair: the baseline and the entropy-guided
// model the demo runs (the other shipped checkpoint, SM+ScFuFFN without the
// regularizer, has the entropy-guided model's circuit and only its own
// calibrated ranges; measure it with --model).
var benchModels = []string{"baseline.safetensors", "ereg-sm-t-scfuffn.safetensors"}

// defaultBenchModels: the pair from dir when either is there, else every
// checkpoint in dir.
func defaultBenchModels(dir string) []string {
	var files []string
	for _, name := range benchModels {
		if f := filepath.Join(dir, name); fileExists(f) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		files, _ = filepath.Glob(filepath.Join(dir, "*.safetensors"))
		sort.Strings(files)
	}
	return files
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func writeBenchOutputs(res *bench.Results, dir string) error {
	write := func(name string, f func(io.Writer) error) error {
		fh, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = f(fh)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		return err
	}
	if err := write("results.json", res.WriteJSON); err != nil {
		return err
	}
	if err := write("results.md", res.WriteMarkdown); err != nil {
		return err
	}
	if len(res.Runs) == 0 {
		return nil
	}
	_, err := res.WriteCharts(dir)
	return err
}

func summarize(res *bench.Results, out string) benchSummary {
	s := benchSummary{Schema: bench.Schema, Random: res.Random, Machine: res.Machine, Out: out, Paper: res.Paper, Skipped: res.Skipped}
	for i := range res.Runs {
		r := &res.Runs[i]
		sr := benchSummRun{Model: r.Model, Kind: r.Kind, Preset: r.Preset, Mode: r.Mode, Context: r.Context,
			SecondsPerToken: r.Decode.MedianSeconds, CPUPerToken: r.Decode.CPUSeconds,
			BytesPerToken: r.Decode.BytesUp + r.Decode.BytesDown, BytesUp: r.Decode.BytesUp, BytesDown: r.Decode.BytesDown,
			RoundTrips: r.Decode.RoundTrips, Bootstraps: r.Decode.Bootstraps, Projected: map[string]float64{},
			AgreeExact: fmt.Sprintf("%d/%d", r.Accuracy.AgreeExact, r.Accuracy.Tokens), MaxLogitErr: r.Accuracy.MaxLogitErrApprox}
		for _, p := range r.Project {
			sr.Projected[p.Network] = p.TokenSeconds
		}
		s.Runs = append(s.Runs, sr)
	}
	for _, c := range res.Comparisons {
		s.Ratios = append(s.Ratios, benchSummRatio{Preset: c.Preset, Mode: c.Mode, Context: c.Context,
			Communication: c.CommRatio, Latency: c.LatencyRatio, CPU: c.CPURatio, LatencyByNet: c.LatencyRatioByNetwork})
	}
	return s
}
