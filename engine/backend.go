package engine

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"gonum.org/v1/gonum/mat"
)

// backend implements model.Backend[*val] on CKKS ciphertexts for one token
// (decode step). With dry set it runs the very same code on levels only:
// that dry run is the planner (refresh points, levels, key-switches,
// rotation keys, cache levels), and the encrypted run repeats its decisions
// exactly because they depend on levels alone.
type backend struct {
	e   *Engine
	dry bool

	// Plan inputs: the client's input level and the target level of each
	// refresh round (by index within the step; missing: the top level).
	inputLevel int
	targets    []int

	// Recording.
	ops        []PlanOp
	cur        int
	req        *he.KeyRequest
	rounds     []int // target of each refresh round
	roundCts   int
	cacheLevel []int
	collect    map[string]*linBlock // dry: matrices to encode (by key)

	// Live state.
	s     *Session
	ctx   context.Context
	input *rlwe.Ciphertext
	tok   *TokenStats
	err   error

	// Batched prefill (prefill.go): rows > 1 runs model.Forward on rows
	// tokens packed token-major; inputs are their ciphertexts. skipHead
	// skips ln_f and the LM head (every batch but the prompt's last);
	// headRound is the number of refresh rounds made before the head.
	rows      int
	inputs    []*rlwe.Ciphertext
	skipHead  bool
	headRound int
}

// linBlock is one d×d (or embedding / LM head) product to encode.
type linBlock struct {
	key          string
	rows         he.Rows // y = W·x orientation
	out, in      int
	level        int
	pre          bool
	replicatedIn int  // input period for non-square products
	batched      bool // he.Planner.Batched (token-major prefill), d×d
}

func newBackend(e *Engine, dry bool) *backend {
	b := &backend{e: e, dry: dry, cur: -1, req: he.NewKeyRequest(e.params), inputLevel: e.params.MaxLevel()}
	b.cacheLevel = make([]int, e.cfg.Layers)
	for i := range b.cacheLevel {
		b.cacheLevel[i] = -1
	}
	return b
}

// Err reports the first error (model.Forward checks it).
func (b *backend) Err() error { return b.err }

func (b *backend) fail(err error) {
	if b.err == nil && err != nil {
		b.err = err
	}
}

func (b *backend) failf(format string, args ...any) { b.fail(fmt.Errorf(format, args...)) }

// ---------------------------------------------------------------------------
// Recording.

func (b *backend) begin(op, kind string, levelIn int) {
	b.ops = append(b.ops, PlanOp{Op: op, Kind: kind, LevelIn: levelIn})
	b.cur = len(b.ops) - 1
}

func (b *backend) end(levelOut int) {
	if b.cur >= 0 {
		b.ops[b.cur].LevelOut = levelOut
	}
}

// trace hands an intermediate ciphertext to the session's debug hook (tests).
func (b *backend) trace(what string, x *cval) {
	if b.dry || b.s == nil || b.s.debug == nil || x == nil || x.ct == nil || b.err != nil {
		return
	}
	b.s.debug(what, x.ct)
}

func (b *backend) op() *PlanOp {
	if b.cur < 0 {
		b.begin("?", "?", 0)
	}
	return &b.ops[b.cur]
}

// rots records rotations at a level (keys and key-switch count).
func (b *backend) rots(level int, ks ...int) {
	b.req.AddRotations(level, ks...)
	b.op().KeySwitches += len(ks)
}

// relin records one relinearized ct×ct product at level.
func (b *backend) relin(level int) {
	b.req.AddRelin(level)
	b.op().KeySwitches++
	b.op().CtCt++
}

// mark is the start of a timed operation: wall time and the counters.
type mark struct {
	t    time.Time
	snap he.Snapshot
}

func (b *backend) mark() mark {
	m := mark{t: time.Now()}
	if b.s != nil {
		m.snap = b.s.counters.Snapshot()
	}
	return m
}

// timed records an operation of a kind (time, rotations, ct×ct) in the
// token's statistics.
func (b *backend) timed(kind string, m mark) {
	if b.tok == nil {
		return
	}
	d := b.s.counters.Snapshot().Sub(m.snap)
	b.tok.add(kind, time.Since(m.t))
	k := b.tok.Kinds[kind]
	k.Calls++
	k.Time += time.Since(m.t)
	k.Rotations += d.Get(he.OpRotate)
	k.CtCt += d.Get(he.OpRelin)
	k.PtCt += d.Get(he.OpMulPtCt)
	b.tok.Kinds[kind] = k
}

