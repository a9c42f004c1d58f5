package train

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/entropi-ai/entropi/model"
)

type variant struct {
	name string
	cfg  model.Config
	opts Options
}

func variants() []variant {
	eg := tinyEntropyGuided()
	relu := tinyEntropyGuided()
	relu.FusedFFN, relu.Activation, relu.FFNHidden, relu.FinalNorm = false, model.ActReLU, 12, model.FinalNone
	gelu := tinyEntropyGuided()
	gelu.FusedFFN, gelu.Activation, gelu.FFNHidden, gelu.Bias = false, model.ActGELU, 12, false
	lnFused := tinyBaseline()
	lnFused.FusedFFN, lnFused.Activation, lnFused.FFNScaling, lnFused.Temperature = true, model.ActNone, true, true
	fusedPlain := tinyEntropyGuided()
	fusedPlain.FFNScaling, fusedPlain.Temperature = false, false
	return []variant{
		{"baseline", tinyBaseline(), Options{}},
		{"entropy-guided", eg, Options{EntropyReg: true, Lambda: 1e-3}},
		{"no-ln relu scaled", relu, Options{}},
		{"no-ln gelu scaled no-bias", gelu, Options{}},
		{"ln fused scaled", lnFused, Options{}},
		{"fused unscaled", fusedPlain, Options{}},
		{"baseline weight norm", tinyBaseline(), Options{WeightNorm: true}},
		{"entropy-guided weight norm", eg, Options{WeightNorm: true}},
		{"baseline spectral norm", tinyBaseline(), Options{SpectralNorm: true}},
		{"entropy-guided spectral norm", eg, Options{SpectralNorm: true, EntropyReg: true, Lambda: 1e-3}},
	}
}

// naiveForward is an independent, loop-only evaluation of exported weights
// with model.Block semantics, for one sequence at positions 0..T−1.
func naiveForward(w *model.Weights, toks []int) [][]float64 {
	cfg := w.Config
	d, H := cfg.Dim, cfg.Heads
	dk := d / H
	T := len(toks)
	lin := func(x []float64, W interface {
		At(i, j int) float64
		Dims() (int, int)
	}, b []float64) []float64 {
		in, out := W.Dims()
		y := make([]float64, out)
		for j := 0; j < out; j++ {
			if b != nil {
				y[j] = b[j]
			}
			for i := 0; i < in; i++ {
				y[j] += x[i] * W.At(i, j)
			}
		}
		return y
	}
	ln := func(x, g, b []float64) []float64 {
		var mu, v float64
		for _, a := range x {
			mu += a
		}
		mu /= float64(len(x))
		for _, a := range x {
			v += (a - mu) * (a - mu)
		}
		v /= float64(len(x))
		y := make([]float64, len(x))
		for i, a := range x {
			y[i] = (a-mu)/math.Sqrt(v+cfg.LNEps)*g[i] + b[i]
		}
		return y
	}
	xs := make([][]float64, T)
	for i, t := range toks {
		xs[i] = make([]float64, d)
		for j := range xs[i] {
			xs[i][j] = w.Wte.At(t, j) + w.Wpe.At(i, j)
		}
	}
	for _, b := range w.Blocks {
		qkv := make([][]float64, T)
		for i := range xs {
			h := xs[i]
			if cfg.LayerNorm {
				h = ln(h, b.LN1G, b.LN1B)
			}
			qkv[i] = lin(h, b.Attn, b.AttnBias)
		}
		for i := range xs {
			att := make([]float64, d)
			for hd := 0; hd < H; hd++ {
				t := 1.0
				if cfg.Temperature {
					t = b.Temp.At(hd, i)
				}
				sc := make([]float64, i+1)
				m := math.Inf(-1)
				for j := 0; j <= i; j++ {
					for k := 0; k < dk; k++ {
						sc[j] += qkv[i][hd*dk+k] * qkv[j][d+hd*dk+k]
					}
					sc[j] /= t * math.Sqrt(float64(dk))
					m = math.Max(m, sc[j])
				}
				var s float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - m)
					s += sc[j]
				}
				for j := range sc {
					for k := 0; k < dk; k++ {
						att[hd*dk+k] += sc[j] / s * qkv[j][2*d+hd*dk+k]
					}
				}
			}
			o := lin(att, b.Proj, b.ProjBias)
			for j := range o {
				o[j] += xs[i][j]
			}
			h := o
			if cfg.LayerNorm {
				h = ln(o, b.LN2G, b.LN2B)
			}
			var f []float64
			if cfg.FusedFFN {
				f = lin(h, b.Fused, b.FusedBias)
			} else {
				u := lin(h, b.FC, b.FCBias)
				for j, v := range u {
					switch cfg.Activation {
					case model.ActGELU:
						u[j] = 0.5 * v * (1 + math.Erf(v/math.Sqrt2))
					case model.ActReLU:
						u[j] = math.Max(v, 0)
					}
				}
				f = lin(u, b.Out, b.OutBias)
			}
			al, be := 1.0, 1.0
			if cfg.FFNScaling {
				al, be = b.Alpha, b.Beta
			}
			xs[i] = make([]float64, d) // rows < i are still read from qkv, not xs
			for j := range f {
				xs[i][j] = be*o[j] + f[j]/al
			}
		}
	}
	logits := make([][]float64, T)
	for i, x := range xs {
		switch cfg.FinalNorm {
		case model.FinalLayerNorm:
			x = ln(x, w.LNFG, w.LNFB)
		case model.FinalScale:
			for j := range x {
				x[j] *= w.FinalScale
			}
		}
		logits[i] = make([]float64, cfg.Vocab)
		for v := range logits[i] {
			for j := range x {
				logits[i][v] += x[j] * w.Wte.At(v, j)
			}
		}
	}
	return logits
}

