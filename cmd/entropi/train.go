package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/model/train"
)

func init() {
	commands["train"] = command{"train a model on the Go standard-library corpus (baseline | sm-scfuffn | ereg-sm-t-scfuffn)", runTrain}
}

// Model variants of the paper, by name.
const (
	variantBaseline = "baseline"          // SM+LN+G (GPT-2)
	variantSMScFuFN = "sm-scfuffn"        // softmax only, scaled fused FFN; no temperature, no regularizer
	variantEReg     = "ereg-sm-t-scfuffn" // + learnable temperature + entropy regularization
)

// variantConfig maps a variant name to the model configuration and the
// training options.
func variantConfig(variant string, vocab, context, dim, layers, heads int, lambda, gamma float64) (model.Config, train.Options, error) {
	var cfg model.Config
	var opts train.Options
	switch variant {
	case variantBaseline:
		cfg = model.Baseline(vocab, context, dim, layers, heads)
	case variantSMScFuFN:
		cfg = model.EntropyGuided(vocab, context, dim, layers, heads)
		cfg.Temperature = false
	case variantEReg:
		cfg = model.EntropyGuided(vocab, context, dim, layers, heads)
		opts = train.Options{EntropyReg: true, Lambda: lambda, Gamma: gamma}
	default:
		return cfg, opts, fmt.Errorf("unknown variant %q (%s | %s | %s)", variant, variantBaseline, variantSMScFuFN, variantEReg)
	}
	cfg.Name = variant
	return cfg, opts, cfg.Validate()
}