// ---------------------------------------------------------------------------
// Levels and refresh.

func (b *backend) maxLevel() int { return b.e.params.MaxLevel() }

// ensure returns parts such that each can lose depth levels and stay at or
// above minOut, refreshing (in one round) those that cannot. pre asks for
// the PreRotated layout in the refreshed copies (free with the masked
// refresher's slot maps); the caller must then use the PreRotated product.
// The returned slice is new; the inputs are not modified.
func (b *backend) ensure(parts []*cval, depth, minOut int, pre bool) []*cval {
	out := append([]*cval(nil), parts...)
	if b.err != nil {
		return out
	}
	var idx []int
	for i, p := range parts {
		if p.level-depth < minOut {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return out
	}
	return b.refresh(parts, idx, depth, minOut, pre)
}

// refresh refreshes parts[idx] in one round (see ensure).
func (b *backend) refresh(parts []*cval, idx []int, depth, minOut int, pre bool) []*cval {
	out := append([]*cval(nil), parts...)
	round := len(b.rounds)
	target := b.maxLevel()
	if round < len(b.targets) {
		target = b.targets[round]
	}
	if target-depth < minOut {
		b.failf("engine: %s needs %d levels above %d but a refresh reaches only level %d (preset %s)",
			b.op().Op, depth, minOut, target, b.e.opts.Preset.Name)
		return out
	}
	b.rounds = append(b.rounds, target)
	b.roundCts += len(idx)
	o := b.op()
	o.Refresh += len(idx)
	o.RefreshLevel = target
	o.LevelIn = target
	if b.dry {
		for _, i := range idx {
			if parts[i].level < b.e.maskLevel {
				b.failf("engine: planner error: %s refreshes a ciphertext at level %d below the mask level %d", o.Op, parts[i].level, b.e.maskLevel)
			}
			out[i] = &cval{level: target, pre: pre}
		}
		return out
	}
	defer b.timed("refresh", b.mark())
	cts := make([]*rlwe.Ciphertext, len(idx))
	var maps []*he.SlotMap
	for j, i := range idx {
		cts[j] = parts[i].ct
		if pre {
			maps = append(maps, b.e.preMap)
		}
	}
	// Without a slot map, keep the input scale when all inputs share it:
	// the refresh then takes the exact integer path (no big-float
	// re-encoding on either side).
	ro := he.RefreshOptions{Level: target, Maps: maps}
	if !pre {
		same := true
		for _, ct := range cts[1:] {
			same = same && ct.Scale.Equal(cts[0].Scale)
		}
		if same {
			ro.Scale = cts[0].Scale
		}
	}
	res, err := b.refreshCts(b.ctx, cts, idx, len(parts), ro) // bootstrap.go: masked refresh or bootstraps
	if err != nil {
		b.fail(fmt.Errorf("engine: refresh before %s: %w", o.Op, err))
		return out
	}
	if b.tok != nil {
		b.tok.Refreshes++
		b.tok.RefreshCts += len(idx)
	}
	for j, i := range idx {
		out[i] = &cval{ct: res[j], level: res[j].Level(), pre: pre}
		b.trace(fmt.Sprintf("refresh-in %s #%d", o.Op, j), parts[i])
		b.trace(fmt.Sprintf("refresh-out %s #%d", o.Op, j), out[i])
	}
	return out
}

// ---------------------------------------------------------------------------
// Primitive operations (dry or live).

func (b *backend) mulRelin(x, y *cval) *cval {
	lvl := min(x.level, y.level)
	b.relin(lvl)
	if b.dry || b.err != nil {
		return &cval{level: lvl - 1}
	}
	ct, err := b.s.ev.MulRelin(x.ct, y.ct)
	b.fail(err)
	return &cval{ct: ct, level: lvl - 1}
}

// mulVec multiplies by a plaintext slot vector (one level, scale kept).
func (b *backend) mulVec(x *cval, v []float64) *cval {
	if b.dry || b.err != nil {
		return &cval{level: x.level - 1}
	}
	pt, err := he.EncodeAt(b.s.enc, b.e.params, v, x.ct.Level())
	if err != nil {
		b.fail(err)
		return &cval{level: x.level - 1}
	}
	ct, err := b.s.ev.MulPlainRescale(x.ct, pt)
	b.fail(err)
	return &cval{ct: ct, level: x.level - 1}
}

// addVec adds a plaintext slot vector (free).
func (b *backend) addVec(x *cval, v []float64) *cval {
	if b.dry || b.err != nil {
		return &cval{level: x.level, pre: x.pre}
	}
	ct, err := b.s.ev.Eval.AddNew(x.ct, v)
	b.fail(err)
	return &cval{ct: ct, level: x.level, pre: x.pre}
}

func (b *backend) add(x, y *cval) *cval {
	lvl := min(x.level, y.level)
	if b.dry || b.err != nil {
		return &cval{level: lvl}
	}
	ct, err := b.s.ev.Add(x.ct, y.ct)
	b.fail(err)
	return &cval{ct: ct, level: lvl}
}

// foldRot returns Σ over the subgroup generated by the rotations ks
// (x ← x + rot(x, k) for each k).
func (b *backend) foldRot(x *cval, ks []int) *cval {
	b.rots(x.level, ks...)
	if b.dry || b.err != nil {
		return &cval{level: x.level}
	}
	ct := x.ct
	for _, k := range ks {
		r, err := b.s.ev.Rotate(ct, k)
		if err != nil {
			b.fail(err)
			return x
		}
		if ct, err = b.s.ev.Add(ct, r); err != nil {
			b.fail(err)
			return x
		}
	}
	return &cval{ct: ct, level: x.level}
}

func pow2Rots(from, to int) (r []int) {
	for k := from; k < to; k *= 2 {
		r = append(r, k)
	}
	return
}

// ---------------------------------------------------------------------------
// model.Backend[*val].

func (b *backend) errVal(n int) *val {
	parts := make([]*cval, max(1, n))
	for i := range parts {
		parts[i] = &cval{}
	}
	return &val{parts: parts}
}

// Embed: the client's token ciphertext (one-hot, or wte[token] with
// client-side embedding) times the embedding matrix, plus the positional
// embedding as a plaintext.
func (b *backend) Embed(tokens []int, pos0 int, wte, wpe *mat.Dense) *val {
	if b.rows > 1 && len(tokens) == b.rows {
		return b.embedTM(pos0, wte, wpe)
	}
	if len(tokens) != 1 {
		b.failf("engine: the encrypted backend runs one token per step (got %d)", len(tokens))
		return b.errVal(1)
	}
	defer b.timed("embed", b.mark())
	d := b.e.cfg.Dim
	in := &cval{level: b.inputLevel}
	if !b.dry {
		in.ct = b.input
	}
	pos := b.e.replicate(mat.Row(nil, pos0, wpe))
	if b.e.opts.ClientSideEmbedding {
		b.begin("embed (client-side)", "embed", in.level)
		x := b.addVec(in, pos)
		b.end(x.level)
		return plain(x)
	}
	b.begin("wte (one-hot × embedding)", "embed", in.level)
	parts := b.ensure([]*cval{in}, 1, b.e.maskLevel, false)
	// y = onehot·wte: a d×V product (W·x orientation: wteᵀ).
	x := b.matvec("wte", 0, 0, parts[0], func() he.Rows { return he.TransposeRows(he.RowsFromDense(wte)) }, d, b.e.cfg.Vocab)
	x = b.addVec(x, pos)
	b.end(x.level)
	b.op().Layout = "replicated"
	return plain(x)
}

// matvecMany evaluates the d×d blocks (o, c) for o < nOut on the same
// input chunk c in one call: the baby-step rotations are hoisted once and
// all giant steps of all blocks run in parallel.
func (b *backend) matvecMany(name string, c int, x *cval, nOut int, rows func(o int) he.Rows) []*cval {
	d := b.e.cfg.Dim
	out := make([]*cval, nOut)
	if b.dry || b.err != nil {
		for o := range out {
			out[o] = b.matvec(name, o, c, x, func() he.Rows { return rows(o) }, d, d)
		}
		return out
	}
	mvs := make([]*he.MatVec, nOut)
	for o := range mvs {
		key := matKey(name, o, c, x.level, x.pre)
		mv, ok := b.e.mats[key]
		if !ok {
			b.failf("engine: no product planned for %s: the run left the plan", key)
			return b.errVal(nOut).parts
		}
		mvs[o] = mv
		b.op().KeySwitches += mv.Cost().KeySwitches()
	}
	return b.evaluateMany(name, x, mvs)
}

// evaluateMany runs the products mvs on x in one call (live runs).
func (b *backend) evaluateMany(name string, x *cval, mvs []*he.MatVec) []*cval {
	res, err := b.s.ev.EvaluateMany([]*rlwe.Ciphertext{x.ct}, mvs...)
	if err != nil {
		b.fail(fmt.Errorf("engine: %s: %w", name, err))
		return b.errVal(len(mvs)).parts
	}
	out := make([]*cval, len(mvs))
	for o := range out {
		out[o] = &cval{ct: res[o][0], level: res[o][0].Level()}
	}
	return out
}

// matvec evaluates (or plans) one product on one input ciphertext.
func (b *backend) matvec(name string, o, c int, x *cval, rows func() he.Rows, out, in int) *cval {
	key := matKey(name, o, c, x.level, x.pre)
	if b.dry {
		mv, err := b.e.shape(key, out, in, x.level, x.pre)
		if err != nil {
			b.fail(err)
			return &cval{level: x.level - 1}
		}
		b.op().KeySwitches += mv.Cost().KeySwitches()
		b.req.Add(b.maxLevel(), mv)
		if b.collect != nil {
			if _, ok := b.collect[key]; !ok {
				b.collect[key] = &linBlock{key: key, rows: rows(), out: out, in: in, level: x.level, pre: x.pre}
			}
		}
		return &cval{level: x.level - 1}
	}
	if b.err != nil {
		return &cval{level: x.level - 1}
	}
	mv, ok := b.e.mats[key]
	if !ok {
		b.failf("engine: no product planned for %s (level %d, pre-rotated %v): the run left the plan", key, x.level, x.pre)
		return &cval{level: x.level - 1}
	}
	b.op().KeySwitches += mv.Cost().KeySwitches()
	ct, err := b.s.ev.EvaluateOne(mv, x.ct)
	if err != nil {
		b.fail(fmt.Errorf("engine: %s: %w", name, err))
		return &cval{level: x.level - 1}
	}
	return &cval{ct: ct, level: ct.Level()}
}

func matKey(name string, o, c, level int, pre bool) string {
	return fmt.Sprintf("%s[%d,%d]@%d/%v", name, o, c, level, pre)
}

// Linear: x·W + bias for a Conv1D weight [in, out], both multiples of d,
// as (out/d)×(in/d) products of d×d blocks; the pending affine map of x is
// folded into W and the bias.
func (b *backend) Linear(name string, x *val, w *mat.Dense, bias []float64) *val {
	in, out := w.Dims()
	d := b.e.cfg.Dim
	nIn, nOut := in/d, out/d
	if b.err != nil {
		return b.errVal(nOut)
	}
	if in%d != 0 || out%d != 0 || len(x.parts) != nIn {
		b.failf("engine: %s: shape [%d, %d] with %d input chunks of %d", name, in, out, len(x.parts), d)
		return b.errVal(nOut)
	}
	defer b.timed("linear", b.mark())
	w, bias = foldAffine(x, w, bias)
	b.begin(name, "linear", x.level())
	if x.tm {
		parts := b.linearInputsTM(name, x)
		outs := b.linearBlocks(name, parts, w, bias, nOut, b.matvecManyTM, func(v []float64) []float64 { return b.e.tmVec(v, x.rows) })
		return &val{parts: outs, tm: true, rows: x.rows}
	}
	minOut := b.e.maskLevel
	if strings.HasSuffix(name, "attn.c_attn") {
		minOut = b.e.maskLevel + 3 // k, v are appended (1 level) to a cache that feeds two more products
	}
	parts := b.ensure(x.parts, 1, minOut, b.e.preOK)
	if b.e.opts.PreRotateLinear && b.e.preOK && !parts[0].pre && b.err == nil {
		// Refresh into the pre-rotated layout even though levels remain:
		// the replication-aware product needs d²/Slots diagonals instead
		// of d (less time, far less plaintext memory), for one round trip.
		idx := make([]int, len(parts))
		for i := range idx {
			idx[i] = i
		}
		parts = b.refresh(parts, idx, 1, minOut, true)
	}
	if parts[0].pre {
		b.op().Layout = "pre-rotated"
	} else {
		b.op().Layout = "replicated"
	}
	b.op().LevelIn = parts[0].level
	return &val{parts: b.linearBlocks(name, parts, w, bias, nOut, b.matvecMany, b.e.replicate)}
}

// linearBlocks sums W's d×d block products over the input chunks parts
// (many evaluates or plans the blocks (o, c), o < nOut, on chunk c), adds
// the bias laid out by vec and ends the operation.
func (b *backend) linearBlocks(name string, parts []*cval, w *mat.Dense, bias []float64, nOut int,
	many func(name string, c int, x *cval, nOut int, rows func(o int) he.Rows) []*cval, vec func([]float64) []float64) []*cval {
	d := b.e.cfg.Dim
	outs := make([]*cval, nOut)
	for c := range parts {
		ys := many(name, c, parts[c], nOut, func(o int) he.Rows {
			r := make(he.Rows, d)
			for i := range r {
				r[i] = make([]float64, d)
				for j := range r[i] {
					r[i][j] = w.At(c*d+j, o*d+i)
				}
			}
			return r
		})
		for o, y := range ys {
			if outs[o] == nil {
				outs[o] = y
			} else {
				outs[o] = b.add(outs[o], y)
			}
		}
	}
	if bias != nil {
		for o := range outs {
			outs[o] = b.addVec(outs[o], vec(bias[o*d:(o+1)*d]))
		}
	}
	b.end(outs[0].level)
	for i, o := range outs {
		b.trace(fmt.Sprintf("%s[%d]", name, i), o)
	}
	return outs
}

// foldAffine folds x's pending map y = mul·(x⊙g) + c into (W, bias):
// y·W + bias = x·(mul·diag(g)·W) + (c·W + bias).
func foldAffine(x *val, w *mat.Dense, bias []float64) (*mat.Dense, []float64) {
	if !x.pending() {
		return w, bias
	}
	in, out := w.Dims()
	f := mat.NewDense(in, out, nil)
	f.Copy(w)
	mul := x.mul
	if mul == 0 {
		mul = 1
	}
	for i := 0; i < in; i++ {
		s := mul
		if x.gain != nil {
			s *= x.gain[i]
		}
		if s != 1 {
			row := f.RawRowView(i)
			for j := range row {
				row[j] *= s
			}
		}
	}
	nb := make([]float64, out)
	copy(nb, bias)
	if x.bias != nil {
		for j := 0; j < out; j++ {
			for i := 0; i < in; i++ {
				nb[j] += x.bias[i] * w.At(i, j)
			}
		}
	}
	return f, nb
}

// materialize applies a pending affine map (one level when there is a
// gain or scalar, free for a bias alone).
func (b *backend) materialize(x *val, what string) *val {
	if !x.pending() {
		return x
	}
	d := b.e.cfg.Dim
	b.begin(what+" (pending scale)", "affine", x.level())
	parts := x.parts
	needMul := x.gain != nil || (x.mul != 0 && x.mul != 1)
	if needMul {
		parts = b.ensure(parts, 1, b.e.maskLevel, false)
	}
	out := make([]*cval, len(parts))
	for i, p := range parts {
		y := p
		if needMul {
			v := make([]float64, d)
			for j := range v {
				v[j] = 1
				if x.gain != nil {
					v[j] = x.gain[i*d+j]
				}
				if x.mul != 0 {
					v[j] *= x.mul
				}
			}
			y = b.mulVec(y, b.e.replicate(v))
		}
		if x.bias != nil {
			y = b.addVec(y, b.vecLike(x, x.bias[i*d:(i+1)*d]))
		}
		out[i] = y
	}
	b.end(out[0].level)
	return &val{parts: out, tm: x.tm, rows: x.rows}
}

func (b *backend) Add(x, y *val) *val {
	if b.err != nil {
		return b.errVal(len(x.parts))
	}
	x, y = b.materialize(x, "add"), b.materialize(y, "add")
	if len(x.parts) != len(y.parts) {
		b.failf("engine: add of %d and %d chunks", len(x.parts), len(y.parts))
		return x
	}
	out := make([]*cval, len(x.parts))
	for i := range out {
		out[i] = b.add(x.parts[i], y.parts[i])
	}
	return &val{parts: out, tm: x.tm, rows: x.rows}
}

func (b *backend) Scale(x *val, s float64) *val {
	m := x.mul
	if m == 0 {
		m = 1
	}
	y := *x
	y.mul = m * s
	if x.bias != nil {
		y.bias = make([]float64, len(x.bias))
		for i, v := range x.bias {
			y.bias[i] = v * s
		}
		y.mul = m * s
	}
	return &y
}

// Activate applies GELU (the approximation set's polynomial) chunk by chunk.
func (b *backend) Activate(x *val, act string) *val {
	if b.err != nil || act == model.ActNone {
		return x
	}
	if act != model.ActGELU || b.e.set.GELU == nil {
		b.failf("engine: activation %q has no CKKS approximation", act)
		return x
	}
	defer b.timed("gelu", b.mark())
	x = b.materialize(x, "gelu")
	g := *b.e.set.GELU
	b.begin("gelu", "gelu", x.level())
	parts := b.ensure(x.parts, g.Depth(), b.e.maskLevel, false)
	b.op().LevelIn = parts[0].level
	out := b.polyAll(parts, g.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalGELU(ct, g)
	})
	b.end(out[0].level)
	for i, o := range out {
		b.trace(fmt.Sprintf("gelu[%d]", i), o)
	}
	return &val{parts: out, tm: x.tm, rows: x.rows}
}

