package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/entropi-ai/entropi/model"
)

// Config is everything that determines a training run's trajectory. Two
// runs with equal Configs on equal token streams produce bit-identical
// parameters, whatever Workers is (see Trainer).
type Config struct {
	Model model.Config `json:"model"`
	Opts  Options      `json:"options"`
	Seed  uint64       `json:"seed"`

	SeqLen     int `json:"seq_len"`     // tokens per window (0: Model.Context)
	Batch      int `json:"batch"`       // sequences per optimizer step
	MicroBatch int `json:"micro_batch"` // sequences per ForwardBackward call; Batch must be a multiple (0: DefaultMicroBatch, or Batch if smaller)
	Steps      int `json:"steps"`       // optimizer steps in total
	// ScheduleSteps is the step at which the cosine decay reaches MinLR
	// (0: Steps); steps after it run at MinLR (a fine-tuning phase added
	// by Trainer.Extend).
	ScheduleSteps int `json:"schedule_steps,omitempty"`
	// ExtendLR is the learning rate of the steps after ScheduleSteps (0:
	// MinLR).
	ExtendLR float64 `json:"extend_lr,omitempty"`

	LR          float64     `json:"lr"`     // peak learning rate
	MinLR       float64     `json:"min_lr"` // end of the cosine decay
	Warmup      int         `json:"warmup"` // linear warmup steps
	AdamW       AdamWConfig `json:"adamw"`
	Clip        float64     `json:"clip"`         // global gradient-norm bound (≤ 0: none)
	EvalWindows int         `json:"eval_windows"` // held-out windows per evaluation
}

// DefaultMicroBatch is the number of sequences one ForwardBackward call sees
// when Config.MicroBatch is 0.
const DefaultMicroBatch = 4

func (c *Config) normalize() error {
	if err := c.Model.Validate(); err != nil {
		return err
	}
	if c.SeqLen == 0 {
		c.SeqLen = c.Model.Context
	}
	if c.MicroBatch == 0 {
		c.MicroBatch = min(DefaultMicroBatch, c.Batch)
	}
	if c.EvalWindows == 0 {
		c.EvalWindows = 64
	}
	switch {
	case c.SeqLen < 1 || c.SeqLen > c.Model.Context:
		return fmt.Errorf("train: sequence length %d outside [1, context %d]", c.SeqLen, c.Model.Context)
	case c.Batch < 1 || c.MicroBatch < 1 || c.Batch%c.MicroBatch != 0:
		return fmt.Errorf("train: batch %d must be a positive multiple of the micro-batch %d", c.Batch, c.MicroBatch)
	case c.Steps < 1:
		return fmt.Errorf("train: steps %d < 1", c.Steps)
	case c.EvalWindows < 1:
		return fmt.Errorf("train: eval windows %d < 1", c.EvalWindows)
	}
	if err := c.AdamW.Validate(); err != nil {
		return err
	}
	return c.schedule().Validate()
}

func (c *Config) schedule() Schedule {
	total := c.Steps
	if c.ScheduleSteps > 0 {
		total = c.ScheduleSteps
	}
	return Schedule{Peak: c.LR, Min: c.MinLR, Warmup: c.Warmup, Total: total, After: c.ExtendLR}
}

// Extend adds a fine-tuning phase to a trainer that has finished its
// schedule: n more steps at learning rate lr (0: the final MinLR) and, when
// scorePenalty > 0, the score-range penalty with that bound (range.go).
// The data stream and the optimizer state continue where they were.
func (t *Trainer) Extend(n int, lr, scoreBound, scorePenalty float64) error {
	return t.ExtendWith(n, lr, Options{ScoreBound: scoreBound, ScorePenalty: scorePenalty})
}

