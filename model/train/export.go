package train

import (
	"fmt"
	"math"

	"github.com/entropi-ai/entropi/model"
	"gonum.org/v1/gonum/mat"
)

// Export folds every reparametrization into the plain matrices the runtime
// uses, so that model.Weights evaluated with model.Block semantics gives the
// same function as the training forward:
//   - weight/spectral normalization: the effective matrices (spectral: with
//     the current power-iteration vector, exactly as Forward computes σ);
//   - temperature: Block.Temp = exp(τ);
//   - FFN scaling (x' = β·x̂ + (1/α)·FFN(x̂)): 1/α is folded into the FFN's
//     last matrix and bias, exported Alpha = 1. For a fused FFN without
//     LayerNorm (the entropy-guided block) β is folded as well:
//     Fused = β·I + W_F/α, FusedBias = b_F/α, Alpha = 1, Beta = 0, so the
//     whole FFN plus residual is one d×d product. With LayerNorm before the
//     FFN, β cannot be folded (the FFN sees LN(x̂), not x̂) and Beta = β.
//     Without FFNScaling, Alpha = Beta = 1 (the runtime ignores them).
//   - Threshold: θ per head (Opts.EntropyReg), else the weights' thresholds
//     given to FromWeights, else DefaultThreshold.
func (p *Params) Export() (*model.Weights, error) {
	cfg := p.Config
	d, H := cfg.Dim, cfg.Heads
	dense := func(q *Param) *mat.Dense {
		return mat.NewDense(q.Shape[0], q.Shape[1], append([]float64(nil), q.Data...))
	}
	vec := func(q *Param) []float64 {
		if q == nil {
			return nil
		}
		return append([]float64(nil), q.Data...)
	}
	ws := &Workspace{eff: make([][numLin][]float64, len(p.blocks)), effG: make([][numLin][]float64, len(p.blocks)),
		sn: make([][numLin]snCache, len(p.blocks))}
	for l, b := range p.blocks {
		for k, lin := range b.lin {
			if lin == nil {
				continue
			}
			if p.Opts.WeightNorm || p.Opts.SpectralNorm {
				ws.eff[l][k] = make([]float64, lin.in*lin.out)
				ws.effG[l][k] = make([]float64, lin.in*lin.out)
			} else {
				ws.eff[l][k] = lin.w.Data
			}
		}
	}
	ws.prepare(p)
	eff := func(l, k int) *mat.Dense {
		lin := p.blocks[l].lin[k]
		return mat.NewDense(lin.in, lin.out, append([]float64(nil), ws.eff[l][k]...))
	}
	w := &model.Weights{Config: cfg, Wte: dense(p.wte), Wpe: dense(p.wpe)}
	for l, b := range p.blocks {
		ob := model.Block{
			LN1G: vec(b.ln1g), LN1B: vec(b.ln1b), LN2G: vec(b.ln2g), LN2B: vec(b.ln2b),
			Attn: eff(l, linAttn), AttnBias: vec(b.lin[linAttn].b),
			Proj: eff(l, linProj), ProjBias: vec(b.lin[linProj].b),
			Alpha: 1, Beta: 1,
		}
		if b.temp != nil {
			t := make([]float64, len(b.temp.Data))
			for i, v := range b.temp.Data {
				t[i] = math.Exp(v)
			}
			ob.Temp = mat.NewDense(H, cfg.Context, t)
		}
		var last *mat.Dense
		var lastBias []float64
		if cfg.FusedFFN {
			ob.Fused, ob.FusedBias = eff(l, linFused), vec(b.lin[linFused].b)
			last, lastBias = ob.Fused, ob.FusedBias
		} else {
			ob.FC, ob.FCBias = eff(l, linFC), vec(b.lin[linFC].b)
			ob.Out, ob.OutBias = eff(l, linOut), vec(b.lin[linOut].b)
			last, lastBias = ob.Out, ob.OutBias
		}
		if cfg.FFNScaling {
			al, be := b.alpha.Data[0], b.beta.Data[0]
			if al == 0 || math.IsNaN(al) || math.IsInf(al, 0) {
				return nil, fmt.Errorf("train: export: block %d has α = %v", l, al)
			}
			last.Scale(1/al, last)
			for i := range lastBias {
				lastBias[i] /= al
			}
			ob.Beta = be
			if cfg.FusedFFN && !cfg.LayerNorm {
				for i := 0; i < d; i++ {
					last.Set(i, i, last.At(i, i)+be)
				}
				ob.Beta = 0
			}
		}
		ob.Threshold = make([]float64, H)
		for h := range ob.Threshold {
			ob.Threshold[h] = DefaultThreshold
			if b.threshold != nil {
				ob.Threshold[h] = b.threshold[h]
			}
			if b.theta != nil {
				ob.Threshold[h] = b.theta.Data[h]
			}
		}
		w.Blocks = append(w.Blocks, ob)
	}
	switch cfg.FinalNorm {
	case model.FinalLayerNorm:
		w.LNFG, w.LNFB = vec(p.lnfg), vec(p.lnfb)
	case model.FinalScale:
		w.FinalScale = p.fscale.Data[0]
	}
	if err := w.CheckShapes(); err != nil {
		return nil, fmt.Errorf("train: export: %w", err)
	}
	return w, nil
}