// polyAll evaluates a polynomial on every part (in parallel, one
// PolyEvaluator per goroutine) and counts its ct×ct products.
func (b *backend) polyAll(parts []*cval, depth int, f func(*he.PolyEvaluator, *rlwe.Ciphertext) (*rlwe.Ciphertext, error)) []*cval {
	return b.polyEach(parts, depth, func(_ int, pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return f(pe, ct)
	})
}

// LayerNorm: μ by a rotation sum, c = x − μ (one level), σ² + eps from
// Σ c² (two levels), 1/√· by the approximation set's inverse square root,
// y = c·r (one level); g and b stay pending for the next product.
// Token-major values (batched prefill) are centred row by row
// (centerTM); ln_f is skipped in batches that do not end the prompt.
func (b *backend) LayerNorm(name string, x *val, g, bb []float64, eps float64) *val {
	if b.err != nil {
		return x
	}
	if x.tm && name == "ln_f" && b.skipsHead() {
		return x
	}
	defer b.timed("layernorm", b.mark())
	x = b.materialize(x, name)
	d := b.e.cfg.Dim
	if len(x.parts) != 1 {
		b.failf("engine: %s: LayerNorm over %d chunks", name, len(x.parts))
		return x
	}
	if x.tm && b.e.set.InvSqrt == nil {
		b.failf("engine: %s: the approximation set has no inverse square root", name)
		return x
	}
	b.begin(name+".center", "norm", x.level())
	p := b.ensure(x.parts, 3, b.e.maskLevel, false)[0]
	b.op().LevelIn = p.level
	var c, t *cval
	if x.tm {
		b.op().Layout = "token-major"
		c, t = b.centerTM(p, eps, x.rows)
	} else {
		rs := pow2Rots(1, d)
		s := b.foldRot(p, rs)
		negMean := b.mulVec(s, b.e.constVec(-1/float64(d)))
		c = b.add(p, negMean)
		c2 := b.mulRelin(c, c)
		v := b.foldRot(c2, rs)
		t = b.mulVec(v, b.e.constVec(1/float64(d)))
		t = b.addVec(t, b.e.constVec(eps))
	}
	b.end(t.level)
	b.trace(name+".c", c)
	b.trace(name+".var+eps", t)
	r := b.invSqrt(name, t)
	b.trace(name+".invsqrt", r)
	b.begin(name+".scale", "norm", min(c.level, r.level))
	cr := b.ensure([]*cval{c, r}, 1, b.e.maskLevel, false)
	y := b.mulRelin(cr[0], cr[1])
	b.end(y.level)
	b.trace(name+".y", y)
	out := &val{parts: []*cval{y}, gain: append([]float64(nil), g...), bias: append([]float64(nil), bb...)}
	if x.tm {
		out.tm, out.rows = true, x.rows
	}
	return out
}

