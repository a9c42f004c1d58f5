package he

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// All tests here use the INSECURE test preset (N=2^12, 2048 slots): they
// check correctness, not security.

const relTol = 1.0 / (1 << 20) // max abs error / max abs value

type testCtx struct {
	params ckks.Parameters
	ck     *ClientKeys
}

var testCtxCache *testCtx

func newTestCtx(t testing.TB) *testCtx {
	t.Helper()
	if testCtxCache == nil {
		params, err := InsecureTest.Parameters(true)
		require.NoError(t, err)
		testCtxCache = &testCtx{params: params, ck: NewClientKeys(params)}
	}
	return testCtxCache
}

// evaluator generates exactly the keys the users need (at the top level).
func (tc *testCtx) evaluator(t testing.TB, relin bool, users ...RotationUser) (*Evaluator, *Counters) {
	t.Helper()
	req := NewKeyRequest(tc.params)
	req.Add(tc.params.MaxLevel(), users...)
	if relin {
		req.AddRelin(tc.params.MaxLevel())
	}
	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{})
	require.NoError(t, err)
	cnt := &Counters{}
	e, err := NewEvaluator(tc.params, keys, cnt)
	require.NoError(t, err)
	return e, cnt
}

func randVec(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = 2*r.Float64() - 1
	}
	return v
}

func randMat(r *rand.Rand, rows, cols int) Rows {
	w := make(Rows, rows)
	for i := range w {
		w[i] = randVec(r, cols)
		for j := range w[i] {
			w[i][j] /= math.Sqrt(float64(cols))
		}
	}
	return w
}

func matVec(w Rows, x []float64) []float64 {
	y := make([]float64, len(w))
	for i, row := range w {
		for j, v := range row {
			y[i] += v * x[j]
		}
	}
	return y
}

// relErr is max|got−want| / max|want|.
func relErr(got, want []float64) float64 {
	var e, m float64
	for i := range want {
		e = math.Max(e, math.Abs(got[i]-want[i]))
		m = math.Max(m, math.Abs(want[i]))
	}
	if m == 0 {
		return e
	}
	return e / m
}

func requireClose(t testing.TB, got, want []float64, what string) {
	t.Helper()
	require.Len(t, got, len(want))
	err := relErr(got, want)
	t.Logf("%s: relative error 2^%.1f", what, math.Log2(err))
	require.LessOrEqualf(t, err, relTol, "%s: relative error %.3g > 2^-20", what, err)
}

func (tc *testCtx) decrypt(t testing.TB, ct *rlwe.Ciphertext) []float64 {
	v, err := tc.ck.Decrypt(ct)
	require.NoError(t, err)
	return v
}

func TestMatVecPreRotated(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(1, 2))
	slots := tc.params.MaxSlots()
	planner := NewPlanner(tc.params)
	// d=128 at 2048 slots: r=16 replicas, m=8 (the wrap across replica
	// boundaries is exercised by every row i > d−m); d=16: m=1, d/m=16 < r.
	for _, d := range []int{128, 16} {
		w := randMat(r, d, d)
		mv, err := planner.PreRotated(w, d, -1)
		require.NoError(t, err)
		t.Log(mv)
		e, cnt := tc.evaluator(t, false, mv)
		lay, err := NewPreRotated(d, slots)
		require.NoError(t, err)
		x := randVec(r, d)
		ct, err := tc.ck.Encrypt(lay.Encode(x), -1)
		require.NoError(t, err)
		out, err := e.EvaluateOne(mv, ct)
		require.NoError(t, err)
		require.Equal(t, mv.LevelOut(), out.Level())
		got := tc.decrypt(t, out)
		// every replica holds y
		want := Replicated{D: d, Period: d, Slots: slots}.Encode(matVec(w, x))
		requireClose(t, got, want, mv.String())
		c := mv.Cost()
		require.Equal(t, int64(c.KeySwitches()), cnt.Count(OpRotate), "rotation count")
		require.Equal(t, int64(c.PtMults), cnt.Count(OpMulPtCt), "pt×ct count")
		if d == 128 {
			require.Equal(t, 8, c.PtMults)
			require.Equal(t, 4, len(mv.Folds)) // log2(16)
		}
	}
}

