package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/mat"
)

// Matrices follow GPT-2's Conv1D orientation: a weight of shape [in, out]
// and y = x·W + b for a row vector x.

// Block holds one decoder block's weights. Fields that the configuration does
// not use are nil.
type Block struct {
	LN1G, LN1B []float64 // ln_1 (LayerNorm models)

	Attn     *mat.Dense // c_attn [d, 3d]: q | k | v
	AttnBias []float64  // [3d]
	Proj     *mat.Dense // attn.c_proj [d, d]
	ProjBias []float64  // [d]
	// Temp is the learnable softmax temperature t[h][i] per head and query
	// position (Temperature models); scores are divided by t·√d_k.
	Temp *mat.Dense // [heads, context]

	LN2G, LN2B []float64 // ln_2

	FC      *mat.Dense // mlp.c_fc [d, hidden] (two-matrix FFN)
	FCBias  []float64
	Out     *mat.Dense // mlp.c_proj [hidden, d]
	OutBias []float64

	Fused     *mat.Dense // mlp.c_fused [d, d] (fused FFN)
	FusedBias []float64
	// Alpha, Beta: FFN scaling, x' = β·x̂ + (1/α)·FFN(x̂) (FFNScaling models).
	Alpha, Beta float64

	// Threshold is the per-head entropy threshold weight θ (training only;
	// kept in checkpoints for diagnostics).
	Threshold []float64
}

// Weights is a whole model.
type Weights struct {
	Config Config
	Wte    *mat.Dense // [vocab, d], tied LM head
	Wpe    *mat.Dense // [context, d]
	Blocks []Block
	LNFG   []float64 // ln_f (FinalLayerNorm)
	LNFB   []float64
	// FinalScale multiplies the residual stream before the LM head
	// (FinalScale models).
	FinalScale float64
}

// NewRandom initializes a model for tests and training. Following the design
// notes, LayerNorm-free models need unit-scale embeddings and 1/√d attention
// initialization or their attention stays uniform.
func NewRandom(cfg Config, seed uint64) (*Weights, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x656e74726f7069))
	d := cfg.Dim
	embStd := 0.02
	if !cfg.LayerNorm {
		embStd = 1
	}
	lin := 1 / math.Sqrt(float64(d))
	w := &Weights{Config: cfg, Wte: randn(rng, cfg.Vocab, d, embStd), Wpe: randn(rng, cfg.Context, d, embStd*0.5)}
	for l := 0; l < cfg.Layers; l++ {
		b := Block{
			Attn: randn(rng, d, 3*d, lin),
			Proj: randn(rng, d, d, lin/math.Sqrt(2*float64(cfg.Layers))),
		}
		if cfg.Bias {
			b.AttnBias = make([]float64, 3*d)
			b.ProjBias = make([]float64, d)
		}
		if cfg.LayerNorm {
			b.LN1G, b.LN1B = ones(d), make([]float64, d)
			b.LN2G, b.LN2B = ones(d), make([]float64, d)
		}
		if cfg.Temperature {
			b.Temp = mat.NewDense(cfg.Heads, cfg.Context, ones(cfg.Heads*cfg.Context))
		}
		if cfg.FusedFFN {
			b.Fused = randn(rng, d, d, lin/math.Sqrt(2*float64(cfg.Layers)))
			if cfg.Bias {
				b.FusedBias = make([]float64, d)
			}
		} else {
			b.FC = randn(rng, d, cfg.FFNHidden, lin)
			b.Out = randn(rng, cfg.FFNHidden, d, 1/math.Sqrt(float64(cfg.FFNHidden))/math.Sqrt(2*float64(cfg.Layers)))
			if cfg.Bias {
				b.FCBias = make([]float64, cfg.FFNHidden)
				b.OutBias = make([]float64, d)
			}
		}
		b.Alpha, b.Beta = 1, 1
		b.Threshold = make([]float64, cfg.Heads)
		for h := range b.Threshold {
			b.Threshold[h] = 0.5
		}
		w.Blocks = append(w.Blocks, b)
	}
	switch cfg.FinalNorm {
	case FinalLayerNorm:
		w.LNFG, w.LNFB = ones(d), make([]float64, d)
	case FinalScale:
		// Tied unit-scale embeddings: with 1/√d every position strongly
		// predicts its own input token (initial CE 15.6 ≫ ln V at d=256);
		// 1/d starts near uniform logits.
		w.FinalScale = 1 / float64(d)
	}
	return w, nil
}

func randn(rng *rand.Rand, r, c int, std float64) *mat.Dense {
	data := make([]float64, r*c)
	for i := range data {
		data[i] = rng.NormFloat64() * std
	}
	return mat.NewDense(r, c, data)
}

func ones(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = 1
	}
	return v
}