// Logits: x·wteᵀ (the tied LM head) with x's pending map folded in. A
// token-major value (batched prefill) gives its last row's logits (the row
// extracted into the replicated layout), in the batch that ends the
// prompt only.
func (b *backend) Logits(x *val, wte *mat.Dense) *val {
	if b.err != nil {
		return b.errVal(1)
	}
	if x.tm && b.skipsHead() {
		return plain(&cval{})
	}
	defer b.timed("logits", b.mark())
	vocab, d := wte.Dims()
	wt := mat.NewDense(d, vocab, nil)
	wt.Copy(wte.T())
	w, bias := foldAffine(x, wt, nil)
	op, depth := "lm_head", 1
	if x.tm {
		op, depth = "lm_head (last row)", 2
	}
	b.begin(op, "logits", x.level())
	p := b.ensure(x.parts, depth, 0, false)[0]
	b.op().LevelIn = p.level
	b.op().Layout = "replicated"
	if x.tm {
		p = b.extractRow(p, x.rows-1)
	}
	y := b.matvec("lm_head", 0, 0, p, func() he.Rows { return he.TransposeRows(he.RowsFromDense(w)) }, vocab, d)
	if bias != nil {
		y = b.addVec(y, b.e.replicatePeriod(bias, b.e.logitPeriod))
	}
	b.end(y.level)
	return plain(y)
}

