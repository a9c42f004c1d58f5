package he

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// coeffError returns the decryption error of ct in coefficient units: the
// decrypted polynomial minus the encoding of the exact values at the same
// level and scale (encoding rounding adds at most 1/2).
func coeffError(t *testing.T, k *rfKit, ct *rlwe.Ciphertext, want []float64) []float64 {
	pt := k.dec.DecryptNew(ct)
	ref := ckks.NewPlaintext(k.params, ct.Level())
	ref.Scale = ct.Scale
	require.NoError(t, k.ecd.Encode(want, ref))
	rq := k.params.RingQ().AtLevel(ct.Level())
	rq.Sub(pt.Value, ref.Value, pt.Value)
	rq.INTT(pt.Value, pt.Value)
	c := make([]*big.Int, k.params.N())
	for i := range c {
		c[i] = new(big.Int)
	}
	rq.PolyToBigintCentered(pt.Value, 1, c)
	out := make([]float64, len(c))
	for i, v := range c {
		out[i], _ = new(big.Float).SetInt(v).Float64()
	}
	return out
}

func stdMax(x []float64) (std, max float64) {
	var s float64
	for _, v := range x {
		s += v * v
		max = math.Max(max, math.Abs(v))
	}
	return math.Sqrt(s / float64(len(x))), max
}

// TestFlood (insecure-test preset): after a plaintext product (computation
// noise), flooding widens the coefficient error distribution to the
// configured σ (within 5%), doubling σ per bit, re-randomizes c1, and the
// slot values stay within 6 standard deviations of the stated FloodCost.
func TestFlood(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	pk := rlwe.NewKeyGenerator(k.params).GenPublicKeyNew(k.sk)
	slots := k.params.MaxSlots()
	v := uniformIn(slots, -8, 8, rand.New(rand.NewPCG(13, 14)))
	w := uniformIn(slots, -1, 1, rand.New(rand.NewPCG(15, 16)))
	ct := k.encrypt(t, v, 3)
	require.NoError(t, k.eval.Mul(ct, w, ct))
	require.NoError(t, k.eval.Rescale(ct, ct))
	want := make([]float64, slots)
	for i := range v {
		want[i] = v[i] * w[i]
	}
	e0, m0 := stdMax(coeffError(t, k, ct, want))
	t.Logf("computation noise: std 2^%.1f, max 2^%.1f coefficient units", math.Log2(e0), math.Log2(m0))

	_, err := NewFlooder(k.params, nil, DefaultFloodOptions())
	require.ErrorContains(t, err, "public key")

	prev := 0.0
	for _, bits := range []float64{8, 12} {
		o := FloodOptions{LogNoiseBound: 15, Bits: bits}
		f, err := NewFlooder(k.params, pk, o)
		require.NoError(t, err)
		fl, err := f.Flood(ct)
		require.NoError(t, err)
		std, mx := stdMax(coeffError(t, k, fl, want))
		t.Logf("bits %.0f: σ = 2^%.1f, measured std 2^%.2f, max 2^%.1f; TV bound 2^%.1f; slot error cost 2^%.1f",
			bits, math.Log2(o.Sigma()), math.Log2(std), math.Log2(mx), o.StatisticalBound(k.params.LogN()), FloodCost(k.params, ct.Scale, o))
		require.InEpsilon(t, o.Sigma(), std, 0.05, "flooding width")
		require.Greater(t, std, 100*e0, "flooding must dominate the computation noise")
		if prev > 0 {
			require.InEpsilon(t, 16, std/prev, 0.1, "4 more bits must widen σ 16×")
		}
		prev = std
		// Values correct within 6σ of the stated slot cost.
		got := k.decrypt(t, fl)
		require.Less(t, maxAbsDiff(got, want), 6*math.Exp2(FloodCost(k.params, ct.Scale, o)))
		// c1 was re-randomized.
		require.False(t, fl.Value[1].Equal(&ct.Value[1]))
		require.Equal(t, ct.Level(), fl.Level())
	}
	// σ that does not fit the modulus at level 0 is refused.
	low := k.encrypt(t, v, 0)
	f, err := NewFlooder(k.params, pk, FloodOptions{LogNoiseBound: 30, Bits: 20})
	require.NoError(t, err)
	_, err = f.Flood(low)
	require.ErrorContains(t, err, "does not fit")
}
