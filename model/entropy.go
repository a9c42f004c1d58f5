package model

import (
	"fmt"
	"math"
	"strings"
)

// RowEntropy is the entropy of one attention row in nats, as the paper
// defines it: −Σ_j a_j·log(a_j + 1e-9).
func RowEntropy(probs []float64) float64 {
	var e float64
	for _, a := range probs {
		e -= a * math.Log(a+1e-9)
	}
	return e
}

// EntropyStats accumulates the mean attention entropy of every head,
// E(l, h) = (1/T)·Σ_i entropy(row i), over all query rows seen (across
// sequences). Attach Observe to a Plain backend's OnAttention.
type EntropyStats struct {
	Layers, Heads int
	sum           []float64 // [layer*Heads + head]
	rows          []int
	uniform       float64 // Σ over rows of log(pos+1), per head
	maxLen        int     // longest sequence seen (positions)
}

// NewEntropyStats returns empty statistics for a configuration.
func NewEntropyStats(cfg Config) *EntropyStats {
	n := cfg.Layers * cfg.Heads
	return &EntropyStats{Layers: cfg.Layers, Heads: cfg.Heads, sum: make([]float64, n), rows: make([]int, n)}
}

// Observe records one attention row (the signature of Plain.OnAttention).
func (e *EntropyStats) Observe(layer, head, pos int, probs []float64) {
	k := layer*e.Heads + head
	e.sum[k] += RowEntropy(probs)
	e.rows[k]++
	if k == 0 {
		e.uniform += math.Log(float64(pos + 1))
		e.maxLen = max(e.maxLen, pos+1)
	}
}

// Mean returns E[l][h], the mean entropy per query row in nats.
func (e *EntropyStats) Mean() [][]float64 {
	m := make([][]float64, e.Layers)
	for l := range m {
		m[l] = make([]float64, e.Heads)
		for h := range m[l] {
			if k := l*e.Heads + h; e.rows[k] > 0 {
				m[l][h] = e.sum[k] / float64(e.rows[k])
			}
		}
	}
	return m
}

// Uniform is the mean entropy uniform causal attention would have over the
// same query rows, (1/T)·Σ_i log(i+1): the largest mean any head can reach.
func (e *EntropyStats) Uniform() float64 {
	if e.rows[0] == 0 {
		return 0
	}
	return e.uniform / float64(e.rows[0])
}

// AttentionEntropy runs the exact reference over the sequences and returns
// the statistics of every head.
func AttentionEntropy(w *Weights, seqs [][]int, progress func(done, total int)) (*EntropyStats, error) {
	st := NewEntropyStats(w.Config)
	b := NewReference(w.Config)
	b.OnAttention = st.Observe
	for i, seq := range seqs {
		b.Reset()
		if _, err := Forward(w, b, seq, 0); err != nil {
			return nil, fmt.Errorf("sequence %d: %w", i, err)
		}
		if progress != nil {
			progress(i+1, len(seqs))
		}
	}
	return st, nil
}

// Thresholds of the failure-mode flags, as fractions of Uniform (the largest
// mean entropy a causal head can have on the rows observed; the paper's
// E_max = log T is the entropy of the last row only, which the mean over rows
// never reaches: log(T!)/T ≈ log T − 1).
const (
	// A head has collapsed when E < CollapseLevel·Uniform (near zero: it
	// attends to about one token).
	CollapseLevel = 0.1
	// Entropy collapse is flagged when at least CollapseShare of the heads
	// of the deeper half of the layers (l ≥ Layers/2) have collapsed.
	CollapseShare = 0.25
	// A head is overloaded when E ≥ OverloadLevel·Uniform (near uniform
	// attention).
	OverloadLevel = 0.9
	// Entropic overload is flagged when at least OverloadShare of the heads
	// of the first half of the layers (l < ⌈Layers/2⌉) are overloaded.
	OverloadShare = 0.5
)

// Head names one attention head.
type Head struct{ Layer, Head int }

// EntropyReport is the paper's view of the head entropies.
type EntropyReport struct {
	E       [][]float64 // E[layer][head], nats
	M       float64     // the largest head entropy observed
	Uniform float64     // mean entropy of uniform causal attention (see EntropyStats.Uniform)
	LogT    float64     // log of the longest sequence: the paper's E_max
	// Buckets: fraction of heads with E in [0, M/4), [M/4, M/2), [M/2, 3M/4),
	// [3M/4, M].
	Buckets [4]float64
	Counts  [4]int

	Collapsed, Overloaded []Head
	Collapse, Overload    bool
}

// Report computes buckets and flags.
func (e *EntropyStats) Report() *EntropyReport {
	r := &EntropyReport{E: e.Mean(), Uniform: e.Uniform()}
	if e.maxLen > 0 {
		r.LogT = math.Log(float64(e.maxLen))
	}
	for _, row := range r.E {
		for _, v := range row {
			r.M = math.Max(r.M, v)
		}
	}
	n := 0
	var deep, deepCollapsed, early, earlyOverloaded int
	for l, row := range r.E {
		for h, v := range row {
			r.Counts[bucket(v, r.M)]++
			n++
			if v < CollapseLevel*r.Uniform {
				r.Collapsed = append(r.Collapsed, Head{l, h})
			}
			if v >= OverloadLevel*r.Uniform {
				r.Overloaded = append(r.Overloaded, Head{l, h})
			}
			if l >= e.Layers/2 {
				deep++
				if v < CollapseLevel*r.Uniform {
					deepCollapsed++
				}
			}
			if l < (e.Layers+1)/2 {
				early++
				if v >= OverloadLevel*r.Uniform {
					earlyOverloaded++
				}
			}
		}
	}
	for i, c := range r.Counts {
		r.Buckets[i] = float64(c) / float64(n)
	}
	r.Collapse = deep > 0 && float64(deepCollapsed) >= CollapseShare*float64(deep)
	r.Overload = early > 0 && float64(earlyOverloaded) >= OverloadShare*float64(early)
	return r
}

// bucket returns the paper's bucket of entropy v given the maximum m.
func bucket(v, m float64) int {
	if m <= 0 {
		return 0
	}
	return min(int(4*v/m), 3)
}

// String is a text table: one line per layer, the buckets and the flags.
func (r *EntropyReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mean attention entropy per head (nats); uniform causal attention: %.3f, log T: %.3f\n", r.Uniform, r.LogT)
	b.WriteString("layer")
	if len(r.E) > 0 {
		for h := range r.E[0] {
			fmt.Fprintf(&b, " %6s", fmt.Sprintf("h%d", h))
		}
	}
	b.WriteString("\n")
	for l, row := range r.E {
		fmt.Fprintf(&b, "%5d", l)
		for _, v := range row {
			fmt.Fprintf(&b, " %6.3f", v)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "buckets (M = %.3f):", r.M)
	for i, name := range []string{"[0, M/4)", "[M/4, M/2)", "[M/2, 3M/4)", "[3M/4, M]"} {
		fmt.Fprintf(&b, "  %s %.0f%% (%d)", name, 100*r.Buckets[i], r.Counts[i])
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "collapsed heads (E < %.2f·uniform): %d %v; entropy collapse: %v\n", CollapseLevel, len(r.Collapsed), r.Collapsed, r.Collapse)
	fmt.Fprintf(&b, "overloaded heads (E ≥ %.2f·uniform): %d %v; entropic overload: %v\n", OverloadLevel, len(r.Overloaded), r.Overloaded, r.Overload)
	return b.String()
}