func runTrain(args []string) error {
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: entropi train [flags]

Trains one model variant on the Go standard library of the installed Go
(corpus rules: model/train/corpus.go), writes a checkpoint (safetensors with
config, tokenizer and provenance metadata) to --out, the loss/eval history to
--out.history.json, and a resumable state to --state (default --out.state).
Ctrl-C saves the state; --resume continues bit-identically.

Build with -tags openblas (after scripts/install-openblas.sh) for OpenBLAS;
the default build is pure Go and about 9x slower.

flags:
`)
		fs.PrintDefaults()
	}
	variant := fs.String("variant", variantEReg, "model variant: "+variantBaseline+" | "+variantSMScFuFN+" | "+variantEReg)
	dim := fs.Int("dim", 256, "model width d")
	layers := fs.Int("layers", 4, "decoder blocks")
	heads := fs.Int("heads", 4, "attention heads")
	ctxLen := fs.Int("context", 128, "context length T (training window)")
	vocab := fs.Int("vocab", 1024, "BPE vocabulary size (see model/train/doc.go for the choice)")
	tokens := fs.Float64("tokens", 6e6, "training token budget (steps = ceil(tokens / (batch·context)))")
	steps := fs.Int("steps", 0, "optimizer steps (overrides --tokens when > 0)")
	batch := fs.Int("batch", 16, "sequences per optimizer step")
	micro := fs.Int("micro-batch", train.DefaultMicroBatch, "sequences per forward/backward call (gradient accumulation unit; batch must be a multiple)")
	lr := fs.Float64("lr", 2e-3, "peak learning rate")
	minLR := fs.Float64("min-lr", -1, "final learning rate of the cosine decay (default lr/10)")
	warmup := fs.Int("warmup", 200, "linear warmup steps (capped at the step count)")
	wd := fs.Float64("weight-decay", 0.1, "AdamW decoupled weight decay (matrices only)")
	beta1 := fs.Float64("beta1", 0.9, "AdamW β1")
	beta2 := fs.Float64("beta2", 0.95, "AdamW β2")
	clip := fs.Float64("clip", 1.0, "global gradient-norm clipping (0: off)")
	lambda := fs.Float64("lambda", 1e-5, "entropy-regularization weight λ ("+variantEReg+")")
	gamma := fs.Float64("gamma", train.DefaultGamma, "entropy-regularization tolerance γ")
	wn := fs.Bool("weight-norm", false, "weight normalization of the block matrices (training-time only)")
	sn := fs.Bool("spectral-norm", false, "spectral normalization of the block matrices (training-time only)")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "data-parallel workers (results do not depend on it)")
	blasThreads := fs.Int("blas-threads", 0, "OpenBLAS threads (0: GOMAXPROCS/workers; ignored by the pure-Go build)")
	seed := fs.Uint64("seed", 1, "seed of initialization and data order")
	out := fs.String("out", "model.safetensors", "checkpoint to write at the end")
	statePath := fs.String("state", "", "resumable state file (default: --out with .state appended)")
	resume := fs.String("resume", "", "resume from this state file (its configuration wins over the flags)")
	scoreBound := fs.Float64("score-bound", 0, "attention scores outside [−bound, bound] are penalized (HE needs a fixed exp range; model/train/range.go)")
	scorePenalty := fs.Float64("score-penalty", 0, "weight μ of the score-range penalty (0: off)")
	meanBound := fs.Float64("mean-bound", 0, "each attention row's log mean exp-score outside [−bound, bound] is penalized (the HE softmax's reciprocal range; model/train/range.go)")
	meanPenalty := fs.Float64("mean-penalty", 0, "weight ν of the mean exp-score penalty (0: off)")
	extendLR := fs.Float64("extend-lr", 0, "with --extend-tokens: learning rate of the extension (0: the final learning rate)")
	extend := fs.Float64("extend-tokens", 0, "with --resume: train this many more tokens after the state's last step at its final learning rate, with --score-bound/--score-penalty if given (a fine-tuning phase)")
	evalEvery := fs.Int("eval-every", 200, "held-out evaluation every this many steps (0: only at the end)")
	evalWindows := fs.Int("eval-windows", 64, "held-out windows per evaluation")
	ckptEvery := fs.Int("checkpoint-every", 500, "save the resumable state every this many steps (0: only at the end)")
	stopAfter := fs.Int("stop-after", 0, "stop after this many steps of this invocation, saving the state (0: run to the end); for throughput checks")
	logEvery := fs.Int("log-every", 50, "log line every this many steps when stderr is not a terminal")
	goroot := fs.String("goroot", "", "GOROOT whose src/ is the corpus (default: go env GOROOT)")
	heldOutBP := fs.Int("held-out", train.DefaultHeldOutBasisPoints, "held-out share of the corpus files in basis points (500 = 5%)")
	sample := fs.Int("bpe-sample", 0, "bytes of the train split the tokenizer learns from (0: all)")
	cacheDir := fs.String("cache", train.DefaultCacheDir(), "cache directory of the tokenizer and encoded corpus ('' : none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *statePath == "" {
		*statePath = *out + ".state"
	}
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }

	// The run's configuration: from the flags, or from the state to resume.
	var cfg train.Config
	var meta map[string]string
	if *resume != "" {
		var step int
		var err error
		if cfg, step, meta, err = train.ReadStateInfo(*resume); err != nil {
			return err
		}
		logf("resuming %s at step %d/%d (its configuration replaces the model and optimizer flags)", *resume, step, cfg.Steps)
		if v, err := strconv.Atoi(meta["held_out_bp"]); err == nil {
			*heldOutBP = v
		}
		if v, err := strconv.Atoi(meta["bpe_sample_bytes"]); err == nil {
			*sample = v
		}
	} else {
		mc, opts, err := variantConfig(*variant, *vocab, *ctxLen, *dim, *layers, *heads, *lambda, *gamma)
		if err != nil {
			return err
		}
		opts.WeightNorm, opts.SpectralNorm = *wn, *sn
		opts.ScoreBound, opts.ScorePenalty = *scoreBound, *scorePenalty
		opts.MeanBound, opts.MeanPenalty = *meanBound, *meanPenalty
		n := *steps
		if n <= 0 {
			n = int(math.Ceil(*tokens / float64(*batch**ctxLen)))
		}
		if *minLR < 0 {
			*minLR = *lr / 10
		}
		cfg = train.Config{
			Model: mc, Opts: opts, Seed: *seed, SeqLen: *ctxLen, Batch: *batch, MicroBatch: *micro, Steps: n,
			LR: *lr, MinLR: *minLR, Warmup: min(*warmup, n),
			AdamW: train.AdamWConfig{Beta1: *beta1, Beta2: *beta2, Eps: 1e-8, WeightDecay: *wd},
			Clip:  *clip, EvalWindows: *evalWindows,
		}
	}

	// Corpus and tokenizer (cached).
	t0 := time.Now()
	corpus, err := train.LoadGoCorpus(*goroot, *heldOutBP)
	if err != nil {
		return err
	}
	logf("corpus: %s (%v)", corpus.Summary(), time.Since(t0).Round(time.Millisecond))
	if meta != nil && meta["corpus_sha256"] != "" && meta["corpus_sha256"] != corpus.Hash {
		return fmt.Errorf("the state was trained on corpus %s, this Go has %s (%s)", meta["corpus_sha256"], corpus.Hash, corpus.GoVersion)
	}
	enc, err := train.Prepare(corpus, cfg.Model.Vocab, *sample, *cacheDir, os.Stderr)
	if err != nil {
		return err
	}

	// Trainer.
	var tr *train.Trainer
	if *resume != "" {
		tr, err = train.ResumeTrainer(*resume, enc.Train, enc.HeldOut, *workers)
		if err == nil && *extend > 0 {
			n := int(math.Ceil(*extend / float64(tr.Config.TokensPerStep())))
			err = tr.ExtendWith(n, *extendLR, train.Options{ScoreBound: *scoreBound, ScorePenalty: *scorePenalty, MeanBound: *meanBound, MeanPenalty: *meanPenalty})
			cfg = tr.Config
			logf("extending by %d steps (%.0f tokens) at lr %.2e; score bound %g, penalty %g; mean bound %g, penalty %g", n, float64(n*cfg.TokensPerStep()), extensionLR(cfg), cfg.Opts.ScoreBound, cfg.Opts.ScorePenalty, cfg.Opts.MeanBound, cfg.Opts.MeanPenalty)
		}
	} else {
		tr, err = train.NewTrainer(cfg, enc.Train, enc.HeldOut, *workers)
		if err == nil {
			tr.Meta = map[string]string{
				"command":                commandLine(),
				"corpus":                 "Go standard library " + corpus.GoVersion + " ($GOROOT/src; " + train.CorpusRules + ")",
				"corpus_sha256":          corpus.Hash,
				"corpus_go_version":      corpus.GoVersion,
				"held_out_bp":            strconv.Itoa(*heldOutBP),
				"bpe_sample_bytes":       strconv.Itoa(*sample),
				"train_tokens_available": strconv.Itoa(len(enc.Train)),
				"held_out_tokens":        strconv.Itoa(len(enc.HeldOut)),
				"bytes_per_token":        fmt.Sprintf("%.4f (train), %.4f (held-out)", enc.Info.TrainBPT, enc.Info.HeldOutBPT),
			}
		}
	}
	if err != nil {
		return err
	}
	bt := *blasThreads
	if bt <= 0 {
		bt = max(1, runtime.GOMAXPROCS(0)/tr.Workers())
	}
	train.SetBLASThreads(bt)
	cfg = tr.Config
	logf("model %s: %d parameters; %s", cfg.Model.Name, tr.Params.NumValues(), describe(cfg))
	logf("BLAS %s (%d threads/call), %d workers, %d tokens/step, %d steps (%.3g tokens), state %s",
		train.BLAS, train.BLASThreads(), tr.Workers(), cfg.TokensPerStep(), cfg.Steps, float64(cfg.Steps*cfg.TokensPerStep()), *statePath)

	// Progress: a bar on a terminal, log lines otherwise.
	prog := newTrainProgress(os.Stderr, tr, *logEvery)
	tr.OnStep = prog.step
	tr.OnEval = prog.eval

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runErr := tr.Run(ctx, train.RunOptions{EvalEvery: *evalEvery, CheckpointEvery: *ckptEvery, StatePath: *statePath, StopAfter: *stopAfter})
	prog.done()
	if err := writeHistory(*out+".history.json", tr); err != nil {
		return err
	}
	if runErr != nil {
		if errors.Is(runErr, train.ErrStopped) {
			logf("%v; state saved to %s (continue with --resume %s)", runErr, *statePath, *statePath)
			return nil
		}
		return runErr
	}
	if tr.Step < cfg.Steps {
		logf("stopped at step %d/%d after --stop-after %d; state saved to %s (continue with --resume %s)", tr.Step, cfg.Steps, *stopAfter, *statePath, *statePath)
		logf("throughput: %s", throughputSummary(tr))
		return nil
	}

	// Export.
	w, err := tr.Export()
	if err != nil {
		return err
	}
	m := map[string]string{}
	for k, v := range tr.Meta {
		m[k] = v
	}
	cj, _ := json.Marshal(cfg)
	m["train_config"] = string(cj)
	m["seed"] = strconv.FormatUint(cfg.Seed, 10)
	m["tokens"] = strconv.FormatInt(tr.Tokens, 10)
	m["steps"] = strconv.Itoa(tr.Step)
	m["wall_time"] = tr.Elapsed.Round(time.Second).String() // steps + evaluations, all sessions
	m["machine"] = machine(tr.Workers())
	m["trained_at"] = time.Now().UTC().Format(time.RFC3339)
	if *resume != "" {
		m["resumed_with"] = commandLine()
	}
	if n := len(tr.Evals); n > 0 {
		e := tr.Evals[n-1]
		m["held_out_ce"] = fmt.Sprintf("%.5f", e.CE)
		m["held_out_ppl"] = fmt.Sprintf("%.5f", e.PPL)
		if hj, err := json.Marshal(e.HeadEntropy); err == nil {
			m["held_out_head_entropy"] = string(hj)
		}
		if len(e.FFNScale) > 0 {
			m["ffn_scale_inv_alpha"] = fmt.Sprint(e.FFNScale)
			m["ffn_beta"] = fmt.Sprint(e.Beta)
		}
	}
	if n := len(tr.History); n > 0 {
		hj, _ := json.Marshal(tr.History[n-1].HeadEntropy)
		m["final_train_batch_head_entropy"] = string(hj)
	}
	if err := model.Save(*out, &model.Checkpoint{Weights: w, Tokenizer: enc.Tokenizer, Meta: m}); err != nil {
		return err
	}
	logf("wrote %s (%d steps, %d tokens, %v; %s)", *out, tr.Step, tr.Tokens, tr.Elapsed.Round(time.Second), throughputSummary(tr))
	return nil
}

func describe(c train.Config) string {
	m := c.Model
	s := fmt.Sprintf("V=%d T=%d d=%d L=%d H=%d; batch %d (micro %d), lr %.3g→%.3g warmup %d, wd %.3g, clip %.3g, seed %d",
		m.Vocab, c.SeqLen, m.Dim, m.Layers, m.Heads, c.Batch, c.MicroBatch, c.LR, c.MinLR, c.Warmup, c.AdamW.WeightDecay, c.Clip, c.Seed)
	if c.Opts.EntropyReg {
		s += fmt.Sprintf(", entropy reg λ=%.3g γ=%.3g", c.Opts.Lambda, c.Opts.Gamma)
	}
	if c.Opts.WeightNorm {
		s += ", weight norm"
	}
	if c.Opts.SpectralNorm {
		s += ", spectral norm"
	}
	return s
}

func commandLine() string {
	parts := make([]string, len(os.Args))
	for i, a := range os.Args {
		if strings.ContainsAny(a, " \t'\"$") {
			a = strconv.Quote(a)
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

// machine describes where training ran.
func machine(workers int) string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s; %d CPUs (GOMAXPROCS %d), %s/%s, %s, BLAS %s (%d threads), %d workers, host %s",
		cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(), train.BLAS, train.BLASThreads(), workers, host)
}

// throughputSummary is the median tokens/s over this session's steps
// (the first step, which allocates, excluded when there are others).
func throughputSummary(tr *train.Trainer) string {
	var secs []float64
	for _, r := range tr.History {
		if r.Seconds > 0 {
			secs = append(secs, r.Seconds)
		}
	}
	if len(secs) > 1 {
		secs = secs[1:]
	}
	if len(secs) == 0 {
		return "no steps timed"
	}
	med := median(secs)
	return fmt.Sprintf("median %.0f tokens/s over %d steps (%.2f s/step of %d tokens)", float64(tr.Config.TokensPerStep())/med, len(secs), med, tr.Config.TokensPerStep())
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := 1; i < len(s); i++ { // insertion sort: short slices
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func writeHistory(path string, tr *train.Trainer) error {
	b, err := json.MarshalIndent(struct {
		Config  train.Config       `json:"config"`
		Meta    map[string]string  `json:"meta"`
		Steps   []train.StepRecord `json:"steps"`
		Evals   []train.EvalRecord `json:"evals"`
		Elapsed string             `json:"elapsed"`
	}{tr.Config, tr.Meta, tr.History, tr.Evals, tr.Elapsed.String()}, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// trainProgress renders training progress: on a terminal, the commands'
// progress bar (progress.go, schollz/progressbar) over the steps, its
// description showing loss, tokens/s, per-layer mean head entropy, gradient
// norm and learning rate; otherwise a log line every logEvery steps.
// Evaluations always get their own line.
type trainProgress struct {
	w        io.Writer
	tr       *train.Trainer
	bar      *bar
	logEvery int
	start    time.Time
	startTok int64
}

func newTrainProgress(w io.Writer, tr *train.Trainer, logEvery int) *trainProgress {
	p := &trainProgress{w: w, tr: tr, logEvery: max(1, logEvery), start: time.Now(), startTok: tr.Tokens}
	if isTerminal(w) {
		p.bar = newBar(w, "train", tr.Config.Steps, "steps", false)
		p.bar.set(tr.Step, tr.Config.Steps)
	}
	return p
}

// rate is this session's tokens/s so far.
func (p *trainProgress) rate(r train.StepRecord) float64 {
	return float64(r.Tokens-p.startTok) / time.Since(p.start).Seconds()
}

func (p *trainProgress) describe(r train.StepRecord) string {
	var b strings.Builder
	fmt.Fprintf(&b, "loss %.4f", r.Loss)
	if p.tr.Config.Opts.EntropyReg || p.tr.Config.Opts.ScorePenalty > 0 {
		fmt.Fprintf(&b, " (ce %.4f)", r.CE)
	}
	fmt.Fprintf(&b, " max|s| %.1f", r.ScoreMax)
	fmt.Fprintf(&b, " %.0f tok/s H/layer", p.rate(r))
	for _, e := range r.LayerEntropy() {
		fmt.Fprintf(&b, " %.2f", e)
	}
	fmt.Fprintf(&b, " |g| %.2f lr %.2e", r.GradNorm, r.LR)
	return b.String()
}

func (p *trainProgress) step(r train.StepRecord) {
	c := p.tr.Config
	if p.bar != nil && p.bar.pb != nil {
		p.bar.pb.Describe(p.describe(r))
		p.bar.set(r.Step, c.Steps)
		return
	}
	if r.Step == 1 || r.Step%p.logEvery == 0 || r.Step == c.Steps {
		eta := time.Duration(float64(int64(c.Steps*c.TokensPerStep())-r.Tokens) / p.rate(r) * float64(time.Second))
		fmt.Fprintf(p.w, "step %d/%d %s eta %v\n", r.Step, c.Steps, p.describe(r), eta.Round(time.Second))
	}
}

func (p *trainProgress) eval(e train.EvalRecord) {
	if p.bar != nil && p.bar.pb != nil {
		_ = p.bar.pb.Clear()
	}
	fmt.Fprintln(p.w, train.FormatEval(e))
}

func (p *trainProgress) done() {
	if p.bar != nil {
		p.bar.finish()
	}
}

// extensionLR is the learning rate of an extension phase.
func extensionLR(c train.Config) float64 {
	if c.ExtendLR > 0 {
		return c.ExtendLR
	}
	return c.MinLR
}
