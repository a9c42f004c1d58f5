package model

import (
	"math"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// Zero query weights make every score zero: attention is uniform over the
// causal window, so row i has entropy log(i+1) (up to the 1e-9 guard) and
// each head's mean is (1/T)·Σ_i log(i+1).
func TestUniformAttentionEntropy(t *testing.T) {
	cfg := EntropyGuided(11, 9, 8, 2, 2)
	w, err := NewRandom(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	for l := range w.Blocks {
		q := w.Blocks[l].Attn.Slice(0, cfg.Dim, 0, cfg.Dim).(*mat.Dense)
		q.Zero()
	}
	seqs := [][]int{randomTokens(1, cfg.Vocab, 9), randomTokens(2, cfg.Vocab, 5)}
	st := NewEntropyStats(cfg)
	b := NewReference(cfg)
	b.OnAttention = func(layer, head, pos int, probs []float64) {
		if e := RowEntropy(probs); math.Abs(e-math.Log(float64(pos+1))) > 1e-7 {
			t.Fatalf("layer %d head %d row %d: entropy %.9f, want log(%d) = %.9f", layer, head, pos, e, pos+1, math.Log(float64(pos+1)))
		}
		st.Observe(layer, head, pos, probs)
	}
	for _, s := range seqs {
		b.Reset()
		if _, err := Forward(w, b, s, 0); err != nil {
			t.Fatal(err)
		}
	}
	var want float64
	for _, s := range seqs {
		for i := range s {
			want += math.Log(float64(i + 1))
		}
	}
	want /= float64(len(seqs[0]) + len(seqs[1]))
	if math.Abs(st.Uniform()-want) > 1e-12 {
		t.Fatalf("Uniform %.9f, want %.9f", st.Uniform(), want)
	}
	r := st.Report()
	for l, row := range r.E {
		for h, v := range row {
			if math.Abs(v-want) > 1e-7 {
				t.Errorf("E(%d,%d) = %.9f, want %.9f", l, h, v, want)
			}
		}
	}
	// Every head at the maximum: all in the top bucket, overload flagged,
	// no collapse.
	if r.Counts != [4]int{0, 0, 0, 4} || !r.Overload || r.Collapse || len(r.Overloaded) != 4 {
		t.Fatalf("uniform attention: counts %v, overload %v, collapse %v\n%v", r.Counts, r.Overload, r.Collapse, r)
	}
	if math.Abs(r.LogT-math.Log(9)) > 1e-12 {
		t.Fatalf("log T = %g, want log 9", r.LogT)
	}
}

func TestBucketsAndFlags(t *testing.T) {
	st := &EntropyStats{Layers: 4, Heads: 2, sum: make([]float64, 8), rows: make([]int, 8)}
	// Uniform = 2 (one row per head, fake log(pos+1) sum).
	st.uniform, st.maxLen = 2, 8
	vals := []float64{1.9, 1.95, 1.2, 0.9, 0.1, 0.5, 0.05, 0.15}
	for k, v := range vals {
		st.sum[k], st.rows[k] = v, 1
	}
	r := st.Report()
	// M = 1.95: buckets [0, .4875), [.4875, .975), [.975, 1.4625), [1.4625, 1.95].
	if r.Counts != [4]int{3, 2, 1, 2} {
		t.Fatalf("counts %v, want [3 2 1 2]", r.Counts)
	}
	if math.Abs(r.Buckets[0]-3.0/8) > 1e-15 {
		t.Fatalf("bucket fractions %v", r.Buckets)
	}
	// Collapsed: E < 0.2 → (2,0) 0.1, (3,0) 0.05, (3,1) 0.15: 3 of the 4 deep heads.
	if !r.Collapse || len(r.Collapsed) != 3 {
		t.Fatalf("collapse %v, collapsed %v", r.Collapse, r.Collapsed)
	}
	// Overloaded: E ≥ 1.8 → (0,0), (0,1): 2 of the 4 early heads = 50%.
	if !r.Overload || len(r.Overloaded) != 2 {
		t.Fatalf("overload %v, overloaded %v", r.Overload, r.Overloaded)
	}
	s := r.String()
	for _, want := range []string{"[M/4, M/2) 25% (2)", "entropy collapse: true", "entropic overload: true"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
}
