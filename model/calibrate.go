package model

import (
	"fmt"
	"math"
	"strings"

	"github.com/entropi-ai/entropi/approx"
)

// CalibrateOptions steer Calibrate. Zero fields take the defaults below.
type CalibrateOptions struct {
	// Margin widens the additive ranges (exp, GELU) by this fraction of the
	// observed width on each side (default 0.2), and at least by 0.5.
	Margin float64
	// RatioMargin widens the positive ranges (reciprocal, inverse square
	// root) multiplicatively: [lo/RatioMargin, hi·RatioMargin] (default 2).
	RatioMargin float64
	// SoftmaxTol bounds the attention-probability error that the exp
	// polynomial may cause: T·maxAbsErr(exp)/min Σexp ≤ SoftmaxTol, T the
	// context length and min Σexp the smallest softmax denominator in range
	// (default 1e-3).
	SoftmaxTol float64
	// RecipTol, InvSqrtTol: maximum relative error (default 1e-4).
	RecipTol, InvSqrtTol float64
	// GELUTol: maximum absolute error (default 1e-3).
	GELUTol float64
}

func (o *CalibrateOptions) defaults() {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.Margin, 0.2)
	def(&o.RatioMargin, 2)
	def(&o.SoftmaxTol, 1e-3)
	def(&o.RecipTol, 1e-4)
	def(&o.InvSqrtTol, 1e-4)
	def(&o.GELUTol, 1e-3)
}

// Candidate degrees: 2^k − 1 uses the whole power-of-two basis of a given
// depth (degree 15: 5 levels, 63: 7 levels with the change of variable).
var (
	polyDegrees = []int{7, 15, 31, 63, 127}
	initDegrees = []int{3, 7, 15, 31, 63}
	maxNewton   = 12
)

// Calibration is the result of Calibrate: what the exact model's
// nonlinearities saw, the approximation set built from it, and for each
// approximation its range, shape, depth and measured error.
type Calibration struct {
	Observed Ranges
	Set      *approx.Set
	Report   []string // one line per approximation
	Warnings []string // tolerances that no candidate met
}

func (c *Calibration) String() string {
	var b strings.Builder
	b.WriteString("observed (exact model):\n")
	b.WriteString(c.Observed.String())
	b.WriteString("approximations:\n")
	for _, l := range c.Report {
		b.WriteString("  " + l + "\n")
	}
	for _, l := range c.Warnings {
		b.WriteString("  warning: " + l + "\n")
	}
	return b.String()
}

