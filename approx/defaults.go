package approx

// Default approximations. The ranges are generic starting points; a model
// calibrates its own ranges with the plaintext backend and builds its Set with
// the New* constructors. Errors are measured by MaxError (20001-point grid,
// float64, `go test -run TestDefaults -v ./approx/`); depth is CKKS levels in
// package he (Lattigo v6.2 Paterson–Stockmeyer, checked by he's tests).
//
//	function    range          choice                depth  max abs err  max rel err   alternatives (depth: abs/rel err)
//	exp         [-16, 4]       Chebyshev deg 31      6      8.5e-14      4.4e-08       deg 15 (5): 2.6e-04/7.5e+02; deg 63 (7): 8.5e-14/2.3e-07
//	1/x         [1, 512]       deg 63 + 2 Newton     11     2.4e-09      2.4e-09       deg 31+3 (12): 3.7e-08; deg 15+4 (13): 3.8e-06; deg 63+1 (9): 4.9e-05
//	1/√x        [0.01, 100]    deg 63 + 4 Newton     15     2.4e-06      2.4e-07       deg 63+3 (13): 4.0e-03/4.0e-04; deg 31+5 (16): 2.6e-04/2.6e-05
//	GELU        [-8, 8]        Chebyshev deg 63      7      3.0e-13      3.0e-13       deg 31 (6): 9.2e-05; deg 15 (5): 4.5e-02
//
// Exp's relative error is against e^x itself, which is 1.1e-7 at x = −16: the
// absolute error is what matters for softmax (it adds to a sum ≥ e^Lo·n).
// The wide reciprocal and inverse-square-root ranges (ratio 512 and 10^4) are
// what cost Newton steps: each step squares the relative error 1 − x·y (resp.
// 1 − x·y²) but the Chebyshev initial guess of 1/x on a wide range is poor
// near Lo. Narrower calibrated ranges save 2–4 levels.

// DefaultExp is e^x on [-16, 4], Chebyshev degree 31 (depth 6).
func DefaultExp() Exp { return NewExp(-16, 4, 31) }

// DefaultReciprocal is 1/x on [1, 512], degree 63 initial guess + 2 Newton
// steps (depth 11).
func DefaultReciprocal() Reciprocal { return NewReciprocal(1, 512, 63, 2) }

// DefaultInvSqrt is 1/√x on [0.01, 100], degree 63 initial guess + 4 Newton
// steps (depth 15).
func DefaultInvSqrt() InvSqrt { return NewInvSqrt(0.01, 100, 63, 4) }

// DefaultGELU is GELU on [-8, 8], Chebyshev degree 63 (depth 7).
func DefaultGELU() GELU { return NewGELU(-8, 8, 63) }
