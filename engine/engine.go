package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Engine is the server side of one (model, preset): the level plan, the
// encoded plaintext matrices (diagonals at the level where each product
// runs) and the attention geometry. Immutable after New and shared by all
// sessions; it holds no secret key.
type Engine struct {
	w    *model.Weights
	cfg  model.Config
	set  *approx.Set
	opts Options

	params    ckks.Parameters
	maskLevel int
	mask      he.MaskOptions
	kv        he.KVLayout
	att       *he.Attention
	preOK     bool
	preMap    *he.SlotMap
	boot      *bootPlan // bootstrap mode (bootstrap.go); nil: masked refresh

	inPeriod, logitPeriod int

	plan   *Plan
	req    *he.KeyRequest
	mats   map[string]*he.MatVec
	shapes map[string]*he.MatVec // planning only
	pf     prefillState          // batched prefill (prefill.go)
}

// New checks the model and the approximation set against the preset, plans
// the decode step (refresh points, levels, rotation keys) and encodes every
// product at its planned level.
func New(w *model.Weights, set *approx.Set, opts Options) (*Engine, error) {
	if w == nil || set == nil {
		return nil, errors.New("engine: need weights and an approximation set")
	}
	if err := w.CheckShapes(); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	cfg := w.Config
	params, err := opts.Preset.Parameters(opts.AllowInsecure)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.NumCPU()
	}
	d, slots := cfg.Dim, params.MaxSlots()
	switch {
	case d&(d-1) != 0:
		return nil, fmt.Errorf("engine: model dim %d must be a power of two (replicated packing)", d)
	case !cfg.FusedFFN && cfg.FFNHidden%d != 0:
		return nil, fmt.Errorf("engine: FFN hidden width %d must be a multiple of dim %d", cfg.FFNHidden, d)
	case cfg.Activation == model.ActReLU:
		return nil, errors.New("engine: ReLU has no CKKS approximation")
	case (cfg.LayerNorm || cfg.FinalNorm == model.FinalLayerNorm) && set.InvSqrt == nil:
		return nil, errors.New("engine: the model uses LayerNorm but the approximation set has no inverse square root")
	case cfg.Activation == model.ActGELU && set.GELU == nil:
		return nil, errors.New("engine: the model uses GELU but the approximation set has no GELU")
	}
	e := &Engine{w: w, cfg: cfg, set: set, opts: opts, params: params,
		mats: map[string]*he.MatVec{}, shapes: map[string]*he.MatVec{}}
	e.inPeriod = nextPow2(cfg.Vocab)
	if opts.ClientSideEmbedding {
		e.inPeriod = d
	}
	e.logitPeriod = nextPow2(cfg.Vocab)
	if e.inPeriod > slots || e.logitPeriod > slots || d > slots {
		return nil, fmt.Errorf("engine: vocabulary %d (period %d) does not fit %d slots of preset %s", cfg.Vocab, e.logitPeriod, slots, opts.Preset.Name)
	}
	if e.kv, err = he.NewKVLayout(d, cfg.Heads, slots); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if e.att, err = he.NewAttention(params, d, cfg.Heads); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if lay, err := he.NewPreRotated(d, slots); err == nil {
		e.preOK = true
		e.preMap = &he.SlotMap{Src: make([]int32, slots)}
		for s := range e.preMap.Src {
			e.preMap.Src[s] = int32(lay.Index(s))
		}
	}
	// The softmax reciprocal is evaluated as recipN(n) for n = 1…context
	// positions; its depth must not depend on n (the plan is per step).
	for n := 2; n <= cfg.Context; n++ {
		if recipN(set.Recip, n).Depth() != recipN(set.Recip, 1).Depth() {
			return nil, fmt.Errorf("engine: the reciprocal's change of variable costs a level for some positions only (range [%g, %g]); widen its range slightly", set.Recip.Init.Lo, set.Recip.Init.Hi)
		}
	}
	for _, c := range []approx.Chebyshev{set.Exp.Poly, set.Recip.Init} {
		if c.Depth() > params.MaxLevel() {
			return nil, fmt.Errorf("engine: a Chebyshev approximation of depth %d exceeds the %d levels of %s", c.Depth(), params.MaxLevel(), opts.Preset.Name)
		}
	}

	// Masked refresh: the value bound covers every range the calibration
	// saw (with margin); the mask level follows from it. Bootstrap mode
	// (bootstrap.go) sets its own floor instead.
	switch opts.Refresh {
	case "", RefreshInteractive:
		e.mask = opts.Mask
		if e.mask.Lambda == 0 {
			e.mask = he.DefaultMaskOptions()
			e.mask.ValueBound = valueBound(set, cfg.Context)
		}
		_, throwaway := rlwe.NewKeyGenerator(params).GenKeyPairNew() // planning only: the mask level needs no real key
		mr, err := he.NewMaskedRefresher(params, throwaway, func(context.Context, *he.RefreshRequest) (*he.RefreshResponse, error) {
			return nil, errors.New("planning only")
		}, e.mask)
		if err != nil {
			return nil, fmt.Errorf("engine: %w", err)
		}
		if e.maskLevel, err = mr.MaskLevel(params.DefaultScale()); err != nil {
			return nil, fmt.Errorf("engine: %w", err)
		}
	case RefreshBootstrap:
		if err := e.initBootstrap(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("engine: unknown refresh mode %q (interactive, bootstrap)", opts.Refresh)
	}
	usable := params.MaxLevel() - e.maskLevel
	for name, dep := range map[string]int{"exp": expDepth(set)} {
		if dep > usable {
			return nil, fmt.Errorf("engine: %s approximation of depth %d exceeds the %d levels between refreshes of %s (max level %d, masked refresh at level %d): calibrate a lower degree",
				name, dep, usable, opts.Preset.Name, params.MaxLevel(), e.maskLevel)
		}
	}
	if set.GELU != nil && set.GELU.Depth() > usable && cfg.Activation == model.ActGELU {
		return nil, fmt.Errorf("engine: GELU approximation of depth %d exceeds the %d levels between refreshes of %s", set.GELU.Depth(), usable, opts.Preset.Name)
	}

	if err := e.planAll(); err != nil {
		return nil, err
	}
	if err := e.planPrefill(); err != nil {
		return nil, err
	}
	return e, nil
}

