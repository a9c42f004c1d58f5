package model

import (
	"fmt"
	"math"
	"strings"

	"github.com/entropi-ai/entropi/approx"
)

// Range is what one nonlinearity saw: the extremes of its inputs, how many
// inputs, and (approximation backend) how many fell outside the polynomial's
// range [PolyLo, PolyHi], where the polynomial no longer approximates.
type Range struct {
	Lo, Hi  float64
	N       int
	Outside int
	// PolyLo, PolyHi: the approximation's range (zero for the reference).
	PolyLo, PolyHi float64
	hasPoly        bool
}

func (r *Range) observe(x float64) {
	if r.N == 0 || x < r.Lo || math.IsNaN(x) {
		r.Lo = x
	}
	if r.N == 0 || x > r.Hi || math.IsNaN(x) {
		r.Hi = x
	}
	r.N++
	if r.hasPoly && !(x >= r.PolyLo && x <= r.PolyHi) {
		r.Outside++
	}
}

func (r Range) String() string {
	if r.N == 0 {
		return "unused"
	}
	s := fmt.Sprintf("[%.4g, %.4g] over %d inputs", r.Lo, r.Hi, r.N)
	if r.hasPoly {
		s += fmt.Sprintf(", polynomial range [%.4g, %.4g], %d outside", r.PolyLo, r.PolyHi, r.Outside)
	}
	return s
}

// Ranges records the inputs of every nonlinearity of the decoder.
type Ranges struct {
	Exp     Range // scaled attention scores q·k/(t·√d_k)
	Recip   Range // softmax mean denominators (1/n)·Σ_j exp(s_j) (no max subtraction)
	InvSqrt Range // LayerNorm σ² + eps
	GELU    Range // GELU inputs
}

// Violations is the total number of inputs outside the approximation ranges.
func (r *Ranges) Violations() int {
	return r.Exp.Outside + r.Recip.Outside + r.InvSqrt.Outside + r.GELU.Outside
}

func (r *Ranges) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exp      %v\n", r.Exp)
	fmt.Fprintf(&b, "recip    %v\n", r.Recip)
	fmt.Fprintf(&b, "inv_sqrt %v\n", r.InvSqrt)
	fmt.Fprintf(&b, "gelu     %v\n", r.GELU)
	return b.String()
}

// NewApprox returns the float64 backend that evaluates the decoder with the
// HE approximations of set (the very polynomials the CKKS engine evaluates:
// Set.Softmax, Set.LayerNorm, Set.GELU) and records every nonlinearity's
// inputs and range violations in its Ranges.
func NewApprox(cfg Config, set *approx.Set) (*Plain, error) {
	if set == nil {
		return nil, fmt.Errorf("model: no approximation set")
	}
	if (cfg.LayerNorm || cfg.FinalNorm == FinalLayerNorm) && set.InvSqrt == nil {
		return nil, fmt.Errorf("model %q uses LayerNorm but the approximation set has no inverse square root", cfg.Name)
	}
	if cfg.Activation == ActGELU && set.GELU == nil {
		return nil, fmt.Errorf("model %q uses GELU but the approximation set has no GELU", cfg.Name)
	}
	if cfg.Activation == ActReLU {
		return nil, fmt.Errorf("model %q uses ReLU, which has no HE approximation in package approx", cfg.Name)
	}
	p := NewReference(cfg)
	p.set = set
	p.Ranges = &Ranges{}
	p.Ranges.Exp.setPoly(set.Exp.Range())
	p.Ranges.Recip.setPoly(set.Recip.Range())
	if set.InvSqrt != nil {
		p.Ranges.InvSqrt.setPoly(set.InvSqrt.Range())
	}
	if set.GELU != nil {
		p.Ranges.GELU.setPoly(set.GELU.Range())
	}
	return p, nil
}

func (r *Range) setPoly(lo, hi float64) { r.PolyLo, r.PolyHi, r.hasPoly = lo, hi, true }

// approxSoftmax is Set.Softmax; the recorder also needs the denominator it
// feeds to the reciprocal, which is recomputed from the same Exp polynomial.
func (p *Plain) approxSoftmax(dst, scores []float64) {
	if p.Ranges != nil {
		var sum float64
		for _, v := range scores {
			p.Ranges.Exp.observe(v)
			sum += p.set.Exp.Eval(v)
		}
		p.Ranges.Recip.observe(sum / float64(len(scores)))
	}
	p.set.Softmax(dst, scores)
}

func (p *Plain) approxLayerNorm(dst, x, g, b []float64, eps float64) {
	if p.Ranges != nil {
		_, v2 := meanVar(x)
		p.Ranges.InvSqrt.observe(v2 + eps)
	}
	p.set.LayerNorm(dst, x, g, b, eps)
}
