package he

import (
	"fmt"
	"math"
	"math/big"

	"github.com/entropi-ai/entropi/approx"
	"github.com/tuneinsight/lattigo/v6/circuits/ckks/polynomial"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"github.com/tuneinsight/lattigo/v6/utils/bignum"
)

// PolyEvaluator evaluates the approximations of package approx on
// ciphertexts, with exactly approx's Chebyshev coefficients and Newton
// iteration counts, so that the CKKS result equals approx's float64 Eval up
// to CKKS noise.
//
// Every method consumes exactly the Depth() of its approximation in levels
// (checked by the tests), takes its input at any level ≥ that depth and any
// scale, and returns a ciphertext at the parameters' default scale exactly
// (the Newton chains pick the scale of their initial guess so that the last
// rescale lands on it), so results add to other default-scale ciphertexts
// without scale mismatch.
//
// Inputs must lie in the approximation's range (approx's In): CKKS cannot
// clamp, and outside the range the polynomial diverges. Slots that are not
// used must also be in range (e.g. zero-padded slots with a reciprocal on
// [1, 512] diverge: pad with a value inside the range instead).
//
// A PolyEvaluator is not safe for concurrent use (Lattigo's evaluator holds
// scratch buffers); give each goroutine its own via NewPolyEvaluator on a
// ShallowCopy of the ckks.Evaluator.
type PolyEvaluator struct {
	params ckks.Parameters
	eval   *ckks.Evaluator
	poly   *polynomial.Evaluator
}

// NewPolyEvaluator wraps a ckks.Evaluator that holds a relinearization key.
func NewPolyEvaluator(params ckks.Parameters, eval *ckks.Evaluator) *PolyEvaluator {
	return &PolyEvaluator{params: params, eval: eval, poly: polynomial.NewEvaluator(params, eval)}
}

func (pe *PolyEvaluator) check(ct *rlwe.Ciphertext, depth int, what string) error {
	if ct == nil {
		return fmt.Errorf("he: %s: nil ciphertext", what)
	}
	if ct.Degree() != 1 {
		return fmt.Errorf("he: %s: ciphertext of degree %d, relinearize it first", what, ct.Degree())
	}
	if pe.params.LevelsConsumedPerRescaling() != 1 {
		return fmt.Errorf("he: %s: parameters with %d levels per rescaling are not supported (default scale above 2^60)",
			what, pe.params.LevelsConsumedPerRescaling())
	}
	if ct.Level() < depth {
		return fmt.Errorf("he: %s needs %d levels but the ciphertext is at level %d: refresh it first (he.Refresher)",
			what, depth, ct.Level())
	}
	return nil
}

// EvalChebyshev evaluates p(x) = Σ_k c_k·T_k((2x − Lo − Hi)/(Hi − Lo)) on ct
// with Lattigo's Paterson–Stockmeyer evaluator in the Chebyshev basis of
// [Lo, Hi], returning the result at outScale (zero: the default scale). It
// consumes p.Depth() levels.
func (pe *PolyEvaluator) EvalChebyshev(ct *rlwe.Ciphertext, p approx.Chebyshev, outScale rlwe.Scale) (*rlwe.Ciphertext, error) {
	if err := pe.check(ct, p.Depth(), fmt.Sprintf("Chebyshev degree %d", p.Degree())); err != nil {
		return nil, err
	}
	if outScale.Value.Sign() == 0 {
		outScale = pe.params.DefaultScale()
	}
	if p.Degree() == 0 {
		out := ct.CopyNew()
		if err := pe.eval.Mul(out, 0, out); err != nil {
			return nil, err
		}
		out.Scale = outScale
		return out, pe.eval.Add(out, p.Coeffs[0], out)
	}
	bp := bignum.NewPolynomial(bignum.Chebyshev, append([]float64(nil), p.Coeffs...), [2]float64{p.Lo, p.Hi})
	scalar, constant := bp.ChangeOfBasis()

	// u = scalar·x + constant, in [−1, 1] for x in [Lo, Hi].
	u := ct.CopyNew()
	if p.ChangeOfBasisDepth() == 0 {
		a, _ := scalar.Int64()
		if a != 1 {
			if err := pe.eval.Mul(u, a, u); err != nil {
				return nil, fmt.Errorf("he: Chebyshev change of basis: %w", err)
			}
		}
	} else {
		if err := pe.eval.Mul(u, scalar, u); err != nil {
			return nil, fmt.Errorf("he: Chebyshev change of basis: %w", err)
		}
	}
	if constant.Sign() != 0 {
		if err := pe.eval.Add(u, constant, u); err != nil {
			return nil, fmt.Errorf("he: Chebyshev change of basis: %w", err)
		}
	}
	if p.ChangeOfBasisDepth() == 1 {
		if err := pe.eval.Rescale(u, u); err != nil {
			return nil, fmt.Errorf("he: Chebyshev change of basis: %w", err)
		}
	}
	out, err := pe.poly.Evaluate(u, bp, outScale)
	if err != nil {
		return nil, fmt.Errorf("he: Chebyshev degree %d: %w", p.Degree(), err)
	}
	return out, nil
}