// valueBound is a bound on every slot value a refresh may see: the ranges
// of the approximations (inputs and outputs) and the residual stream, with
// a factor 2 margin, at least 1024.
func valueBound(set *approx.Set, context int) float64 {
	v := 1024.0
	lo, hi := set.Exp.Range()
	v = math.Max(v, 2*math.Max(math.Abs(lo), math.Abs(hi)))
	v = math.Max(v, 2*math.Exp(hi))
	rlo, rhi := set.Recip.Range()
	v = math.Max(v, 2*math.Max(rhi*float64(context), 1/rlo)) // sums of up to context exp-scores
	if set.InvSqrt != nil {
		lo, hi := set.InvSqrt.Range()
		v = math.Max(v, 2*math.Max(hi, 1/math.Sqrt(lo)))
	}
	if set.GELU != nil {
		lo, hi := set.GELU.Range()
		v = math.Max(v, 2*math.Max(math.Abs(lo), math.Abs(hi)))
	}
	return v
}

func nextPow2(n int) int {
	p := 1
	for p < n {
		p *= 2
	}
	return p
}

// shape returns a shape-only product (rotations and costs) for planning.
func (e *Engine) shape(key string, out, in, level int, pre bool) (*he.MatVec, error) {
	if mv, ok := e.shapes[key]; ok {
		return mv, nil
	}
	pl := he.NewPlanner(e.params)
	var mv *he.MatVec
	var err error
	if pre {
		mv, err = pl.PreRotated(nil, out, level)
	} else {
		mv, err = pl.Replicated(nil, out, in, level)
	}
	if err != nil {
		return nil, fmt.Errorf("engine: planning %s: %w", key, err)
	}
	e.shapes[key] = mv
	return mv, nil
}

