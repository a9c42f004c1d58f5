package train

import "math"

// Score-range regularization (training only; an HE requirement, not a
// paper ingredient):
//
//	L_range = (1/(L·H·B·T)) Σ_{l,h,b,i} Σ_{j≤i} relu(|s_ij| − S)²
//	L       = L_CE + λ·L_ent + μ·L_range
//
// where s_ij are the scaled attention scores fed to the softmax (after the
// per-head, per-position temperature) and S is Options.ScoreBound. The
// encrypted softmax evaluates exp(s) and the reciprocal of the mean exp
// as polynomials on ranges fixed at calibration time, without the max
// subtraction a plaintext softmax does; scores spanning ±60 (what the
// paper's recipe alone gave our 4-layer model in its third layer) would
// need exp on a range no polynomial covers at CKKS precision and a
// reciprocal over e^±60. Keeping |s| ≤ S bounds exp's range to [−S, S] and
// the mean exp-score to [e^−S, e^S]. The penalty is zero inside the bound,
// so a model that already respects it is unchanged.

// observeScores accumulates the penalty of one softmax row and the largest
// |score| of the pass.
func (ws *Workspace) observeScores(p *Params, srow []float64) {
	bound := p.Opts.ScoreBound
	for _, v := range srow {
		a := math.Abs(v)
		ws.scoreMax = max(ws.scoreMax, a)
		if p.Opts.ScorePenalty > 0 && a > bound {
			ws.rangeSum += (a - bound) * (a - bound)
		}
	}
}

// rangePenalty returns μ·L_range of the last forward pass and its largest
// |score|.
func (ws *Workspace) rangePenalty(p *Params, B, T int) (pen, scoreMax float64) {
	if p.Opts.ScorePenalty <= 0 {
		return 0, ws.scoreMax
	}
	L, H := p.Config.Layers, p.Config.Heads
	return p.Opts.ScorePenalty * ws.rangeSum / float64(L*H*B*T), ws.scoreMax
}

// scoreGrad is ∂(μ·L_range)/∂s for one scaled score s.
func (ws *Workspace) scoreGrad(p *Params, s float64, B, T int) float64 {
	if p.Opts.ScorePenalty <= 0 {
		return 0
	}
	a := math.Abs(s) - p.Opts.ScoreBound
	if a <= 0 {
		return 0
	}
	L, H := p.Config.Layers, p.Config.Heads
	return math.Copysign(2*p.Opts.ScorePenalty*a/float64(L*H*B*T), s)
}
