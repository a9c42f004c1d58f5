package approx

import (
	"fmt"
	"math"
	"math/bits"
)

// Chebyshev is a polynomial written in the Chebyshev basis of the interval
// [Lo, Hi]: p(x) = Σ_k Coeffs[k]·T_k(u), u = (2x − Lo − Hi)/(Hi − Lo).
// Outside [Lo, Hi] it is still a polynomial (HE cannot clamp), so it diverges
// quickly: callers keep inputs inside the range and count violations.
type Chebyshev struct {
	Lo, Hi float64
	Coeffs []float64
}

// FitChebyshev interpolates f at the degree+1 Chebyshev nodes of [lo, hi].
func FitChebyshev(f func(float64) float64, lo, hi float64, degree int) Chebyshev {
	if !(hi > lo) || degree < 0 {
		panic(fmt.Sprintf("approx: invalid Chebyshev fit: range [%g, %g], degree %d", lo, hi, degree))
	}
	n := degree + 1
	fx := make([]float64, n)
	for k := 0; k < n; k++ {
		u := math.Cos(math.Pi * (float64(k) + 0.5) / float64(n))
		fx[k] = f(0.5*(hi-lo)*u + 0.5*(hi+lo))
	}
	c := make([]float64, n)
	for j := 0; j < n; j++ {
		var s float64
		for k := 0; k < n; k++ {
			s += fx[k] * math.Cos(math.Pi*float64(j)*(float64(k)+0.5)/float64(n))
		}
		c[j] = 2 * s / float64(n)
	}
	c[0] /= 2
	return Chebyshev{Lo: lo, Hi: hi, Coeffs: c}
}

// Degree returns the polynomial degree.
func (c Chebyshev) Degree() int { return len(c.Coeffs) - 1 }

// Depth is the number of CKKS levels that evaluating the polynomial costs in
// package he (Lattigo's Paterson–Stockmeyer evaluator, measured): ⌈log2(degree+1)⌉
// (= bits.Len(degree)) for the power-basis tree, plus one for the affine change
// of variable u = a·x + b into [−1, 1] unless a = 2/(Hi−Lo) is an integer (an
// integer constant multiplies a ciphertext without rescaling).
func (c Chebyshev) Depth() int {
	if c.Degree() < 1 {
		return 0
	}
	return bits.Len(uint(c.Degree())) + c.ChangeOfBasisDepth()
}

// ChangeOfBasisDepth is the number of levels the map u = a·x + b costs: 0 when
// a = 2/(Hi−Lo) is an integer, else 1.
func (c Chebyshev) ChangeOfBasisDepth() int {
	a := 2 / (c.Hi - c.Lo)
	if a == math.Trunc(a) {
		return 0
	}
	return 1
}

// In reports whether x lies inside the approximation range.
func (c Chebyshev) In(x float64) bool { return x >= c.Lo && x <= c.Hi }

// Eval evaluates the polynomial at x with the Clenshaw recurrence.
func (c Chebyshev) Eval(x float64) float64 {
	u := (2*x - c.Lo - c.Hi) / (c.Hi - c.Lo)
	var b1, b2 float64
	for k := len(c.Coeffs) - 1; k >= 1; k-- {
		b1, b2 = 2*u*b1-b2+c.Coeffs[k], b1
	}
	return u*b1 - b2 + c.Coeffs[0]
}

// Error measures the largest absolute and relative error of approx against
// exact on a dense grid of [lo, hi] (relative error is taken against
// max(|exact|, floor) so that zeros of the function do not blow it up).
func Error(approx, exact func(float64) float64, lo, hi, floor float64) (maxAbs, maxRel float64) {
	const samples = 20001
	for i := 0; i < samples; i++ {
		x := lo + (hi-lo)*float64(i)/float64(samples-1)
		e, a := exact(x), approx(x)
		d := math.Abs(a - e)
		maxAbs = math.Max(maxAbs, d)
		maxRel = math.Max(maxRel, d/math.Max(math.Abs(e), floor))
	}
	return maxAbs, maxRel
}
