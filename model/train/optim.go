package train

import (
	"errors"
	"fmt"
	"math"
)

// AdamWConfig holds the optimizer hyperparameters (the learning rate comes
// from a Schedule at each step).
type AdamWConfig struct {
	Beta1, Beta2 float64
	Eps          float64
	WeightDecay  float64 // decoupled, applied only to tensors marked for decay
}

// DefaultAdamW is GPT-2-style: β = (0.9, 0.95), ε = 1e-8, weight decay 0.1.
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
}

// Validate checks the hyperparameters.
func (c AdamWConfig) Validate() error {
	if !(c.Beta1 >= 0 && c.Beta1 < 1) || !(c.Beta2 >= 0 && c.Beta2 < 1) || !(c.Eps > 0) || !(c.WeightDecay >= 0) {
		return fmt.Errorf("adamw: need 0 ≤ β1, β2 < 1, ε > 0, weight decay ≥ 0 (got %g, %g, %g, %g)",
			c.Beta1, c.Beta2, c.Eps, c.WeightDecay)
	}
	return nil
}

// AdamW is Adam with decoupled weight decay (Loshchilov & Hutter), in the
// PyTorch form: for tensors with decay, p ← p·(1 − lr·wd) first, then
// p ← p − lr·m̂/(√v̂ + ε) with bias-corrected moments.
type AdamW struct {
	Config AdamWConfig
	M, V   [][]float64 // first and second moments, aligned with the tensors
	Steps  int         // updates applied so far (bias correction uses Steps)
}

// NewAdamW returns an optimizer for tensors of the given sizes.
func NewAdamW(cfg AdamWConfig, sizes []int) (*AdamW, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := &AdamW{Config: cfg, M: make([][]float64, len(sizes)), V: make([][]float64, len(sizes))}
	for i, n := range sizes {
		o.M[i], o.V[i] = make([]float64, n), make([]float64, n)
	}
	return o, nil
}

// Update applies one step with learning rate lr to params (in place) given
// grads; decay[i] says whether tensor i is weight-decayed.
func (o *AdamW) Update(params, grads [][]float64, decay []bool, lr float64) error {
	if len(params) != len(o.M) || len(grads) != len(o.M) || len(decay) != len(o.M) {
		return fmt.Errorf("adamw: %d tensors, got %d params, %d grads, %d decay flags", len(o.M), len(params), len(grads), len(decay))
	}
	for i := range params {
		if len(params[i]) != len(o.M[i]) || len(grads[i]) != len(o.M[i]) {
			return fmt.Errorf("adamw: tensor %d has %d values, params %d, grads %d", i, len(o.M[i]), len(params[i]), len(grads[i]))
		}
	}
	o.Steps++
	c := o.Config
	bc1 := 1 - math.Pow(c.Beta1, float64(o.Steps))
	bc2 := 1 - math.Pow(c.Beta2, float64(o.Steps))
	for i, p := range params {
		g, m, v := grads[i], o.M[i], o.V[i]
		shrink := 1.0
		if decay[i] {
			shrink = 1 - lr*c.WeightDecay
		}
		for j := range p {
			m[j] = c.Beta1*m[j] + (1-c.Beta1)*g[j]
			v[j] = c.Beta2*v[j] + (1-c.Beta2)*g[j]*g[j]
			p[j] = p[j]*shrink - lr*(m[j]/bc1)/(math.Sqrt(v[j]/bc2)+c.Eps)
		}
	}
	return nil
}

// Schedule is linear warmup to Peak over Warmup steps, then cosine decay
// to Min at step Total (and Min after it). Steps count from 0: step s < Warmup
// uses Peak·(s+1)/Warmup, so the first update is not wasted at lr 0.
type Schedule struct {
	Peak, Min     float64
	Warmup, Total int
	After         float64 // learning rate after Total (0: Min)
}

// Validate checks the schedule.
func (s Schedule) Validate() error {
	if !(s.Peak > 0) || !(s.Min >= 0) || s.Min > s.Peak || s.Warmup < 0 || s.Total < 1 || s.Warmup > s.Total {
		return fmt.Errorf("schedule: need peak > 0, 0 ≤ min ≤ peak, 0 ≤ warmup ≤ total, total ≥ 1 (got %g, %g, %d, %d)",
			s.Peak, s.Min, s.Warmup, s.Total)
	}
	return nil
}

// LR is the learning rate at step (0-based).
func (s Schedule) LR(step int) float64 {
	if step < s.Warmup {
		return s.Peak * float64(step+1) / float64(s.Warmup)
	}
	span := s.Total - s.Warmup
	if step >= s.Total && s.After > 0 {
		return s.After
	}
	if span <= 0 || step >= s.Total {
		return s.Min
	}
	progress := float64(step-s.Warmup) / float64(span)
	return s.Min + 0.5*(s.Peak-s.Min)*(1+math.Cos(math.Pi*progress))
}

// GlobalNorm is the Euclidean norm of all gradients together, summed in a
// fixed order.
func GlobalNorm(grads [][]float64) float64 {
	var ss float64
	for _, g := range grads {
		for _, x := range g {
			ss += x * x
		}
	}
	return math.Sqrt(ss)
}

// ErrNonFinite reports a NaN or infinite gradient norm.
var ErrNonFinite = errors.New("non-finite gradient norm")

// ClipGlobalNorm scales grads in place so that their global norm is at most
// max (max ≤ 0: no clipping). It returns the norm before clipping, and
// ErrNonFinite (leaving grads untouched) when that norm is NaN or infinite.
func ClipGlobalNorm(grads [][]float64, max float64) (float64, error) {
	n := GlobalNorm(grads)
	if math.IsNaN(n) || math.IsInf(n, 0) {
		return n, ErrNonFinite
	}
	if max > 0 && n > max {
		f := max / n
		for _, g := range grads {
			for j := range g {
				g[j] *= f
			}
		}
	}
	return n, nil
}
