package model

import (
	"fmt"
)

// Activation of the FFN hidden layer.
const (
	ActGELU = "gelu"
	ActReLU = "relu"
	ActNone = "none"
)

// Final normalization before the tied LM head.
const (
	FinalLayerNorm = "layernorm" // GPT-2's ln_f
	FinalScale     = "scale"     // one learnable scalar (entropy-guided models)
	FinalNone      = "none"
)

// Config describes one member of the decoder family. The baseline GPT-2 block
// is {LayerNorm: true, Activation: gelu, FusedFFN: false, FinalNorm:
// layernorm}; the paper's entropy-guided block SM(t)+ScFuFFN is {LayerNorm:
// false, Activation: none, FusedFFN: true, FFNScaling: true, Temperature:
// true, FinalNorm: scale or none}. Every switch in between is an ablation.
type Config struct {
	Name    string `json:"name"`
	Vocab   int    `json:"vocab"`
	Context int    `json:"context"` // maximum sequence length (learned absolute positions)
	Dim     int    `json:"dim"`
	Layers  int    `json:"layers"`
	Heads   int    `json:"heads"`

	LayerNorm   bool    `json:"layer_norm"`  // pre-LN before attention and FFN
	Activation  string  `json:"activation"`  // gelu, relu or none
	FusedFFN    bool    `json:"fused_ffn"`   // one d×d matrix (needs Activation none)
	FFNHidden   int     `json:"ffn_hidden"`  // hidden width of the two-matrix FFN (4·Dim for GPT-2)
	FFNScaling  bool    `json:"ffn_scaling"` // learnable per-layer α, β: x' = β·x̂ + (1/α)·FFN(x̂)
	Temperature bool    `json:"temperature"` // learnable temperature per head and query position
	FinalNorm   string  `json:"final_norm"`  // layernorm, scale or none
	Bias        bool    `json:"bias"`        // biases on the linear layers
	LNEps       float64 `json:"ln_eps"`
}

// HeadDim is the per-head width d_k.
func (c Config) HeadDim() int { return c.Dim / c.Heads }

// Validate checks the configuration for consistency.
func (c Config) Validate() error {
	switch {
	case c.Vocab < 2 || c.Context < 1 || c.Dim < 1 || c.Layers < 1 || c.Heads < 1:
		return fmt.Errorf("model config %q: vocab, context, dim, layers and heads must be positive (got %d, %d, %d, %d, %d)",
			c.Name, c.Vocab, c.Context, c.Dim, c.Layers, c.Heads)
	case c.Dim%c.Heads != 0:
		return fmt.Errorf("model config %q: dim %d is not a multiple of heads %d", c.Name, c.Dim, c.Heads)
	case c.Activation != ActGELU && c.Activation != ActReLU && c.Activation != ActNone:
		return fmt.Errorf("model config %q: unknown activation %q (gelu, relu, none)", c.Name, c.Activation)
	case c.FusedFFN && c.Activation != ActNone:
		return fmt.Errorf("model config %q: a fused FFN has no activation (got %q)", c.Name, c.Activation)
	case !c.FusedFFN && c.FFNHidden < 1:
		return fmt.Errorf("model config %q: two-matrix FFN needs ffn_hidden > 0", c.Name)
	case c.FinalNorm != FinalLayerNorm && c.FinalNorm != FinalScale && c.FinalNorm != FinalNone:
		return fmt.Errorf("model config %q: unknown final_norm %q (layernorm, scale, none)", c.Name, c.FinalNorm)
	case (c.LayerNorm || c.FinalNorm == FinalLayerNorm) && !(c.LNEps > 0):
		return fmt.Errorf("model config %q: LayerNorm needs ln_eps > 0", c.Name)
	}
	return nil
}

// Baseline returns the GPT-2 block configuration (SM+LN+G) at the given size.
func Baseline(vocab, context, dim, layers, heads int) Config {
	return Config{
		Name: "baseline", Vocab: vocab, Context: context, Dim: dim, Layers: layers, Heads: heads,
		LayerNorm: true, Activation: ActGELU, FFNHidden: 4 * dim, FinalNorm: FinalLayerNorm,
		Bias: true, LNEps: 1e-5,
	}
}

// EntropyGuided returns the paper's SM(t)+ScFuFFN configuration: softmax is
// the only nonlinearity.
func EntropyGuided(vocab, context, dim, layers, heads int) Config {
	return Config{
		Name: "entropy-guided", Vocab: vocab, Context: context, Dim: dim, Layers: layers, Heads: heads,
		Activation: ActNone, FusedFFN: true, FFNScaling: true, Temperature: true,
		FinalNorm: FinalScale, Bias: true,
	}
}
