package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// testModels returns small random models of both block types (and the
// ablations between them) with every parameter perturbed away from its
// initial value, so that biases, temperatures and FFN scaling all matter.
func testModels(t *testing.T) map[string]*Weights {
	t.Helper()
	cfgs := map[string]Config{
		"baseline":       Baseline(13, 10, 8, 2, 2),
		"entropy-guided": EntropyGuided(13, 10, 8, 2, 2),
	}
	abl := EntropyGuided(13, 10, 8, 2, 2)
	abl.Name, abl.FusedFFN, abl.Activation, abl.FFNHidden, abl.FinalNorm = "no-ln-gelu-scaled", false, ActGELU, 16, FinalNone
	cfgs[abl.Name] = abl
	ln := Baseline(13, 10, 8, 2, 2)
	ln.Name, ln.FusedFFN, ln.Activation, ln.FFNScaling, ln.Temperature = "ln-fused", true, ActNone, true, true
	cfgs[ln.Name] = ln
	out := map[string]*Weights{}
	for name, cfg := range cfgs {
		w, err := NewRandom(cfg, 7)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		perturb(w, 11)
		out[name] = w
	}
	return out
}

func perturb(w *Weights, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	jitter := func(v []float64, base, std float64) {
		for i := range v {
			v[i] = base + std*rng.NormFloat64()
		}
	}
	for l := range w.Blocks {
		b := &w.Blocks[l]
		for _, v := range [][]float64{b.AttnBias, b.ProjBias, b.FCBias, b.OutBias, b.FusedBias, b.LN1B, b.LN2B} {
			jitter(v, 0, 0.1)
		}
		jitter(b.LN1G, 1, 0.1)
		jitter(b.LN2G, 1, 0.1)
		if b.Temp != nil {
			jitter(b.Temp.RawMatrix().Data, 1, 0.2)
		}
		b.Alpha, b.Beta = 1.5+0.2*rng.NormFloat64(), 0.8+0.1*rng.NormFloat64()
	}
	jitter(w.LNFG, 1, 0.1)
	jitter(w.LNFB, 0, 0.1)
	w.FinalScale *= 1.3
}

func TestIncrementalMatchesWholeSequence(t *testing.T) {
	tokens := []int{3, 1, 4, 1, 5, 9, 2, 6, 5, 3}
	for name, w := range testModels(t) {
		s := NewSession(w, nil)
		whole, err := s.Prefill(tokens)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s.Reset()
		// A prompt of 4, then a chunk of 2, then one token at a time.
		var rows [][]float64
		first, err := s.Prefill(tokens[:4])
		if err != nil {
			t.Fatal(err)
		}
		second, err := s.Prefill(tokens[4:6])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []*mat.Dense{first, second} {
			r, _ := m.Dims()
			for i := 0; i < r; i++ {
				rows = append(rows, m.RawRowView(i))
			}
		}
		for _, tok := range tokens[6:] {
			l, err := s.Step(tok)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, l)
		}
		var worst float64
		for i, row := range rows {
			for j, v := range row {
				worst = math.Max(worst, math.Abs(v-whole.At(i, j)))
			}
		}
		if worst > 1e-9 {
			t.Errorf("%s: incremental logits differ from whole-sequence logits by %g", name, worst)
		}
		if s.Pos() != len(tokens) {
			t.Errorf("%s: session at position %d, want %d", name, s.Pos(), len(tokens))
		}
		// The logits must depend on the perturbed parameters at all.
		if mat.Norm(whole, 2) == 0 {
			t.Errorf("%s: all-zero logits", name)
		}
	}
}

