package train

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/entropi-ai/entropi/model"
)

// A few plain gradient steps on one fixed batch lower the loss for both block
// types and every reparametrization (an end-to-end check that the gradient
// points downhill at realistic step sizes, not only at 1e-5).
func TestGradientDescentLowersLoss(t *testing.T) {
	cases := []struct {
		name string
		cfg  model.Config
		opts Options
	}{
		{"baseline", model.Baseline(16, 8, 16, 2, 2), Options{}},
		{"entropy-guided", model.EntropyGuided(16, 8, 16, 2, 2), Options{EntropyReg: true, Lambda: 0.1}},
		{"entropy-guided weight norm", model.EntropyGuided(16, 8, 16, 2, 2), Options{WeightNorm: true}},
		{"baseline spectral norm", model.Baseline(16, 8, 16, 2, 2), Options{SpectralNorm: true}},
	}
	for ci, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewParams(c.cfg, c.opts, uint64(ci)+1)
			if err != nil {
				t.Fatal(err)
			}
			in, tg := tinyBatch(rand.New(rand.NewPCG(uint64(ci), 3)), 4, 8, 16)
			ws := NewWorkspace(p, 4, 8)
			first, err := ws.ForwardBackward(p, in, tg)
			if err != nil {
				t.Fatal(err)
			}
			last := first
			for step := 0; step < 30; step++ {
				for k, g := range ws.Grads() {
					for i, v := range g {
						p.List[k].Data[i] -= 0.05 * v
					}
				}
				p.UpdateSpectral()
				if last, err = ws.ForwardBackward(p, in, tg); err != nil {
					t.Fatal(err)
				}
				if math.IsNaN(last.Loss) {
					t.Fatalf("step %d: loss is NaN", step)
				}
			}
			if !(last.Loss < first.Loss-0.1) {
				t.Fatalf("loss %v → %v after 30 steps", first.Loss, last.Loss)
			}
			t.Logf("loss %.4f → %.4f", first.Loss, last.Loss)
		})
	}
}