// EvalExp evaluates approx's e^x; depth e.Depth().
func (pe *PolyEvaluator) EvalExp(ct *rlwe.Ciphertext, e approx.Exp) (*rlwe.Ciphertext, error) {
	return pe.EvalChebyshev(ct, e.Poly, rlwe.Scale{})
}

// EvalGELU evaluates approx's GELU; depth g.Depth().
func (pe *PolyEvaluator) EvalGELU(ct *rlwe.Ciphertext, g approx.GELU) (*rlwe.Ciphertext, error) {
	return pe.EvalChebyshev(ct, g.Poly, rlwe.Scale{})
}

// EvalReciprocal evaluates approx's 1/x: the Chebyshev initial guess, then
// r.Iters Newton steps y ← y·(2 − x·y) as t = x·y (rescale), y·(2 − t)
// (rescale): two levels each; depth r.Depth().
func (pe *PolyEvaluator) EvalReciprocal(ct *rlwe.Ciphertext, r approx.Reciprocal) (*rlwe.Ciphertext, error) {
	if err := pe.check(ct, r.Depth(), "reciprocal"); err != nil {
		return nil, err
	}
	// Scales: with S_y the scale of y at level ℓ and S_x that of x,
	// S_y' = S_x·S_y²/(q_ℓ·q_{ℓ−1}). Walk back from the default scale.
	lvl := ct.Level() - r.Init.Depth()
	target := pe.params.DefaultScale().Float64()
	sx := ct.Scale.Float64()
	scales := make([]float64, r.Iters+1)
	scales[r.Iters] = target
	for i := r.Iters - 1; i >= 0; i-- {
		l := lvl - 2*i
		scales[i] = math.Sqrt(scales[i+1] * pe.q(l) * pe.q(l-1) / sx)
	}
	y, err := pe.EvalChebyshev(ct, r.Init, rlwe.NewScale(scales[0]))
	if err != nil {
		return nil, err
	}
	for i := 0; i < r.Iters; i++ {
		t, err := pe.eval.MulRelinNew(ct, y)
		if err != nil {
			return nil, fmt.Errorf("he: reciprocal Newton step %d: %w", i, err)
		}
		if err = pe.eval.Rescale(t, t); err != nil {
			return nil, fmt.Errorf("he: reciprocal Newton step %d: %w", i, err)
		}
		// 2 − t: multiply by the integer −1 (no scale change), add 2.
		if err = pe.eval.Mul(t, -1, t); err != nil {
			return nil, err
		}
		if err = pe.eval.Add(t, 2, t); err != nil {
			return nil, err
		}
		if err = pe.eval.MulRelin(y, t, y); err != nil {
			return nil, fmt.Errorf("he: reciprocal Newton step %d: %w", i, err)
		}
		if err = pe.eval.Rescale(y, y); err != nil {
			return nil, fmt.Errorf("he: reciprocal Newton step %d: %w", i, err)
		}
	}
	return pe.landOnScale(y, rlwe.NewScale(target), "reciprocal")
}

