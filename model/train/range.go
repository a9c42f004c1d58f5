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

// meanExcess returns relu(|m| − M) with the sign of m, for a row's log
// mean exp-score m.
func meanExcess(p *Params, m float64) float64 {
	a := math.Abs(m) - p.Opts.MeanBound
	if a <= 0 {
		return 0
	}
	return math.Copysign(a, m)
}

// observeMean accumulates the mean penalty of one softmax row, given its
// log mean exp-score (the forward pass has it from the softmax's sum).
func (ws *Workspace) observeMean(p *Params, m float64) {
	if p.Opts.MeanPenalty <= 0 {
		return
	}
	e := meanExcess(p, m)
	ws.meanSum += e * e
}

// meanGrad is ∂(ν·L_mean)/∂m_i for one row; ∂/∂s_ij is that times a_ij.
// m_i is read back from the stored scores and weights: a_ij = e^{s_ij}/Σ,
// so m_i = s_ij − log(a_ij·n) at the largest a_ij (no exp again).
func (ws *Workspace) meanGrad(p *Params, srow, arow []float64, B, T int) float64 {
	if p.Opts.MeanPenalty <= 0 {
		return 0
	}
	j := 0
	for k, a := range arow {
		if a > arow[j] {
			j = k
		}
	}
	m := srow[j] - math.Log(arow[j]*float64(len(srow)))
	L, H := p.Config.Layers, p.Config.Heads
	return 2 * p.Opts.MeanPenalty * meanExcess(p, m) / float64(L*H*B*T)
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
