// Package train trains the decoder family of package model in pure Go:
// parameters with training-time reparametrizations (temperature, weight and
// spectral normalization, FFN scaling, entropy thresholds), hand-written
// batched forward and backward passes on gonum (blas64, so that an OpenBLAS
// build can speed them up through blas64.Use), the entropy regularizer of the
// design notes, export to the plain model.Weights the runtime evaluates, and
// (in loop*.go, optim*.go, corpus*.go, data*.go) the training loop,
// optimizer and data pipeline.
//
// Parametrization choices (the paper leaves them open; recorded here):
//   - temperature: t[h][i] = exp(τ[h][i]), τ initialized to 0 (t = 1);
//     exported as Block.Temp = t.
//   - entropy threshold θ(l,h): a plain scalar per head, initialized to 0.5
//     (target E = E_max/2 = (log T)/2), exported as Block.Threshold.
//   - FFN scaling: α and β are plain scalars initialized to 1 (as
//     model.NewRandom). Export folds 1/α into the FFN's last linear layer and
//     bias (exported Alpha = 1); for a fused FFN without LayerNorm it also
//     folds β (exported Fused = β·I + W_F/α, FusedBias = b_F/α, Beta = 0).
//   - weight normalization: W[:,j] = g_j · V[:,j]/‖V[:,j]‖ per output column,
//     on every block matrix (c_attn, c_proj, c_fc, mlp.c_proj, c_fused);
//     initialized so that W equals the plain initialization.
//   - spectral normalization: W = s · V/σ(V), s one learnable scalar per
//     matrix (initialized to σ(V), so W starts at the plain initialization).
//     σ(V) = ‖V·v‖ with v = Vᵀu/‖Vᵀu‖ (one power-iteration step from a stored
//     vector u, differentiated exactly through that step). Params.
//     UpdateSpectral advances u by one step; call it after each optimizer
//     update (it is the only method that mutates non-parameter state).
//
// Embeddings, LayerNorm parameters, temperatures, α, β, θ, the final scale and
// biases are not weight-decayed (Param.Decay is false for them).
//
// Concurrency: Params are read-only during ForwardBackward/Forward; run one
// Workspace per goroutine.
//
// Imports: the standard library, gonum and entropi/model (never he/).
package train