// ExtendWith is Extend with the range penalties of o (ScoreBound,
// ScorePenalty, MeanBound, MeanPenalty; a zero penalty leaves the current
// one).
func (t *Trainer) ExtendWith(n int, lr float64, o Options) error {
	scoreBound, scorePenalty := o.ScoreBound, o.ScorePenalty
	switch {
	case n < 1:
		return fmt.Errorf("train: extend by %d steps", n)
	case t.Step < t.Config.Steps:
		return fmt.Errorf("train: the state is at step %d of %d: resume it to the end before extending", t.Step, t.Config.Steps)
	case lr < 0 || lr > t.Config.LR:
		return fmt.Errorf("train: extension learning rate %g outside [0, peak %g]", lr, t.Config.LR)
	case scorePenalty < 0 || (scorePenalty > 0 && !(scoreBound > 0)):
		return fmt.Errorf("train: score penalty %g needs a positive bound (got %g)", scorePenalty, scoreBound)
	case o.MeanPenalty < 0 || (o.MeanPenalty > 0 && !(o.MeanBound > 0)):
		return fmt.Errorf("train: mean penalty %g needs a positive bound (got %g)", o.MeanPenalty, o.MeanBound)
	}
	if t.Config.ScheduleSteps == 0 {
		t.Config.ScheduleSteps = t.Config.Steps
	}
	t.Config.Steps += n
	t.Config.ExtendLR = lr
	if scorePenalty > 0 {
		t.Config.Opts.ScoreBound, t.Config.Opts.ScorePenalty = scoreBound, scorePenalty
		t.Params.Opts.ScoreBound, t.Params.Opts.ScorePenalty = scoreBound, scorePenalty
	}
	if o.MeanPenalty > 0 {
		t.Config.Opts.MeanBound, t.Config.Opts.MeanPenalty = o.MeanBound, o.MeanPenalty
		t.Params.Opts.MeanBound, t.Params.Opts.MeanPenalty = o.MeanBound, o.MeanPenalty
	}
	return t.Config.normalize()
}

// TokensPerStep is Batch·SeqLen.
func (c Config) TokensPerStep() int { return c.Batch * c.SeqLen }

// StepRecord describes one optimizer step.
type StepRecord struct {
	Step     int     `json:"step"` // 1-based: the number of updates applied after this step
	LR       float64 `json:"lr"`
	Loss     float64 `json:"loss"`                // CE + λ·L_ent, mean over the batch
	CE       float64 `json:"ce"`                  // nats per token
	Entropy  float64 `json:"entropy"`             // λ·L_ent
	Range    float64 `json:"range,omitempty"`     // μ·L_range (score-range penalty)
	ScoreMax float64 `json:"score_max,omitempty"` // largest |attention score| of the step
	GradNorm float64 `json:"grad_norm"`
	// HeadEntropy[l][h]: mean attention entropy of head h in layer l (nats).
	HeadEntropy [][]float64 `json:"head_entropy"`
	Tokens      int64       `json:"tokens"`  // cumulative training tokens
	Seconds     float64     `json:"seconds"` // wall time of this step
}

// TokensPerSecond is the step's throughput.
func (r StepRecord) TokensPerSecond(tokensPerStep int) float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(tokensPerStep) / r.Seconds
}

// LayerEntropy is the mean head entropy per layer.
func (r StepRecord) LayerEntropy() []float64 { return layerMeans(r.HeadEntropy) }

func layerMeans(he [][]float64) []float64 {
	out := make([]float64, len(he))
	for l, hs := range he {
		for _, e := range hs {
			out[l] += e
		}
		if len(hs) > 0 {
			out[l] /= float64(len(hs))
		}
	}
	return out
}

// EvalRecord is one held-out evaluation.
type EvalRecord struct {
	Step   int     `json:"step"`
	CE     float64 `json:"ce"` // mean nats per token over the evaluation windows
	PPL    float64 `json:"ppl"`
	Tokens int     `json:"tokens"`
	// FFNScale[l] = 1/α and Beta[l] = β of layer l (FFNScaling models): the
	// design notes ask to watch 1/α collapse to 0 in deep layers.
	FFNScale []float64 `json:"ffn_scale,omitempty"`
	Beta     []float64 `json:"beta,omitempty"`
	// HeadEntropy[l][h]: mean attention entropy on the held-out windows.
	HeadEntropy [][]float64 `json:"head_entropy"`
}