func maxDiff(a, b [][]float64) float64 {
	var m float64
	for i := range a {
		for j := range a[i] {
			m = math.Max(m, math.Abs(a[i][j]-b[i][j]))
		}
	}
	return m
}

// Training forward, exported weights through an independent loop
// implementation, through model.Forward with the exact reference backend,
// and re-imported plain parameters all give the same logits.
func TestExportMatchesTrainingForward(t *testing.T) {
	for vi, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(vi), 99))
			p, err := NewParams(v.cfg, v.opts, uint64(vi)+1)
			if err != nil {
				t.Fatal(err)
			}
			jitter(p, rng, 0.3)
			in, _ := tinyBatch(rng, 3, 5, v.cfg.Vocab)
			ws := NewWorkspace(p, 3, 6)
			got, err := ws.Forward(p, in)
			if err != nil {
				t.Fatal(err)
			}
			for _, blk := range []int{1, 2, 3} {
				restore := setAttnBlock(blk)
				other, err := ws.Forward(p, in)
				restore()
				if err != nil {
					t.Fatal(err)
				}
				for b := range got {
					if d := maxDiff(got[b], other[b]); d > 1e-12 {
						t.Errorf("attention row blocks of %d change the logits by %.3g", blk, d)
					}
				}
			}
			w, err := p.Export()
			if err != nil {
				t.Fatal(err)
			}
			if v.cfg.FFNScaling {
				for l, b := range w.Blocks {
					if b.Alpha != 1 {
						t.Fatalf("block %d: exported α = %v, want 1 (folded)", l, b.Alpha)
					}
					if v.cfg.FusedFFN && !v.cfg.LayerNorm && b.Beta != 0 {
						t.Fatalf("block %d: exported β = %v, want 0 (folded into Fused)", l, b.Beta)
					}
				}
			}
			q, err := FromWeights(w, Options{})
			if err != nil {
				t.Fatal(err)
			}
			plain, err := NewWorkspace(q, 3, 6).Forward(q, in)
			if err != nil {
				t.Fatal(err)
			}
			ref := model.NewReference(w.Config)
			var scale float64
			for b, seq := range in {
				for _, row := range got[b] {
					for _, x := range row {
						scale = math.Max(scale, math.Abs(x))
					}
				}
				if d := maxDiff(got[b], naiveForward(w, seq)); d > 1e-9 {
					t.Errorf("sequence %d: training forward vs exported weights (loop reference): max |Δlogit| = %.3g", b, d)
				}
				if d := maxDiff(got[b], plain[b]); d > 1e-9 {
					t.Errorf("sequence %d: training forward vs re-imported plain parameters: max |Δlogit| = %.3g", b, d)
				}
				ref.Reset()
				lg, err := model.Forward(w, ref, seq, 0)
				if err != nil {
					t.Fatal(err)
				}
				rows := make([][]float64, len(seq))
				for i := range rows {
					rows[i] = lg.RawRowView(i)
				}
				if d := maxDiff(got[b], rows); d > 1e-9 {
					t.Errorf("sequence %d: training forward vs model.Forward(reference): max |Δlogit| = %.3g", b, d)
				}
			}
			if scale < 0.1 {
				t.Fatalf("logits too small (%v) for the comparison to mean anything", scale)
			}
		})
	}
}

