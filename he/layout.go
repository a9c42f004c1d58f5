package he

import (
	"fmt"
	"math/bits"
)

// Slot layouts. A layout maps a logical value (vector, token batch, cache
// position) to slot indices 0 ≤ s < Slots of one CKKS ciphertext (real
// values in the real part of the slots, imaginary parts zero). All helpers in
// this file are pure index arithmetic: they encode []float64 values into a
// slot vector of length Slots (to be passed to the encoder), decode a slot
// vector back, and build 0/1 masks. Notation: "s mod d" is the non-negative
// remainder, "s div d" the floor quotient, rot(v, k)(s) = v((s+k) mod Slots)
// is Lattigo's left rotation (ckks.Evaluator.Rotate with positive k).

// isPow2 reports whether n is a positive power of two.
func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// nextPow2 returns the smallest power of two ≥ n (n ≥ 1).
func nextPow2(n int) int {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len(uint(n-1))
}

func log2(n int) int { return bits.Len(uint(n)) - 1 }

func mod(a, n int) int {
	a %= n
	if a < 0 {
		a += n
	}
	return a
}

// Replicated is a vector x of length D ≤ Period repeated with period Period
// (a power of two dividing Slots; Period = D when D is a power of two):
//
//	slot s holds x[s mod Period] if s mod Period < D, and 0 otherwise.
//
// With D = Period = d there are Slots/d identical replicas; replica j
// occupies slots [j·d, (j+1)·d).
type Replicated struct {
	D, Period, Slots int
}

// NewReplicated returns the replicated layout of a D-vector with the smallest
// power-of-two period ≥ D.
func NewReplicated(d, slots int) (Replicated, error) {
	l := Replicated{D: d, Period: nextPow2(d), Slots: slots}
	return l, l.Check()
}

// Check validates the layout.
func (l Replicated) Check() error {
	if l.D < 1 || l.D > l.Period {
		return fmt.Errorf("replicated layout: need 1 ≤ D=%d ≤ Period=%d", l.D, l.Period)
	}
	if !isPow2(l.Period) || !isPow2(l.Slots) || l.Period > l.Slots {
		return fmt.Errorf("replicated layout: Period=%d must be a power of two dividing Slots=%d", l.Period, l.Slots)
	}
	return nil
}

// Replicas is Slots/Period.
func (l Replicated) Replicas() int { return l.Slots / l.Period }

// Index returns the vector index held by slot s, or -1 for a zero slot.
func (l Replicated) Index(s int) int {
	if i := mod(s, l.Period); i < l.D {
		return i
	}
	return -1
}

// Encode lays x (len D) out in Slots slots.
func (l Replicated) Encode(x []float64) []float64 {
	if len(x) != l.D {
		panic(fmt.Sprintf("replicated layout: vector length %d, want %d", len(x), l.D))
	}
	v := make([]float64, l.Slots)
	for s := range v {
		if i := l.Index(s); i >= 0 {
			v[s] = x[i]
		}
	}
	return v
}

// Decode reads the first replica (slots [0, D)).
func (l Replicated) Decode(v []float64) []float64 { return append([]float64(nil), v[:l.D]...) }

// PreRotated is the input layout of the replication-aware matrix-vector
// product (MatVecPreRotated): a D-vector (D a power of two dividing Slots)
// replicated r = Slots/D times where replica j is x cyclically shifted by
// j·M positions:
//
//	slot s holds x[ (s mod D + (s div D)·M) mod D ].
//
// The square product uses M = max(1, D/r); replicas j and j + D/M are then
// identical. Any client can produce it (fresh encryption, refresh answer).
type PreRotated struct {
	D, M, Slots int
}

// NewPreRotated returns the layout used by the replication-aware product of
// a d×d matrix at the given slot count: M = max(1, d·d/Slots).
func NewPreRotated(d, slots int) (PreRotated, error) {
	l := PreRotated{D: d, Slots: slots}
	if isPow2(d) && isPow2(slots) && d <= slots {
		l.M = max(1, d*d/slots)
	}
	return l, l.Check()
}

