package train

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/entropi-ai/entropi/model"
)

// Tiny configurations: vocab 11, context 6 (sequences of 5), d = 8, 2 layers,
// 2 heads, batch 2.
func tinyBaseline() model.Config {
	c := model.Baseline(11, 6, 8, 2, 2)
	c.FFNHidden = 12
	return c
}

func tinyEntropyGuided() model.Config { return model.EntropyGuided(11, 6, 8, 2, 2) }

func tinyBatch(rng *rand.Rand, B, T, V int) (inputs, targets [][]int) {
	for b := 0; b < B; b++ {
		in, tg := make([]int, T), make([]int, T)
		for i := range in {
			in[i] = rng.IntN(V)
			tg[i] = rng.IntN(V)
		}
		inputs, targets = append(inputs, in), append(targets, tg)
	}
	return inputs, targets
}

// jitter moves every parameter away from its (often symmetric) initial value
// so that no gradient term vanishes by accident; θ is left alone.
func jitter(p *Params, rng *rand.Rand, scale float64) {
	for _, q := range p.List {
		if strings.HasSuffix(q.Name, "entropy_threshold") {
			continue
		}
		for i := range q.Data {
			q.Data[i] += scale * rng.NormFloat64() * math.Max(0.3, math.Abs(q.Data[i]))
		}
	}
	for _, b := range p.blocks {
		for _, lin := range b.lin {
			if lin != nil && lin.u != nil {
				// A power-iteration vector far from convergence, so that the
				// terms through the power step are exercised.
				for i := range lin.u {
					lin.u[i] = rng.NormFloat64()
				}
				normalize(lin.u)
			}
		}
	}
}

func lossOf(t *testing.T, p *Params, inputs, targets [][]int) float64 {
	t.Helper()
	ws := NewWorkspace(p, len(inputs), len(inputs[0]))
	r, err := ws.ForwardBackward(p, inputs, targets)
	if err != nil {
		t.Fatal(err)
	}
	return r.Loss
}

// gradCheck compares the analytic gradient of every parameter tensor with
// central finite differences: per tensor ‖fd − an‖/max(‖fd‖, ‖an‖) ≤ 1e-5 and
// per element |fd − an| ≤ 1e-5·max(|fd|, |an|) + 1e-9·‖grad‖_∞.
func gradCheck(t *testing.T, p *Params, inputs, targets [][]int) []Result {
	t.Helper()
	// Several causal row blocks on these short sequences.
	defer setAttnBlock(2)()
	ws := NewWorkspace(p, len(inputs), len(inputs[0]))
	res, err := ws.ForwardBackward(p, inputs, targets)
	if err != nil {
		t.Fatal(err)
	}
	grads := ws.Grads()
	var gmax float64
	for _, g := range grads {
		for _, v := range g {
			gmax = math.Max(gmax, math.Abs(v))
		}
	}
	const h = 1e-5
	for k, q := range p.List {
		var num, dfd, dan float64
		for i := range q.Data {
			x := q.Data[i]
			q.Data[i] = x + h
			lp := lossOf(t, p, inputs, targets)
			q.Data[i] = x - h
			lm := lossOf(t, p, inputs, targets)
			q.Data[i] = x
			fd := (lp - lm) / (2 * h)
			an := grads[k][i]
			num += (fd - an) * (fd - an)
			dfd += fd * fd
			dan += an * an
			if math.Abs(fd-an) > 1e-5*math.Max(math.Abs(fd), math.Abs(an))+1e-9*gmax {
				t.Errorf("%s[%d]: analytic %.12g, finite difference %.12g", q.Name, i, an, fd)
			}
		}
		den := math.Sqrt(math.Max(dfd, dan))
		if den == 0 {
			continue
		}
		if rel := math.Sqrt(num) / den; rel > 1e-5 {
			t.Errorf("%s: relative gradient error %.3g", q.Name, rel)
		} else {
			t.Logf("%-32s ‖g‖ %.3e  rel err %.2e", q.Name, den, rel)
		}
	}
	return []Result{res}
}

func requireParams(t *testing.T, p *Params, names ...string) {
	t.Helper()
	for _, n := range names {
		if p.Lookup(n) == nil {
			t.Fatalf("parameter %s missing (have %d params)", n, len(p.List))
		}
	}
}

