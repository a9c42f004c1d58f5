// Package approx defines the polynomial stand-ins for the decoder's
// nonlinearities (exp for softmax, reciprocal, inverse square root, GELU):
// Chebyshev interpolants over a stated input range, followed where needed by
// Newton iterations. It is the single definition that both the plaintext
// approximation backend (model/) and the CKKS engine (he/) evaluate, so the
// two cannot drift apart: he/ turns the very same coefficients and iteration
// counts into ciphertext operations.
//
// Every approximation states its input range, the multiplicative depth (CKKS
// levels) it consumes, and can measure its own maximum error over its range.
//
// Imports: the standard library only.
package approx
