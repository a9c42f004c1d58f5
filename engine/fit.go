package engine

import (
	"context"
	"fmt"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// UsableLevels returns the mask level of the masked refresh for a preset
// (with the value bound the engine would derive from set) and the number of
// levels between two refreshes (max level − mask level).
func UsableLevels(preset he.Preset, allowInsecure bool, set *approx.Set, contextLen int) (maskLevel, usable int, err error) {
	params, err := preset.Parameters(allowInsecure)
	if err != nil {
		return 0, 0, err
	}
	mo := he.DefaultMaskOptions()
	mo.ValueBound = valueBound(set, contextLen)
	_, pk := rlwe.NewKeyGenerator(params).GenKeyPairNew()
	mr, err := he.NewMaskedRefresher(params, pk, func(context.Context, *he.RefreshRequest) (*he.RefreshResponse, error) {
		return nil, fmt.Errorf("planning only")
	}, mo)
	if err != nil {
		return 0, 0, err
	}
	m, err := mr.MaskLevel(params.DefaultScale())
	return m, params.MaxLevel() - m, err
}

// FitToPreset returns a copy of set in which every polynomial that cannot
// be evaluated between two refreshes of the preset is refitted on the same
// range: Exp and GELU at the largest degree 2^k − 1 that fits (less
// accurate), Recip and InvSqrt with the largest initial guess that fits and
// as many more Newton steps as bring the relative error back to the
// original's (the engine splits Newton chains across refreshes). Notes say
// what changed and the errors before and after. A model evaluated with the
// result should be compared against the approximation backend with the
// same result.
func FitToPreset(set *approx.Set, preset he.Preset, allowInsecure bool, contextLen int) (*approx.Set, []string, error) {
	_, usable, err := UsableLevels(preset, allowInsecure, set, contextLen)
	if err != nil {
		return nil, nil, err
	}
	out := *set
	var notes []string
	fitDeg := func(c approx.Chebyshev) int {
		deg := c.Degree()
		for deg > 1 {
			probe := approx.FitChebyshev(func(float64) float64 { return 0 }, c.Lo, c.Hi, deg)
			if probe.Depth() <= usable {
				break
			}
			deg = (deg+1)/2 - 1
		}
		return deg
	}
	if expDepth(&out) > usable {
		// The engine evaluates exp on [−1, 1] (expUnit: the change of
		// variable is folded into the score mask), so fit the degree there.
		lo, hi := out.Exp.Range()
		before, _ := out.Exp.MaxError()
		unit, _, _ := expUnit(out.Exp)
		out.Exp = approx.NewExp(lo, hi, fitDeg(unit.Poly))
		after, _ := out.Exp.MaxError()
		notes = append(notes, fmt.Sprintf("exp: degree %d → %d (depth %d ≤ %d usable), max abs error %.2e → %.2e",
			set.Exp.Poly.Degree(), out.Exp.Poly.Degree(), expDepth(&out), usable, before, after))
	}
	if out.GELU != nil && out.GELU.Depth() > usable {
		lo, hi := out.GELU.Range()
		before, _ := out.GELU.MaxError()
		g := approx.NewGELU(lo, hi, fitDeg(out.GELU.Poly))
		after, _ := g.MaxError()
		out.GELU = &g
		notes = append(notes, fmt.Sprintf("gelu: degree %d → %d, max abs error %.2e → %.2e", set.GELU.Poly.Degree(), g.Poly.Degree(), before, after))
	}
	if out.Recip.Init.Depth() > usable {
		lo, hi := out.Recip.Range()
		_, target := out.Recip.MaxError()
		deg := fitDeg(approx.Chebyshev{Lo: lo, Hi: hi, Coeffs: make([]float64, out.Recip.Init.Degree()+1)})
		for approx.FitChebyshev(func(float64) float64 { return 0 }, lo, hi, deg).Depth() > usable && deg > 1 {
			deg = (deg+1)/2 - 1
		}
		r := approx.NewReciprocal(lo, hi, deg, out.Recip.Iters)
		for _, rel := r.MaxError(); rel > target && r.Iters < out.Recip.Iters+12; _, rel = r.MaxError() {
			r.Iters++
		}
		_, rel := r.MaxError()
		notes = append(notes, fmt.Sprintf("recip: init degree %d + %d Newton → %d + %d (rel error %.2e → %.2e)",
			set.Recip.Init.Degree(), set.Recip.Iters, deg, r.Iters, target, rel))
		out.Recip = r
	}
	if out.InvSqrt != nil && out.InvSqrt.Init.Depth() > usable {
		lo, hi := out.InvSqrt.Range()
		_, target := out.InvSqrt.MaxError()
		deg := out.InvSqrt.Init.Degree()
		for approx.FitChebyshev(func(float64) float64 { return 0 }, lo, hi, deg).Depth() > usable && deg > 1 {
			deg = (deg+1)/2 - 1
		}
		s := approx.NewInvSqrt(lo, hi, deg, out.InvSqrt.Iters)
		for _, rel := s.MaxError(); rel > target && s.Iters < out.InvSqrt.Iters+12; _, rel = s.MaxError() {
			s.Iters++
		}
		_, rel := s.MaxError()
		notes = append(notes, fmt.Sprintf("inv_sqrt: init degree %d + %d Newton → %d + %d (rel error %.2e → %.2e)",
			set.InvSqrt.Init.Degree(), set.InvSqrt.Iters, deg, s.Iters, target, rel))
		out.InvSqrt = &s
	}
	return &out, notes, nil
}