// TestHandComputedTinyModel checks a d=2, one-layer, one-head entropy-guided
// model against numbers worked out by hand.
func TestHandComputedTinyModel(t *testing.T) {
	cfg := Config{Name: "tiny", Vocab: 3, Context: 4, Dim: 2, Layers: 1, Heads: 1,
		Activation: ActNone, FusedFFN: true, FFNScaling: true, Temperature: true, FinalNorm: FinalNone}
	w := &Weights{
		Config: cfg,
		Wte:    mat.NewDense(3, 2, []float64{1, 0, 0, 1, 1, 1}),
		Wpe:    mat.NewDense(4, 2, []float64{0, 0, 0.5, 0, 0, 0, 0, 0}),
		Blocks: []Block{{
			// q = k = v = x
			Attn:  mat.NewDense(2, 6, []float64{1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1}),
			Proj:  mat.NewDense(2, 2, []float64{1, 0, 0, 1}),
			Temp:  mat.NewDense(1, 4, []float64{1, 2, 1, 1}),
			Fused: mat.NewDense(2, 2, []float64{0, 1, 1, 0}), // swaps the two coordinates
			Alpha: 2, Beta: 1,
		}},
	}
	if err := w.CheckShapes(); err != nil {
		t.Fatal(err)
	}
	logits, err := NewSession(w, nil).Prefill([]int{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	// x0 = wte[0] + wpe[0] = (1, 0); x1 = wte[1] + wpe[1] = (0.5, 1).
	// Row 0 attends only to itself: attn0 = v0 = (1, 0), x̂0 = (2, 0).
	// Row 1, t = 2, √d_k = √2: s0 = x1·x0/(2√2) = 0.5/(2√2), s1 = x1·x1/(2√2) = 1.25/(2√2).
	a1 := 1 / (1 + math.Exp(-(1.25-0.5)/(2*math.Sqrt2)))
	a0 := 1 - a1
	// attn1 = a0·(1, 0) + a1·(0.5, 1); x̂1 = x1 + attn1.
	h1 := []float64{0.5 + a0 + 0.5*a1, 1 + a1}
	// x' = β·x̂ + (x̂·W_F)/α = x̂ + swap(x̂)/2.
	x0 := []float64{2 + 0, 0 + 2.0/2}
	x1 := []float64{h1[0] + h1[1]/2, h1[1] + h1[0]/2}
	// logits = x'·wteᵀ = (x'_0, x'_1, x'_0 + x'_1).
	want := [][]float64{{x0[0], x0[1], x0[0] + x0[1]}, {x1[0], x1[1], x1[0] + x1[1]}}
	for i := range want {
		for j := range want[i] {
			if got := logits.At(i, j); math.Abs(got-want[i][j]) > 1e-12 {
				t.Errorf("logit[%d][%d] = %.15g, want %.15g", i, j, got, want[i][j])
			}
		}
	}
}

func TestContextOverflow(t *testing.T) {
	w := testModels(t)["entropy-guided"]
	s := NewSession(w, nil)
	long := make([]int, w.Config.Context+1)
	if _, err := s.Prefill(long); err == nil || !strings.Contains(err.Error(), "context window") {
		t.Fatalf("prefill past the context: got %v, want a context-window error", err)
	}
	if s.Pos() != 0 {
		t.Fatalf("a rejected prefill changed the cache: position %d", s.Pos())
	}
	if _, err := s.Prefill(long[:w.Config.Context]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Step(0); err == nil || !strings.Contains(err.Error(), "context window") {
		t.Fatalf("step past the context: got %v, want a context-window error", err)
	}
	if _, err := s.Step(-1); err == nil {
		t.Fatal("negative token accepted")
	}
	s.Reset()
	if _, err := s.Step(w.Config.Vocab); err == nil || !strings.Contains(err.Error(), "vocabulary") {
		t.Fatalf("out-of-vocabulary token: got %v", err)
	}
	// A backend whose cache does not match pos0 reports it through Err.
	b := NewReference(w.Config)
	if _, err := Forward[*mat.Dense](w, b, []int{1, 2}, 3); err == nil || !strings.Contains(err.Error(), "cache") {
		t.Fatalf("mismatched cache: got %v", err)
	}
}

func TestFFNMatrixFoldsResidual(t *testing.T) {
	w := testModels(t)["entropy-guided"]
	cfg := w.Config
	b := &w.Blocks[0]
	m, bias := b.FFNMatrix(cfg)
	x := []float64{0.3, -1, 2, 0.5, 0, 1, -0.7, 0.2}
	for j := 0; j < cfg.Dim; j++ {
		want := b.Beta*x[j] + b.FusedBias[j]/b.Alpha
		for i := range x {
			want += x[i] * b.Fused.At(i, j) / b.Alpha
		}
		got := bias[j]
		for i := range x {
			got += x[i] * m.At(i, j)
		}
		if math.Abs(got-want) > 1e-12 {
			t.Fatalf("FFNMatrix: column %d gives %g, want %g", j, got, want)
		}
	}
	cfg.FFNScaling = false
	m, _ = b.FFNMatrix(cfg)
	if d := m.At(0, 0) - b.Fused.At(0, 0); math.Abs(d-1) > 1e-15 {
		t.Fatalf("without FFN scaling the diagonal gains %g, want 1", d)
	}
}

func TestForwardEmbeddedMatchesForward(t *testing.T) {
	w := testModels(t)["baseline"]
	tokens := []int{4, 8, 12, 1, 0}
	b := NewReference(w.Config)
	want, err := Forward(w, b, tokens, 0)
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	got, err := ForwardEmbedded(w, b, b.Embed(tokens, 0, w.Wte, w.Wpe), len(tokens), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !mat.Equal(got, want) {
		t.Fatal("ForwardEmbedded differs from Forward")
	}
	if _, err := ForwardEmbedded(w, b, b.Embed(tokens, 0, w.Wte, w.Wpe), w.Config.Context+1, 0); err == nil {
		t.Fatal("rows past the context accepted")
	}
}