func TestGradBaseline(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p, err := NewParams(tinyBaseline(), Options{}, 7)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rng, 0.3)
	requireParams(t, p, "wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.1.attn.c_attn.weight",
		"h.1.attn.c_attn.bias", "h.1.attn.c_proj.weight", "h.1.attn.c_proj.bias", "h.0.ln_2.weight", "h.0.ln_2.bias",
		"h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias", "ln_f.weight", "ln_f.bias")
	in, tg := tinyBatch(rng, 2, 5, 11)
	tg[1][2] = -1 // an uncounted target
	gradCheck(t, p, in, tg)
}

// setThresholds places head (l,h) at δ = want[l][h]·E_max from the batch's
// measured entropies and returns the entropies.
func setThresholds(t *testing.T, p *Params, in [][]int, want [][]float64) [][]float64 {
	t.Helper()
	ws := NewWorkspace(p, len(in), len(in[0]))
	if _, err := ws.Forward(p, in); err != nil {
		t.Fatal(err)
	}
	E := ws.HeadEntropies(len(in), len(in[0]))
	emax := math.Log(float64(len(in[0])))
	for l := range want {
		for h := range want[l] {
			p.blocks[l].theta.Data[h] = E[l][h]/emax - want[l][h]
		}
	}
	return E
}

func TestGradEntropyGuided(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p, err := NewParams(tinyEntropyGuided(), Options{EntropyReg: true, Lambda: 1, Gamma: 0.2}, 8)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rng, 0.3)
	requireParams(t, p, "h.0.attn.log_temperature", "h.1.mlp.c_fused.weight", "h.1.mlp.c_fused.bias",
		"h.0.mlp.alpha", "h.0.mlp.beta", "h.0.attn.entropy_threshold", "final_scale")
	in, tg := tinyBatch(rng, 2, 5, 11)
	// Above the margin, below it, inside it, below it.
	want := [][]float64{{0.45, -0.4}, {0.05, -0.3}}
	setThresholds(t, p, in, want)
	ws := NewWorkspace(p, 2, 5)
	res, err := ws.ForwardBackward(p, in, tg)
	if err != nil {
		t.Fatal(err)
	}
	emax := math.Log(5)
	var pen float64
	for l := range want {
		for h := range want[l] {
			delta := res.HeadEntropy[l][h] - p.blocks[l].theta.Data[h]*emax
			if math.Abs(delta-want[l][h]*emax) > 1e-12 {
				t.Fatalf("head %d/%d: δ = %v, want %v", l, h, delta, want[l][h]*emax)
			}
			if math.Abs(delta) > 0.2*emax {
				pen += delta * delta
			}
		}
	}
	if want := pen / 4; math.Abs(res.Entropy-want) > 1e-12 || res.Entropy == 0 {
		t.Fatalf("penalty %v, want %v", res.Entropy, want)
	}
	if math.Abs(res.Loss-res.CE-res.Entropy) > 1e-12 {
		t.Fatalf("loss %v ≠ CE %v + penalty %v", res.Loss, res.CE, res.Entropy)
	}
	th := ws.Grads()[p.blocks[1].theta.idx]
	if th[0] != 0 {
		t.Fatalf("θ inside the margin has gradient %v, want 0", th[0])
	}
	if th[1] == 0 || ws.Grads()[p.blocks[0].theta.idx][0] == 0 || ws.Grads()[p.blocks[0].theta.idx][1] == 0 {
		t.Fatal("θ outside the margin has zero gradient")
	}
	gradCheck(t, p, in, tg)
}

// The regularizer's gradient through the attention probabilities must be
// what the finite differences see even when CE is absent from the picture:
// compare a run with λ = 0 and one with λ = 1 on the attention parameters.
func TestGradEntropyOnlyTerm(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	cfg := tinyEntropyGuided()
	p, err := NewParams(cfg, Options{EntropyReg: true, Lambda: 1}, 9)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rng, 0.3)
	in, tg := tinyBatch(rng, 2, 5, 11)
	setThresholds(t, p, in, [][]float64{{-0.5, 0.5}, {0.5, -0.5}})
	w1 := NewWorkspace(p, 2, 5)
	if _, err := w1.ForwardBackward(p, in, tg); err != nil {
		t.Fatal(err)
	}
	q := p.Clone()
	q.Opts.Lambda = 0
	w0 := NewWorkspace(q, 2, 5)
	if _, err := w0.ForwardBackward(q, in, tg); err != nil {
		t.Fatal(err)
	}
	// The difference of gradients is the gradient of L_ent alone: check it
	// against finite differences of the penalty on c_attn.
	k := p.Lookup("h.0.attn.c_attn.weight").idx
	var num, den float64
	const h = 1e-5
	for i := range p.List[k].Data {
		x := p.List[k].Data[i]
		pen := func(v float64) float64 {
			p.List[k].Data[i] = v
			ws := NewWorkspace(p, 2, 5)
			r, err := ws.ForwardBackward(p, in, tg)
			if err != nil {
				t.Fatal(err)
			}
			return r.Entropy
		}
		fd := (pen(x+h) - pen(x-h)) / (2 * h)
		p.List[k].Data[i] = x
		an := w1.Grads()[k][i] - w0.Grads()[k][i]
		num += (fd - an) * (fd - an)
		den += fd * fd
	}
	if den == 0 {
		t.Fatal("entropy penalty does not depend on c_attn")
	}
	if rel := math.Sqrt(num / den); rel > 1e-5 {
		t.Fatalf("entropy-term gradient relative error %.3g", rel)
	}
}

