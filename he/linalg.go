package he

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"gonum.org/v1/gonum/mat"
)

// Evaluator is the server-side evaluator of a session: Lattigo's CKKS
// evaluator over the session's (received, validated, expanded) evaluation
// keys, with operation counters and a worker count for parallel work.
//
// Concurrency: Lattigo v6.2's ckks.Evaluator draws all scratch space from
// sync.Pool-backed buffer pools and its key lookups are read-only once the
// evaluator is built with all keys present, so one Evaluator may be used by
// several goroutines at once (the tests run the parallel paths under -race).
// The Encoder is not used during evaluation.
type Evaluator struct {
	Params   ckks.Parameters
	Eval     *ckks.Evaluator
	Counters *Counters
	// Workers bounds the goroutines used inside one operation
	// (default runtime.NumCPU(); 1 = sequential).
	Workers int

	keyLevel   map[uint64]int // Galois element → key LevelQ
	relinLevel int            // -1: no relinearization key
}

// NewEvaluator builds the server evaluator from a received key set (nil: no
// keys). Keys are validated against params and seeded keys are expanded in
// place. counters may be nil.
func NewEvaluator(params ckks.Parameters, keys *EvaluationKeys, counters *Counters) (*Evaluator, error) {
	e := &Evaluator{Params: params, Counters: counters, Workers: runtime.NumCPU(), keyLevel: map[uint64]int{}, relinLevel: -1}
	var set rlwe.EvaluationKeySet
	if keys != nil {
		if err := keys.Validate(params); err != nil {
			return nil, err
		}
		if err := keys.Expand(params); err != nil {
			return nil, err
		}
		e.keyLevel, e.relinLevel = keys.KeyLevels()
		set = keys.Set
	}
	e.Eval = ckks.NewEvaluator(params, set)
	return e, nil
}

// Slots is the number of slots.
func (e *Evaluator) Slots() int { return e.Params.MaxSlots() }

// HasRotation reports whether rotation k is available at ciphertext level.
func (e *Evaluator) HasRotation(k, level int) bool { return e.checkRotation(k, level) == nil }

// checkRotation returns a clear error when the key for rotation k is missing
// or was generated below the ciphertext's level.
func (e *Evaluator) checkRotation(k, level int) error {
	k = mod(k, e.Slots())
	if k == 0 {
		return nil
	}
	g := e.Params.GaloisElement(k)
	l, ok := e.keyLevel[g]
	if !ok {
		return fmt.Errorf("missing rotation key for rotation %d (Galois element %d): add the operation that needs it to the KeyRequest and regenerate the evaluation keys", k, g)
	}
	if l < level {
		return fmt.Errorf("rotation key for rotation %d was generated up to level %d but the ciphertext is at level %d: drop the ciphertext to level %d first or generate the key at a higher level", k, l, level, l)
	}
	return nil
}

// DropTo returns ct at the given level: ct itself if already there, else a
// copy with the top primes dropped. It fails if ct is below level.
func (e *Evaluator) DropTo(ct *rlwe.Ciphertext, level int) (*rlwe.Ciphertext, error) {
	switch {
	case ct.Level() == level:
		return ct, nil
	case ct.Level() < level:
		return nil, fmt.Errorf("ciphertext at level %d is below the required level %d: refresh it or plan the operation at a lower level", ct.Level(), level)
	}
	return e.Eval.DropLevelNew(ct, ct.Level()-level), nil
}

// Rotate returns rot(ct, k): slot s of the result holds slot (s+k) mod Slots.
func (e *Evaluator) Rotate(ct *rlwe.Ciphertext, k int) (*rlwe.Ciphertext, error) {
	k = mod(k, e.Slots())
	if k == 0 {
		return ct.CopyNew(), nil
	}
	if err := e.checkRotation(k, ct.Level()); err != nil {
		return nil, err
	}
	t0 := time.Now()
	out, err := e.Eval.RotateNew(ct, k)
	if err != nil {
		return nil, fmt.Errorf("rotate %d: %w", k, err)
	}
	e.Counters.since(OpRotate, t0)
	return out, nil
}