func TestMatVecReplicatedShapes(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(3, 4))
	slots := tc.params.MaxSlots()
	planner := NewPlanner(tc.params)
	shapes := []struct{ out, in int }{
		{64, 64},    // square
		{64, 256},   // wide d×4d: folds
		{256, 64},   // tall 4d×d
		{40, 48},    // non powers of two (zero padding)
		{3000, 32},  // V×d, output split over 2 ciphertexts
		{32, 3000},  // d×V, input split over 2 ciphertexts
		{2048, 128}, // output period = all slots
	}
	for _, sh := range shapes {
		w := randMat(r, sh.out, sh.in)
		mv, err := planner.Replicated(w, sh.out, sh.in, -1)
		require.NoError(t, err)
		t.Log(mv)
		e, _ := tc.evaluator(t, false, mv)
		x := randVec(r, sh.in)
		var ins []*rlwe.Ciphertext
		if mv.InBlocks == 1 {
			lay := Replicated{D: sh.in, Period: mv.PIn, Slots: slots}
			ct, err := tc.ck.Encrypt(lay.Encode(x), -1)
			require.NoError(t, err)
			ins = append(ins, ct)
		} else {
			for c := 0; c < mv.InBlocks; c++ {
				v := make([]float64, slots)
				for s := range v {
					if i := c*slots + s; i < sh.in {
						v[s] = x[i]
					}
				}
				ct, err := tc.ck.Encrypt(v, -1)
				require.NoError(t, err)
				ins = append(ins, ct)
			}
		}
		outs, err := e.Evaluate(mv, ins...)
		require.NoError(t, err)
		require.Len(t, outs, mv.OutBlocks)
		y := matVec(w, x)
		for o, ct := range outs {
			got := tc.decrypt(t, ct)
			want := make([]float64, slots)
			pout := min(mv.POut, slots)
			for s := range want {
				if i := o*slots + s%pout; i < sh.out {
					want[s] = y[i]
				}
			}
			requireClose(t, got, want, mv.String())
		}
	}
}

func TestMatVecBatchedPrefill(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(5, 6))
	slots := tc.params.MaxSlots()
	planner := NewPlanner(tc.params)
	d := 64
	w := randMat(r, d, d)
	single, err := planner.Replicated(nil, d, d, -1)
	require.NoError(t, err)
	for _, T := range []int{5, slots / d} {
		mv, err := planner.Batched(w, d, T, -1)
		require.NoError(t, err)
		t.Log(mv, "vs one token:", single)
		e, _ := tc.evaluator(t, false, mv)
		lay := TokenMajor{D: d, T: T, Slots: slots}
		xs := make([][]float64, T)
		ys := make([][]float64, T)
		for i := range xs {
			xs[i] = randVec(r, d)
			ys[i] = matVec(w, xs[i])
		}
		ct, err := tc.ck.Encrypt(lay.Encode(xs), -1)
		require.NoError(t, err)
		out, err := e.EvaluateOne(mv, ct)
		require.NoError(t, err)
		requireClose(t, tc.decrypt(t, out), lay.Encode(ys), mv.String())
		// about twice one token, independent of T
		cb, cs := mv.Cost(), single.Cost()
		require.LessOrEqual(t, float64(cb.KeySwitches()), 2.5*float64(cs.KeySwitches()))
	}
}

