package approx

import (
	"math"
	"testing"
)

// Stated bounds: the measured errors of the defaults (see defaults.go) with a
// factor-2 margin. A change of fit, range or iteration count that worsens an
// approximation beyond its documented error fails here.
func TestDefaults(t *testing.T) {
	type row struct {
		name            string
		depth           int
		maxAbs, maxRel  float64
		measure         func() (float64, float64)
		in              func(float64) bool
		eval, exact     func(float64) float64
		lo, hi, outside float64
	}
	e, r, s, g := DefaultExp(), DefaultReciprocal(), DefaultInvSqrt(), DefaultGELU()
	rows := []row{
		{"exp[-16,4]/31", 6, 2e-13, 1e-7, e.MaxError, e.In, e.Eval, math.Exp, -16, 4, 14},
		{"recip[1,512]/63+2", 11, 5e-9, 5e-9, r.MaxError, r.In, r.Eval, func(x float64) float64 { return 1 / x }, 1, 512, 0.25},
		{"invsqrt[0.01,100]/63+4", 15, 5e-6, 5e-7, s.MaxError, s.In, s.Eval, func(x float64) float64 { return 1 / math.Sqrt(x) }, 0.01, 100, 140},
		{"gelu[-8,8]/63", 7, 1e-12, 1e-12, g.MaxError, g.In, g.Eval, GELUExact, -8, 8, 11},
	}
	for _, c := range rows {
		abs, rel := c.measure()
		t.Logf("%-24s depth %2d  max abs err %.3g  max rel err %.3g", c.name, c.depth, abs, rel)
		if abs > c.maxAbs || rel > c.maxRel {
			t.Errorf("%s: error abs %.3g rel %.3g exceeds stated %.3g / %.3g", c.name, abs, rel, c.maxAbs, c.maxRel)
		}
		// Inside the range In is true at both ends; outside it is false and
		// the approximation is far from the function (divergence is real,
		// so In is the check that matters; NaN/Inf count as divergence).
		if !c.in(c.lo) || !c.in(c.hi) || c.in(c.outside) {
			t.Errorf("%s: In wrong at the range ends or at %g", c.name, c.outside)
		}
		if d := math.Abs(c.eval(c.outside)-c.exact(c.outside)) / math.Max(math.Abs(c.exact(c.outside)), 1e-300); d <= 1e3*c.maxRel {
			t.Errorf("%s: at %g (out of range) relative error %.3g: expected divergence", c.name, c.outside, d)
		}
	}
	if e.Depth() != 6 || r.Depth() != 11 || s.Depth() != 15 || g.Depth() != 7 {
		t.Errorf("depths %d %d %d %d, documented 6 11 15 7", e.Depth(), r.Depth(), s.Depth(), g.Depth())
	}
}

// The interpolant reproduces low-degree polynomials exactly and its error
// shrinks with the degree for a smooth function.
func TestChebyshevFit(t *testing.T) {
	p := FitChebyshev(func(x float64) float64 { return 3*x*x*x - x + 2 }, -2, 5, 3)
	for _, x := range []float64{-2, -1.3, 0, 0.7, 4.99, 5} {
		want := 3*x*x*x - x + 2
		if d := math.Abs(p.Eval(x) - want); d > 1e-11*math.Max(1, math.Abs(want)) {
			t.Errorf("cubic not reproduced at %g: got %g want %g", x, p.Eval(x), want)
		}
	}
	prev := math.Inf(1)
	for _, deg := range []int{7, 15, 31} {
		abs, _ := NewExp(-8, 2, deg).MaxError()
		if !(abs < prev) {
			t.Errorf("exp error did not decrease with degree %d: %g ≥ %g", deg, abs, prev)
		}
		prev = abs
	}
}

func TestDepth(t *testing.T) {
	cases := []struct {
		lo, hi float64
		deg    int
		want   int
	}{
		{-16, 4, 31, 6}, {-16, 4, 63, 7}, {-16, 4, 64, 8}, {-16, 4, 1, 2},
		{-1, 1, 63, 6},     // a = 1: the change of basis is free
		{-0.5, 0.5, 15, 4}, // a = 2: integer, free
		{0, 3, 15, 5},      // a = 2/3
		{0, 3, 0, 0},
	}
	for _, c := range cases {
		p := FitChebyshev(math.Sin, c.lo, c.hi, c.deg)
		if got := p.Depth(); got != c.want {
			t.Errorf("[%g,%g] deg %d: depth %d, want %d", c.lo, c.hi, c.deg, got, c.want)
		}
	}
	if d := NewReciprocal(1, 8, 15, 3).Depth(); d != 5+6 {
		t.Errorf("reciprocal depth %d, want 11", d)
	}
	if d := NewInvSqrt(1, 8, 15, 3).Depth(); d != 5+6 {
		t.Errorf("invsqrt depth %d, want 11", d)
	}
}

// Newton squares the relative error: the reciprocal and inverse square root
// error falls monotonically with iterations until float64 rounding.
func TestNewtonConverges(t *testing.T) {
	prevR, prevS := math.Inf(1), math.Inf(1)
	for it := 0; it <= 3; it++ {
		_, rr := NewReciprocal(1, 64, 15, it).MaxError()
		_, rs := NewInvSqrt(0.1, 10, 15, it).MaxError()
		if !(rr < prevR || rr < 1e-14) || !(rs < prevS || rs < 1e-14) {
			t.Errorf("iteration %d: errors %g %g did not decrease from %g %g", it, rr, rs, prevR, prevS)
		}
		prevR, prevS = rr, rs
	}
	// Evaluation order matches the textbook step within float64 rounding.
	s := NewInvSqrt(0.1, 10, 15, 2)
	for _, x := range []float64{0.1, 0.37, 2, 9.9} {
		y := s.Init.Eval(x)
		for i := 0; i < 2; i++ {
			y = 0.5 * y * (3 - x*y*y)
		}
		if d := math.Abs(y - s.Eval(x)); d > 1e-14*math.Abs(y) {
			t.Errorf("invsqrt at %g: %g vs textbook %g", x, s.Eval(x), y)
		}
	}
}

func TestSoftmaxMatchesExact(t *testing.T) {
	set := Set{Exp: DefaultExp(), Recip: NewReciprocal(1, 512, 63, 2)}
	scores := []float64{-3, 0.5, 2, 3.9, -15, 1}
	got := make([]float64, len(scores))
	set.Softmax(got, scores)
	var sum float64
	for _, v := range scores {
		sum += math.Exp(v)
	}
	for i, v := range scores {
		if d := math.Abs(got[i] - math.Exp(v)/sum); d > 1e-8 {
			t.Errorf("softmax[%d] off by %g", i, d)
		}
	}
}