// Without reparametrizations, FromWeights followed by Export is the identity
// (apart from the documented α/β folding, absent when α = 1, β = 0).
func TestFromWeightsRoundTrip(t *testing.T) {
	w, err := model.NewRandom(tinyBaseline(), 5)
	if err != nil {
		t.Fatal(err)
	}
	p, err := FromWeights(w, Options{EntropyReg: true})
	if err != nil {
		t.Fatal(err)
	}
	p.Lookup("h.1.attn.entropy_threshold").Data[1] = 0.3
	w2, err := p.Export()
	if err != nil {
		t.Fatal(err)
	}
	a, b := w.Tensors(), w2.Tensors()
	if len(a) != len(b) {
		t.Fatalf("%d tensors exported, %d given", len(b), len(a))
	}
	for name, ta := range a {
		tb, ok := b[name]
		if !ok {
			t.Fatalf("tensor %s lost", name)
		}
		for i := range ta.Data {
			if ta.Data[i] != tb.Data[i] && name != "h.1.attn.entropy_threshold" {
				t.Fatalf("%s[%d]: %v → %v", name, i, ta.Data[i], tb.Data[i])
			}
		}
	}
	if w2.Blocks[1].Threshold[1] != 0.3 {
		t.Fatalf("threshold not exported: %v", w2.Blocks[1].Threshold)
	}
	// Without the regularizer, thresholds pass through unchanged.
	q, err := FromWeights(w2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w3, err := q.Export()
	if err != nil {
		t.Fatal(err)
	}
	if w3.Blocks[1].Threshold[1] != 0.3 || w3.Blocks[0].Threshold[0] != w.Blocks[0].Threshold[0] {
		t.Fatalf("thresholds not carried through: %v", w3.Blocks)
	}
}

// The reported head entropies and penalty agree with entropies computed from
// the reference backend's attention probabilities, and the loss with the CE
// of Forward's logits.
func TestEntropyAndLossAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	cfg := tinyEntropyGuided()
	opts := Options{EntropyReg: true, Lambda: 0.7, Gamma: 0.1}
	p, err := NewParams(cfg, opts, 3)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rng, 0.3)
	in, tg := tinyBatch(rng, 3, 5, cfg.Vocab)
	setThresholds(t, p, in, [][]float64{{0.3, -0.05}, {-0.2, 0.15}})
	ws := NewWorkspace(p, 4, 6)
	res, err := ws.ForwardBackward(p, in, tg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := p.Export()
	if err != nil {
		t.Fatal(err)
	}
	E := make([][]float64, cfg.Layers)
	for l := range E {
		E[l] = make([]float64, cfg.Heads)
	}
	ref := model.NewReference(cfg)
	ref.OnAttention = func(l, h, pos int, probs []float64) {
		for _, a := range probs {
			E[l][h] -= a * math.Log(a+1e-9) / float64(len(in)*len(in[0]))
		}
	}
	var ce float64
	for b, seq := range in {
		ref.Reset()
		lg, err := model.Forward(w, ref, seq, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range seq {
			row := lg.RawRowView(i)
			m := math.Inf(-1)
			for _, z := range row {
				m = math.Max(m, z)
			}
			var s float64
			for _, z := range row {
				s += math.Exp(z - m)
			}
			ce += m + math.Log(s) - row[tg[b][i]]
		}
	}
	ce /= float64(len(in) * len(in[0]))
	if math.Abs(ce-res.CE) > 1e-9 {
		t.Fatalf("CE %v, reference %v", res.CE, ce)
	}
	emax := math.Log(5)
	var pen float64
	for l := range E {
		for h := range E[l] {
			if math.Abs(E[l][h]-res.HeadEntropy[l][h]) > 1e-9 {
				t.Fatalf("E(%d,%d) = %v, reference %v", l, h, res.HeadEntropy[l][h], E[l][h])
			}
			delta := E[l][h] - w.Blocks[l].Threshold[h]*emax
			if math.Abs(delta) > 0.1*emax {
				pen += delta * delta
			}
		}
	}
	pen *= 0.7 / float64(cfg.Layers*cfg.Heads)
	if pen == 0 || math.Abs(pen-res.Entropy) > 1e-9 || math.Abs(res.Loss-res.CE-res.Entropy) > 1e-12 {
		t.Fatalf("penalty %v (loss %v), reference %v", res.Entropy, res.Loss, pen)
	}
	if res.Tokens != 15 {
		t.Fatalf("Tokens = %d", res.Tokens)
	}
}

// Workspaces on shared Params can run concurrently (run with -race) and give
// bit-identical results to a sequential run.
func TestConcurrentWorkspaces(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	p, err := NewParams(tinyEntropyGuided(), Options{EntropyReg: true, Lambda: 0.1, SpectralNorm: true}, 2)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rng, 0.2)
	var ins, tgs [4][][]int
	want := make([]Result, 4)
	wantG := make([][][]float64, 4)
	for k := range ins {
		ins[k], tgs[k] = tinyBatch(rng, 2, 5, 11)
		ws := NewWorkspace(p, 2, 5)
		r, err := ws.ForwardBackward(p, ins[k], tgs[k])
		if err != nil {
			t.Fatal(err)
		}
		want[k], wantG[k] = r, ws.Grads()
	}
	var wg sync.WaitGroup
	got := make([]Result, 4)
	gotG := make([][][]float64, 4)
	for k := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws := NewWorkspace(p, 2, 5)
			for rep := 0; rep < 3; rep++ {
				got[k], _ = ws.ForwardBackward(p, ins[k], tgs[k])
			}
			gotG[k] = ws.Grads()
		}()
	}
	wg.Wait()
	for k := range want {
		if got[k].Loss != want[k].Loss {
			t.Fatalf("batch %d: loss %v concurrently, %v sequentially", k, got[k].Loss, want[k].Loss)
		}
		for i := range wantG[k] {
			for j := range wantG[k][i] {
				if wantG[k][i][j] != gotG[k][i][j] {
					t.Fatalf("batch %d: gradient %s[%d] differs", k, p.List[i].Name, j)
				}
			}
		}
	}
}