// CheckShapes verifies that every tensor the configuration needs is present
// with the right shape and finite values.
func (w *Weights) CheckShapes() error {
	cfg := w.Config
	if err := cfg.Validate(); err != nil {
		return err
	}
	d := cfg.Dim
	var errs []error
	m := func(name string, x *mat.Dense, r, c int) {
		if x == nil {
			errs = append(errs, fmt.Errorf("missing tensor %s", name))
			return
		}
		if xr, xc := x.Dims(); xr != r || xc != c {
			errs = append(errs, fmt.Errorf("tensor %s has shape [%d %d], want [%d %d]", name, xr, xc, r, c))
			return
		}
		for _, v := range x.RawMatrix().Data {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				errs = append(errs, fmt.Errorf("tensor %s holds a non-finite value", name))
				return
			}
		}
	}
	v := func(name string, x []float64, n int) {
		if x == nil {
			errs = append(errs, fmt.Errorf("missing tensor %s", name))
			return
		}
		if len(x) != n {
			errs = append(errs, fmt.Errorf("tensor %s has length %d, want %d", name, len(x), n))
			return
		}
		for _, y := range x {
			if math.IsNaN(y) || math.IsInf(y, 0) {
				errs = append(errs, fmt.Errorf("tensor %s holds a non-finite value", name))
				return
			}
		}
	}
	m("wte.weight", w.Wte, cfg.Vocab, d)
	m("wpe.weight", w.Wpe, cfg.Context, d)
	if len(w.Blocks) != cfg.Layers {
		return fmt.Errorf("model has %d blocks, config says %d layers", len(w.Blocks), cfg.Layers)
	}
	for l, b := range w.Blocks {
		p := fmt.Sprintf("h.%d.", l)
		m(p+"attn.c_attn.weight", b.Attn, d, 3*d)
		m(p+"attn.c_proj.weight", b.Proj, d, d)
		if cfg.Bias {
			v(p+"attn.c_attn.bias", b.AttnBias, 3*d)
			v(p+"attn.c_proj.bias", b.ProjBias, d)
		}
		if cfg.LayerNorm {
			v(p+"ln_1.weight", b.LN1G, d)
			v(p+"ln_1.bias", b.LN1B, d)
			v(p+"ln_2.weight", b.LN2G, d)
			v(p+"ln_2.bias", b.LN2B, d)
		}
		if cfg.Temperature {
			m(p+"attn.temperature", b.Temp, cfg.Heads, cfg.Context)
		}
		if cfg.FusedFFN {
			m(p+"mlp.c_fused.weight", b.Fused, d, d)
			if cfg.Bias {
				v(p+"mlp.c_fused.bias", b.FusedBias, d)
			}
		} else {
			m(p+"mlp.c_fc.weight", b.FC, d, cfg.FFNHidden)
			m(p+"mlp.c_proj.weight", b.Out, cfg.FFNHidden, d)
			if cfg.Bias {
				v(p+"mlp.c_fc.bias", b.FCBias, cfg.FFNHidden)
				v(p+"mlp.c_proj.bias", b.OutBias, d)
			}
		}
		if cfg.FFNScaling && (b.Alpha == 0 || math.IsNaN(b.Alpha) || math.IsNaN(b.Beta)) {
			errs = append(errs, fmt.Errorf("block %d: FFN scaling alpha must be finite and non-zero", l))
		}
	}
	if cfg.FinalNorm == FinalLayerNorm {
		v("ln_f.weight", w.LNFG, d)
		v("ln_f.bias", w.LNFB, d)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid weights for %q: %v", cfg.Name, errs)
	}
	return nil
}

// FFNScale returns the block's FFN scaling (α, β) of x' = β·x̂ + (1/α)·FFN(x̂):
// the learned values for FFNScaling models, (1, 1) otherwise.
func (b *Block) FFNScale(cfg Config) (alpha, beta float64) {
	if !cfg.FFNScaling {
		return 1, 1
	}
	return b.Alpha, b.Beta
}

// FFNMatrix folds a fused FFN and its residual into one affine map,
// x' = x̂·M + c with M = β·I + W_F/α and c = b_F/α (nil without biases), so
// that the whole FFN is one matrix product. It applies to fused FFNs of
// models without LayerNorm; α = β = 1 without FFNScaling.
func (b *Block) FFNMatrix(cfg Config) (*mat.Dense, []float64) {
	alpha, beta := b.FFNScale(cfg)
	r, c := b.Fused.Dims()
	m := mat.NewDense(r, c, nil)
	m.Scale(1/alpha, b.Fused)
	for i := 0; i < r && i < c; i++ {
		m.Set(i, i, m.At(i, i)+beta)
	}
	var bias []float64
	if b.FusedBias != nil {
		bias = make([]float64, len(b.FusedBias))
		for i, v := range b.FusedBias {
			bias[i] = v / alpha
		}
	}
	return m, bias
}

// ScoreScale returns the factors [heads, rows] that multiply the attention
// scores q_i·k_j of rows at positions pos0..pos0+rows−1: 1/(t_{h,pos}·√d_k),
// with t = Temp[h][pos] for Temperature models and t = 1 otherwise.
func (b *Block) ScoreScale(cfg Config, pos0, rows int) *mat.Dense {
	s := mat.NewDense(cfg.Heads, rows, nil)
	inv := 1 / math.Sqrt(float64(cfg.HeadDim()))
	for h := 0; h < cfg.Heads; h++ {
		for i := 0; i < rows; i++ {
			t := 1.0
			if cfg.Temperature {
				t = b.Temp.At(h, pos0+i)
			}
			s.Set(h, i, inv/t)
		}
	}
	return s
}
