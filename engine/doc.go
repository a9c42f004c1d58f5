// Package engine is the encrypted decoder: it runs model.Forward on CKKS
// ciphertexts through package he. The server side (Engine, Session) holds the
// weights and the client's public evaluation keys, never a secret key; the
// client side (Client) holds the secret key, encrypts tokens, answers refresh
// rounds with fresh encryptions and decrypts the flooded logits. Spec is the
// public, JSON-serializable contract between the two.
//
// Imports: model, approx, he (and Lattigo, gonum). Nothing network-facing:
// the service carries RefreshFunc rounds and ciphertexts over the wire.
//
// # One decoder definition
//
// The encrypted path is a model.Backend[*val] (backend.go, attention.go):
// model.Forward drives it exactly as it drives the float64 backends. A val
// is one token's activation as d-wide chunks, each a ciphertext replicated
// with period d (he.Replicated), plus a pending elementwise affine map
// (LayerNorm's g and b, Scale) that the next product folds into its
// plaintext weights. Embedding: the client's encrypted one-hot × wte (a d×V
// product; the table stays on the server) plus wpe[pos] as a plaintext, or
// (Options.ClientSideEmbedding) the client's encrypted wte[token].
//
// # Planning
//
// The same backend runs "dry" (levels only, no ciphertexts): that run is the
// planner. Each operation asks for the levels it needs (ensure); when an
// input cannot afford them it is refreshed first (greedy: fewest rounds).
// A refresh right before a d×d product delivers the he.PreRotated layout
// (a free slot map of the masked refresh) so that product uses the
// replication-aware algorithm. Then, keeping the number of rounds, the
// planner lowers the client's input level and each round's target level as
// far as the rest of the segment allows, so that every product runs at the
// lowest useful level. The result is the Plan (printed by `entropi plan`),
// the KeyRequest (exactly the rotations used, each at its highest level) and
// the products encoded at their levels. The encrypted run repeats the dry
// run's decisions (they depend on levels only) and checks that it did.
//
// # Attention
//
// Keys and values of past positions live token-major in he.KVLayout
// ciphertexts at a fixed level per layer; see Attention in attention.go for
// the steps (scores of all heads at once, per-head temperature folded into
// the score mask, exp without max subtraction on calibrated ranges, known
// contributions of unused slots subtracted instead of masked, the softmax's
// 1/n factors folded into the reciprocal, weighted sum of values).
// Reciprocal and inverse square root Newton chains deeper than the levels
// between refreshes are split across refresh rounds.
//
// # Prefill
//
// Session.Prefill runs the prompt in batches of up to Engine.PrefillBatch
// tokens (Options.PrefillBatch; default Slots/d, capped at the context),
// each batch one model.Forward call with rows > 1 on the same backend: a
// multi-row val is token-major (he.TokenMajor, one d-wide chunk of all rows
// per ciphertext). Linear layers run once per batch (he.Planner.Batched:
// diag(W, …, W) by 2d−1 masked diagonals), as do residual adds, GELU and
// LayerNorm (row sums by rotations, broadcast back), and every refresh
// point carries the whole batch in one round. The batch's keys and values
// are already in the KV cache's layout and join it in one add; queries are
// extracted per token and scored against the cache as in decoding; the
// scores of up to dk tokens are then compacted into one ciphertext so that
// exp, reciprocal and their refreshes run once per dk tokens; weighted sums
// of values are per token; the LM head runs on the prompt's last token
// only. Causality comes from the per-token score masks. The dry run covers
// the prefill too (Plan.Prefill; its rotations are in the KeyRequest), and
// the decode path after it is unchanged. Details and costs: prefill.go.
// Options.PrefillBatch = 1 (or Session.PrefillSequential) runs the prompt
// token by token through the decode path instead; so does bootstrap mode
// for now (its value bounds per refresh point follow the decode plan).
package engine
