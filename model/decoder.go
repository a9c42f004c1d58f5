package model

import (
	"fmt"

	"gonum.org/v1/gonum/mat"
)

// Backend executes the decoder's operations on an activation representation
// V: a batch of rows, one per token (for the float64 backends a *mat.Dense of
// shape [rows, width]; for CKKS some packed ciphertexts). Forward is the only
// description of the decoder; every backend runs it, so backends cannot drift
// apart. The granularity is that of a CKKS evaluator: one call per matrix
// product, per residual add, per normalization, per attention.
//
// Names ("h.3.attn.c_attn", "h.3.ln_1", ...) are GPT-2's tensor prefixes and
// stable across calls: a backend that pre-encodes matrices (CKKS diagonals)
// can cache them by name, and time or count operations per layer. Matrices
// that Forward derives from the weights (the fused FFN matrix) are rebuilt on
// every call but equal for equal names.
//
// Backend methods do not return errors: a backend that can fail (CKKS) keeps
// its first error and reports it through an Err() error method, which Forward
// checks before returning.
type Backend[V any] interface {
	// Embed returns wte[token] + wpe[pos0+i] for every token i.
	Embed(tokens []int, pos0 int, wte, wpe *mat.Dense) V
	// Linear returns x·w + bias (bias may be nil) for w of any shape [in, out].
	Linear(name string, x V, w *mat.Dense, bias []float64) V
	Add(x, y V) V
	Scale(x V, s float64) V
	// LayerNorm normalizes every row: (x − μ)/√(σ² + eps)·g + b.
	LayerNorm(name string, x V, g, b []float64, eps float64) V
	// Activate applies ActGELU, ActReLU or ActNone elementwise.
	Activate(x V, act string) V
	// Attention is causal multi-head attention of rows at positions pos0,
	// pos0+1, ... over the layer's cached keys and values plus this call's.
	// qkv holds [q | k | v] per row (width 3d, heads contiguous inside each
	// third). scoreScale[h][i] multiplies the scores q_i·k_j of head h and row
	// i (1/(t_{h,i}·√d_k)). The call appends this call's k and v to the
	// layer's cache and returns the heads' outputs concatenated (width d).
	Attention(layer int, qkv V, pos0 int, scoreScale *mat.Dense) V
	// Logits returns x·wteᵀ (the tied LM head).
	Logits(x V, wte *mat.Dense) V
}

// Forward runs the decoder over tokens at positions pos0, pos0+1, ... and
// returns the logits of every row. The backend's attention cache must hold
// exactly the pos0 earlier positions.
//
//	baseline block:        x = x + Proj(MHA(LN1 x));  x = x + W2·act(W1·LN2 x)
//	entropy-guided block:  x̂ = x + Proj(MHA_t(x));    x' = β·x̂ + (1/α)·(x̂·W_F + b_F)
//
// and every ablation between them (see Config).
func Forward[V any](w *Weights, b Backend[V], tokens []int, pos0 int) (V, error) {
	if err := checkTokens(w.Config, tokens, pos0); err != nil {
		var zero V
		return zero, err
	}
	return ForwardEmbedded(w, b, b.Embed(tokens, pos0, w.Wte, w.Wpe), len(tokens), pos0)
}

// ForwardEmbedded is Forward from already embedded rows x (wte[token] +
// wpe[pos]) at positions pos0..pos0+rows−1: the entry point of a server that
// embeds an encrypted one-hot vector itself and never sees the tokens.
func ForwardEmbedded[V any](w *Weights, b Backend[V], x V, rows, pos0 int) (V, error) {
	var zero V
	cfg := w.Config
	if rows < 1 || pos0 < 0 || pos0+rows > cfg.Context {
		return zero, fmt.Errorf("model: positions %d..%d exceed the context window of %d tokens", pos0, pos0+rows-1, cfg.Context)
	}
	for l := range w.Blocks {
		blk := &w.Blocks[l]
		p := fmt.Sprintf("h.%d.", l)

		// Attention and its residual.
		h := x
		if cfg.LayerNorm {
			h = b.LayerNorm(p+"ln_1", x, blk.LN1G, blk.LN1B, cfg.LNEps)
		}
		qkv := b.Linear(p+"attn.c_attn", h, blk.Attn, blk.AttnBias)
		a := b.Attention(l, qkv, pos0, blk.ScoreScale(cfg, pos0, rows))
		x = b.Add(x, b.Linear(p+"attn.c_proj", a, blk.Proj, blk.ProjBias))

		// FFN and its residual: x' = β·x + (1/α)·FFN(h).
		if cfg.FusedFFN && !cfg.LayerNorm {
			m, bias := blk.FFNMatrix(cfg) // β·I + W_F/α: FFN and residual in one product
			x = b.Linear(p+"mlp.c_fused", x, m, bias)
			continue
		}
		h = x
		if cfg.LayerNorm {
			h = b.LayerNorm(p+"ln_2", x, blk.LN2G, blk.LN2B, cfg.LNEps)
		}
		var f V
		if cfg.FusedFFN {
			f = b.Linear(p+"mlp.c_fused", h, blk.Fused, blk.FusedBias)
		} else {
			f = b.Linear(p+"mlp.c_fc", h, blk.FC, blk.FCBias)
			f = b.Activate(f, cfg.Activation)
			f = b.Linear(p+"mlp.c_proj", f, blk.Out, blk.OutBias)
		}
		if cfg.FFNScaling {
			x, f = b.Scale(x, blk.Beta), b.Scale(f, 1/blk.Alpha)
		}
		x = b.Add(x, f)
	}
	switch cfg.FinalNorm {
	case FinalLayerNorm:
		x = b.LayerNorm("ln_f", x, w.LNFG, w.LNFB, cfg.LNEps)
	case FinalScale:
		x = b.Scale(x, w.FinalScale)
	}
	logits := b.Logits(x, w.Wte)
	if e, ok := any(b).(interface{ Err() error }); ok {
		if err := e.Err(); err != nil {
			return zero, err
		}
	}
	return logits, nil
}

// checkTokens rejects out-of-vocabulary tokens and sequences that run past the
// context window.
func checkTokens(cfg Config, tokens []int, pos0 int) error {
	if len(tokens) == 0 {
		return fmt.Errorf("model: no tokens")
	}
	if pos0 < 0 || pos0+len(tokens) > cfg.Context {
		return fmt.Errorf("model: positions %d..%d exceed the context window of %d tokens",
			pos0, pos0+len(tokens)-1, cfg.Context)
	}
	for i, t := range tokens {
		if t < 0 || t >= cfg.Vocab {
			return fmt.Errorf("model: token %d at index %d is outside the vocabulary [0, %d)", t, i, cfg.Vocab)
		}
	}
	return nil
}
