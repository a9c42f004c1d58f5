package he

import (
	"fmt"
	"sync"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Attention holds the encrypted×encrypted primitives of one attention
// geometry (KVLayout): appending a token to the KV cache, per-head scores of
// a query against all cached positions, sums over positions, and the
// weighted sum of values. Vectors (q, k, v of the current token) come
// Replicated with period Layout.Period (the output of a KindReplicated or
// KindPreRotated MatVec); cache ciphertexts are in the KVLayout.
//
// Rotations (for the KeyRequest): in-head sums use 1, 2, …, DK/2; in-head
// broadcasts use −1, −2, …, −DK/2; sums over positions use Period, 2·Period,
// …, Slots/2. Every ct×ct product is relinearized (one key-switch).
type Attention struct {
	Layout KVLayout
	// RotLevel is the highest ciphertext level at which the primitives
	// rotate (for keys generated with KeyOptions.AtUsedLevels): at most
	// cache level − 1, since every rotation follows a ct×ct product or a
	// mask. Negative (the default): unknown, keys go to the top level.
	RotLevel int
	params   ckks.Parameters

	mu    sync.Mutex
	enc   *ckks.Encoder
	masks map[[3]int]*rlwe.Plaintext // (kind, index, level) → mask
}

// NewAttention builds the primitives for d = heads·dk (dk a power of two).
func NewAttention(params ckks.Parameters, d, heads int) (*Attention, error) {
	l, err := NewKVLayout(d, heads, params.MaxSlots())
	if err != nil {
		return nil, err
	}
	return &Attention{Layout: l, RotLevel: -1, params: params, enc: ckks.NewEncoder(params), masks: map[[3]int]*rlwe.Plaintext{}}, nil
}

func (a *Attention) segmentRotations() (r []int) {
	for k := 1; k < a.Layout.DK(); k *= 2 {
		r = append(r, k)
	}
	return
}

func (a *Attention) broadcastRotations() (r []int) {
	for k := 1; k < a.Layout.DK(); k *= 2 {
		r = append(r, -k)
	}
	return
}

func (a *Attention) positionRotations() (r []int) {
	for k := a.Layout.Period; k < a.Layout.Slots; k *= 2 {
		r = append(r, k)
	}
	return
}

// KeyLevel implements Leveled (see RotLevel).
func (a *Attention) KeyLevel() int { return a.RotLevel }

// Rotations lists all rotations used by the primitives.
func (a *Attention) Rotations() []int {
	r := a.segmentRotations()
	r = append(r, a.broadcastRotations()...)
	return append(r, a.positionRotations()...)
}

const (
	maskPosition = iota
	maskScore
)

// mask returns (cached) mask plaintexts at a level, scaled by Q_level.
func (a *Attention) mask(kind, index, level int, value float64) (*rlwe.Plaintext, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := [3]int{kind, index, level}
	if kind == maskScore {
		key[1] = int(value * (1 << 30)) // distinct cache entry per scale value
	}
	if pt, ok := a.masks[key]; ok {
		return pt, nil
	}
	var v []float64
	switch kind {
	case maskPosition:
		v = a.Layout.PositionMask(index)
	case maskScore:
		v = a.Layout.ScoreMask()
		for i := range v {
			v[i] *= value
		}
	}
	pt, err := EncodeAt(a.enc, a.params, v, level)
	if err != nil {
		return nil, err
	}
	a.masks[key] = pt
	return pt, nil
}

// KVCache is an encrypted cache of keys and values (KVLayout, token-major)
// at a fixed level. Len positions are filled.
type KVCache struct {
	K, V  []*rlwe.Ciphertext
	Len   int
	Level int
}

// NewKVCache returns an empty cache kept at level (appended vectors must
// arrive at level+1 or above: the mask consumes one level).
func (a *Attention) NewKVCache(level int) *KVCache { return &KVCache{Level: level} }

// Append adds the current token's k and v (Replicated, period Layout.Period)
// at position cache.Len: each is multiplied by the 0/1 mask of that
// position's slots (one pt×ct product and rescale), dropped to the cache
// level and added to the cache ciphertext (a new one is started every
// TokensPerCt positions). Cost: 2 pt×ct, no rotation.
func (e *Evaluator) Append(a *Attention, cache *KVCache, k, v *rlwe.Ciphertext) error {
	t0 := time.Now()
	defer e.Counters.since(OpAttention, t0)
	p := cache.Len
	c, _ := a.Layout.Locate(p)
	q := p % a.Layout.TokensPerCt()
	for i, x := range []*rlwe.Ciphertext{k, v} {
		if x.Level() < cache.Level+1 {
			return fmt.Errorf("kv append: vector at level %d, the cache at level %d needs ≥ %d (the mask uses one level)", x.Level(), cache.Level, cache.Level+1)
		}
		m, err := a.mask(maskPosition, q, x.Level(), 1)
		if err != nil {
			return err
		}
		y, err := e.MulPlainRescale(x, m)
		if err != nil {
			return err
		}
		if y, err = e.DropTo(y, cache.Level); err != nil {
			return err
		}
		dst := &cache.K
		if i == 1 {
			dst = &cache.V
		}
		if c == len(*dst) {
			*dst = append(*dst, y)
			continue
		}
		if (*dst)[c], err = e.Add((*dst)[c], y); err != nil {
			return err
		}
	}
	cache.Len++
	return nil
}

// SegmentSum returns x + rot(x,1) + … + rot(x, seg−1) with log2(seg)
// rotations (seg a power of two): slot s then holds Σ_{j<seg} x(s+j), so
// each segment's start slot holds the segment's sum (other slots: partial
// sums, mask them).
func (e *Evaluator) SegmentSum(x *rlwe.Ciphertext, seg int) (*rlwe.Ciphertext, error) {
	if !isPow2(seg) {
		return nil, fmt.Errorf("segment sum: length %d is not a power of two", seg)
	}
	var folds []int
	for k := 1; k < seg; k *= 2 {
		folds = append(folds, k)
	}
	return e.foldSum(x, folds)
}

// SegmentBroadcast copies each segment-start slot over its segment of
// length seg (input zero elsewhere): log2(seg) rotations by −1, −2, ….
func (e *Evaluator) SegmentBroadcast(x *rlwe.Ciphertext, seg int) (*rlwe.Ciphertext, error) {
	if !isPow2(seg) {
		return nil, fmt.Errorf("segment broadcast: length %d is not a power of two", seg)
	}
	var folds []int
	for k := 1; k < seg; k *= 2 {
		folds = append(folds, -k)
	}
	return e.foldSum(x, folds)
}

// StrideSum returns Σ_{j<count} rot(x, j·stride) with log2(count)
// rotations (count a power of two): with stride = Period and count =
// TokensPerCt it sums over all positions of a cache ciphertext, leaving the
// sum in every position block.
func (e *Evaluator) StrideSum(x *rlwe.Ciphertext, stride, count int) (*rlwe.Ciphertext, error) {
	if !isPow2(count) {
		return nil, fmt.Errorf("stride sum: count %d is not a power of two", count)
	}
	var folds []int
	for k := 1; k < count; k *= 2 {
		folds = append(folds, k*stride)
	}
	return e.foldSum(x, folds)
}

// Scores computes, for each cache ciphertext c, the per-head scores
// scale·⟨q_h, k_{p,h}⟩ of the query against every cached position p:
// q (Replicated, period Layout.Period) ⊙ K_c (ct×ct, relinearized), in-head
// sums (log2 DK rotations), then a mask (times scale, e.g. 1/√DK) keeping
// only slot q·Period + h·DK for position q of the ciphertext and head h
// (KVLayout.DecodeScores reads them). Output level: min(q, cache) − 2.
// Slots of positions not yet appended hold 0.
func (e *Evaluator) Scores(a *Attention, q *rlwe.Ciphertext, cache *KVCache, scale float64) ([]*rlwe.Ciphertext, error) {
	t0 := time.Now()
	defer e.Counters.since(OpAttention, t0)
	out := make([]*rlwe.Ciphertext, len(cache.K))
	err := parallel(e.Workers, len(cache.K), func(c int) error {
		s, err := e.MulRelin(q, cache.K[c])
		if err != nil {
			return err
		}
		if s, err = e.SegmentSum(s, a.Layout.DK()); err != nil {
			return err
		}
		m, err := a.mask(maskScore, 0, s.Level(), scale)
		if err != nil {
			return err
		}
		out[c], err = e.MulPlainRescale(s, m)
		return err
	})
	return out, err
}

// SumPositions adds score-layout ciphertexts (one per cache ciphertext) and
// sums over positions (log2 TokensPerCt rotations by Period·2^i): every
// position block then holds, at slot h·DK, the sum over all positions for
// head h (the softmax denominator).
func (e *Evaluator) SumPositions(a *Attention, xs []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	t0 := time.Now()
	defer e.Counters.since(OpAttention, t0)
	if len(xs) == 0 {
		return nil, fmt.Errorf("sum over positions: no ciphertexts")
	}
	acc := xs[0]
	for _, x := range xs[1:] {
		var err error
		if acc, err = e.Add(acc, x); err != nil {
			return nil, err
		}
	}
	return e.StrideSum(acc, a.Layout.Period, a.Layout.TokensPerCt())
}

// WeightedSum computes Σ_p w_{p,h} · v_p restricted to head h's slots,
// from weights in score layout (one ciphertext per cache ciphertext, zero
// outside the score slots — as Scores produces them): in-head broadcast
// (log2 DK rotations each), ct×ct with V_c, sum over cache ciphertexts,
// then sum over positions (log2 TokensPerCt rotations). The result is
// Replicated with period Layout.Period (the attention output, heads
// concatenated). Output level: min(weights, cache) − 1.
func (e *Evaluator) WeightedSum(a *Attention, w []*rlwe.Ciphertext, cache *KVCache) (*rlwe.Ciphertext, error) {
	t0 := time.Now()
	defer e.Counters.since(OpAttention, t0)
	if len(w) != len(cache.V) || len(w) == 0 {
		return nil, fmt.Errorf("weighted sum: %d weight ciphertexts for %d value ciphertexts", len(w), len(cache.V))
	}
	parts := make([]*rlwe.Ciphertext, len(w))
	if err := parallel(e.Workers, len(w), func(c int) error {
		b, err := e.SegmentBroadcast(w[c], a.Layout.DK())
		if err != nil {
			return err
		}
		parts[c], err = e.MulRelin(b, cache.V[c])
		return err
	}); err != nil {
		return nil, err
	}
	acc := parts[0]
	for _, x := range parts[1:] {
		var err error
		if acc, err = e.Add(acc, x); err != nil {
			return nil, err
		}
	}
	return e.StrideSum(acc, a.Layout.Period, a.Layout.TokensPerCt())
}