func TestInputValidation(t *testing.T) {
	p, err := NewParams(tinyBaseline(), Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	ws := NewWorkspace(p, 2, 5)
	bad := [][][]int{
		{},                   // empty
		{{1, 2, 3}, {1, 2}},  // ragged
		{{1, 2, 11}},         // out of vocabulary
		{{1, 2, 3, 4, 5, 6}}, // longer than the workspace
		{{1}, {2}, {3}},      // more sequences than the workspace
	}
	for i, in := range bad {
		if _, err := ws.Forward(p, in); err == nil {
			t.Errorf("case %d: Forward accepted %v", i, in)
		}
	}
	if _, err := ws.ForwardBackward(p, [][]int{{1, 2}}, [][]int{{-1, -1}}); err == nil {
		t.Error("ForwardBackward accepted a batch without counted targets")
	}
	if _, err := NewParams(tinyBaseline(), Options{WeightNorm: true, SpectralNorm: true}, 1); err == nil {
		t.Error("weight and spectral normalization together were accepted")
	}
}

// The spectral power-iteration state is exposed for checkpoints, restoring it
// restores the function, and UpdateSpectral moves σ toward the top singular
// value.
func TestSpectralBuffers(t *testing.T) {
	p, err := NewParams(tinyEntropyGuided(), Options{SpectralNorm: true}, 6)
	if err != nil {
		t.Fatal(err)
	}
	jitter(p, rand.New(rand.NewPCG(6, 6)), 0.2)
	bufs := p.Buffers()
	if len(bufs) != 2*3 { // c_attn, c_proj, c_fused per layer
		t.Fatalf("%d buffers", len(bufs))
	}
	in, _ := tinyBatch(rand.New(rand.NewPCG(1, 1)), 1, 5, 11)
	ws := NewWorkspace(p, 1, 5)
	before, _ := ws.Forward(p, in)
	saved := make([][]float64, len(bufs))
	for i, b := range bufs {
		saved[i] = append([]float64(nil), b.Data...)
	}
	lin := p.blocks[0].lin[linAttn]
	sig0, _, _, _ := spectral(lin.w.Data, lin.in, lin.out, lin.u)
	for i := 0; i < 50; i++ {
		p.UpdateSpectral()
	}
	sig1, _, _, _ := spectral(lin.w.Data, lin.in, lin.out, lin.u)
	if !(sig1 >= sig0) {
		t.Fatalf("power iteration decreased σ: %v → %v", sig0, sig1)
	}
	changed, _ := ws.Forward(p, in)
	if maxDiff(before[0], changed[0]) == 0 {
		t.Fatal("UpdateSpectral did not change the function")
	}
	for i, b := range p.Buffers() {
		copy(b.Data, saved[i])
	}
	after, _ := ws.Forward(p, in)
	if maxDiff(before[0], after[0]) != 0 {
		t.Fatal("restoring the buffers did not restore the function")
	}
}