func TestGradAblations(t *testing.T) {
	cases := []struct {
		name string
		cfg  func() model.Config
		opts Options
	}{
		{"two-matrix relu, scaled, temperature, no final norm", func() model.Config {
			c := tinyEntropyGuided()
			c.FusedFFN, c.Activation, c.FFNHidden, c.FinalNorm = false, model.ActReLU, 12, model.FinalNone
			return c
		}, Options{}},
		{"two-matrix linear FFN, no bias", func() model.Config {
			c := tinyEntropyGuided()
			c.FusedFFN, c.Activation, c.FFNHidden, c.Bias = false, model.ActNone, 12, false
			return c
		}, Options{EntropyReg: true, Lambda: 0.3}},
		{"LayerNorm + fused scaled FFN + temperature", func() model.Config {
			c := tinyEntropyGuided()
			c.LayerNorm, c.LNEps, c.FinalNorm = true, 1e-5, model.FinalLayerNorm
			return c
		}, Options{}},
		{"baseline with weight norm", tinyBaseline, Options{WeightNorm: true}},
		{"entropy-guided with weight norm", tinyEntropyGuided, Options{WeightNorm: true, EntropyReg: true, Lambda: 0.5}},
		{"baseline with spectral norm", tinyBaseline, Options{SpectralNorm: true}},
		{"entropy-guided with spectral norm", tinyEntropyGuided, Options{SpectralNorm: true, EntropyReg: true, Lambda: 0.5}},
		{"entropy-guided with score-range penalty", tinyEntropyGuided, Options{EntropyReg: true, Lambda: 0.5, ScorePenalty: 3, ScoreBound: 0.05}},
		{"baseline with score-range penalty", tinyBaseline, Options{ScorePenalty: 3, ScoreBound: 0.05}},
		{"entropy-guided with mean exp-score penalty", tinyEntropyGuided, Options{EntropyReg: true, Lambda: 0.5, MeanPenalty: 5, MeanBound: 0.02}},
	}
	for ci, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 11))
			p, err := NewParams(c.cfg(), c.opts, uint64(ci)+20)
			if err != nil {
				t.Fatal(err)
			}
			jitter(p, rng, 0.3)
			if c.opts.WeightNorm {
				requireParams(t, p, "h.0.attn.c_attn.weight_v", "h.0.attn.c_attn.weight_g")
			}
			if c.opts.SpectralNorm {
				requireParams(t, p, "h.0.attn.c_attn.weight_v", "h.0.attn.c_attn.weight_s", "h.1.attn.c_proj.weight_s")
			}
			in, tg := tinyBatch(rng, 2, 5, 11)
			if c.opts.EntropyReg {
				setThresholds(t, p, in, [][]float64{{0.4, -0.4}, {-0.35, 0.1}})
			}
			if c.opts.ScorePenalty > 0 || c.opts.MeanPenalty > 0 {
				// The penalty must be active on part of the scores, not all.
				ws := NewWorkspace(p, 2, 5)
				res, err := ws.ForwardBackward(p, in, tg)
				if err != nil {
					t.Fatal(err)
				}
				if !(res.Range > 0) || (c.opts.ScorePenalty > 0 && !(res.ScoreMax > c.opts.ScoreBound)) {
					t.Fatalf("score-range penalty inactive: range %g, max |s| %g, bound %g", res.Range, res.ScoreMax, c.opts.ScoreBound)
				}
			}
			gradCheck(t, p, in, tg)
		})
	}
}

// setAttnBlock sets the attention row-block size and returns a function that
// restores it (tests of this package do not run in parallel).
func setAttnBlock(n int) func() {
	old := attnBlock
	attnBlock = n
	return func() { attnBlock = old }
}