// Trainer runs data-parallel training. The batch of each step is cut into
// Batch/MicroBatch shards in a fixed order; Workers goroutines, each with its
// own Workspace, process the shards in rounds of Workers, and the shard
// gradients are summed in shard order (then divided by the shard count).
// Since shard boundaries and the reduction order do not depend on Workers,
// neither do the results: the same Config gives bit-identical parameters
// with 1 or 8 workers (given a deterministic BLAS).
//
// MicroBatch is part of the trajectory, not only of the speed: the entropy
// regularizer is computed on each micro-batch's mean head entropies (then
// averaged over shards), and floating-point sums follow the shard split.
// The cross-entropy gradient is the batch mean whatever the split, since all
// windows hold SeqLen targets.
type Trainer struct {
	Config  Config
	Params  *Params
	Opt     *AdamW
	Loader  *Loader
	Step    int // optimizer steps done
	Tokens  int64
	Elapsed time.Duration // wall time of steps and evaluations over all sessions (resumes included)
	History []StepRecord
	Evals   []EvalRecord
	// Meta is free-form run metadata kept in the saved state (the command
	// stores the corpus hash and the original command line there).
	Meta map[string]string

	// OnStep and OnEval, when set, are called after each step and
	// evaluation (from the goroutine that calls Run).
	OnStep func(StepRecord)
	OnEval func(EvalRecord)

	workers  int
	ws       []*Workspace
	heldOut  []int32
	evalIn   [][]int
	evalTg   [][]int
	decay    []bool
	data     [][]float64
	grads    [][]float64
	dataHash string
}

// NewTrainer initializes parameters from cfg.Seed and prepares training on
// the train stream with evaluation windows from heldOut.
func NewTrainer(cfg Config, train, heldOut []int32, workers int) (*Trainer, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	p, err := NewParams(cfg.Model, cfg.Opts, cfg.Seed)
	if err != nil {
		return nil, err
	}
	return newTrainer(cfg, p, train, heldOut, workers)
}

func newTrainer(cfg Config, p *Params, train, heldOut []int32, workers int) (*Trainer, error) {
	for name, s := range map[string][]int32{"train": train, "held-out": heldOut} {
		for i, id := range s {
			if id < 0 || int(id) >= cfg.Model.Vocab {
				return nil, fmt.Errorf("train: %s token %d at %d outside vocabulary %d", name, id, i, cfg.Model.Vocab)
			}
		}
	}
	loader, err := NewLoader(train, cfg.SeqLen, cfg.Seed)
	if err != nil {
		return nil, err
	}
	sizes := make([]int, len(p.List))
	t := &Trainer{Config: cfg, Params: p, Loader: loader, heldOut: heldOut, dataHash: streamHash(train, heldOut), Meta: map[string]string{}}
	for i, q := range p.List {
		sizes[i] = len(q.Data)
		t.decay = append(t.decay, q.Decay)
		t.data = append(t.data, q.Data)
		t.grads = append(t.grads, q.Grad)
	}
	if t.Opt, err = NewAdamW(cfg.AdamW, sizes); err != nil {
		return nil, err
	}
	if t.evalIn, t.evalTg, err = EvalWindows(heldOut, cfg.SeqLen, cfg.EvalWindows); err != nil {
		return nil, err
	}
	t.SetWorkers(workers)
	return t, nil
}

// SetWorkers sets the number of worker goroutines (≤ 0: 1). It changes speed
// only, never results.
func (t *Trainer) SetWorkers(n int) {
	if n < 1 {
		n = 1
	}
	if shards := t.Config.Batch / t.Config.MicroBatch; n > shards {
		n = shards
	}
	t.workers = n
	for len(t.ws) < n {
		t.ws = append(t.ws, NewWorkspace(t.Params, t.Config.MicroBatch, t.Config.SeqLen))
	}
	t.ws = t.ws[:n]
}

// Workers is the number of worker goroutines.
func (t *Trainer) Workers() int { return t.workers }