// RotateHoisted returns rot(ct, k) for every k in ks, sharing one
// decomposition of ct (k = 0 gives ct itself).
func (e *Evaluator) RotateHoisted(ct *rlwe.Ciphertext, ks []int) (map[int]*rlwe.Ciphertext, error) {
	out := map[int]*rlwe.Ciphertext{}
	var nz []int
	for _, k := range ks {
		if mod(k, e.Slots()) == 0 {
			out[k] = ct
			continue
		}
		if err := e.checkRotation(k, ct.Level()); err != nil {
			return nil, err
		}
		nz = append(nz, k)
	}
	if len(nz) == 0 {
		return out, nil
	}
	if len(nz) == 1 {
		r, err := e.Rotate(ct, nz[0])
		out[nz[0]] = r
		return out, err
	}
	t0 := time.Now()
	r, err := e.Eval.RotateHoistedNew(ct, nz)
	if err != nil {
		return nil, fmt.Errorf("hoisted rotations %v: %w", nz, err)
	}
	d := time.Since(t0)
	e.Counters.Add(OpHoistDec, 1, 0)
	e.Counters.Add(OpRotate, len(nz), d)
	maps.Copy(out, r)
	return out, nil
}

// Rescale divides by the last prime (one level).
func (e *Evaluator) Rescale(ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	t0 := time.Now()
	out := ckks.NewCiphertext(e.Params, ct.Degree(), ct.Level()-1)
	if err := e.Eval.Rescale(ct, out); err != nil {
		return nil, fmt.Errorf("rescale: %w", err)
	}
	e.Counters.since(OpRescale, t0)
	return out, nil
}

// MulRelin returns a·b relinearized and rescaled (one level, one key-switch).
// Inputs at different levels are aligned to the lower one.
func (e *Evaluator) MulRelin(a, b *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	lvl := min(a.Level(), b.Level())
	if e.relinLevel < 0 {
		return nil, fmt.Errorf("missing relinearization key: call KeyRequest.AddRelin and regenerate the evaluation keys")
	}
	if e.relinLevel < lvl {
		return nil, fmt.Errorf("relinearization key generated up to level %d but operands are at level %d", e.relinLevel, lvl)
	}
	var err error
	if a, err = e.DropTo(a, lvl); err != nil {
		return nil, err
	}
	if b, err = e.DropTo(b, lvl); err != nil {
		return nil, err
	}
	t0 := time.Now()
	out, err := e.Eval.MulRelinNew(a, b)
	if err != nil {
		return nil, fmt.Errorf("ct×ct product: %w", err)
	}
	e.Counters.since(OpMulCtCt, t0)
	e.Counters.Add(OpRelin, 1, 0)
	return e.Rescale(out)
}

// MulPlainRescale returns ct ⊙ pt rescaled (one level).
func (e *Evaluator) MulPlainRescale(ct *rlwe.Ciphertext, pt *rlwe.Plaintext) (*rlwe.Ciphertext, error) {
	t0 := time.Now()
	out, err := e.Eval.MulNew(ct, pt)
	if err != nil {
		return nil, fmt.Errorf("pt×ct product: %w", err)
	}
	e.Counters.since(OpMulPtCt, t0)
	return e.Rescale(out)
}

// Add returns a + b (aligned to the lower level).
func (e *Evaluator) Add(a, b *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	out, err := e.Eval.AddNew(a, b)
	if err != nil {
		return nil, fmt.Errorf("add: %w", err)
	}
	e.Counters.Add(OpAdd, 1, 0)
	return out, nil
}

// EncodeAt encodes a slot vector at level with scale Q_level (so that a
// product with it followed by a rescale keeps the ciphertext's scale).
func EncodeAt(enc *ckks.Encoder, params ckks.Parameters, v []float64, level int) (*rlwe.Plaintext, error) {
	pt := ckks.NewPlaintext(params, level)
	pt.Scale = rlwe.NewScale(params.Q()[level])
	if err := enc.Encode(v, pt); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return pt, nil
}

