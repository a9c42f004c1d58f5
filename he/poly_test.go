package he

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/entropi-ai/entropi/approx"
	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// rfKit is the client+server material of one test (names prefixed to stay
// clear of other test files in this package).
type rfKit struct {
	params ckks.Parameters
	sk     *rlwe.SecretKey
	ecd    *ckks.Encoder
	enc    *rlwe.Encryptor
	dec    *rlwe.Decryptor
	eval   *ckks.Evaluator
	pubKey *rlwe.PublicKey
}

func newRFKit(t testing.TB, p Preset) *rfKit {
	t.Helper()
	params, err := p.Parameters(true)
	require.NoError(t, err)
	kgen := rlwe.NewKeyGenerator(params)
	sk := kgen.GenSecretKeyNew()
	rlk := kgen.GenRelinearizationKeyNew(sk)
	return &rfKit{
		params: params, sk: sk,
		ecd:  ckks.NewEncoder(params),
		enc:  rlwe.NewEncryptor(params, sk),
		dec:  rlwe.NewDecryptor(params, sk),
		eval: ckks.NewEvaluator(params, rlwe.NewMemEvaluationKeySet(rlk)),
	}
}

func (k *rfKit) encrypt(t testing.TB, v []float64, level int) *rlwe.Ciphertext {
	t.Helper()
	pt := ckks.NewPlaintext(k.params, level)
	require.NoError(t, k.ecd.Encode(v, pt))
	ct, err := k.enc.EncryptNew(pt)
	require.NoError(t, err)
	return ct
}

func (k *rfKit) decrypt(t testing.TB, ct *rlwe.Ciphertext) []float64 {
	t.Helper()
	out := make([]float64, ct.Slots())
	require.NoError(t, k.ecd.Decode(k.dec.DecryptNew(ct), out))
	return out
}

func uniformIn(n int, lo, hi float64, rng *rand.Rand) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*rng.Float64()
	}
	v[0], v[n-1] = lo, hi // the range ends are the hard points
	return v
}

// polyCase is one approximation under test: its float64 definition, its
// ciphertext evaluation, and the exact function.
type polyCase struct {
	name   string
	lo, hi float64
	depth  int
	eval   func(x float64) float64
	exact  func(x float64) float64
	maxErr float64 // approx's measured MaxError (abs), the float64-vs-exact bound
	he     func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error)
}

func polyCases() []polyCase {
	exp := approx.NewExp(-16, 4, 31)
	gelu := approx.NewGELU(-8, 8, 31)
	recip := approx.NewReciprocal(1, 512, 31, 2) // depth 6 + 4 = 10 ≤ 12 levels of InsecureTest
	isqrt := approx.NewInvSqrt(0.01, 100, 63, 2) // depth 7 + 4 = 11
	isqrtN := approx.NewInvSqrt(0.5, 8, 15, 3)   // depth 5 + 6 = 11, converged
	abs := func(a, _ float64) float64 { return a }
	return []polyCase{
		{"exp[-16,4]/31", -16, 4, exp.Depth(), exp.Eval, math.Exp, abs(exp.MaxError()),
			func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalExp(ct, exp) }},
		{"gelu[-8,8]/31", -8, 8, gelu.Depth(), gelu.Eval, approx.GELUExact, abs(gelu.MaxError()),
			func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalGELU(ct, gelu) }},
		{"recip[1,512]/31+2", 1, 512, recip.Depth(), recip.Eval, func(x float64) float64 { return 1 / x }, abs(recip.MaxError()),
			func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
				return pe.EvalReciprocal(ct, recip)
			}},
		{"invsqrt[0.01,100]/63+2", 0.01, 100, isqrt.Depth(), isqrt.Eval, func(x float64) float64 { return 1 / math.Sqrt(x) }, abs(isqrt.MaxError()),
			func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
				return pe.EvalInvSqrt(ct, isqrt)
			}},
		{"invsqrt[0.5,8]/15+3", 0.5, 8, isqrtN.Depth(), isqrtN.Eval, func(x float64) float64 { return 1 / math.Sqrt(x) }, abs(isqrtN.MaxError()),
			func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
				return pe.EvalInvSqrt(ct, isqrtN)
			}},
	}
}

