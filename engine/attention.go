package engine

import (
	"fmt"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"gonum.org/v1/gonum/mat"
)

// Attention of the current token against the layer's encrypted KV cache
// (he.KVLayout: positions token-major, TokensPerCt per ciphertext):
//
//  1. append k, v at position n−1 (masked add, one level; the cache sits at
//     a fixed level per layer);
//  2. scores: q ⊙ K_c (ct×ct), in-head sums (log2 dk rotations), times a
//     plaintext mask holding 1/(t_{h,i}·√dk) at the valid score slots (the
//     per-head, per-position temperature costs nothing extra); every other
//     slot is then set to the exp range's midpoint by a plaintext add;
//  3. e = Exp(scores) (no max subtraction: calibrated range); subtracting
//     the known value Exp(mid) from the non-score slots (free) leaves e
//     zero there, so no mask level is spent;
//  4. denominators: Σ_c e_c, then the sum over positions by rotations of
//     stride Period; non-score slots get the reciprocal range's midpoint;
//  5. r = Recip(denominators), w = e ⊙ r (ct×ct);
//  6. Σ_p w_p · v_p: in-head broadcast, ⊙ V_c (ct×ct), sum over positions.
func (b *backend) Attention(layer int, qkv *val, pos0 int, scoreScale *mat.Dense) *val {
	if b.err != nil {
		return b.errVal(1)
	}
	if qkv.tm {
		return b.attentionTM(layer, qkv, pos0, scoreScale)
	}
	defer b.timed("attention", b.mark())
	e := b.e
	m := e.maskLevel
	lay := e.kv
	dk, period, tpc := lay.DK(), lay.Period, lay.TokensPerCt()
	heads := e.cfg.Heads
	name := fmt.Sprintf("h.%d.attn", layer)
	if len(qkv.parts) != 3 || qkv.pending() {
		b.failf("engine: %s: want q|k|v as three chunks", name)
		return b.errVal(1)
	}
	q, k, v := qkv.parts[0], qkv.parts[1], qkv.parts[2]
	n := pos0 + 1 // positions after this append

	// 1. Append.
	b.begin(name+".append", "attention", min(k.level, v.level))
	kvp := b.ensure([]*cval{k, v}, 3, m, false)
	k, v = kvp[0], kvp[1]
	lc := b.cacheLevel[layer]
	if lc < 0 {
		lc = min(k.level, v.level) - 1
		b.cacheLevel[layer] = lc
	}
	if min(k.level, v.level) < lc+1 {
		b.failf("engine: %s: k, v at level %d cannot join the cache at level %d", name, min(k.level, v.level), lc)
		return b.errVal(1)
	}
	var cache *he.KVCache
	if !b.dry {
		cache = b.s.caches[layer]
		if cache.Len != pos0 {
			b.failf("engine: %s: cache holds %d positions, the token is at position %d", name, cache.Len, pos0)
			return b.errVal(1)
		}
		if err := b.s.ev.Append(e.att, cache, k.ct, v.ct); err != nil {
			b.fail(fmt.Errorf("engine: %s: %w", name, err))
			return b.errVal(1)
		}
	}
	b.end(lc)
	nc := (n + tpc - 1) / tpc

	// 2. Scores.
	b.begin(name+".scores", "attention", q.level)
	q = b.ensure([]*cval{q}, 2, m, false)[0]
	b.op().LevelIn = q.level
	lq := min(q.level, lc)
	ex, ea, eb := expUnit(e.set.Exp)
	scores := make([]*cval, nc)
	for c := 0; c < nc; c++ {
		kc := &cval{level: lc}
		if !b.dry {
			kc.ct = cache.K[c]
		}
		s := b.mulRelin(q, kc)
		s = b.foldRot(s, pow2Rots(1, dk))
		// Score slots get u = a·s + b (the exp's change of variable into
		// [−1, 1], free here); every other slot u = 0.
		mask := make([]float64, lay.Slots)
		fill := make([]float64, lay.Slots)
		for j := 0; j < tpc; j++ {
			p := c*tpc + j
			if p >= n {
				break
			}
			for h := 0; h < heads; h++ {
				mask[j*period+h*dk] = ea * scoreScale.At(h, 0)
				fill[j*period+h*dk] = eb
			}
		}
		s = b.mulVec(s, mask)
		scores[c] = b.addVec(s, fill)
	}
	b.end(lq - 2)
	b.trace(name+".scores", scores[0])

	// 3. Exp (on u ∈ [−1, 1]).
	b.begin(name+".exp", "exp", scores[0].level)
	scores = b.ensure(scores, ex.Depth(), m, false)
	b.op().LevelIn = scores[0].level
	es := b.polyAll(scores, ex.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalExp(ct, ex)
	})
	pmid := ex.Eval(0)
	for c := range es {
		fix := make([]float64, lay.Slots)
		for i := range fix {
			fix[i] = -pmid
		}
		for j := 0; j < tpc && c*tpc+j < n; j++ {
			for h := 0; h < heads; h++ {
				fix[j*period+h*dk] = 0
			}
		}
		es[c] = b.addVec(es[c], fix)
	}

	// 4. Denominators.
	den := es[0]
	for _, x := range es[1:] {
		den = b.add(den, x)
	}
	den = b.foldRot(den, pow2Rots(period, lay.Slots))
	// approx.Set.Softmax normalizes by the mean exp-score: r = Recip(Σ/n)/n.
	// Both 1/n factors fold into the reciprocal (recipN), which then takes
	// the sum directly: no level is spent on them.
	rn := recipN(e.set.Recip, n)
	rmid := mid(rn.Range())
	fill := make([]float64, lay.Slots)
	for i := range fill {
		if i%period >= heads*dk || (i%period)%dk != 0 {
			fill[i] = rmid
		}
	}
	den = b.addVec(den, fill)
	b.end(den.level)
	b.trace(name+".exp", es[0])
	b.trace(name+".den", den)

	// 5. Reciprocal and weights.
	r := b.recip(name+".recip", den, rn)
	b.begin(name+".weights", "attention", min(r.level, es[0].level))
	all := b.ensure(append(append([]*cval(nil), es...), r), 2, m, false)
	r = all[len(all)-1]
	ws := make([]*cval, nc)
	for c := range ws {
		ws[c] = b.mulRelin(all[c], r)
	}
	b.end(ws[0].level)
	b.trace(name+".recip", r)
	b.trace(name+".weights", ws[0])

	// 6. Weighted sum of values.
	b.begin(name+".values", "attention", ws[0].level)
	lw := min(ws[0].level, lc)
	b.rots(ws[0].level, negs(pow2Rots(1, dk))...)
	for range ws {
		b.relin(lw)
	}
	b.rots(lw-1, pow2Rots(period, lay.Slots)...)
	out := &cval{level: lw - 1}
	if !b.dry && b.err == nil {
		cts := make([]*rlwe.Ciphertext, nc)
		for c := range cts {
			cts[c] = ws[c].ct
		}
		ct, err := b.s.ev.WeightedSum(e.att, cts, cache)
		if err != nil {
			b.fail(fmt.Errorf("engine: %s: %w", name, err))
			return b.errVal(1)
		}
		out = &cval{ct: ct, level: ct.Level()}
	}
	b.end(out.level)
	b.trace(name+".out", out)
	return plain(out)
}

