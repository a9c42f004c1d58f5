package engine

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// TokenStats are the counters of one token (one decode step or one prompt
// token of the prefill).
type TokenStats struct {
	Pos int `json:"pos"`
	// Rows is the number of prompt tokens of a batched prefill step (0
	// for one token).
	Rows  int           `json:"rows,omitempty"`
	Phase string        `json:"phase"` // prefill or decode
	Time  time.Duration `json:"time"`
	// ByKind is wall time per operation kind: embed, linear, attention
	// (including its exp, reciprocal and refreshes), layernorm, gelu,
	// logits, refresh (all refresh rounds), flood.
	ByKind map[string]time.Duration `json:"by_kind"`
	// Kinds has, per operation kind, calls, time, rotations, ct×ct and
	// pt×ct products (a kind's numbers include those of kinds nested in
	// it: attention includes its refreshes).
	Kinds       map[string]KindStats `json:"kinds"`
	Rotations   int64                `json:"rotations"`
	CtCt        int64                `json:"ct_ct"`
	PtCt        int64                `json:"pt_ct"`
	KeySwitches int64                `json:"key_switches"`
	Refreshes   int                  `json:"refreshes"`   // rounds
	RefreshCts  int                  `json:"refresh_cts"` // ciphertexts refreshed
	LevelIn     int                  `json:"level_in"`    // input ciphertext level
	LevelOut    int                  `json:"level_out"`   // logits level before flooding
	Ops         he.Snapshot          `json:"-"`
}

func (t *TokenStats) add(kind string, d time.Duration) {
	t.ByKind[kind] += d
}

func (t *TokenStats) fill() {
	t.Rotations = t.Ops.Get(he.OpRotate)
	t.CtCt = t.Ops.Get(he.OpRelin)
	t.PtCt = t.Ops.Get(he.OpMulPtCt)
	t.KeySwitches = t.Ops.KeySwitches()
}

func (t *TokenStats) String() string {
	kinds := make([]string, 0, len(t.ByKind))
	for k := range t.ByKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		if ks, ok := t.Kinds[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %v (%d rot, %d ct×ct)", k, t.ByKind[k].Round(time.Millisecond), ks.Rotations, ks.CtCt))
		} else {
			parts = append(parts, fmt.Sprintf("%s %v", k, t.ByKind[k].Round(time.Millisecond)))
		}
	}
	return fmt.Sprintf("%s pos %d: %v, %d rotations, %d ct×ct, %d pt×ct, %d refresh rounds (%d cts), levels %d→%d [%s]",
		t.Phase, t.Pos, t.Time.Round(time.Millisecond), t.Rotations, t.CtCt, t.PtCt, t.Refreshes, t.RefreshCts,
		t.LevelIn, t.LevelOut, strings.Join(parts, ", "))
}

// KindStats are the counters of one operation kind within a token.
type KindStats struct {
	Calls     int           `json:"calls"`
	Time      time.Duration `json:"time"`
	Rotations int64         `json:"rotations"`
	CtCt      int64         `json:"ct_ct"`
	PtCt      int64         `json:"pt_ct"`
}

// Stats are a session's counters, per token.
type Stats struct {
	Tokens []TokenStats `json:"tokens"`
}

// Stats returns a copy of the session's counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Stats{Tokens: make([]TokenStats, len(s.stats.Tokens))}
	for i := range s.stats.Tokens {
		t := &s.stats.Tokens[i]
		out.Tokens[i] = TokenStats{Pos: t.Pos, Rows: t.Rows, Phase: t.Phase, Time: t.Time, ByKind: map[string]time.Duration{}, Kinds: map[string]KindStats{},
			Rotations: t.Rotations, CtCt: t.CtCt, PtCt: t.PtCt, KeySwitches: t.KeySwitches,
			Refreshes: t.Refreshes, RefreshCts: t.RefreshCts, LevelIn: t.LevelIn, LevelOut: t.LevelOut, Ops: t.Ops}
		for k, v := range t.ByKind {
			out.Tokens[i].ByKind[k] = v
		}
		for k, v := range t.Kinds {
			out.Tokens[i].Kinds[k] = v
		}
	}
	return out
}

// Phase sums the tokens of one phase ("prefill", "decode"); n is the number
// of tokens (a batched prefill step counts its rows).
func (st Stats) Phase(phase string) (sum TokenStats, n int) {
	sum = TokenStats{Phase: phase, ByKind: map[string]time.Duration{}, Kinds: map[string]KindStats{}}
	for i := range st.Tokens {
		t := &st.Tokens[i]
		if t.Phase != phase {
			continue
		}
		n += max(1, t.Rows)
		sum.Time += t.Time
		sum.Rotations += t.Rotations
		sum.CtCt += t.CtCt
		sum.PtCt += t.PtCt
		sum.KeySwitches += t.KeySwitches
		sum.Refreshes += t.Refreshes
		sum.RefreshCts += t.RefreshCts
		for k, v := range t.ByKind {
			sum.ByKind[k] += v
		}
		for k, v := range t.Kinds {
			s := sum.Kinds[k]
			s.Calls += v.Calls
			s.Time += v.Time
			s.Rotations += v.Rotations
			s.CtCt += v.CtCt
			s.PtCt += v.PtCt
			sum.Kinds[k] = s
		}
	}
	return
}

func logScale(ct *rlwe.Ciphertext) float64 { return math.Log2(ct.Scale.Float64()) }