// TrainStep draws one batch, computes the gradient, clips it and applies
// one AdamW update.
func (t *Trainer) TrainStep() (StepRecord, error) {
	cfg := t.Config
	start := time.Now()
	inputs, targets := t.Loader.Next(cfg.Batch)
	mb := cfg.MicroBatch
	shards := cfg.Batch / mb
	results := make([]Result, shards)
	errs := make([]error, shards)
	for _, g := range t.grads {
		clear(g)
	}
	for r := 0; r < shards; r += t.workers {
		n := min(t.workers, shards-r)
		var wg sync.WaitGroup
		for w := 0; w < n; w++ {
			s := r + w
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[s], errs[s] = t.ws[w].ForwardBackward(t.Params, inputs[s*mb:(s+1)*mb], targets[s*mb:(s+1)*mb])
			}()
		}
		wg.Wait()
		for w := 0; w < n; w++ { // reduce in shard order
			if err := errs[r+w]; err != nil {
				return StepRecord{}, fmt.Errorf("train: step %d shard %d: %w", t.Step+1, r+w, err)
			}
			addGrads(t.grads, t.ws[w].Grads())
		}
	}
	inv := 1 / float64(shards)
	for _, g := range t.grads {
		for j := range g {
			g[j] *= inv
		}
	}
	rec := StepRecord{Step: t.Step + 1, LR: t.Config.schedule().LR(t.Step)}
	for _, res := range results {
		rec.Loss += res.Loss * inv
		rec.CE += res.CE * inv
		rec.Entropy += res.Entropy * inv
		rec.Range += res.Range * inv
		rec.ScoreMax = max(rec.ScoreMax, res.ScoreMax)
		if rec.HeadEntropy == nil {
			rec.HeadEntropy = make([][]float64, len(res.HeadEntropy))
			for l := range res.HeadEntropy {
				rec.HeadEntropy[l] = make([]float64, len(res.HeadEntropy[l]))
			}
		}
		for l, hs := range res.HeadEntropy {
			for h, e := range hs {
				rec.HeadEntropy[l][h] += e * inv
			}
		}
	}
	norm, err := ClipGlobalNorm(t.grads, cfg.Clip)
	rec.GradNorm = norm
	if err != nil {
		return rec, fmt.Errorf("train: step %d (loss %g): %w", rec.Step, rec.Loss, err)
	}
	if err := t.Opt.Update(t.data, t.grads, t.decay, rec.LR); err != nil {
		return rec, err
	}
	t.Params.UpdateSpectral()
	t.Step++
	t.Tokens += int64(cfg.TokensPerStep())
	rec.Tokens = t.Tokens
	d := time.Since(start)
	t.Elapsed += d
	rec.Seconds = d.Seconds()
	t.History = append(t.History, rec)
	return rec, nil
}

func addGrads(dst, src [][]float64) {
	for i, d := range dst {
		s := src[i]
		for j := range d {
			d[j] += s[j]
		}
	}
}

// Evaluate computes the mean next-token cross-entropy over the held-out
// evaluation windows (no regularizer), in micro-batches spread over the
// workers; the sum runs in window order, so the value does not depend on
// Workers.
func (t *Trainer) Evaluate() (EvalRecord, error) {
	mb := t.Config.MicroBatch
	n := len(t.evalIn)
	chunks := (n + mb - 1) / mb
	sums := make([]float64, chunks) // per chunk, summed in window order
	ents := make([][][]float64, chunks)
	errs := make([]error, chunks)
	for r := 0; r < chunks; r += t.workers {
		var wg sync.WaitGroup
		for w := 0; w < t.workers && r+w < chunks; w++ {
			c := r + w
			wg.Add(1)
			go func() {
				defer wg.Done()
				lo, hi := c*mb, min((c+1)*mb, n)
				logits, err := t.ws[w].Forward(t.Params, t.evalIn[lo:hi])
				if err != nil {
					errs[c] = err
					return
				}
				ents[c] = t.ws[w].HeadEntropies(hi-lo, t.Config.SeqLen)
				for b := range logits {
					for i, row := range logits[b] {
						sums[c] += crossEntropy(row, t.evalTg[lo+b][i])
					}
				}
			}()
		}
		wg.Wait()
	}
	var total float64
	var he [][]float64
	for c := range sums {
		if errs[c] != nil {
			return EvalRecord{}, fmt.Errorf("train: evaluation: %w", errs[c])
		}
		total += sums[c]
		wc := float64(min((c+1)*mb, n)-c*mb) / float64(n) // windows of this chunk / all
		if he == nil {
			he = make([][]float64, len(ents[c]))
			for l := range he {
				he[l] = make([]float64, len(ents[c][l]))
			}
		}
		for l := range ents[c] {
			for h, e := range ents[c][l] {
				he[l][h] += wc * e
			}
		}
	}
	tokens := n * t.Config.SeqLen
	rec := EvalRecord{Step: t.Step, CE: total / float64(tokens), Tokens: tokens, HeadEntropy: he}
	rec.PPL = math.Exp(rec.CE)
	if t.Config.Model.FFNScaling {
		for l := 0; l < t.Config.Model.Layers; l++ {
			if a := t.Params.Lookup(fmt.Sprintf("h.%d.mlp.alpha", l)); a != nil {
				rec.FFNScale = append(rec.FFNScale, 1/a.Data[0])
			}
			if b := t.Params.Lookup(fmt.Sprintf("h.%d.mlp.beta", l)); b != nil {
				rec.Beta = append(rec.Beta, b.Data[0])
			}
		}
	}
	return rec, nil
}