// Check validates the layout.
func (l PreRotated) Check() error {
	if !isPow2(l.D) || !isPow2(l.Slots) || l.D > l.Slots {
		return fmt.Errorf("pre-rotated layout: D=%d must be a power of two dividing Slots=%d", l.D, l.Slots)
	}
	if l.M < 1 || l.M > l.D {
		return fmt.Errorf("pre-rotated layout: shift M=%d out of [1, D=%d]", l.M, l.D)
	}
	return nil
}

// Index returns the vector index held by slot s (taken mod Slots).
func (l PreRotated) Index(s int) int {
	s = mod(s, l.Slots)
	return (s%l.D + (s/l.D)*l.M) % l.D
}

// Encode lays x (len D) out in Slots slots.
func (l PreRotated) Encode(x []float64) []float64 {
	if len(x) != l.D {
		panic(fmt.Sprintf("pre-rotated layout: vector length %d, want %d", len(x), l.D))
	}
	v := make([]float64, l.Slots)
	for s := range v {
		v[s] = x[l.Index(s)]
	}
	return v
}

// Decode reads replica 0 (slots [0, D), which hold x unshifted).
func (l PreRotated) Decode(v []float64) []float64 { return append([]float64(nil), v[:l.D]...) }

// TokenMajor packs T tokens of dimension D (T·D ≤ Slots) token-major:
//
//	slot t·D + i holds X[t][i] for t < T, i < D; slots ≥ T·D hold 0.
//
// It is the layout of batched prefill (MatVecBatched) and of KV-cache
// ciphertexts (see KVLayout).
type TokenMajor struct {
	D, T, Slots int
}

// Check validates the layout.
func (l TokenMajor) Check() error {
	if l.D < 1 || l.T < 1 || l.D*l.T > l.Slots {
		return fmt.Errorf("token-major layout: T=%d tokens × D=%d exceeds %d slots", l.T, l.D, l.Slots)
	}
	return nil
}

// Slot returns the slot of element i of token t.
func (l TokenMajor) Slot(t, i int) int { return t*l.D + i }

// Encode packs X (T rows of length D).
func (l TokenMajor) Encode(x [][]float64) []float64 {
	if len(x) != l.T {
		panic(fmt.Sprintf("token-major layout: %d tokens, want %d", len(x), l.T))
	}
	v := make([]float64, l.Slots)
	for t, row := range x {
		if len(row) != l.D {
			panic(fmt.Sprintf("token-major layout: token %d has length %d, want %d", t, len(row), l.D))
		}
		copy(v[t*l.D:], row)
	}
	return v
}

// Decode unpacks T tokens.
func (l TokenMajor) Decode(v []float64) [][]float64 {
	x := make([][]float64, l.T)
	for t := range x {
		x[t] = append([]float64(nil), v[t*l.D:(t+1)*l.D]...)
	}
	return x
}

// TokenMask returns the 0/1 mask of token t's block [t·D, (t+1)·D).
func (l TokenMajor) TokenMask(t int) []float64 {
	m := make([]float64, l.Slots)
	for i := 0; i < l.D; i++ {
		m[l.Slot(t, i)] = 1
	}
	return m
}

// Heads splits a D-vector into Heads contiguous segments of DK = D/Heads:
// element i of head h is vector index h·DK + i. Within any layout whose
// block of D slots starts at slot b (replica or token block), head h occupies
// slots [b + h·DK, b + (h+1)·DK).
type Heads struct {
	D, Heads int
}

// DK is the per-head dimension.
func (h Heads) DK() int { return h.D / h.Heads }

// Check validates the split.
func (h Heads) Check() error {
	if h.Heads < 1 || h.D%h.Heads != 0 {
		return fmt.Errorf("heads: D=%d is not divisible by %d heads", h.D, h.Heads)
	}
	return nil
}

// Index returns the vector index of element i of head hd.
func (h Heads) Index(hd, i int) int { return hd*h.DK() + i }