// constVec is a constant slot vector.
func (e *Engine) constVec(c float64) []float64 {
	v := make([]float64, e.params.MaxSlots())
	for i := range v {
		v[i] = c
	}
	return v
}

// replicate lays out a d-vector replicated with period d.
func (e *Engine) replicate(x []float64) []float64 { return e.replicatePeriod(x, len(x)) }

func (e *Engine) replicatePeriod(x []float64, period int) []float64 {
	p := 1
	for p < period {
		p *= 2
	}
	v := make([]float64, e.params.MaxSlots())
	for s := range v {
		if i := s % p; i < len(x) {
			v[s] = x[i]
		}
	}
	return v
}

// ---------------------------------------------------------------------------
// Newton iterations split across refreshes.

// recip evaluates the reciprocal approximation: in one go (he's exact
// scale walk) when its depth fits between refreshes, else the Chebyshev
// initial guess and then the Newton steps y ← y·(2 − x·y), refreshing
// x and y between steps as needed.
func (b *backend) recip(name string, x *cval, r approx.Reciprocal) *cval {
	m := b.e.maskLevel
	if b.e.params.MaxLevel()-r.Depth() >= m {
		b.begin(name, "recip", x.level)
		p := b.ensure([]*cval{x}, r.Depth(), m, false)[0]
		b.op().LevelIn = p.level
		out := b.polyAll([]*cval{p}, r.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
			return pe.EvalReciprocal(ct, r)
		})[0]
		b.end(out.level)
		return out
	}
	b.begin(name+".init", "recip", x.level)
	p := b.ensure([]*cval{x}, r.Init.Depth(), m, false)[0]
	b.op().LevelIn = p.level
	y := b.polyAll([]*cval{p}, r.Init.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalChebyshev(ct, r.Init, rlwe.Scale{})
	})[0]
	b.end(y.level)
	b.trace(name+".init", y)
	for i := 0; i < r.Iters; i++ {
		b.begin(fmt.Sprintf("%s.newton%d", name, i), "recip", min(p.level, y.level))
		xy := b.ensure([]*cval{p, y}, 2, m, false)
		p, y = xy[0], xy[1]
		t := b.mulRelin(p, y)
		t = b.negAddConst(t, 2)
		y = b.mulRelin(y, t)
		b.end(y.level)
		b.trace(fmt.Sprintf("%s.newton%d", name, i), y)
	}
	return y
}

