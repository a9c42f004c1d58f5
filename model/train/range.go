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

// rangePenalty returns μ·L_range + ν·L_mean of the last forward pass and
// its largest |score|.
func (ws *Workspace) rangePenalty(p *Params, B, T int) (pen, scoreMax float64) {
	L, H := p.Config.Layers, p.Config.Heads
	n := float64(L * H * B * T)
	if p.Opts.ScorePenalty > 0 {
		pen += p.Opts.ScorePenalty * ws.rangeSum / n
	}
	if p.Opts.MeanPenalty > 0 {
		pen += p.Opts.MeanPenalty * ws.meanSum / n
	}
	return pen, ws.scoreMax
}

// Mean exp-score penalty:
//
//	L_mean = (1/(L·H·B·T)) Σ_{l,h,b,i} relu(|m_i| − M)²,  m_i = log((1/(i+1)) Σ_{j≤i} e^{s_ij})
//
// with M = Options.MeanBound; ∂m_i/∂s_ij = a_ij (the attention weight).

// rowExcess returns relu(|m| − M) with the sign of m for one softmax row.
func rowExcess(p *Params, srow []float64) float64 {
	m := math.Inf(-1)
	for _, v := range srow {
		m = max(m, v)
	}
	var s float64
	for _, v := range srow {
		s += math.Exp(v - m)
	}
	lm := m + math.Log(s/float64(len(srow)))
	a := math.Abs(lm) - p.Opts.MeanBound
	if a <= 0 {
		return 0
	}
	return math.Copysign(a, lm)
}

// observeMean accumulates the mean penalty of one softmax row.
func (ws *Workspace) observeMean(p *Params, srow []float64) {
	if p.Opts.MeanPenalty <= 0 {
		return
	}
	e := rowExcess(p, srow)
	ws.meanSum += e * e
}

// meanGrad is ∂(ν·L_mean)/∂m_i for one row; ∂/∂s_ij is that times a_ij.
func (ws *Workspace) meanGrad(p *Params, srow []float64, B, T int) float64 {
	if p.Opts.MeanPenalty <= 0 {
		return 0
	}
	L, H := p.Config.Layers, p.Config.Heads
	return 2 * p.Opts.MeanPenalty * rowExcess(p, srow) / float64(L*H*B*T)
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