// Split returns the per-head sub-vectors of x.
func (h Heads) Split(x []float64) [][]float64 {
	out := make([][]float64, h.Heads)
	for hd := range out {
		out[hd] = append([]float64(nil), x[hd*h.DK():(hd+1)*h.DK()]...)
	}
	return out
}

// KVLayout is the layout of an encrypted KV cache: keys (and, identically,
// values) of past positions token-major, TokensPerCt = Slots/Period positions
// per ciphertext, Period = nextPow2(D):
//
//	position p lives in cache ciphertext c = p div TokensPerCt, at slots
//	[q·Period, q·Period + D) with q = p mod TokensPerCt (so slot q·Period + i
//	holds k_p[i]; head h of position p is at q·Period + h·DK + i).
//
// Slots of positions not yet appended are 0.
type KVLayout struct {
	D, Period, Heads, Slots int
}

// NewKVLayout builds the cache layout for dimension d split into heads.
func NewKVLayout(d, heads, slots int) (KVLayout, error) {
	l := KVLayout{D: d, Period: nextPow2(d), Heads: heads, Slots: slots}
	return l, l.Check()
}

// Check validates the layout.
func (l KVLayout) Check() error {
	if err := (Heads{D: l.D, Heads: l.Heads}).Check(); err != nil {
		return err
	}
	if !isPow2(l.Period) || l.Period < l.D || !isPow2(l.Slots) || l.Period > l.Slots {
		return fmt.Errorf("kv layout: Period=%d must be a power of two ≥ D=%d dividing Slots=%d", l.Period, l.D, l.Slots)
	}
	if dk := l.D / l.Heads; !isPow2(dk) {
		return fmt.Errorf("kv layout: head dimension %d must be a power of two (in-head sums use log2(dk) rotations)", dk)
	}
	return nil
}

// DK is the per-head dimension.
func (l KVLayout) DK() int { return l.D / l.Heads }

// TokensPerCt is the number of positions per cache ciphertext.
func (l KVLayout) TokensPerCt() int { return l.Slots / l.Period }

// Locate returns the ciphertext index and the first slot of position p.
func (l KVLayout) Locate(p int) (ct, slot int) {
	return p / l.TokensPerCt(), (p % l.TokensPerCt()) * l.Period
}

// PositionMask is the 0/1 mask of the D slots of position p in its ciphertext.
func (l KVLayout) PositionMask(p int) []float64 {
	_, s0 := l.Locate(p)
	m := make([]float64, l.Slots)
	for i := 0; i < l.D; i++ {
		m[s0+i] = 1
	}
	return m
}

// ScoreMask is the 0/1 mask of the score slots: for each position block q
// and head h, slot q·Period + h·DK (where AttentionScores leaves the score
// of head h at that position).
func (l KVLayout) ScoreMask() []float64 {
	m := make([]float64, l.Slots)
	for q := 0; q < l.TokensPerCt(); q++ {
		for h := 0; h < l.Heads; h++ {
			m[q*l.Period+h*l.DK()] = 1
		}
	}
	return m
}

// EncodeScores lays out per-position, per-head scalars (scores[p][h] for
// positions p of cache ciphertext 0…) the way AttentionScores produces them.
func (l KVLayout) EncodeScores(scores [][]float64, ct int) []float64 {
	v := make([]float64, l.Slots)
	for q := 0; q < l.TokensPerCt(); q++ {
		p := ct*l.TokensPerCt() + q
		if p >= len(scores) {
			break
		}
		for h := 0; h < l.Heads; h++ {
			v[q*l.Period+h*l.DK()] = scores[p][h]
		}
	}
	return v
}

// DecodeScores reads scores[p][h] for the n positions held by cache
// ciphertext ct from a slot vector in score layout.
func (l KVLayout) DecodeScores(v []float64, ct, n int) [][]float64 {
	var out [][]float64
	for q := 0; q < l.TokensPerCt(); q++ {
		p := ct*l.TokensPerCt() + q
		if p >= n {
			break
		}
		row := make([]float64, l.Heads)
		for h := range row {
			row[h] = v[q*l.Period+h*l.DK()]
		}
		out = append(out, row)
	}
	return out
}
