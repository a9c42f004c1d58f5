package he

import (
	"context"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// TestEndToEndN14 is the one 128-bit test of the default run (n14-128,
// N=2^14, 7 levels): encrypt → replicated matvec (level 7→6) → exp on
// [−1, 1] (degree 15, depth 4: 6→2) → masked refresh at level 2 back to 7
// with a replication slot map → matvec (7→6) → decrypt, against float64 with
// the same approximation.
func TestEndToEndN14(t *testing.T) {
	t0 := time.Now()
	params, err := N14.Parameters(false)
	require.NoError(t, err)
	ck := NewClientKeys(params)
	slots := params.MaxSlots()
	r := rand.New(rand.NewPCG(21, 22))
	const d = 64
	mkW := func() Rows {
		w := make(Rows, d)
		for i := range w {
			w[i] = make([]float64, d)
			for j := range w[i] {
				w[i][j] = (2*r.Float64() - 1) / d // row sums ≤ 1: outputs stay in [−1, 1]
			}
		}
		return w
	}
	w1, w2 := mkW(), mkW()
	planner := NewPlanner(params)
	mv1, err := planner.Replicated(w1, d, d, -1)
	require.NoError(t, err)
	mv2, err := planner.Replicated(w2, d, d, -1)
	require.NoError(t, err)
	req := NewKeyRequest(params)
	req.Add(params.MaxLevel(), mv1, mv2)
	req.AddRelin(params.MaxLevel())
	keys, err := ck.GenEvaluationKeys(req, KeyOptions{})
	require.NoError(t, err)
	ev, err := NewEvaluator(params, keys, nil)
	require.NoError(t, err)
	pe := NewPolyEvaluator(params, ev.Eval)
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	mr, err := NewMaskedRefresher(params, pk, NewRefreshResponder(params, ck.SecretKey).Transport(),
		MaskOptions{Lambda: 40, ValueBound: 4, LogNoiseBound: 20})
	require.NoError(t, err)
	tSetup := time.Since(t0)

	x := make([]float64, d)
	for i := range x {
		x[i] = 2*r.Float64() - 1
	}
	exp := approx.NewExp(-1, 1, 15)
	require.Equal(t, 4, exp.Depth())

	t1 := time.Now()
	ct, err := ck.Encrypt(Replicated{D: d, Period: mv1.PIn, Slots: slots}.Encode(x), -1)
	require.NoError(t, err)
	y, err := ev.EvaluateOne(mv1, ct)
	require.NoError(t, err)
	require.Equal(t, 6, y.Level())
	e, err := pe.EvalExp(y, exp)
	require.NoError(t, err)
	require.Equal(t, 2, e.Level())
	ml, err := mr.MaskLevel(e.Scale)
	require.NoError(t, err)
	require.LessOrEqual(t, ml, e.Level())
	ref, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{e},
		RefreshOptions{Level: -1, Maps: []*SlotMap{ReplicateMap(slots, d, 0)}})
	require.NoError(t, err)
	require.Equal(t, params.MaxLevel(), ref[0].Level())
	z, err := ev.EvaluateOne(mv2, ref[0])
	require.NoError(t, err)
	got, err := ck.Decrypt(z)
	require.NoError(t, err)
	tRun := time.Since(t1)

	// float64 reference with the same approximation
	y64 := make([]float64, d)
	for i := range y64 {
		for j := range x {
			y64[i] += w1[i][j] * x[j]
		}
		require.True(t, exp.In(y64[i]))
		y64[i] = exp.Eval(y64[i])
	}
	want := make([]float64, d)
	for i := range want {
		for j := range y64 {
			want[i] += w2[i][j] * y64[j]
		}
	}
	lay := Replicated{D: d, Period: mv2.POut, Slots: slots}.Encode(want)
	var maxErr float64
	for i := range lay {
		maxErr = math.Max(maxErr, math.Abs(got[i]-lay[i]))
	}
	// The decryption error in coefficient units (what flooding must cover).
	ptz := ck.Decryptor.DecryptNew(z)
	refz := ckks.NewPlaintext(params, z.Level())
	refz.Scale = z.Scale
	require.NoError(t, ck.Encoder.Encode(lay, refz))
	rq := params.RingQ().AtLevel(z.Level())
	rq.Sub(ptz.Value, refz.Value, ptz.Value)
	rq.INTT(ptz.Value, ptz.Value)
	coeffs := make([]*big.Int, params.N())
	for i := range coeffs {
		coeffs[i] = new(big.Int)
	}
	rq.PolyToBigintCentered(ptz.Value, 1, coeffs)
	var maxCoeff float64
	for _, c := range coeffs {
		f, _ := new(big.Float).SetInt(c).Float64()
		maxCoeff = math.Max(maxCoeff, math.Abs(f))
	}
	t.Logf("n14-128 end to end: setup %.1fs, circuit %.2fs, mask level %d, max slot error 2^%.1f, decryption error ‖e‖∞ = 2^%.1f coefficient units",
		tSetup.Seconds(), tRun.Seconds(), ml, math.Log2(maxErr), math.Log2(maxCoeff))
	require.Less(t, maxErr, 0x1p-15)
}
