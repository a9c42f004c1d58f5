package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/approx"
)

func randomTokens(seed uint64, vocab, n int) []int {
	rng := rand.New(rand.NewPCG(seed, 2))
	t := make([]int, n)
	for i := range t {
		t[i] = rng.IntN(vocab)
	}
	return t
}

func chunks(tokens []int, size int) [][]int {
	var out [][]int
	for i := 0; i+size <= len(tokens); i += size {
		out = append(out, tokens[i:i+size])
	}
	return out
}

// TestApproxPerplexityBound calibrates each small random model on one token
// stream and evaluates a different one: the approximated perplexity must
// stay within 0.1% of the exact one, with no range violations.
func TestApproxPerplexityBound(t *testing.T) {
	for name, w := range testModels(t) {
		if w.Config.Activation == ActReLU {
			continue
		}
		ctx := w.Config.Context
		cal, err := Calibrate(w, chunks(randomTokens(1, w.Config.Vocab, 40*ctx), ctx), CalibrateOptions{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(cal.Warnings) > 0 {
			t.Errorf("%s: calibration warnings %v", name, cal.Warnings)
		}
		ev, err := EvalApprox(w, cal.Set, randomTokens(2, w.Config.Vocab, 20*ctx), PerplexityOptions{Stride: ctx / 2})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rel := math.Abs(ev.PPLDiff()) / ev.Exact.PPL
		t.Logf("%s: exact %.5f approx %.5f (rel diff %.2e), max |Δlogit| %.2e, violations %d\n%v",
			name, ev.Exact.PPL, ev.Approx.PPL, rel, ev.MaxLogitDiff, ev.Ranges.Violations(), cal)
		if !(rel <= 1e-3) {
			t.Errorf("%s: approximated perplexity %.6f differs from exact %.6f by %.2e (relative)", name, ev.Approx.PPL, ev.Exact.PPL, rel)
		}
		if ev.Ranges.Violations() != 0 {
			t.Errorf("%s: %d range violations on held-out data\n%v", name, ev.Ranges.Violations(), &ev.Ranges)
		}
		if ev.MaxLogitDiff == 0 {
			t.Errorf("%s: approximation identical to exact: the approximation backend is not used", name)
		}
	}
}

// TestViolationsCounted narrows every range on purpose and checks that the
// approximation backend counts exactly the inputs that fall outside, using
// the exact reference's recorded inputs as the witness.
func TestViolationsCounted(t *testing.T) {
	w := testModels(t)["baseline"]
	tokens := randomTokens(3, w.Config.Vocab, w.Config.Context)
	ref := NewReference(w.Config)
	ref.Ranges = &Ranges{}
	if _, err := Forward(w, ref, tokens, 0); err != nil {
		t.Fatal(err)
	}
	obs := ref.Ranges
	mid := func(r Range) float64 { return (r.Lo + r.Hi) / 2 }
	is := approx.NewInvSqrt(obs.InvSqrt.Lo, mid(obs.InvSqrt), 7, 2)
	g := approx.NewGELU(obs.GELU.Lo, mid(obs.GELU), 15)
	set := &approx.Set{
		Exp:     approx.NewExp(mid(obs.Exp), obs.Exp.Hi, 15),
		Recip:   approx.NewReciprocal(obs.Recip.Lo, obs.Recip.Hi, 7, 3),
		InvSqrt: &is,
		GELU:    &g,
	}
	ab, err := NewApprox(w.Config, set)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Forward(w, ab, tokens, 0); err != nil {
		t.Fatal(err)
	}
	r := ab.Ranges
	if r.Exp.Outside == 0 || r.InvSqrt.Outside == 0 || r.GELU.Outside == 0 {
		t.Fatalf("narrowed ranges produced no violations:\n%v", r)
	}
	if r.Violations() != r.Exp.Outside+r.Recip.Outside+r.InvSqrt.Outside+r.GELU.Outside {
		t.Fatal("Violations is not the sum of the per-function counts")
	}
	// Every exp input is recorded: a second run, counting attention rows
	// through the hook, sees as many inputs and the same violations.
	ab2, _ := NewApprox(w.Config, set)
	ab2.Ranges = &Ranges{}
	ab2.Ranges.Exp.setPoly(set.Exp.Range())
	var inputs int
	ab2.OnAttention = func(_, _, pos int, _ []float64) { inputs += pos + 1 }
	if _, err := Forward(w, ab2, tokens, 0); err != nil {
		t.Fatal(err)
	}
	if ab2.Ranges.Exp.N != inputs || ab2.Ranges.Exp.Outside != r.Exp.Outside {
		t.Fatalf("exp inputs counted %d (outside %d), attention rows cover %d (outside %d)",
			ab2.Ranges.Exp.N, ab2.Ranges.Exp.Outside, inputs, r.Exp.Outside)
	}
	// Inputs inside the range are not violations.
	wide := *set
	wide.Exp = approx.NewExp(obs.Exp.Lo-1, obs.Exp.Hi+1, 31)
	ok := Range{}
	ok.setPoly(wide.Exp.Range())
	ok.observe(obs.Exp.Lo)
	ok.observe(obs.Exp.Hi)
	if ok.Outside != 0 {
		t.Fatal("inputs inside the polynomial range counted as violations")
	}
	ok.observe(math.NaN())
	if ok.Outside != 1 {
		t.Fatal("a NaN input is not counted as a violation")
	}
}

func TestNewApproxRejectsMissingApproximations(t *testing.T) {
	set := &approx.Set{Exp: approx.NewExp(-4, 4, 15), Recip: approx.NewReciprocal(1, 10, 7, 2)}
	if _, err := NewApprox(Baseline(5, 4, 4, 1, 1), set); err == nil {
		t.Fatal("baseline model accepted an approximation set without inverse square root and GELU")
	}
	if _, err := NewApprox(EntropyGuided(5, 4, 4, 1, 1), set); err != nil {
		t.Fatalf("entropy-guided model needs only exp and reciprocal: %v", err)
	}
}

func TestWindowsScoreEveryTokenOnce(t *testing.T) {
	for _, c := range []struct{ n, size, stride int }{{10, 4, 3}, {10, 4, 2}, {10, 4, 1}, {5, 8, 7}, {2, 2, 1}, {17, 6, 5}, {64, 16, 15}} {
		seen := make([]int, c.n)
		for _, w := range windows(c.n, c.size, c.stride) {
			if w.end-w.begin > c.size || w.from <= w.begin {
				t.Fatalf("%+v: bad window %+v", c, w)
			}
			for t := w.from; t < w.end; t++ {
				seen[t]++
			}
		}
		for tgt := 1; tgt < c.n; tgt++ {
			if seen[tgt] != 1 {
				t.Fatalf("%+v: target %d scored %d times", c, tgt, seen[tgt])
			}
		}
	}
}

func TestPerplexityOfUniformModelIsVocab(t *testing.T) {
	cfg := EntropyGuided(7, 4, 4, 1, 1)
	uniform := func(tokens []int) (*mat.Dense, error) { return mat.NewDense(len(tokens), cfg.Vocab, nil), nil }
	r, err := Perplexity(cfg, uniform, randomTokens(4, cfg.Vocab, 11), PerplexityOptions{Stride: 3})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tokens != 10 || math.Abs(r.PPL-7) > 1e-12 {
		t.Fatalf("uniform model: %v, want perplexity 7 over 10 tokens", r)
	}
	// The reference backend through Perplexity agrees with EvalApprox's exact side.
	w := testModels(t)["entropy-guided"]
	toks := randomTokens(5, w.Config.Vocab, 25)
	p, err := Perplexity(w.Config, PlainLogits(w, NewReference(w.Config)), toks, PerplexityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cal, err := Calibrate(w, [][]int{toks[:10]}, CalibrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := EvalApprox(w, cal.Set, toks, PerplexityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p != ev.Exact {
		t.Fatalf("Perplexity %v, EvalApprox exact %v", p, ev.Exact)
	}
}