// negAddConst returns c − x (free).
func (b *backend) negAddConst(x *cval, c float64) *cval {
	if b.dry || b.err != nil {
		return &cval{level: x.level}
	}
	ct, err := b.s.ev.Eval.MulNew(x.ct, -1)
	if err == nil {
		err = b.s.ev.Eval.Add(ct, c, ct)
	}
	b.fail(err)
	return &cval{ct: ct, level: x.level}
}

// invSqrt is recip's counterpart for 1/√x: Newton y ← 1.5·y − (h·y)·y²
// with h = x/2.
func (b *backend) invSqrt(name string, x *cval) *cval {
	if b.e.set.InvSqrt == nil {
		b.failf("engine: %s: the approximation set has no inverse square root", name)
		return x
	}
	s := *b.e.set.InvSqrt
	m := b.e.maskLevel
	if b.e.params.MaxLevel()-s.Depth() >= m {
		b.begin(name+".invsqrt", "invsqrt", x.level)
		p := b.ensure([]*cval{x}, s.Depth(), m, false)[0]
		b.op().LevelIn = p.level
		out := b.polyAll([]*cval{p}, s.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
			return pe.EvalInvSqrt(ct, s)
		})[0]
		b.end(out.level)
		return out
	}
	b.begin(name+".invsqrt.init", "invsqrt", x.level)
	p := b.ensure([]*cval{x}, max(s.Init.Depth(), 1), m, false)[0]
	b.op().LevelIn = p.level
	y := b.polyAll([]*cval{p}, s.Init.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalChebyshev(ct, s.Init, rlwe.Scale{})
	})[0]
	b.end(y.level)
	for i := 0; i < s.Iters; i++ {
		op := fmt.Sprintf("%s.invsqrt.newton%d", name, i)
		b.begin(op, "invsqrt", min(p.level-1, y.level))
		// p pays x/2 and the two products (three levels), y the products.
		var idx []int
		if p.level-3 < m {
			idx = append(idx, 0)
		}
		if y.level-2 < m {
			idx = append(idx, 1)
		}
		if len(idx) > 0 {
			py := b.refresh([]*cval{p, y}, idx, 3, m, false)
			p, y = py[0], py[1]
		}
		y = b.invSqrtStep(op, p, y)
		b.end(y.level)
		b.trace(op, y)
	}
	return y
}

