package approx

import (
	"fmt"
	"math"
)

// Exp approximates e^x over [Lo, Hi] (the attention-score range; softmax has
// no max-subtraction under HE, so the range must cover every score).
type Exp struct {
	Poly Chebyshev `json:"poly"`
}

// NewExp fits e^x on [lo, hi] with a Chebyshev interpolant of the given degree.
func NewExp(lo, hi float64, degree int) Exp {
	return Exp{Poly: FitChebyshev(math.Exp, lo, hi, degree)}
}

func (e Exp) Eval(x float64) float64  { return e.Poly.Eval(x) }
func (e Exp) Depth() int              { return e.Poly.Depth() }
func (e Exp) Range() (lo, hi float64) { return e.Poly.Lo, e.Poly.Hi }

// MaxError returns the maximum absolute and relative error over the range.
func (e Exp) MaxError() (abs, rel float64) {
	return Error(e.Eval, math.Exp, e.Poly.Lo, e.Poly.Hi, 1e-300)
}

// Reciprocal approximates 1/x over [Lo, Hi] (0 < Lo < Hi): a Chebyshev
// initial guess followed by Iters Newton steps y ← y·(2 − x·y), each of which
// squares the relative error 1 − x·y and costs two levels.
type Reciprocal struct {
	Init  Chebyshev `json:"init"`
	Iters int       `json:"iters"`
}

// NewReciprocal builds a reciprocal on [lo, hi] from an initial interpolant of
// the given degree and the given number of Newton iterations.
func NewReciprocal(lo, hi float64, initDegree, iters int) Reciprocal {
	if !(lo > 0) {
		panic(fmt.Sprintf("approx: reciprocal range must be positive, got [%g, %g]", lo, hi))
	}
	return Reciprocal{Init: FitChebyshev(func(x float64) float64 { return 1 / x }, lo, hi, initDegree), Iters: iters}
}

// Eval runs exactly the steps the CKKS evaluator runs.
func (r Reciprocal) Eval(x float64) float64 {
	y := r.Init.Eval(x)
	for i := 0; i < r.Iters; i++ {
		y = y * (2 - x*y)
	}
	return y
}

func (r Reciprocal) Depth() int              { return r.Init.Depth() + 2*r.Iters }
func (r Reciprocal) Range() (lo, hi float64) { return r.Init.Lo, r.Init.Hi }

func (r Reciprocal) MaxError() (abs, rel float64) {
	return Error(r.Eval, func(x float64) float64 { return 1 / x }, r.Init.Lo, r.Init.Hi, 0)
}

// InvSqrt approximates 1/√x over [Lo, Hi] (0 < Lo < Hi): a Chebyshev initial
// guess then Iters Newton steps y ← y·(3 − x·y²)/2, evaluated as
// y ← 1.5·y − (h·y)·y² with h = x/2, which costs two levels per step (h·y
// and y² in parallel, then their product; 1.5·y is folded into the rescale).
// Lattigo has no such helper; LayerNorm (baseline model only) needs it.
type InvSqrt struct {
	Init  Chebyshev `json:"init"`
	Iters int       `json:"iters"`
}

// NewInvSqrt builds an inverse square root on [lo, hi].
func NewInvSqrt(lo, hi float64, initDegree, iters int) InvSqrt {
	if !(lo > 0) {
		panic(fmt.Sprintf("approx: inverse square root range must be positive, got [%g, %g]", lo, hi))
	}
	return InvSqrt{Init: FitChebyshev(func(x float64) float64 { return 1 / math.Sqrt(x) }, lo, hi, initDegree), Iters: iters}
}

// Eval runs exactly the steps the CKKS evaluator runs.
func (s InvSqrt) Eval(x float64) float64 {
	y := s.Init.Eval(x)
	h := 0.5 * x
	for i := 0; i < s.Iters; i++ {
		y = 1.5*y - (h*y)*(y*y)
	}
	return y
}

// Depth is the initial guess's depth plus two levels per Newton step.
func (s InvSqrt) Depth() int              { return s.Init.Depth() + 2*s.Iters }
func (s InvSqrt) Range() (lo, hi float64) { return s.Init.Lo, s.Init.Hi }

func (s InvSqrt) MaxError() (abs, rel float64) {
	return Error(s.Eval, func(x float64) float64 { return 1 / math.Sqrt(x) }, s.Init.Lo, s.Init.Hi, 0)
}

// GELUExact is the erf form of GELU used by the plaintext reference.
func GELUExact(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

// GELU approximates GELUExact over [Lo, Hi] by a Chebyshev interpolant.
type GELU struct {
	Poly Chebyshev `json:"poly"`
}

// NewGELU fits GELU on [lo, hi].
func NewGELU(lo, hi float64, degree int) GELU {
	return GELU{Poly: FitChebyshev(GELUExact, lo, hi, degree)}
}

func (g GELU) Eval(x float64) float64  { return g.Poly.Eval(x) }
func (g GELU) Depth() int              { return g.Poly.Depth() }
func (g GELU) Range() (lo, hi float64) { return g.Poly.Lo, g.Poly.Hi }

func (g GELU) MaxError() (abs, rel float64) {
	return Error(g.Eval, GELUExact, g.Poly.Lo, g.Poly.Hi, 1)
}

// In reports whether x lies in the approximation range (outside it the
// polynomial, and hence the Newton iteration it seeds, diverges).
func (e Exp) In(x float64) bool        { return e.Poly.In(x) }
func (r Reciprocal) In(x float64) bool { return r.Init.In(x) }
func (s InvSqrt) In(x float64) bool    { return s.Init.In(x) }
func (g GELU) In(x float64) bool       { return g.Poly.In(x) }