// Calibrate runs the exact reference over the sample sequences (each at most
// the context length), records the input range of every nonlinearity, widens
// it by the margins, and builds an approx.Set: for each function the
// candidate of least CKKS depth that meets its tolerance, errors measured
// with approx's MaxError.
//
//   - exp: Chebyshev degree from 7, 15, 31, 63, 127; the tolerance is on the
//     softmax it feeds (absolute error times T over the smallest denominator).
//   - reciprocal, inverse square root: Chebyshev initial guess of degree 3,
//     7, 15, 31 or 63 followed by 0–12 Newton steps; least depth (init
//     depth + 2 or 3 per step) with relative error within tolerance. For
//     the reciprocal the interpolant at Chebyshev nodes is already the
//     start of least relative error: 1 − x·p(x) = T_{n+1}(u(x))/T_{n+1}(u(0)),
//     error 1/|T_{n+1}(u(0))| < 1, so Newton always converges, slowly when
//     the range spans orders of magnitude (error ≈ 1 − 2(n+1)/√(hi/lo)).
//   - GELU (GELU models): Chebyshev degree from 7 to 127, absolute error.
//
// Where no candidate meets a tolerance the most accurate one is kept and a
// warning says so.
func Calibrate(w *Weights, seqs [][]int, opt CalibrateOptions) (*Calibration, error) {
	opt.defaults()
	cfg := w.Config
	b := NewReference(cfg)
	b.Ranges = &Ranges{}
	for i, seq := range seqs {
		b.Reset()
		if _, err := Forward(w, b, seq, 0); err != nil {
			return nil, fmt.Errorf("calibration sequence %d: %w", i, err)
		}
	}
	obs := *b.Ranges
	c := &Calibration{Observed: obs, Set: &approx.Set{}}
	if obs.Exp.N == 0 {
		return nil, fmt.Errorf("calibration: no sample sequences")
	}
	for _, r := range []Range{obs.Exp, obs.Recip, obs.InvSqrt, obs.GELU} {
		if r.N > 0 && (math.IsNaN(r.Lo) || math.IsNaN(r.Hi) || math.IsInf(r.Lo, 0) || math.IsInf(r.Hi, 0)) {
			return nil, fmt.Errorf("calibration: non-finite nonlinearity inputs %v", r)
		}
	}

	// The reciprocal's input is the mean exp-score of a row. If scores may
	// move by the exp range's margin, the mean moves by at most e^margin: widen
	// the observed mean range by that factor (capped below), never past [e^lo, e^hi],
	// which bounds the mean of any row whose scores stay in the exp range.
	elo, ehi := widen(obs.Exp, opt.Margin)
	// A full e^margin is costly for the reciprocal (every factor of range
	// costs Newton steps), so the widening is capped at RatioMargin².
	capped := func(shift float64) float64 { return math.Min(math.Exp(shift), opt.RatioMargin*opt.RatioMargin) }
	rlo := math.Max(obs.Recip.Lo/capped(obs.Exp.Lo-elo), math.Exp(elo))
	rhi := math.Min(obs.Recip.Hi*capped(ehi-obs.Exp.Hi), math.Exp(ehi))
	recip, rabs, rrel := bestNewton(func(d, it int) newtonApprox { return approx.NewReciprocal(rlo, rhi, d, it) },
		opt.RecipTol, "reciprocal", c)
	c.Set.Recip = recip.(approx.Reciprocal)
	c.Report = append(c.Report, fmt.Sprintf("recip    [%.4g, %.4g] init degree %d + %d Newton steps, depth %d, max abs %.2e, rel %.2e",
		rlo, rhi, c.Set.Recip.Init.Degree(), c.Set.Recip.Iters, c.Set.Recip.Depth(), rabs, rrel))

	var exp approx.Exp
	var eabs, bound float64
	for _, d := range polyDegrees {
		exp = approx.NewExp(elo, ehi, d)
		eabs, _ = exp.MaxError()
		if bound = float64(cfg.Context) * eabs / rlo; bound <= opt.SoftmaxTol {
			break
		}
	}
	if bound > opt.SoftmaxTol {
		c.Warnings = append(c.Warnings, fmt.Sprintf("exp: degree %d leaves a softmax error bound of %.2e > %.0e (scores span [%.3g, %.3g]: narrow them, e.g. with temperature or entropy regularization)",
			exp.Poly.Degree(), bound, opt.SoftmaxTol, obs.Exp.Lo, obs.Exp.Hi))
	}
	c.Set.Exp = exp
	c.Report = append(c.Report, fmt.Sprintf("exp      [%.4g, %.4g] degree %d, depth %d, max abs %.2e, softmax bound T·abs/min Σ = %.2e",
		elo, ehi, exp.Poly.Degree(), exp.Depth(), eabs, bound))

	if obs.InvSqrt.N > 0 {
		ilo, ihi := obs.InvSqrt.Lo/opt.RatioMargin, obs.InvSqrt.Hi*opt.RatioMargin
		is, iabs, irel := bestNewton(func(d, it int) newtonApprox { return approx.NewInvSqrt(ilo, ihi, d, it) },
			opt.InvSqrtTol, "inverse square root", c)
		s := is.(approx.InvSqrt)
		c.Set.InvSqrt = &s
		c.Report = append(c.Report, fmt.Sprintf("inv_sqrt [%.4g, %.4g] init degree %d + %d Newton steps, depth %d, max abs %.2e, rel %.2e",
			ilo, ihi, s.Init.Degree(), s.Iters, s.Depth(), iabs, irel))
	}
	if obs.GELU.N > 0 {
		glo, ghi := widen(obs.GELU, opt.Margin)
		var g approx.GELU
		var gabs float64
		for _, d := range polyDegrees {
			g = approx.NewGELU(glo, ghi, d)
			if gabs, _ = g.MaxError(); gabs <= opt.GELUTol {
				break
			}
		}
		if gabs > opt.GELUTol {
			c.Warnings = append(c.Warnings, fmt.Sprintf("gelu: degree %d leaves max abs error %.2e > %.0e", g.Poly.Degree(), gabs, opt.GELUTol))
		}
		c.Set.GELU = &g
		c.Report = append(c.Report, fmt.Sprintf("gelu     [%.4g, %.4g] degree %d, depth %d, max abs %.2e",
			glo, ghi, g.Poly.Degree(), g.Depth(), gabs))
	}
	return c, nil
}

func widen(r Range, margin float64) (lo, hi float64) {
	m := math.Max(margin*(r.Hi-r.Lo), 0.5)
	return r.Lo - m, r.Hi + m
}

type newtonApprox interface {
	Depth() int
	MaxError() (abs, rel float64)
}

// bestNewton returns the candidate (initial degree, Newton steps) of
// least depth whose relative error is within tol, or else the most accurate.
func bestNewton(mk func(degree, iters int) newtonApprox, tol float64, name string, c *Calibration) (newtonApprox, float64, float64) {
	var best, accurate newtonApprox
	var bestAbs, bestRel, accAbs float64
	accRel := math.Inf(1)
	for _, d := range initDegrees {
		for it := 0; it <= maxNewton; it++ {
			a := mk(d, it)
			if best != nil && a.Depth() >= best.Depth() {
				continue // cannot improve on a candidate that already meets tol
			}
			abs, rel := a.MaxError()
			if math.IsNaN(rel) {
				continue
			}
			if rel < accRel {
				accurate, accAbs, accRel = a, abs, rel
			}
			if rel <= tol {
				best, bestAbs, bestRel = a, abs, rel
			}
		}
	}
	if best == nil {
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: no candidate reaches relative error %.0e (best %.2e)", name, tol, accRel))
		return accurate, accAbs, accRel
	}
	return best, bestAbs, bestRel
}

// chebT evaluates the Chebyshev polynomial T_n at any real u.
func chebT(n int, u float64) float64 {
	if math.Abs(u) <= 1 {
		return math.Cos(float64(n) * math.Acos(u))
	}
	t := math.Cosh(float64(n) * math.Acosh(math.Abs(u)))
	if u < 0 && n%2 == 1 {
		return -t
	}
	return t
}