// crossEntropy is −log softmax(row)[target], computed stably.
func crossEntropy(row []float64, target int) float64 {
	m := math.Inf(-1)
	for _, x := range row {
		m = math.Max(m, x)
	}
	var s float64
	for _, x := range row {
		s += math.Exp(x - m)
	}
	return m + math.Log(s) - row[target]
}

// RunOptions controls the periodic side work of Run; none of it changes the
// trajectory.
type RunOptions struct {
	EvalEvery       int    // evaluate every this many steps (0: only at the end)
	CheckpointEvery int    // save the resumable state every this many steps (0: only at the end)
	StatePath       string // where to save it ("" : never)
	StopAfter       int    // stop (saving the state) after this many steps in this call (0: run to Config.Steps)
}

// ErrStopped is returned by Run when the context was cancelled (the state
// was saved if RunOptions.StatePath is set).
var ErrStopped = errors.New("train: stopped")

// Run trains until Config.Steps (or StopAfter more steps, or cancellation),
// evaluating and saving the state as asked, and always evaluating at the end
// of the schedule.
func (t *Trainer) Run(ctx context.Context, o RunOptions) error {
	done := 0
	save := func() error {
		if o.StatePath == "" {
			return nil
		}
		return t.SaveState(o.StatePath)
	}
	for t.Step < t.Config.Steps {
		if err := ctx.Err(); err != nil {
			if serr := save(); serr != nil {
				return serr
			}
			return fmt.Errorf("%w at step %d: %v", ErrStopped, t.Step, err)
		}
		rec, err := t.TrainStep()
		if err != nil {
			return err
		}
		if t.OnStep != nil {
			t.OnStep(rec)
		}
		done++
		last := t.Step == t.Config.Steps
		if last || (o.EvalEvery > 0 && t.Step%o.EvalEvery == 0) {
			t0 := time.Now()
			ev, err := t.Evaluate()
			t.Elapsed += time.Since(t0)
			if err != nil {
				return err
			}
			t.Evals = append(t.Evals, ev)
			if t.OnEval != nil {
				t.OnEval(ev)
			}
		}
		if last || (o.CheckpointEvery > 0 && t.Step%o.CheckpointEvery == 0) || (o.StopAfter > 0 && done >= o.StopAfter) {
			if err := save(); err != nil {
				return err
			}
		}
		if o.StopAfter > 0 && done >= o.StopAfter {
			return nil
		}
	}
	return nil
}

// Export returns the trained model as plain weights.
func (t *Trainer) Export() (*model.Weights, error) { return t.Params.Export() }

