// Package model is the decoder family in plaintext: the configuration of the
// GPT-2 baseline block (LayerNorm + GELU) and of the entropy-guided block
// (softmax only, per-head per-position temperature, scaled fused FFN), the
// weights with GPT-2 tensor names, safetensors checkpoints, the byte-level BPE
// tokenizer, the single decoder definition that every backend executes
// (float64 reference, float64 with the HE approximations of package approx,
// and, from outside this package, CKKS), sampling, and entropy diagnostics.
//
// Imports: the standard library, gonum, gonum/plot, and entropi/approx. It
// must not import he/ or anything network-facing.
package model