// parallel runs f(0..n-1) on up to workers goroutines and returns the first error.
func parallel(workers, n int, f func(i int) error) error {
	if workers < 1 {
		workers = 1
	}
	if workers == 1 || n <= 1 {
		for i := 0; i < n; i++ {
			if err := f(i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		next int
		ferr error
	)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= n || ferr != nil {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				if err := f(i); err != nil {
					mu.Lock()
					if ferr == nil {
						ferr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return ferr
}

// ---------------------------------------------------------------------------
// Diagonal engine: y = Σ_k D_k ⊙ rot(x, k) over a set of slot diagonals k,
// evaluated baby-step/giant-step: k = G + b with baby b ∈ [0, n1) and giant
// G = kmin + g·n1, y = Σ_g rot( Σ_b rot(D_{G+b}, −G) ⊙ rot(x, b), G ).
// Baby rotations of x are hoisted (one decomposition); each giant group is
// rescaled before its rotation, so giants run one level lower.

type giantGroup struct {
	shift  int   // G (0: no rotation)
	babies []int // b for each term
	diags  []int // k for each term
	pts    []*rlwe.Plaintext
}

type diagPlan struct {
	slots  int
	level  int
	n1     int
	babies []int // distinct babies used (sorted)
	groups []giantGroup
}

// hoistedCost is the cost of one hoisted rotation relative to a plain one
// (measured ≈ 0.45–0.5 at N=2^14 and 2^15, design.md §3).
const hoistedCost = 0.5

// chooseN1 picks the baby-step size minimizing the key-switch cost
// hoistedCost·(#babies≠0) + (#giants≠0); ties go to fewer distinct keys.
func chooseN1(ks []int, slots int) int {
	kmin, kmax := ks[0], ks[len(ks)-1]
	span := kmax - kmin + 1
	best, bestCost, bestKeys := 1, 1e18, 1<<30
	limit := span
	for l := 1; l*l <= span; l++ {
		limit = 4*l + 2
	}
	for n1 := 1; n1 <= min(span, limit); n1++ {
		bs, gs := map[int]bool{}, map[int]bool{}
		for _, k := range ks {
			b := (k - kmin) % n1
			g := k - b
			if b != 0 {
				bs[b] = true
			}
			if mod(g, slots) != 0 {
				gs[g] = true
			}
		}
		cost := hoistedCost*float64(len(bs)) + float64(len(gs))
		if keys := len(bs) + len(gs); cost < bestCost-1e-9 || (cost < bestCost+1e-9 && keys < bestKeys) {
			best, bestCost, bestKeys = n1, cost, keys
		}
	}
	return best
}

// newDiagPlan groups the diagonal indices ks (any integers, distinct mod
// slots) for BSGS. If diag != nil it encodes the pre-rotated plaintexts at
// level; otherwise the plan is shape-only (rotations, costs).
func newDiagPlan(params ckks.Parameters, ks []int, level int, diag func(k int) []float64, workers int) (*diagPlan, error) {
	slots := params.MaxSlots()
	ks = slices.Clone(ks)
	slices.Sort(ks)
	ks = slices.Compact(ks)
	if len(ks) == 0 {
		return nil, fmt.Errorf("diagonal plan: no diagonals")
	}
	n1 := chooseN1(ks, slots)
	p := &diagPlan{slots: slots, level: level, n1: n1}
	kmin := ks[0]
	byG := map[int]int{}
	bset := map[int]bool{}
	for _, k := range ks {
		b := (k - kmin) % n1
		g := k - b
		i, ok := byG[g]
		if !ok {
			i = len(p.groups)
			byG[g] = i
			p.groups = append(p.groups, giantGroup{shift: g})
		}
		p.groups[i].babies = append(p.groups[i].babies, b)
		p.groups[i].diags = append(p.groups[i].diags, k)
		bset[b] = true
	}
	p.babies = slices.Sorted(maps.Keys(bset))
	if diag == nil {
		return p, nil
	}
	type term struct{ g, t int }
	var terms []term
	for gi := range p.groups {
		p.groups[gi].pts = make([]*rlwe.Plaintext, len(p.groups[gi].diags))
		for t := range p.groups[gi].diags {
			terms = append(terms, term{gi, t})
		}
	}
	encs := make(chan *ckks.Encoder, max(1, workers))
	for i := 0; i < max(1, workers); i++ {
		encs <- ckks.NewEncoder(params)
	}
	err := parallel(workers, len(terms), func(i int) error {
		enc := <-encs
		defer func() { encs <- enc }()
		gr := &p.groups[terms[i].g]
		k, G := gr.diags[terms[i].t], gr.shift
		d := diag(k)
		// pre-rotate by −G: D'(s) = D_k(s − G)
		v := make([]float64, slots)
		for s := range v {
			v[s] = d[mod(s-G, slots)]
		}
		pt, err := EncodeAt(enc, params, v, level)
		if err != nil {
			return err
		}
		params.RingQ().AtLevel(level).MForm(pt.Value, pt.Value)
		pt.IsMontgomery = true
		gr.pts[terms[i].t] = pt
		return nil
	})
	return p, err
}

// rotations lists the (nonzero) rotations the plan uses.
func (p *diagPlan) rotations() (babies, giants []int) {
	for _, b := range p.babies {
		if b != 0 {
			babies = append(babies, b)
		}
	}
	for _, g := range p.groups {
		if mod(g.shift, p.slots) != 0 {
			giants = append(giants, g.shift)
		}
	}
	return
}

func (p *diagPlan) numDiags() (n int) {
	for _, g := range p.groups {
		n += len(g.diags)
	}
	return
}

// matJob is one diagonal plan applied to input ciphertext In, accumulated
// into output Out.
type matJob struct {
	In, Out int
	plan    *diagPlan
}

// runJobs evaluates jobs on inputs (already at the jobs' level) sharing the
// hoisted baby rotations of each input, giant groups in parallel; returns
// nOut sums (one level below the input), nil where no job writes.
func (e *Evaluator) runJobs(ins []*rlwe.Ciphertext, jobs []matJob, nOut int) ([]*rlwe.Ciphertext, error) {
	// Union of babies per input, hoisted once.
	need := make([]map[int]bool, len(ins))
	for _, j := range jobs {
		if j.plan.groups[0].pts == nil {
			return nil, fmt.Errorf("linear operation planned without weights (shape only): plan it with a matrix to evaluate it")
		}
		if need[j.In] == nil {
			need[j.In] = map[int]bool{}
		}
		for _, b := range j.plan.babies {
			need[j.In][b] = true
		}
	}
	rots := make([]map[int]*rlwe.Ciphertext, len(ins))
	if err := parallel(e.Workers, len(ins), func(i int) error {
		if need[i] == nil {
			return nil
		}
		var err error
		rots[i], err = e.RotateHoisted(ins[i], slices.Sorted(maps.Keys(need[i])))
		return err
	}); err != nil {
		return nil, err
	}
	type task struct{ j, g int }
	var tasks []task
	for ji, j := range jobs {
		for gi := range j.plan.groups {
			tasks = append(tasks, task{ji, gi})
		}
	}
	outs := make([]*rlwe.Ciphertext, nOut)
	var mu sync.Mutex
	err := parallel(e.Workers, len(tasks), func(i int) error {
		j := jobs[tasks[i].j]
		gr := &j.plan.groups[tasks[i].g]
		// Plaintext diagonals are stored in Montgomery form: multiply-
		// accumulate directly in the ring (no per-product MForm pass).
		t0 := time.Now()
		x0 := rots[j.In][gr.babies[0]]
		lvl := x0.Level()
		ringQ := e.Params.RingQ().AtLevel(lvl)
		acc := ckks.NewCiphertext(e.Params, 1, lvl)
		*acc.MetaData = *x0.MetaData
		acc.Scale = x0.Scale.Mul(gr.pts[0].Scale)
		for t, b := range gr.babies {
			x := rots[j.In][b]
			ringQ.MulCoeffsMontgomeryThenAdd(x.Value[0], gr.pts[t].Value, acc.Value[0])
			ringQ.MulCoeffsMontgomeryThenAdd(x.Value[1], gr.pts[t].Value, acc.Value[1])
		}
		e.Counters.Add(OpMulPtCt, len(gr.babies), time.Since(t0))
		acc, err := e.Rescale(acc)
		if err != nil {
			return err
		}
		if mod(gr.shift, e.Slots()) != 0 {
			if acc, err = e.Rotate(acc, gr.shift); err != nil {
				return err
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if outs[j.Out] == nil {
			outs[j.Out] = acc
			return nil
		}
		e.Counters.Add(OpAdd, 1, 0)
		return e.Eval.Add(outs[j.Out], acc, outs[j.Out])
	})
	return outs, err
}

// foldSum returns Σ over the subgroup generated by folds: for each f,
// x ← x + rot(x, f) (so folds f, 2f, 4f… sum 2^len(folds) shifted copies).
func (e *Evaluator) foldSum(x *rlwe.Ciphertext, folds []int) (*rlwe.Ciphertext, error) {
	for _, f := range folds {
		r, err := e.Rotate(x, f)
		if err != nil {
			return nil, err
		}
		if x, err = e.Add(x, r); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// ---------------------------------------------------------------------------
// Matrix-vector products.

// MatVecKind is the algorithm / layout family of a MatVec.
type MatVecKind int

// MatVec kinds.
const (
	// KindPreRotated: square d×d, input in the PreRotated layout (M =
	// max(1, d²/Slots)), output Replicated with period d. Cost: M
	// diagonals (BSGS over them) + log2(d/M) fold rotations.
	KindPreRotated MatVecKind = iota
	// KindReplicated: Out×In on a Replicated input of period
	// pin = nextPow2(In), output Replicated with period pout =
	// nextPow2(Out); min(pin, pout) diagonals, BSGS, plus log2(pin/pout)
	// fold rotations when pin > pout. Dimensions above Slots are split
	// into blocks of Slots (input block c holds x[c·Slots + s] in slot s,
	// output block o holds y[o·Slots + s]).
	KindReplicated
	// KindBatched: the same D×D matrix applied to T tokens in the
	// TokenMajor layout (block-diagonal diag(W,…,W)); output TokenMajor.
	// 2D−1 slot diagonals (two masked diagonals per in-block rotation).
	KindBatched
)

func (k MatVecKind) String() string {
	return [...]string{"pre-rotated", "replicated", "batched"}[k]
}

// MatVec is a planned plaintext-matrix × encrypted-vector product
// y = W·x (W has Out rows and In columns: the y = W·x orientation; GPT-2
// Conv1D weights are stored [in][out], pass them through TransposeRows or
// use NewMatVecConv1D). Plan once (diagonals are encoded at Level), evaluate
// many times. Inputs above Level are dropped to Level first; the output is
// at Level−1 with the input's scale.
type MatVec struct {
	Kind    MatVecKind
	Out, In int
	T       int // tokens (KindBatched)
	Level   int
	Slots   int

	InBlocks, OutBlocks int
	PIn, POut           int // input / output periods (KindReplicated, KindPreRotated)
	Folds               []int
	jobs                []matJob
}

// MatVecCost is the operation count of one evaluation.
type MatVecCost struct {
	HoistedRotations int // baby steps (one decomposition per input ciphertext)
	Rotations        int // giant steps + folds
	PtMults          int
	Rescales         int
	Decompositions   int
}

// KeySwitches is the total number of rotations.
func (c MatVecCost) KeySwitches() int { return c.HoistedRotations + c.Rotations }

// Cost returns the operation counts of one evaluation.
func (m *MatVec) Cost() (c MatVecCost) {
	babies := make([]map[int]bool, m.InBlocks)
	for _, j := range m.jobs {
		if babies[j.In] == nil {
			babies[j.In] = map[int]bool{}
		}
		bs, gs := j.plan.rotations()
		for _, b := range bs {
			babies[j.In][b] = true
		}
		c.Rotations += len(gs)
		c.PtMults += j.plan.numDiags()
		c.Rescales += len(j.plan.groups)
	}
	for _, b := range babies {
		c.HoistedRotations += len(b)
		if len(b) > 0 {
			c.Decompositions++
		}
	}
	c.Rotations += len(m.Folds) * m.OutBlocks
	return
}

// Rotations lists every rotation amount the product uses (for KeyRequest).
func (m *MatVec) Rotations() []int {
	set := map[int]bool{}
	for _, j := range m.jobs {
		bs, gs := j.plan.rotations()
		for _, k := range append(bs, gs...) {
			set[mod(k, m.Slots)] = true
		}
	}
	for _, f := range m.Folds {
		set[mod(f, m.Slots)] = true
	}
	delete(set, 0)
	return slices.Sorted(maps.Keys(set))
}

// KeyLevel is the highest level at which the product rotates (its Level).
func (m *MatVec) KeyLevel() int { return m.Level }

// LevelIn is the level the input is dropped to; LevelOut the output level.
func (m *MatVec) LevelIn() int  { return m.Level }
func (m *MatVec) LevelOut() int { return m.Level - 1 }

func (m *MatVec) String() string {
	c := m.Cost()
	return fmt.Sprintf("%s %d×%d (T=%d) level %d→%d: %d hoisted + %d rotations, %d pt×ct",
		m.Kind, m.Out, m.In, m.T, m.Level, m.Level-1, c.HoistedRotations, c.Rotations, c.PtMults)
}

// Rows is a dense matrix as rows: W[i][j] is row i, column j.
type Rows = [][]float64

// RowsFromDense copies a gonum matrix into rows.
func RowsFromDense(m *mat.Dense) Rows {
	r, c := m.Dims()
	w := make(Rows, r)
	for i := range w {
		w[i] = make([]float64, c)
		mat.Row(w[i], i, m)
	}
	return w
}

// TransposeRows returns Wᵀ (e.g. a GPT-2 Conv1D weight [in][out] → [out][in]).
func TransposeRows(w Rows) Rows {
	if len(w) == 0 {
		return nil
	}
	t := make(Rows, len(w[0]))
	for j := range t {
		t[j] = make([]float64, len(w))
		for i := range w {
			t[j][i] = w[i][j]
		}
	}
	return t
}

func checkRows(w Rows, out, in int) error {
	if w == nil {
		return nil
	}
	if len(w) != out {
		return fmt.Errorf("matrix has %d rows, want %d", len(w), out)
	}
	for i, r := range w {
		if len(r) != in {
			return fmt.Errorf("matrix row %d has %d columns, want %d", i, len(r), in)
		}
	}
	return nil
}

func resolveLevel(params ckks.Parameters, level int) (int, error) {
	if level < 0 {
		level = params.MaxLevel()
	}
	if level < 1 || level > params.MaxLevel() {
		return 0, fmt.Errorf("linear operation level %d must be in [1, %d] (it consumes one level)", level, params.MaxLevel())
	}
	return level, nil
}

// Planner encodes linear operations; Workers bounds parallel encoding.
type Planner struct {
	Params  ckks.Parameters
	Workers int
}

// NewPlanner returns a planner for params using all cores.
func NewPlanner(params ckks.Parameters) *Planner {
	return &Planner{Params: params, Workers: runtime.NumCPU()}
}

// PreRotated plans the replication-aware square product: W is d×d (d a
// power of two ≤ Slots), input in PreRotated{D: d, M: max(1, d²/Slots)},
// output Replicated with period d (every replica = W·x). Level −1 means the
// top level. w == nil plans the shape only (rotations and costs).
//
// With r = Slots/d replicas and m = d/r, y = Σ_{replicas} Σ_{b<m} D_b ⊙
// rot(x̂, b) where D_b(s) = W[s mod d][idx(s+b)] and idx(t) is the vector
// index stored at slot t (PreRotated.Index, which wraps across replica
// boundaries and around the slot vector): for a fixed row i the m·r terms
// (replica j, b) read the columns idx(j·d + i + b), which are all d columns
// exactly once (the window of m consecutive positions covers m distinct
// residues mod m, and the replica shift j·m walks each residue class).
// The replica sum uses rotations by d, 2d, 4d, …
func (p *Planner) PreRotated(w Rows, d, level int) (*MatVec, error) {
	slots := p.Params.MaxSlots()
	lay, err := NewPreRotated(d, slots)
	if err != nil {
		return nil, fmt.Errorf("pre-rotated matvec: %w", err)
	}
	if err := checkRows(w, d, d); err != nil {
		return nil, fmt.Errorf("pre-rotated matvec: %w", err)
	}
	if level, err = resolveLevel(p.Params, level); err != nil {
		return nil, err
	}
	m := lay.M
	ks := make([]int, m)
	for b := range ks {
		ks[b] = b
	}
	var diag func(k int) []float64
	if w != nil {
		diag = func(b int) []float64 {
			v := make([]float64, slots)
			for s := range v {
				v[s] = w[s%d][lay.Index(s+b)]
			}
			return v
		}
	}
	plan, err := newDiagPlan(p.Params, ks, level, diag, p.Workers)
	if err != nil {
		return nil, err
	}
	mv := &MatVec{Kind: KindPreRotated, Out: d, In: d, Level: level, Slots: slots, InBlocks: 1, OutBlocks: 1,
		PIn: d, POut: d, jobs: []matJob{{0, 0, plan}}}
	for f := d; f < d*(d/m); f *= 2 {
		mv.Folds = append(mv.Folds, f)
	}
	return mv, nil
}

// Replicated plans the BSGS product of an out×in matrix on a Replicated
// input (period pin = nextPow2(in)); output Replicated with period pout =
// nextPow2(out). Single-ciphertext case (pin, pout ≤ Slots): diagonal k <
// min(pin, pout) is D_k(s) = W[s mod pout][(s+k) mod pin] (zero outside
// W), then, if pin > pout, fold rotations by pout, 2·pout, … < pin. A tall
// matrix therefore costs what a square one does; a wide one adds log2(pin/
// pout) rotations. Larger dimensions are split into blocks of Slots (see
// KindReplicated); blocks sharing an input share its baby steps.
func (p *Planner) Replicated(w Rows, out, in, level int) (*MatVec, error) {
	slots := p.Params.MaxSlots()
	if out < 1 || in < 1 {
		return nil, fmt.Errorf("replicated matvec: bad shape %d×%d", out, in)
	}
	if err := checkRows(w, out, in); err != nil {
		return nil, fmt.Errorf("replicated matvec: %w", err)
	}
	level, err := resolveLevel(p.Params, level)
	if err != nil {
		return nil, err
	}
	pin, pout := nextPow2(in), nextPow2(out)
	mv := &MatVec{Kind: KindReplicated, Out: out, In: in, Level: level, Slots: slots, PIn: pin, POut: pout,
		InBlocks: max(1, pin/slots), OutBlocks: max(1, pout/slots)}
	bin, bout := min(pin, slots), min(pout, slots) // per-block periods
	nd := min(bin, bout)
	ks := make([]int, nd)
	for k := range ks {
		ks[k] = k
	}
	shape, err := newDiagPlan(p.Params, ks, level, nil, 1)
	if err != nil {
		return nil, err
	}
	for o := 0; o < mv.OutBlocks; o++ {
		for c := 0; c < mv.InBlocks; c++ {
			plan := shape
			if w != nil {
				o, c := o, c
				diag := func(k int) []float64 {
					v := make([]float64, slots)
					for s := range v {
						row := o*slots + s%bout
						col := c*slots + (s+k)%bin
						if row < out && col < in {
							v[s] = w[row][col]
						}
					}
					return v
				}
				if plan, err = newDiagPlan(p.Params, ks, level, diag, p.Workers); err != nil {
					return nil, err
				}
			}
			mv.jobs = append(mv.jobs, matJob{In: c, Out: o, plan: plan})
		}
	}
	for f := bout; f < bin; f *= 2 {
		mv.Folds = append(mv.Folds, f)
	}
	return mv, nil
}

// Batched plans diag(W,…,W)·X for T tokens in the TokenMajor{D: d, T} layout
// (T·d ≤ Slots): slot diagonal δ ∈ (−d, d) is Diag_δ(t·d + i) = W[i][i+δ]
// when 0 ≤ i+δ < d (else 0), which merges the two masked pieces of each
// in-block rotation by k (δ = k and δ = k − d). 2d−1 diagonals with BSGS:
// about twice the rotations of one token, independent of T.
func (p *Planner) Batched(w Rows, d, tokens, level int) (*MatVec, error) {
	slots := p.Params.MaxSlots()
	lay := TokenMajor{D: d, T: tokens, Slots: slots}
	if err := lay.Check(); err != nil {
		return nil, fmt.Errorf("batched matvec: %w", err)
	}
	if err := checkRows(w, d, d); err != nil {
		return nil, fmt.Errorf("batched matvec: %w", err)
	}
	level, err := resolveLevel(p.Params, level)
	if err != nil {
		return nil, err
	}
	ks := make([]int, 0, 2*d-1)
	for k := -(d - 1); k < d; k++ {
		ks = append(ks, k)
	}
	var diag func(k int) []float64
	if w != nil {
		diag = func(k int) []float64 {
			v := make([]float64, slots)
			for t := 0; t < tokens; t++ {
				for i := 0; i < d; i++ {
					if c := i + k; c >= 0 && c < d {
						v[t*d+i] = w[i][c]
					}
				}
			}
			return v
		}
	}
	plan, err := newDiagPlan(p.Params, ks, level, diag, p.Workers)
	if err != nil {
		return nil, err
	}
	return &MatVec{Kind: KindBatched, Out: d, In: d, T: tokens, Level: level, Slots: slots, InBlocks: 1, OutBlocks: 1,
		jobs: []matJob{{0, 0, plan}}}, nil
}

// Conv1D plans y = x·W for a GPT-2 Conv1D weight stored [in][out]
// (i.e. Replicated with W transposed).
func (p *Planner) Conv1D(wInOut Rows, level int) (*MatVec, error) {
	if len(wInOut) == 0 {
		return nil, fmt.Errorf("conv1d matvec: empty weight")
	}
	return p.Replicated(TransposeRows(wInOut), len(wInOut[0]), len(wInOut), level)
}

// Evaluate applies the product to the input ciphertexts (InBlocks of them,
// in the layout of the kind) and returns OutBlocks ciphertexts.
func (e *Evaluator) Evaluate(m *MatVec, in ...*rlwe.Ciphertext) ([]*rlwe.Ciphertext, error) {
	r, err := e.EvaluateMany(in, m)
	if err != nil {
		return nil, err
	}
	return r[0], nil
}

// EvaluateOne is Evaluate for single-ciphertext products.
func (e *Evaluator) EvaluateOne(m *MatVec, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	r, err := e.Evaluate(m, in)
	if err != nil {
		return nil, err
	}
	if len(r) != 1 {
		return nil, fmt.Errorf("EvaluateOne: product has %d output blocks, use Evaluate", len(r))
	}
	return r[0], nil
}

// EvaluateMany applies several products planned at the same level to the
// same input (e.g. Q, K and V from one activation): the hoisted baby-step
// rotations are computed once and all giant groups run in parallel.
// Result i holds the output blocks of ms[i].
func (e *Evaluator) EvaluateMany(in []*rlwe.Ciphertext, ms ...*MatVec) ([][]*rlwe.Ciphertext, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	t0 := time.Now()
	defer e.Counters.since(OpLinear, t0)
	level := ms[0].Level
	var jobs []matJob
	outBase := make([]int, len(ms))
	nOut := 0
	for i, m := range ms {
		if m.Level != level {
			return nil, fmt.Errorf("EvaluateMany: products planned at levels %d and %d; plan them at the same level", level, m.Level)
		}
		if m.InBlocks != len(in) || m.InBlocks != ms[0].InBlocks {
			return nil, fmt.Errorf("%s: got %d input ciphertexts, want %d", m, len(in), m.InBlocks)
		}
		if m.Slots != e.Slots() {
			return nil, fmt.Errorf("%s: planned for %d slots, evaluator has %d", m, m.Slots, e.Slots())
		}
		outBase[i] = nOut
		for _, j := range m.jobs {
			j.Out += nOut
			jobs = append(jobs, j)
		}
		nOut += m.OutBlocks
	}
	xs := make([]*rlwe.Ciphertext, len(in))
	for i, ct := range in {
		var err error
		if xs[i], err = e.DropTo(ct, level); err != nil {
			return nil, err
		}
	}
	outs, err := e.runJobs(xs, jobs, nOut)
	if err != nil {
		return nil, err
	}
	res := make([][]*rlwe.Ciphertext, len(ms))
	for i, m := range ms {
		res[i] = outs[outBase[i] : outBase[i]+m.OutBlocks]
		if len(m.Folds) > 0 {
			if err := parallel(e.Workers, len(res[i]), func(o int) error {
				var err error
				res[i][o], err = e.foldSum(res[i][o], m.Folds)
				return err
			}); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}