// FormatStep renders a step as one log line: loss, CE, learning rate,
// gradient norm, tokens/s and per-layer mean head entropy.
func (t *Trainer) FormatStep(r StepRecord) string {
	var b strings.Builder
	fmt.Fprintf(&b, "step %d/%d loss %.4f ce %.4f", r.Step, t.Config.Steps, r.Loss, r.CE)
	if t.Config.Opts.EntropyReg {
		fmt.Fprintf(&b, " ent %.2e", r.Entropy)
	}
	fmt.Fprintf(&b, " lr %.2e |g| %.3f %.0f tok/s H", r.LR, r.GradNorm, r.TokensPerSecond(t.Config.TokensPerStep()))
	for _, e := range r.LayerEntropy() {
		fmt.Fprintf(&b, " %.2f", e)
	}
	return b.String()
}

// FormatEval renders an evaluation as one log line.
func FormatEval(e EvalRecord) string {
	s := fmt.Sprintf("eval step %d: held-out ce %.4f ppl %.3f (%d tokens) H/layer %s", e.Step, e.CE, e.PPL, e.Tokens, fmtFloats(layerMeans(e.HeadEntropy)))
	if len(e.FFNScale) > 0 {
		s += fmt.Sprintf(" 1/α %s β %s", fmtFloats(e.FFNScale), fmtFloats(e.Beta))
	}
	return s
}

func fmtFloats(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.3g", x)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// LogTo returns an OnStep function that writes every n-th step (and the
// first) to w as FormatStep lines.
func (t *Trainer) LogTo(w io.Writer, n int) func(StepRecord) {
	if n < 1 {
		n = 1
	}
	return func(r StepRecord) {
		if r.Step == 1 || r.Step%n == 0 || r.Step == t.Config.Steps {
			fmt.Fprintln(w, t.FormatStep(r))
		}
	}
}

// BLAS builds. The default build is pure Go: gonum's native blas64. Built
// with `go build -tags openblas` (cgo; scripts/install-openblas.sh installs
// Debian's libopenblas-dev), blas_openblas.go routes blas64 to OpenBLAS via
// gonum.org/v1/netlib (the untagged 2022 snapshot
// v0.0.0-20220323200511-14de99971b2d, which works with gonum v0.17.0).
// With W data-parallel workers give OpenBLAS GOMAXPROCS/W threads each
// (SetBLASThreads; `entropi train` does this): threaded BLAS inside several
// workers oversubscribes the cores.
//
// Throughput at d=256, 4 layers, 4 heads, T=128, V=1024, batch 16 (micro 4),
// entropy-guided model with the regularizer (forward/backward as of commit
// 3ce4789), measured on the shared 2-core machine while other jobs ran (load
// average 7–12), so wall-clock figures are low and noisy; tokens per
// CPU-second is the load-independent figure (a threaded OpenBLAS that spins
// inflates CPU time):
//
//	go test [-tags openblas] -run '^$' -bench TrainStep -benchtime 4x ./model/train/
//
//	build      workers × BLAS threads   tokens/s (loaded)   tokens/CPU-s
//	pure Go    1 × 1                   312–457             570–601
//	pure Go    2 × 1                   223–383             506–588
//	OpenBLAS   1 × 1                   2133–2137           2519–2673
//	OpenBLAS   1 × 2                   524–1314            818–1361
//	OpenBLAS   2 × 1                   912–1947            1774–2402
//
// Single-threaded OpenBLAS does ≈2.5k tokens per CPU-second against ≈0.55k
// for pure Go (≈4.5×). On an idle 2-core machine two single-threaded
// workers should approach 2 × 2.5k (expected, not measured here); under load
// one single-threaded worker did best.

// BLAS names the BLAS implementation behind gonum's blas64 in this build:
// "gonum" (pure Go, the default) or "openblas" (go build -tags openblas).
var BLAS = "gonum"

var (
	setBLASThreads = func(int) {}
	getBLASThreads = func() int { return 1 }
)

// SetBLASThreads sets the number of threads of a threaded BLAS (OpenBLAS);
// a no-op for the pure-Go build. With several data-parallel workers, give
// each one thread: GOMAXPROCS/workers.
func SetBLASThreads(n int) {
	if n >= 1 {
		setBLASThreads(n)
	}
}

// BLASThreads is the current BLAS thread count (1 for the pure-Go build,
// which runs single-threaded per call).
func BLASThreads() int { return getBLASThreads() }
