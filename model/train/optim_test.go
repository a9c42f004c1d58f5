package train

import (
	"errors"
	"math"
	"testing"
)

// AdamW without weight decay minimizes an ill-conditioned quadratic
// f(x) = Σ a_i (x_i − c_i)².
func TestAdamWQuadraticConverges(t *testing.T) {
	a := []float64{1, 10, 100, 0.1}
	c := []float64{3, -2, 0.5, 1}
	x := [][]float64{{0, 0, 0, 0}}
	g := [][]float64{make([]float64, 4)}
	cfg := DefaultAdamW()
	cfg.WeightDecay = 0
	opt, err := NewAdamW(cfg, []int{4})
	if err != nil {
		t.Fatal(err)
	}
	sched := Schedule{Peak: 0.1, Min: 0.001, Warmup: 10, Total: 2000}
	for s := 0; s < 2000; s++ {
		for i := range a {
			g[0][i] = 2 * a[i] * (x[0][i] - c[i])
		}
		if err := opt.Update(x, g, []bool{true}, sched.LR(s)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c {
		if math.Abs(x[0][i]-c[i]) > 1e-3 {
			t.Errorf("x[%d] = %v, want %v", i, x[0][i], c[i])
		}
	}
	if opt.Steps != 2000 {
		t.Errorf("Steps = %d", opt.Steps)
	}
}

// The first update moves every coordinate by lr·sign(g) (bias-corrected
// moments: m̂/√v̂ = g/|g|), and weight decay is decoupled: it shrinks only the
// tensors marked for decay, by exactly (1 − lr·wd) when the gradient is 0.
func TestAdamWFirstStepAndDecoupledDecay(t *testing.T) {
	cfg := AdamWConfig{Beta1: 0.9, Beta2: 0.95, Eps: 1e-12, WeightDecay: 0.5}
	opt, err := NewAdamW(cfg, []int{3, 2, 2})
	if err != nil {
		t.Fatal(err)
	}
	p := [][]float64{{1, 2, 3}, {4, 5}, {6, 7}}
	g := [][]float64{{0.5, -3, 1e-3}, {0, 0}, {0, 0}}
	lr := 0.01
	if err := opt.Update(p, g, []bool{false, true, false}, lr); err != nil {
		t.Fatal(err)
	}
	want0 := []float64{1 - lr, 2 + lr, 3 - lr}
	for i, w := range want0 {
		if math.Abs(p[0][i]-w) > 1e-9 {
			t.Errorf("p0[%d] = %v, want %v", i, p[0][i], w)
		}
	}
	for i, w := range []float64{4 * (1 - lr*0.5), 5 * (1 - lr*0.5)} {
		if p[1][i] != w {
			t.Errorf("decayed p1[%d] = %v, want %v", i, p[1][i], w)
		}
	}
	if p[2][0] != 6 || p[2][1] != 7 {
		t.Errorf("undecayed zero-gradient tensor moved: %v", p[2])
	}
	if err := opt.Update(p, g[:2], []bool{false, true, false}, lr); err == nil {
		t.Error("mismatched tensor count accepted")
	}
}

func TestScheduleValues(t *testing.T) {
	s := Schedule{Peak: 1e-3, Min: 1e-4, Warmup: 10, Total: 110}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		step int
		want float64
	}{
		{0, 1e-4},  // 1/10 of peak
		{4, 5e-4},  // 5/10
		{9, 1e-3},  // end of warmup
		{10, 1e-3}, // cosine start
		{60, 1e-4 + 0.5*(9e-4)*(1+math.Cos(math.Pi*0.5))}, // half way: (peak+min)/2
		{85, 1e-4 + 0.5*(9e-4)*(1+math.Cos(math.Pi*0.75))},
		{110, 1e-4},
		{500, 1e-4},
	}
	for _, c := range cases {
		if got := s.LR(c.step); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("LR(%d) = %v, want %v", c.step, got, c.want)
		}
	}
	if math.Abs(s.LR(60)-5.5e-4) > 1e-15 {
		t.Errorf("LR(60) = %v, want the mid value 5.5e-4", s.LR(60))
	}
	for step := 10; step < 110; step++ {
		if s.LR(step+1) > s.LR(step) {
			t.Fatalf("cosine phase not monotone at %d", step)
		}
	}
	for _, bad := range []Schedule{{Peak: 0, Total: 1}, {Peak: 1, Min: 2, Total: 1}, {Peak: 1, Warmup: 5, Total: 4}, {Peak: 1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestClipGlobalNorm(t *testing.T) {
	g := [][]float64{{3}, {4, 0}}
	n, err := ClipGlobalNorm(g, 1)
	if err != nil || n != 5 {
		t.Fatalf("norm %v err %v, want 5", n, err)
	}
	if math.Abs(g[0][0]-0.6) > 1e-15 || math.Abs(g[1][0]-0.8) > 1e-15 || g[1][1] != 0 {
		t.Errorf("clipped to %v", g)
	}
	if got := GlobalNorm(g); math.Abs(got-1) > 1e-15 {
		t.Errorf("norm after clipping %v", got)
	}
	g = [][]float64{{0.3}, {0.4}}
	if n, _ := ClipGlobalNorm(g, 1); n != 0.5 || g[0][0] != 0.3 || g[1][0] != 0.4 {
		t.Errorf("below the bound: norm %v, grads %v changed", n, g)
	}
	if _, _ = ClipGlobalNorm(g, 0); g[0][0] != 0.3 {
		t.Error("max 0 clipped")
	}
	g = [][]float64{{math.NaN(), 1}}
	if _, err := ClipGlobalNorm(g, 1); !errors.Is(err, ErrNonFinite) || g[0][1] != 1 {
		t.Errorf("NaN gradient: err %v, grads %v", err, g)
	}
}