// dryRun runs model.Forward on levels only.
func (e *Engine) dryRun(inputLevel int, targets []int, collect bool) (*backend, error) {
	b := newBackend(e, true)
	b.inputLevel = inputLevel
	b.targets = targets
	if collect {
		b.collect = map[string]*linBlock{}
	}
	_, err := model.Forward[*val](e.w, b, []int{0}, e.cfg.Context-1)
	return b, err
}

// planAll finds the plan: first the greedy refresh points with every
// refresh to the top level, then, keeping the number of refresh rounds,
// the lowest client input level and the lowest target level of each round
// (so that every product runs at the lowest level that still leaves what
// the rest of its segment needs), then encodes the products.
func (e *Engine) planAll() error {
	L := e.params.MaxLevel()
	b, err := e.dryRun(L, nil, false)
	if err != nil {
		return fmt.Errorf("engine: planning: %w", err)
	}
	R := len(b.rounds)
	targets := append([]int(nil), b.rounds...)
	ok := func(in int, t []int) bool {
		bb, err := e.dryRun(in, t, false)
		return err == nil && len(bb.rounds) == R
	}
	input := L
	for l := 1; l < L; l++ {
		if ok(l, targets) {
			input = l
			break
		}
	}
	for i := range targets {
		for t := e.maskLevel + 1; t < targets[i]; t++ {
			try := append([]int(nil), targets...)
			try[i] = t
			if ok(input, try) {
				targets = try
				break
			}
		}
	}
	b, err = e.dryRun(input, targets, true)
	if err != nil {
		return fmt.Errorf("engine: planning: %w", err)
	}
	p := &Plan{Preset: e.opts.Preset.Name, Mode: e.mode(), MaxLevel: L, MaskLevel: e.maskLevel, InputLevel: input,
		Ops: b.ops, Refreshes: len(b.rounds), RefreshCts: b.roundCts, RefreshTargets: b.rounds,
		CacheLevels: b.cacheLevel, Rotations: len(b.req.Rotations)}
	for _, o := range p.Ops {
		p.KeySwitches += o.KeySwitches
		p.CtCt += o.CtCt
	}
	e.plan, e.req = p, b.req
	if e.boot != nil {
		e.boot.annotate(p)
	}

	// Encode the products (largest first, in parallel).
	blocks := make([]*linBlock, 0, len(b.collect))
	for _, lb := range b.collect {
		blocks = append(blocks, lb)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].key < blocks[j].key })
	pl := he.NewPlanner(e.params)
	pl.Workers = 1
	var mu sync.Mutex
	var firstErr error
	parallelDo(e.opts.Workers, len(blocks), func(i int) {
		lb := blocks[i]
		var mv *he.MatVec
		var err error
		if lb.pre {
			mv, err = pl.PreRotated(lb.rows, lb.out, lb.level)
		} else {
			mv, err = pl.Replicated(lb.rows, lb.out, lb.in, lb.level)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("engine: encoding %s: %w", lb.key, err)
		}
		e.mats[lb.key] = mv
	})
	e.shapes = nil
	return firstErr
}

// Plan returns the level plan of one decode step (at the last position of
// the context: the key-switch counts of attention grow with the cache).
func (e *Engine) Plan() *Plan { return e.plan }

// KeyRequest returns the evaluation keys the plan needs: every rotation
// with the highest level at which it is used, and relinearization.
func (e *Engine) KeyRequest() *he.KeyRequest { return e.req }

// Params returns the CKKS parameters.
func (e *Engine) Params() ckks.Parameters { return e.params }

// Config returns the model configuration.
func (e *Engine) Config() model.Config { return e.cfg }

// parallelDo runs f(0..n-1) on up to workers goroutines.
func parallelDo(workers, n int, f func(i int)) {
	if workers <= 1 || n <= 1 {
		for i := 0; i < n; i++ {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	ch := make(chan int)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	wg.Wait()
}
