package model

import (
	"math"
	"testing"

	"github.com/entropi-ai/entropi/approx"
)

// The Chebyshev interpolant of 1/x equioscillates in relative error,
// 1 − x·p(x) = T_{n+1}(u(x))/T_{n+1}(u(0)), so its error 1/|T_{n+1}(u(0))| is
// below 1 on any positive range and Newton squares it at every step: the
// property Calibrate's reciprocal search relies on, checked on a range of
// ratio 1e6.
func TestReciprocalInterpolantRelativeError(t *testing.T) {
	lo, hi, n := 0.01, 1e4, 31
	want := 1 / math.Abs(chebT(n+1, -(hi+lo)/(hi-lo)))
	_, rel := approx.NewReciprocal(lo, hi, n, 0).MaxError()
	if math.Abs(rel-want) > 1e-3*want || !(rel < 1) {
		t.Fatalf("initial relative error %.6f, theory %.6f", rel, want)
	}
	_, rel4 := approx.NewReciprocal(lo, hi, n, 4).MaxError()
	if math.Abs(rel4-math.Pow(want, 16)) > 1e-3*math.Pow(want, 16) {
		t.Fatalf("after 4 Newton steps relative error %.6g, want e0^16 = %.6g", rel4, math.Pow(want, 16))
	}
}

func TestCalibrateCoversObservedRanges(t *testing.T) {
	w := testModels(t)["baseline"]
	toks := randomTokens(9, w.Config.Vocab, 3*w.Config.Context)
	cal, err := Calibrate(w, chunks(toks, w.Config.Context), CalibrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	set, obs := cal.Set, cal.Observed
	for _, c := range []struct {
		name   string
		r      Range
		lo, hi float64
	}{
		{"exp", obs.Exp, set.Exp.Poly.Lo, set.Exp.Poly.Hi},
		{"recip", obs.Recip, set.Recip.Init.Lo, set.Recip.Init.Hi},
		{"inv_sqrt", obs.InvSqrt, set.InvSqrt.Init.Lo, set.InvSqrt.Init.Hi},
		{"gelu", obs.GELU, set.GELU.Poly.Lo, set.GELU.Poly.Hi},
	} {
		if c.r.N == 0 || !(c.lo < c.r.Lo && c.hi > c.r.Hi) {
			t.Errorf("%s: approximation range [%g, %g] does not strictly contain the observed [%g, %g] (%d inputs)", c.name, c.lo, c.hi, c.r.Lo, c.r.Hi, c.r.N)
		}
	}
	if _, err := Calibrate(w, nil, CalibrateOptions{}); err == nil {
		t.Fatal("calibration without samples accepted")
	}
}
