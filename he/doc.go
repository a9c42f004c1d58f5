// Package he is entropi's CKKS engine on Lattigo v6: named parameter presets
// with checked security, client key generation and circuit-derived evaluation
// key sets, slot layouts (replicated vectors, token-major batches, head
// segments, KV-cache blocks), packed encrypted linear algebra (replication-
// aware diagonal matrix-vector products with baby-step/giant-step and hoisted
// rotations, batched prefill products, encrypted×encrypted products and
// rotation sums), the polynomial nonlinearities defined in package approx, and
// ciphertext refresh (client-aided masked refresh, and bootstrapping).
//
// Imports: the standard library, Lattigo, and entropi/approx. Nothing here
// knows about transformers beyond slot layouts; the decoder lives in model/.
package he
