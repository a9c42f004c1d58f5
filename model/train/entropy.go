package train

import "math"

// Entropy regularization (design notes §1, training only):
//
//	E(l,h)  = −(1/T) Σ_i Σ_j a_ij · log(a_ij + 1e-9), averaged over query rows
//	          and over the sequences of the batch
//	E_max   = log T (T: the batch's sequence length)
//	δ(l,h)  = E(l,h) − θ(l,h)·E_max
//	P(l,h)  = δ² where |δ| > γ·E_max, else 0
//	L_ent   = mean over layers of (mean over heads of P)
//	L       = L_CE + λ·L_ent
//
// Gradients reach the attention probabilities (through E) and θ.

// HeadPenalty returns the penalty P and its derivatives ∂P/∂E and ∂P/∂θ for
// one head with entropy e, threshold weight theta, sequence length T and
// tolerance gamma.
func HeadPenalty(e, theta float64, T int, gamma float64) (pen, dE, dTheta float64) {
	emax := math.Log(float64(T))
	delta := e - theta*emax
	if math.Abs(delta) <= gamma*emax {
		return 0, 0, 0
	}
	return delta * delta, 2 * delta, -2 * delta * emax
}

// entropyPenalty fills res.HeadEntropy from the forward pass, returns λ·L_ent
// and dL/dE(l,h), and accumulates dL/dθ into the workspace gradients.
func (ws *Workspace) entropyPenalty(p *Params, B, T int, res *Result) (float64, [][]float64) {
	L, H := p.Config.Layers, p.Config.Heads
	res.HeadEntropy = make([][]float64, L)
	dE := make([][]float64, L)
	var total float64
	w := p.Opts.Lambda / float64(L*H)
	for l := 0; l < L; l++ {
		res.HeadEntropy[l] = make([]float64, H)
		dE[l] = make([]float64, H)
		for h := 0; h < H; h++ {
			e := ws.ent[l][h] / float64(B*T)
			res.HeadEntropy[l][h] = e
			th := p.blocks[l].theta
			if !p.Opts.EntropyReg || th == nil {
				continue
			}
			pen, de, dth := HeadPenalty(e, th.Data[h], T, p.Opts.gamma())
			total += w * pen
			dE[l][h] = w * de
			ws.grads[th.idx][h] += w * dth
		}
	}
	return total, dE
}

// HeadEntropies is a convenience for evaluation: the mean attention entropy
// E(l,h) of the last Forward or ForwardBackward of this workspace over a batch
// of B sequences of length T.
func (ws *Workspace) HeadEntropies(B, T int) [][]float64 {
	out := make([][]float64, len(ws.ent))
	for l := range ws.ent {
		out[l] = make([]float64, len(ws.ent[l]))
		for h, s := range ws.ent[l] {
			out[l][h] = s / float64(B*T)
		}
	}
	return out
}