// invSqrtStep is one Newton step y ← 1.5·y − (h·y)·y², h = x/2, on the
// (refreshed) input p, landing exactly on the default scale: the scales of
// the two plaintext products (x/2 and 1.5·y) are chosen so that (h·y)·y²
// and 1.5·y both come out at the default scale. Without that, the step's
// output scale is S_h·S_y³/q³: any drift of the input scale (a refresh
// keeps it) triples every step, and the subtraction of two ciphertexts at
// scales less than 2× apart silently relabels one of them (Lattigo
// multiplies by the integer ratio, 1), an error of the drift itself.
func (b *backend) invSqrtStep(op string, p, y *cval) *cval {
	h := &cval{level: p.level - 1}
	la := min(h.level, y.level)
	if b.dry || b.err != nil {
		return &cval{level: min(la-2, y.level-1)}
	}
	q := func(l int) rlwe.Scale { return rlwe.NewScale(b.e.params.Q()[l]) }
	T := b.e.params.DefaultScale()
	lp, ly := p.ct.Level(), y.ct.Level()
	la = min(lp-1, ly)
	// S_c = S_p·σ/q_lp · S_y/q_la · S_y²/q_ly / q_(la−1) = T.
	sigma := T.Mul(q(lp)).Mul(q(la)).Mul(q(ly)).Mul(q(la - 1)).Div(p.ct.Scale).Div(y.ct.Scale).Div(y.ct.Scale).Div(y.ct.Scale)
	h = b.mulVecScaled(p, b.e.constVec(0.5), sigma)
	a := b.mulRelin(h, y)
	sq := b.mulRelin(y, y)
	c := b.mulRelin(a, sq)
	d := b.mulVecScaled(y, b.e.constVec(1.5), T.Mul(q(ly)).Div(y.ct.Scale))
	if b.err != nil {
		return &cval{level: min(c.level, d.level)}
	}
	for _, v := range []*cval{c, d} {
		if r := v.ct.Scale.Float64() / T.Float64(); math.Abs(r-1) > 0x1p-40 {
			b.failf("engine: %s: scale 2^%.6f is not the default scale 2^%.6f (internal scale walk error)",
				op, math.Log2(v.ct.Scale.Float64()), math.Log2(T.Float64()))
			return &cval{level: min(c.level, d.level)}
		}
		v.ct.Scale = T
	}
	return b.sub(d, c)
}