// EvalInvSqrt evaluates approx's 1/√x: the Chebyshev initial guess, then
// s.Iters Newton steps y ← 1.5·y − (h·y)·y² with h = x/2 (computed once,
// one level on x, in parallel with the initial guess): h·y and y² at one
// level, their product with 1.5·y added before the rescale at the next: two
// levels each; depth s.Depth().
func (pe *PolyEvaluator) EvalInvSqrt(ct *rlwe.Ciphertext, s approx.InvSqrt) (*rlwe.Ciphertext, error) {
	if err := pe.check(ct, s.Depth(), "inverse square root"); err != nil {
		return nil, err
	}
	if s.Iters > 0 && s.Init.Depth() < 1 {
		return nil, fmt.Errorf("he: inverse square root: an initial guess of depth 0 leaves no level for x/2")
	}
	var h *rlwe.Ciphertext
	if s.Iters > 0 {
		var err error
		if h, err = pe.eval.MulNew(ct, 0.5); err != nil {
			return nil, err
		}
		if err = pe.eval.Rescale(h, h); err != nil {
			return nil, err
		}
	}
	// Scales: S_y' = S_h·S_y³/(q_ℓ²·q_{ℓ−1}).
	lvl := ct.Level() - s.Init.Depth()
	target := pe.params.DefaultScale().Float64()
	scales := make([]float64, s.Iters+1)
	scales[s.Iters] = target
	for i := s.Iters - 1; i >= 0; i-- {
		l := lvl - 2*i
		scales[i] = math.Cbrt(scales[i+1] * pe.q(l) * pe.q(l) * pe.q(l-1) / h.Scale.Float64())
	}
	y, err := pe.EvalChebyshev(ct, s.Init, rlwe.NewScale(scales[0]))
	if err != nil {
		return nil, err
	}
	for i := 0; i < s.Iters; i++ {
		a, err := pe.eval.MulRelinNew(h, y) // h·y
		if err != nil {
			return nil, fmt.Errorf("he: inverse square root Newton step %d: %w", i, err)
		}
		if err = pe.eval.Rescale(a, a); err != nil {
			return nil, err
		}
		b, err := pe.eval.MulRelinNew(y, y) // y²
		if err != nil {
			return nil, fmt.Errorf("he: inverse square root Newton step %d: %w", i, err)
		}
		if err = pe.eval.Rescale(b, b); err != nil {
			return nil, err
		}
		c, err := pe.eval.MulRelinNew(a, b) // (h·y)·y², scale S_a·S_b, not yet rescaled
		if err != nil {
			return nil, fmt.Errorf("he: inverse square root Newton step %d: %w", i, err)
		}
		// d = 1.5·y at the same level and exactly the same scale as c:
		// multiply by the integer round(1.5·S_c/S_y) and relabel the scale.
		k := new(big.Float).Quo(&c.Scale.Value, &y.Scale.Value)
		k.Mul(k, big.NewFloat(1.5))
		kInt, _ := new(big.Float).Add(k, big.NewFloat(0.5)).Int(nil)
		d := y.CopyNew()
		pe.eval.DropLevel(d, d.Level()-c.Level())
		if err = pe.eval.Mul(d, kInt, d); err != nil {
			return nil, err
		}
		d.Scale = c.Scale
		if err = pe.eval.Sub(d, c, d); err != nil {
			return nil, err
		}
		if err = pe.eval.Rescale(d, d); err != nil {
			return nil, err
		}
		y = d
	}
	return pe.landOnScale(y, rlwe.NewScale(target), "inverse square root")
}

// q returns the i-th prime of the modulus chain as a float64.
func (pe *PolyEvaluator) q(i int) float64 { return float64(pe.params.Q()[i]) }

// landOnScale relabels ct's scale with want after checking that the two
// differ by less than 2^-40 relatively (float64 rounding in the scale walk),
// so the relabelling error is far below CKKS noise.
func (pe *PolyEvaluator) landOnScale(ct *rlwe.Ciphertext, want rlwe.Scale, what string) (*rlwe.Ciphertext, error) {
	r := ct.Scale.Float64() / want.Float64()
	if math.Abs(r-1) > 0x1p-40 {
		return nil, fmt.Errorf("he: %s: output scale 2^%.6f is not the default scale 2^%.6f (internal scale walk error)",
			what, math.Log2(ct.Scale.Float64()), math.Log2(want.Float64()))
	}
	ct.Scale = want
	return ct, nil
}
