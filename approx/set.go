package approx

// Set is every approximation one model needs, with ranges calibrated for that
// model (measure them with the plaintext backend, then add margin). InvSqrt
// and GELU are nil for models without LayerNorm or GELU.
type Set struct {
	Exp     Exp        `json:"exp"`
	Recip   Reciprocal `json:"recip"`
	InvSqrt *InvSqrt   `json:"inv_sqrt,omitempty"`
	GELU    *GELU      `json:"gelu,omitempty"`
}

// Softmax is the HE-friendly softmax over scores (no max-subtraction):
// e_j = Exp(s_j), S̄ = (1/n)·Σ_j e_j, out_j = (e_j/n) · Recip(S̄), n the number
// of scores (the query's position + 1, known to the server). Taking the mean
// rather than the sum narrows the reciprocal's input range by up to a factor
// n (measured: 40× on random models), which saves Newton steps; the 1/n
// factors are plaintext constants that the CKKS path folds into the
// reciprocal's change of variable and into the next mask multiplication.
// Recip's range is therefore a range of mean exp-scores.
func (s *Set) Softmax(dst, scores []float64) {
	var sum float64
	for j, v := range scores {
		dst[j] = s.Exp.Eval(v)
		sum += dst[j]
	}
	n := float64(len(scores))
	r := s.Recip.Eval(sum/n) / n
	for j := range scores {
		dst[j] *= r
	}
}

// LayerNorm is the HE-friendly LayerNorm: out = (x − μ)·InvSqrt(σ² + eps)·g + b.
func (s *Set) LayerNorm(dst, x, g, b []float64, eps float64) {
	var mu float64
	for _, v := range x {
		mu += v
	}
	mu /= float64(len(x))
	var v2 float64
	for _, v := range x {
		v2 += (v - mu) * (v - mu)
	}
	v2 /= float64(len(x))
	r := s.InvSqrt.Eval(v2 + eps)
	for i, v := range x {
		dst[i] = (v-mu)*r*g[i] + b[i]
	}
}