func TestMatVecLevelDropAndSharedInput(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(7, 8))
	slots := tc.params.MaxSlots()
	planner := NewPlanner(tc.params)
	d, level := 64, 3
	var ms []*MatVec
	var ws []Rows
	for i := 0; i < 3; i++ { // Q, K, V from one input
		w := randMat(r, d, d)
		mv, err := planner.Replicated(w, d, d, level)
		require.NoError(t, err)
		ms, ws = append(ms, mv), append(ws, w)
	}
	// keys generated only up to the level where they are used
	req := NewKeyRequest(tc.params)
	req.Add(tc.params.MaxLevel(), ms[0])
	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{AtUsedLevels: true})
	require.NoError(t, err)
	gl, _ := keys.KeyLevels()
	for _, l := range gl {
		require.Equal(t, level, l)
	}
	cnt := &Counters{}
	e, err := NewEvaluator(tc.params, keys, cnt)
	require.NoError(t, err)
	e.Workers = 4
	lay := Replicated{D: d, Period: d, Slots: slots}
	x := randVec(r, d)
	ct, err := tc.ck.Encrypt(lay.Encode(x), -1) // top level: dropped to 3
	require.NoError(t, err)
	outs, err := e.EvaluateMany([]*rlwe.Ciphertext{ct}, ms...)
	require.NoError(t, err)
	for i, o := range outs {
		require.Equal(t, level-1, o[0].Level())
		requireClose(t, tc.decrypt(t, o[0]), lay.Encode(matVec(ws[i], x)), "shared-input product")
	}
	c := ms[0].Cost()
	require.Equal(t, int64(c.HoistedRotations+3*c.Rotations), cnt.Count(OpRotate), "baby steps shared")
	require.Equal(t, int64(1), cnt.Count(OpHoistDec))

	// input below the plan level: clear error
	low, err := tc.ck.Encrypt(lay.Encode(x), level-1)
	require.NoError(t, err)
	_, err = e.EvaluateOne(ms[0], low)
	require.ErrorContains(t, err, "below the required level")

	// a key generated at level 3 cannot rotate a level-5 ciphertext
	hi, err := tc.ck.Encrypt(lay.Encode(x), 5)
	require.NoError(t, err)
	_, err = e.Rotate(hi, ms[0].Rotations()[0])
	require.ErrorContains(t, err, "generated up to level 3")
}

func TestMatVecShapeOnly(t *testing.T) {
	tc := newTestCtx(t)
	planner := NewPlanner(tc.params)
	mv, err := planner.Replicated(nil, 64, 64, -1)
	require.NoError(t, err)
	e, _ := tc.evaluator(t, false, mv)
	ct, err := tc.ck.Encrypt(make([]float64, 64), -1)
	require.NoError(t, err)
	_, err = e.EvaluateOne(mv, ct)
	require.ErrorContains(t, err, "shape only")
	_, err = planner.Replicated(randMat(rand.New(rand.NewPCG(1, 1)), 3, 4), 4, 4, -1)
	require.ErrorContains(t, err, "rows")
}

func TestConv1DTranspose(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(9, 10))
	planner := NewPlanner(tc.params)
	in, out := 32, 64
	wio := randMat(r, in, out) // [in][out]
	mv, err := planner.Conv1D(wio, -1)
	require.NoError(t, err)
	require.Equal(t, out, mv.Out)
	e, _ := tc.evaluator(t, false, mv)
	x := randVec(r, in)
	ct, err := tc.ck.Encrypt(Replicated{D: in, Period: in, Slots: tc.params.MaxSlots()}.Encode(x), -1)
	require.NoError(t, err)
	o, err := e.EvaluateOne(mv, ct)
	require.NoError(t, err)
	y := matVec(TransposeRows(wio), x)
	requireClose(t, tc.decrypt(t, o), Replicated{D: out, Period: out, Slots: tc.params.MaxSlots()}.Encode(y), "conv1d")
}

func TestChooseN1(t *testing.T) {
	ks := make([]int, 256)
	for i := range ks {
		ks[i] = i
	}
	n1 := chooseN1(ks, 8192)
	babies, giants := n1-1, (256+n1-1)/n1-1
	// 256 diagonals: a balanced split near 16×16, far below 255 rotations
	require.Less(t, babies+giants, 40, "n1=%d", n1)
	require.GreaterOrEqual(t, n1, 8)
	require.LessOrEqual(t, n1, 32)
}
