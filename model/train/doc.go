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
//     Every forward runs one power-iteration step from a stored vector u:
//     σ(V) = ‖V·v‖ with v = Vᵀu/‖Vᵀu‖, differentiated exactly through that
//     step (u itself is a constant of the forward, so Params stay read-only
//     and finite differences agree). Params.UpdateSpectral advances u by one
//     step; call it after each optimizer update (the only method that mutates
//     non-parameter state). Params.Buffers exposes u for checkpoints.
//
// Embeddings, LayerNorm parameters, temperatures, α, β, θ, the final scale and
// biases are not weight-decayed (Param.Decay is false for them).
//
// Concurrency: Params are read-only during ForwardBackward/Forward; run one
// Workspace per goroutine.
//
// Layout: params.go (Params, init, FromWeights, power iteration), forward.go
// (Workspace, batched forward, cross-entropy), backward.go (backward pass,
// reparametrization gradients), entropy.go (regularizer), export.go (folding
// into model.Weights). Matrices are row-major [in, out] as in package model
// (y = x·W + b); every product is a blas64 Dgemm, so the openblas build tag
// (blas_openblas.go) speeds up all of them. Causal attention products run by
// row blocks of attnBlock query rows against keys [0, r1) only.
//
// Tests: gradcheck_test.go compares every parameter's gradient with central
// finite differences (relative error ≤ 1e-5; measured ~1e-8 or better) for
// the baseline, the entropy-guided model with the penalty active above and
// below its margin and inactive inside it, and the ablations, weight norm and
// spectral norm; export_test.go checks that exported weights evaluated by an
// independent loop implementation and by model.Forward with the reference
// backend give the training forward's logits within 1e-9.
//
// Throughput (forward + backward, d = 256, 4 layers, 4 heads, T = 128,
// vocab 1024, 4 sequences per call; `go test -bench ForwardBackward -run '^$'
// -cpu 1,2 ./model/train/`, shared 2-core Xeon under load, so the
// load-independent figure is tokens per CPU-second): pure-Go gonum, baseline
// ≈ 260–300 tokens/cpu-s, entropy-guided ≈ 540–630 tokens/cpu-s (gonum's
// Dgemm is ~90% of the time, ≈ 6.5 GFLOP/s per core); with -tags openblas
// (OPENBLAS_NUM_THREADS=1) baseline ≈ 1.1–1.3k, entropy-guided ≈ 2.7–3.1k
// tokens/cpu-s. Wall-clock tokens/s on an idle 2-core machine is at most
// 2× these with two workspaces.
//
// Imports: the standard library, gonum and entropi/model (never he/).
package train