// recipN returns the reciprocal approximation of x ↦ Recip(x/n)/n (the
// softmax factor from the sum of exp-scores): the initial guess is the same
// Chebyshev series on [n·lo, n·hi] with coefficients divided by n, and
// Newton's step for 1/x commutes with the scaling (y = n·z: y·(2 − (x/n)·y)
// = n·z·(2 − x·z)), so Eval equals Recip.Eval(x/n)/n exactly in real
// arithmetic.
// expUnit re-expresses the exp approximation on u = a·s + b ∈ [−1, 1]: the
// same Chebyshev coefficients, with the affine change of variable folded
// into the plaintext score mask and fill that precede it, so that it costs
// no level (approx.Chebyshev.ChangeOfBasisDepth). u = 0 is the range's
// midpoint.
func expUnit(ex approx.Exp) (unit approx.Exp, a, b float64) {
	lo, hi := ex.Range()
	a, b = 2/(hi-lo), -(hi+lo)/(hi-lo)
	return approx.Exp{Poly: approx.Chebyshev{Lo: -1, Hi: 1, Coeffs: ex.Poly.Coeffs}}, a, b
}

// expDepth is the levels the exp costs in the engine (expUnit).
func expDepth(set *approx.Set) int {
	u, _, _ := expUnit(set.Exp)
	return u.Depth()
}

func recipN(r approx.Reciprocal, n int) approx.Reciprocal {
	fn := float64(n)
	c := make([]float64, len(r.Init.Coeffs))
	for i, v := range r.Init.Coeffs {
		c[i] = v / fn
	}
	return approx.Reciprocal{Init: approx.Chebyshev{Lo: r.Init.Lo * fn, Hi: r.Init.Hi * fn, Coeffs: c}, Iters: r.Iters}
}

func negs(r []int) []int {
	out := make([]int, len(r))
	for i, k := range r {
		out[i] = -k
	}
	return out
}