// mulVecScaled multiplies x by the slot vector v encoded at scale ptScale
// and rescales (one level): the result's scale is S_x·ptScale/q_level.
func (b *backend) mulVecScaled(x *cval, v []float64, ptScale rlwe.Scale) *cval {
	if b.dry || b.err != nil {
		return &cval{level: x.level - 1}
	}
	pt := ckks.NewPlaintext(b.e.params, x.ct.Level())
	pt.Scale = ptScale
	if err := b.s.enc.Encode(v, pt); err != nil {
		b.fail(fmt.Errorf("engine: encode: %w", err))
		return &cval{level: x.level - 1}
	}
	ct, err := b.s.ev.MulPlainRescale(x.ct, pt)
	b.fail(err)
	return &cval{ct: ct, level: x.level - 1}
}

func (b *backend) sub(x, y *cval) *cval {
	lvl := min(x.level, y.level)
	if b.dry || b.err != nil {
		return &cval{level: lvl}
	}
	ct, err := b.s.ev.Eval.SubNew(x.ct, y.ct)
	b.fail(err)
	return &cval{ct: ct, level: lvl}
}

// mid is the midpoint of a range (a value every polynomial handles).
func mid(lo, hi float64) float64 { return (lo + hi) / 2 }

var _ = math.Abs
