package he

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// INSECURE test preset (N=2^12, 2048 slots).

func TestAttentionPrimitives(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(11, 12))
	slots := tc.params.MaxSlots()
	d, heads := 64, 4 // dk = 16, 32 positions per cache ciphertext
	att, err := NewAttention(tc.params, d, heads)
	require.NoError(t, err)
	lay := att.Layout
	require.Equal(t, 32, lay.TokensPerCt())
	top := tc.params.MaxLevel()
	cacheLevel := top - 2
	// keys only up to the level where the attention rotations happen
	att.RotLevel = cacheLevel - 1
	req := NewKeyRequest(tc.params)
	req.Add(top, att)
	req.AddRelin(top)
	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{AtUsedLevels: true, Compressed: true})
	require.NoError(t, err)
	cnt := &Counters{}
	e, err := NewEvaluator(tc.params, keys, cnt)
	require.NoError(t, err)
	rep := Replicated{D: d, Period: lay.Period, Slots: slots}

	cache := att.NewKVCache(cacheLevel)
	n := 37 // crosses into a second cache ciphertext
	ks, vs := make([][]float64, n), make([][]float64, n)
	for p := 0; p < n; p++ {
		ks[p], vs[p] = randVec(r, d), randVec(r, d)
		kc, err := tc.ck.Encrypt(rep.Encode(ks[p]), top)
		require.NoError(t, err)
		vc, err := tc.ck.Encrypt(rep.Encode(vs[p]), top)
		require.NoError(t, err)
		before := cnt.Snapshot()
		require.NoError(t, e.Append(att, cache, kc, vc))
		diff := cnt.Snapshot().Sub(before)
		require.Equal(t, int64(0), diff.Get(OpRotate), "append uses no rotation")
		require.Equal(t, int64(2), diff.Get(OpMulPtCt))
	}
	require.Len(t, cache.K, 2)
	require.Equal(t, cacheLevel, cache.K[1].Level())
	// cache layout: position p at ct p/32, slots [(p%32)·64, …+64)
	got := tc.decrypt(t, cache.K[1])
	want := make([]float64, slots)
	for p := 32; p < n; p++ {
		_, s0 := lay.Locate(p)
		copy(want[s0:], ks[p])
	}
	requireClose(t, got, want, "kv cache after append")

	// scores
	q := randVec(r, d)
	qc, err := tc.ck.Encrypt(rep.Encode(q), top)
	require.NoError(t, err)
	scale := 1 / math.Sqrt(float64(lay.DK()))
	before := cnt.Snapshot()
	sc, err := e.Scores(att, qc, cache, scale)
	require.NoError(t, err)
	diff := cnt.Snapshot().Sub(before)
	require.Equal(t, int64(2*log2(lay.DK())), diff.Get(OpRotate), "log2(dk) rotations per cache ct")
	require.Equal(t, int64(2), diff.Get(OpRelin))
	require.Equal(t, cacheLevel-2, sc[0].Level())
	wantScores := make([][]float64, n)
	for p := range wantScores {
		wantScores[p] = make([]float64, heads)
		for h := 0; h < heads; h++ {
			for i := 0; i < lay.DK(); i++ {
				wantScores[p][h] += q[h*lay.DK()+i] * ks[p][h*lay.DK()+i]
			}
			wantScores[p][h] *= scale
		}
	}
	for c := range sc {
		requireClose(t, tc.decrypt(t, sc[c]), lay.EncodeScores(wantScores, c), "scores")
	}

	// sum over positions (softmax denominator shape)
	sum, err := e.SumPositions(att, sc)
	require.NoError(t, err)
	gotSum := tc.decrypt(t, sum)
	wantSum := make([]float64, slots)
	for h := 0; h < heads; h++ {
		var s float64
		for p := 0; p < n; p++ {
			s += wantScores[p][h]
		}
		for b := 0; b < lay.TokensPerCt(); b++ {
			wantSum[b*lay.Period+h*lay.DK()] = s
		}
	}
	requireClose(t, gotSum, wantSum, "sum over positions")

	// weighted sum of V with the scores as weights
	ws, err := e.WeightedSum(att, sc, cache)
	require.NoError(t, err)
	out := make([]float64, d)
	for p := 0; p < n; p++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < lay.DK(); i++ {
				out[h*lay.DK()+i] += wantScores[p][h] * vs[p][h*lay.DK()+i]
			}
		}
	}
	requireClose(t, tc.decrypt(t, ws), rep.Encode(out), "weighted sum of V")
	t.Logf("attention counters: %s", cnt)

	// appending below the cache level + 1 fails clearly
	low, err := tc.ck.Encrypt(rep.Encode(q), cacheLevel)
	require.NoError(t, err)
	require.ErrorContains(t, e.Append(att, cache, low, low), "mask uses one level")
}

func TestSegmentAndStrideSums(t *testing.T) {
	tc := newTestCtx(t)
	r := rand.New(rand.NewPCG(13, 14))
	slots := tc.params.MaxSlots()
	att, err := NewAttention(tc.params, 32, 4)
	require.NoError(t, err)
	e, _ := tc.evaluator(t, false, att)
	x := randVec(r, slots)
	ct, err := tc.ck.Encrypt(x, -1)
	require.NoError(t, err)
	seg := att.Layout.DK()
	s, err := e.SegmentSum(ct, seg)
	require.NoError(t, err)
	want := make([]float64, slots)
	for i := range want {
		for j := 0; j < seg; j++ {
			want[i] += x[(i+j)%slots]
		}
	}
	requireClose(t, tc.decrypt(t, s), want, "segment sum")
	st, err := e.StrideSum(ct, 32, slots/32)
	require.NoError(t, err)
	for i := range want {
		want[i] = 0
		for j := 0; j < slots/32; j++ {
			want[i] += x[(i+32*j)%slots]
		}
	}
	requireClose(t, tc.decrypt(t, st), want, "stride sum")
	_, err = e.SegmentSum(ct, 3)
	require.Error(t, err)
}