// TestPolyMatchesApprox (insecure-test preset, N=2^12): each nonlinearity on
// random in-range inputs. The ciphertext result must match approx's float64
// Eval within 2^-15 of the largest output magnitude on the range (CKKS error),
// approx's Eval must match the exact function within its MaxError, the levels
// consumed must equal approx's Depth(), and the output is at the default
// scale.
func TestPolyMatchesApprox(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	pe := NewPolyEvaluator(k.params, k.eval)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range polyCases() {
		t.Run(c.name, func(t *testing.T) {
			x := uniformIn(k.params.MaxSlots(), c.lo, c.hi, rng)
			ct := k.encrypt(t, x, k.params.MaxLevel())
			out, err := c.he(pe, ct)
			require.NoError(t, err)
			require.Equal(t, c.depth, ct.Level()-out.Level(), "levels consumed vs approx Depth()")
			require.True(t, out.Scale.Equal(k.params.DefaultScale()), "output scale 2^%.4f", math.Log2(out.Scale.Float64()))
			got := k.decrypt(t, out)
			var outMax, heErr, apErr float64
			for _, v := range x {
				outMax = math.Max(outMax, math.Abs(c.eval(v)))
			}
			for i, v := range x {
				heErr = math.Max(heErr, math.Abs(got[i]-c.eval(v)))
				apErr = math.Max(apErr, math.Abs(c.eval(v)-c.exact(v)))
			}
			t.Logf("%s: depth %d, CKKS-vs-approx max err %.3g (2^%.1f of max output %.3g), approx-vs-exact %.3g (MaxError %.3g)",
				c.name, c.depth, heErr, math.Log2(heErr/outMax), outMax, apErr, c.maxErr)
			require.LessOrEqual(t, heErr, 0x1p-15*outMax, "CKKS result vs approx float64")
			require.LessOrEqual(t, apErr, c.maxErr*(1+1e-9)+1e-15, "approx vs exact beyond its MaxError")
		})
	}
}

func TestPolyTooFewLevels(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	pe := NewPolyEvaluator(k.params, k.eval)
	exp := approx.NewExp(-16, 4, 31)
	ct := k.encrypt(t, make([]float64, 8), exp.Depth()-1)
	_, err := pe.EvalExp(ct, exp)
	require.ErrorContains(t, err, fmt.Sprintf("needs %d levels but the ciphertext is at level %d", exp.Depth(), exp.Depth()-1))
	require.ErrorContains(t, err, "refresh")
	// Exactly Depth() levels is enough, and leaves level 0.
	ct = k.encrypt(t, make([]float64, 8), exp.Depth())
	out, err := pe.EvalExp(ct, exp)
	require.NoError(t, err)
	require.Equal(t, 0, out.Level())
}

// An integer change of basis (range [−1, 1]) costs no level.
func TestPolyFreeChangeOfBasis(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	pe := NewPolyEvaluator(k.params, k.eval)
	for _, p := range []approx.Chebyshev{
		approx.FitChebyshev(math.Sin, -1, 1, 15),
		approx.FitChebyshev(math.Sin, -0.25, 0.75, 15), // a = 2, constant −0.5
	} {
		x := uniformIn(k.params.MaxSlots(), p.Lo, p.Hi, rand.New(rand.NewPCG(3, 4)))
		ct := k.encrypt(t, x, k.params.MaxLevel())
		out, err := pe.EvalChebyshev(ct, p, rlwe.Scale{})
		require.NoError(t, err)
		require.Equal(t, 4, ct.Level()-out.Level())
		require.Equal(t, p.Depth(), ct.Level()-out.Level())
		got := k.decrypt(t, out)
		for i, v := range x {
			require.InDelta(t, p.Eval(v), got[i], 0x1p-15)
		}
	}
}

// Lattigo's real level consumption equals approx's Depth() for every degree,
// not only 2^k − 1.
func TestPolyDepthAcrossDegrees(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	pe := NewPolyEvaluator(k.params, k.eval)
	x := uniformIn(k.params.MaxSlots(), -2, 3, rand.New(rand.NewPCG(17, 18)))
	ct := k.encrypt(t, x, k.params.MaxLevel())
	for _, deg := range []int{1, 2, 3, 7, 8, 20, 32, 64, 100} {
		p := approx.FitChebyshev(math.Sin, -2, 3, deg)
		out, err := pe.EvalChebyshev(ct, p, rlwe.Scale{})
		require.NoError(t, err)
		require.Equal(t, p.Depth(), ct.Level()-out.Level(), "degree %d", deg)
		got := k.decrypt(t, out)
		for i, v := range x {
			require.InDelta(t, p.Eval(v), got[i], 0x1p-15, "degree %d", deg)
		}
	}
}
