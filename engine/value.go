package engine

import (
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// cval is one ciphertext of a packed activation. In a dry run (planning) ct
// is nil and only the level is tracked.
type cval struct {
	ct    *rlwe.Ciphertext
	level int
	// pre: PreRotated layout (he.PreRotated, produced only by a refresh
	// with a slot map, consumed by the next d×d product); otherwise
	// Replicated with period d (or the input period for the one-hot).
	pre bool
}

// val is the backend's activation V for one token: the d-wide chunks of a
// row (one chunk for width d, three for q|k|v, FFNHidden/d for the FFN
// hidden layer), each a ciphertext replicated with period d, plus a pending
// elementwise affine map y = mul·(x⊙gain) + bias that the next linear
// operation folds into its plaintext weights for free (LayerNorm's g and b,
// Scale) and that any other operation applies first (one level).
//
// Batched prefill (prefill.go) uses the same type for several rows: with tm
// set, each part is one d-wide chunk of all rows packed token-major
// (he.TokenMajor: row t at slots [t·d, (t+1)·d), rows ≥ rows zero), and
// the pending bias applies to the first rows blocks only.
type val struct {
	parts []*cval
	tm    bool      // token-major rows (batched prefill)
	rows  int       // rows when tm
	gain  []float64 // nil: 1
	bias  []float64 // nil: 0
	mul   float64   // 0 or 1: none
}

func (v *val) pending() bool {
	return v != nil && (v.gain != nil || v.bias != nil || (v.mul != 0 && v.mul != 1))
}

func (v *val) level() int {
	l := 1 << 30
	for _, p := range v.parts {
		l = min(l, p.level)
	}
	return l
}

func plain(parts ...*cval) *val { return &val{parts: parts} }
