package engine

import (
	"fmt"
	"strings"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"gonum.org/v1/gonum/mat"
)

// Token-major operations of the batched prefill (see prefill.go). Each one
// runs dry (levels only) or live, like the rest of the backend.

// tmVec lays x (length d) out on the first rows token blocks (zero beyond).
func (e *Engine) tmVec(x []float64, rows int) []float64 {
	v := make([]float64, e.params.MaxSlots())
	for t := 0; t < rows; t++ {
		copy(v[t*len(x):], x)
	}
	return v
}

// tokenMask is the 0/1 mask of token block t (width d).
func (e *Engine) tokenMask(t int) []float64 {
	return he.TokenMajor{D: e.cfg.Dim, T: 1, Slots: e.params.MaxSlots()}.TokenMask(t)
}

// startVec holds a at the first slot of blocks t < rows and c at the first
// slot of blocks t ≥ rows (zero elsewhere).
func (e *Engine) startVec(a, c float64, rows int) []float64 {
	d := e.cfg.Dim
	v := make([]float64, e.params.MaxSlots())
	for t := 0; t*d < len(v); t++ {
		if t < rows {
			v[t*d] = a
		} else {
			v[t*d] = c
		}
	}
	return v
}

// vecLike lays a d-chunk of a per-feature vector out like x.
func (b *backend) vecLike(x *val, v []float64) []float64 {
	if x.tm {
		return b.e.tmVec(v, x.rows)
	}
	return b.e.replicate(v)
}

// packRows packs per-token replicated ciphertexts (period d) token-major:
// Σ_t x_t ⊙ mask_t (one level, no rotation).
func (b *backend) packRows(xs []*cval) *cval {
	var acc *cval
	for t, x := range xs {
		y := b.mulVec(x, b.e.tokenMask(t))
		if acc == nil {
			acc = y
		} else {
			acc = b.add(acc, y)
		}
	}
	return acc
}

// extractRow returns row t of a token-major ciphertext replicated with
// period d: a mask (one level) and log2(Slots/d) rotations.
func (b *backend) extractRow(x *cval, t int) *cval {
	y := b.mulVec(x, b.e.tokenMask(t))
	return b.foldRot(y, pow2Rots(b.e.cfg.Dim, b.e.params.MaxSlots()))
}

// embedTM embeds the batch's tokens: per token the decode path's product
// (one-hot × wte, or the client's wte[token]), packed token-major (one
// mask each), plus the positional embeddings as one plaintext.
func (b *backend) embedTM(pos0 int, wte, wpe *mat.Dense) *val {
	defer b.timed("embed", b.mark())
	T, d, m := b.rows, b.e.cfg.Dim, b.e.maskLevel
	ins := make([]*cval, T)
	for t := range ins {
		ins[t] = &cval{level: b.inputLevel}
		if !b.dry {
			ins[t].ct = b.inputs[t]
		}
	}
	parts := ins
	if b.e.opts.ClientSideEmbedding {
		b.begin(fmt.Sprintf("embed (client-side) ×%d", T), "embed", b.inputLevel)
		parts = b.ensure(ins, 1, m, false)
	} else {
		b.begin(fmt.Sprintf("wte (one-hot × embedding) ×%d", T), "embed", b.inputLevel)
		ins = b.ensure(ins, 2, m, false)
		b.op().LevelIn = ins[0].level
		rows := func() he.Rows { return he.TransposeRows(he.RowsFromDense(wte)) }
		parts = make([]*cval, T)
		for t := range parts {
			parts[t] = b.matvec("wte", 0, 0, ins[t], rows, d, b.e.cfg.Vocab)
		}
	}
	x := b.packRows(parts)
	pos := make([]float64, b.e.params.MaxSlots())
	for t := 0; t < T; t++ {
		mat.Row(pos[t*d:(t+1)*d], pos0+t, wpe)
	}
	x = b.addVec(x, pos)
	b.end(x.level)
	b.op().Layout = "token-major"
	return &val{parts: []*cval{x}, tm: true, rows: T}
}

// linearInputsTM prepares the token-major input chunks of a batched
// Linear (every d×d block (o, c) of W once for all rows, he.Planner.
// Batched; blocks sharing an input chunk share its baby steps).
func (b *backend) linearInputsTM(name string, x *val) []*cval {
	minOut := b.e.maskLevel
	var layer int
	if _, err := fmt.Sscanf(name, "h.%d.attn.c_attn", &layer); err == nil && strings.HasSuffix(name, "attn.c_attn") {
		// q, k, v leave with the levels that the attention needs without
		// a refresh of per-token values: the queries' mask (1), the scores
		// (2) and the exp, and k, v at the cache level or above. At most
		// the level just below the top (a refresh of this one ciphertext
		// reaches it).
		minOut = b.e.maskLevel + 3 + expDepth(b.e.set)
		if layer < len(b.cacheLevel) {
			minOut = max(minOut, b.cacheLevel[layer])
		}
		minOut = min(minOut, b.maxLevel()-1)
	}
	parts := b.ensure(x.parts, 1, minOut, false)
	b.op().LevelIn = parts[0].level
	b.op().Layout = fmt.Sprintf("token-major ×%d", b.e.pf.batch)
	return parts
}

func tmKey(name string, o, c, level int) string {
	return fmt.Sprintf("%s[%d,%d]@%d/tm", name, o, c, level)
}

// matvecManyTM evaluates (or plans) the batched blocks (o, c), o < nOut,
// on input chunk c.
func (b *backend) matvecManyTM(name string, c int, x *cval, nOut int, rows func(o int) he.Rows) []*cval {
	e := b.e
	d := e.cfg.Dim
	out := make([]*cval, nOut)
	if b.dry || b.err != nil {
		for o := range out {
			out[o] = &cval{level: x.level - 1}
			if !b.dry {
				continue
			}
			key := tmKey(name, o, c, x.level)
			mv, ok := e.shapes[key]
			if !ok {
				var err error
				if mv, err = he.NewPlanner(e.params).Batched(nil, d, e.pf.batch, x.level); err != nil {
					b.fail(fmt.Errorf("engine: planning %s: %w", key, err))
					return out
				}
				e.shapes[key] = mv
			}
			b.op().KeySwitches += mv.Cost().KeySwitches()
			b.req.Add(b.maxLevel(), mv)
			if _, ok := b.collect[key]; !ok && b.collect != nil {
				b.collect[key] = &linBlock{key: key, rows: rows(o), out: d, in: d, level: x.level, batched: true}
			}
		}
		return out
	}
	mvs := make([]*he.MatVec, nOut)
	for o := range mvs {
		key := tmKey(name, o, c, x.level)
		if mv, ok := e.mats[key]; ok {
			mvs[o] = mv
		} else if _, ok := e.pf.lazy[key]; ok {
			pl := he.NewPlanner(e.params)
			pl.Workers = b.s.workers
			mv, err := pl.Batched(rows(o), d, e.pf.batch, x.level)
			if err != nil {
				b.fail(fmt.Errorf("engine: encoding %s: %w", key, err))
				return b.errVal(nOut).parts
			}
			mvs[o] = mv
		} else {
			b.failf("engine: no product planned for %s: the run left the plan", key)
			return b.errVal(nOut).parts
		}
		b.op().KeySwitches += mvs[o].Cost().KeySwitches()
	}
	return b.evaluateMany(name, x, mvs)
}

// skipsHead records where the head (ln_f, then the LM head) starts in a
// batched prefill (the number of refresh rounds made before it) and tells
// whether this batch skips it (every batch but the prompt's last).
func (b *backend) skipsHead() bool {
	if b.headRound < 0 {
		b.headRound = len(b.rounds)
	}
	return b.skipHead
}

// centerTM is LayerNorm's first step on every row of a token-major value
// p: row sums by rotations 1…d/2 (valid at each row's first slot), read
// there by the scaling mask (which the replicated path spends anyway on
// −1/d and 1/d), broadcast back over the row by rotations −1…−d/2. It
// returns the centred rows c and σ² + eps; rows ≥ rows get the inverse
// square root's mid-range as variance (their values are zero).
func (b *backend) centerTM(p *cval, eps float64, rows int) (c, t *cval) {
	d := b.e.cfg.Dim
	sums, bcast := pow2Rots(1, d), negs(pow2Rots(1, d))
	s := b.foldRot(p, sums)
	negMean := b.mulVec(s, b.e.startVec(-1/float64(d), 0, rows))
	negMean = b.foldRot(negMean, bcast)
	c = b.add(p, negMean)
	c2 := b.mulRelin(c, c)
	v := b.foldRot(c2, sums)
	t = b.mulVec(v, b.e.startVec(1/float64(d), 0, rows))
	t = b.addVec(t, b.e.startVec(eps, mid(b.e.set.InvSqrt.Range()), rows))
	t = b.foldRot(t, bcast)
	return c, t
}

// attentionTM: the batch's keys and values join the KV cache in one add
// per ciphertext; each query is extracted and attends per token (the
// decode path's steps, in lockstep: the refreshes of all tokens share
// rounds); the outputs are packed back token-major. See prefill.go.
func (b *backend) attentionTM(layer int, qkv *val, pos0 int, scoreScale *mat.Dense) *val {
	defer b.timed("attention", b.mark())
	e := b.e
	m := e.maskLevel
	lay := e.kv
	dk, period, tpc, S := lay.DK(), lay.Period, lay.TokensPerCt(), lay.Slots
	heads := e.cfg.Heads
	T := qkv.rows
	name := fmt.Sprintf("h.%d.attn", layer)
	if len(qkv.parts) != 3 || qkv.pending() || period != e.cfg.Dim {
		b.failf("engine: %s: want q|k|v as three token-major chunks", name)
		return b.errVal(1)
	}
	q, k, v := qkv.parts[0], qkv.parts[1], qkv.parts[2]
	c0, off := pos0/tpc, pos0%tpc
	if off+T > tpc {
		b.failf("engine: %s: batch of %d tokens at position %d straddles two cache ciphertexts", name, T, pos0)
		return b.errVal(1)
	}
	lc := b.cacheLevel[layer]
	if lc < 0 {
		b.failf("engine: %s: no cache level planned", name)
		return b.errVal(1)
	}

	// 1. Append the batch: k, v are token-major with period d, the cache's
	// layout; rotate by the batch's offset in its cache ciphertext (powers
	// of two times the period: keys the plan has, added here for every
	// offset) and add.
	b.begin(name+".append (batch)", "attention", min(k.level, v.level))
	kv := b.ensure([]*cval{k, v}, 0, lc, false)
	b.op().LevelIn = min(kv[0].level, kv[1].level)
	b.req.AddRotations(lc, pow2Rots(period, S)...)
	var shifts []int
	for r, bit := (tpc-off)%tpc, 1; r > 0; r, bit = r>>1, bit*2 {
		if r&1 == 1 {
			shifts = append(shifts, bit*period)
		}
	}
	b.op().KeySwitches += 2 * len(shifts)
	var cache *he.KVCache
	if !b.dry && b.err == nil {
		cache = b.s.caches[layer]
		if cache.Len != pos0 {
			b.failf("engine: %s: cache holds %d positions, the batch starts at position %d", name, cache.Len, pos0)
			return b.errVal(1)
		}
		for i, x := range kv {
			ct, err := b.s.ev.DropTo(x.ct, lc)
			for _, r := range shifts {
				if err == nil {
					ct, err = b.s.ev.Rotate(ct, r)
				}
			}
			dst := &cache.K
			if i == 1 {
				dst = &cache.V
			}
			switch {
			case err != nil:
			case c0 == len(*dst):
				*dst = append(*dst, ct)
			default:
				(*dst)[c0], err = b.s.ev.Add((*dst)[c0], ct)
			}
			if err != nil {
				b.fail(fmt.Errorf("engine: %s: %w", name, err))
				return b.errVal(1)
			}
		}
		cache.Len += T
	}
	b.end(lc)
	nc := c0 + 1

	// 2. Queries: row t replicated (mask, rotations).
	b.begin(name+".queries", "attention", q.level)
	q = b.ensure([]*cval{q}, 3, m, false)[0]
	b.op().LevelIn = q.level
	qs := make([]*cval, T)
	for t := range qs {
		qs[t] = b.extractRow(q, t)
	}
	b.end(qs[0].level)

	// 3. Scores of token t against positions < pos0+t+1 (causal): the
	// decode path's q ⊙ K_c, in-head sums and score mask (zero at every
	// other slot), then compacted: token t of group g = t div dk moves to
	// offset o = t mod dk inside each head segment (a merge tree: T − 1
	// rotations by −1, −2, …, −dk/2 in all), so the scores of up to dk
	// tokens share one ciphertext per cache ciphertext and the exp and
	// the reciprocal run once per group, not once per token.
	b.begin(name+".scores", "attention", qs[0].level)
	ex, ea, eb := expUnit(e.set.Exp) // u = a·s + b folded into the mask and fill
	G := dk
	ng := (T + G - 1) / G
	valid := func(g, c int, v float64) []float64 { // v at (g, c)'s valid score slots
		m := make([]float64, S)
		for o := 0; o < G && g*G+o < T; o++ {
			n := pos0 + g*G + o + 1
			for j := 0; j < tpc && c*tpc+j < n; j++ {
				for h := 0; h < heads; h++ {
					m[j*period+h*dk+o] = v
				}
			}
		}
		return m
	}
	sc := make([]*cval, ng*nc) // compacted scores (g, c) at g·nc + c
	for c := 0; c < nc; c++ {
		kc := &cval{level: lc}
		if !b.dry && b.err == nil {
			kc.ct = cache.K[c]
		}
		for g := 0; g < ng; g++ {
			xs := make([]*cval, G)
			for o := 0; o < G && g*G+o < T; o++ {
				t := g*G + o
				n := pos0 + t + 1
				s := b.mulRelin(qs[t], kc)
				s = b.foldRot(s, pow2Rots(1, dk))
				mask := make([]float64, S)
				for j := 0; j < tpc && c*tpc+j < n; j++ {
					for h := 0; h < heads; h++ {
						mask[j*period+h*dk] = ea * scoreScale.At(h, t)
					}
				}
				xs[o] = b.mulVec(s, mask)
			}
			for step := 1; step < G; step *= 2 {
				for a := 0; a+step < G; a += 2 * step {
					if xs[a+step] != nil {
						xs[a] = b.add(xs[a], b.rotate(xs[a+step], -step))
					}
				}
			}
			fill := valid(g, c, eb) // other slots: u = 0
			sc[g*nc+c] = b.addVec(xs[0], fill)
		}
	}
	b.end(sc[0].level)
	b.trace(name+".scores", sc[0])

	// 4. Exp and the denominators Σ_p e_p per (token, head), read at
	// every position block; divided by n_t (the softmax's mean, a
	// plaintext per slot), so that one reciprocal serves all tokens.
	b.begin(name+".exp", "exp", sc[0].level)
	sc = b.ensure(sc, ex.Depth(), m, false)
	b.op().LevelIn = sc[0].level
	es := b.polyAll(sc, ex.Depth(), func(pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalExp(ct, ex)
	})
	pmid := ex.Eval(0)
	rmid := mid(e.set.Recip.Range())
	dens := make([]*cval, ng)
	for g := range dens {
		for c := 0; c < nc; c++ {
			fix := valid(g, c, 1)
			for i := range fix {
				fix[i] = -pmid * (1 - fix[i])
			}
			i := g*nc + c
			es[i] = b.addVec(es[i], fix)
			if c == 0 {
				dens[g] = es[i]
			} else {
				dens[g] = b.add(dens[g], es[i])
			}
		}
		dens[g] = b.foldRot(dens[g], pow2Rots(period, S))
	}
	dens = b.ensure(dens, 1, m, false)
	for g := range dens {
		inv := make([]float64, S)
		fill := make([]float64, S)
		for i := range fill {
			fill[i] = rmid
		}
		for blk := 0; blk < tpc; blk++ {
			for o := 0; o < G && g*G+o < T; o++ {
				for h := 0; h < heads; h++ {
					inv[blk*period+h*dk+o] = 1 / float64(pos0+g*G+o+1)
					fill[blk*period+h*dk+o] = 0
				}
			}
		}
		dens[g] = b.addVec(b.mulVec(dens[g], inv), fill)
	}
	b.end(dens[0].level)

	// 5. Reciprocals (one per group) and weights e ⊙ r.
	rns := make([]approx.Reciprocal, ng)
	for g := range rns {
		rns[g] = e.set.Recip
	}
	rs := b.recipMany(name+".recip", dens, rns)
	b.begin(name+".weights", "attention", min(rs[0].level, es[0].level))
	all := b.ensure(append(append([]*cval(nil), es...), rs...), 3, m, false)
	es, rs = all[:len(es)], all[len(es):]
	ws := make([]*cval, len(es))
	for i := range ws {
		ws[i] = b.mulRelin(es[i], rs[i/nc])
	}
	b.end(ws[0].level)

	// 6. Per token: its weights back at the segment starts (a mask that
	// also applies the softmax's 1/n_t, rotations by +o), then the decode
	// path's weighted sum of values.
	b.begin(name+".values", "attention", ws[0].level)
	outs := make([]*cval, T)
	for t := range outs {
		g, o := t/G, t%G
		n := pos0 + t + 1
		w := make([]*cval, nc)
		for c := range w {
			mask := make([]float64, S)
			for blk := 0; blk < tpc; blk++ {
				for h := 0; h < heads; h++ {
					mask[blk*period+h*dk+o] = 1 / float64(n)
				}
			}
			w[c] = b.mulVec(ws[g*nc+c], mask)
			for bit := 1; bit < G; bit *= 2 {
				if o&bit != 0 {
					w[c] = b.rotate(w[c], bit)
				}
			}
		}
		lw := min(w[0].level, lc)
		b.rots(w[0].level, negs(pow2Rots(1, dk))...)
		for range w {
			b.relin(lw)
		}
		b.rots(lw-1, pow2Rots(period, S)...)
		outs[t] = &cval{level: lw - 1}
		if !b.dry && b.err == nil {
			cts := make([]*rlwe.Ciphertext, nc)
			for c := range cts {
				cts[c] = w[c].ct
			}
			ct, err := b.s.ev.WeightedSum(e.att, cts, cache)
			if err != nil {
				b.fail(fmt.Errorf("engine: %s: %w", name, err))
				return b.errVal(1)
			}
			outs[t] = &cval{ct: ct, level: ct.Level()}
		}
	}
	b.end(outs[0].level)

	// 7. Pack token-major.
	b.begin(name+".pack", "attention", outs[0].level)
	outs = b.ensure(outs, 1, m, false)
	b.op().LevelIn = outs[0].level
	x := b.packRows(outs)
	b.end(x.level)
	b.trace(name+".out", x)
	return &val{parts: []*cval{x}, tm: true, rows: T}
}

// recipMany is recip for several inputs, each with its approximation (same
// depth): all Newton steps and refreshes in lockstep.
func (b *backend) recipMany(name string, xs []*cval, rs []approx.Reciprocal) []*cval {
	m := b.e.maskLevel
	r0 := rs[0]
	if b.e.params.MaxLevel()-r0.Depth() >= m {
		b.begin(name, "recip", xs[0].level)
		ps := b.ensure(xs, r0.Depth(), m, false)
		b.op().LevelIn = ps[0].level
		out := b.polyEach(ps, r0.Depth(), func(i int, pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
			return pe.EvalReciprocal(ct, rs[i])
		})
		b.end(out[0].level)
		return out
	}
	b.begin(name+".init", "recip", xs[0].level)
	ps := b.ensure(xs, r0.Init.Depth(), m, false)
	b.op().LevelIn = ps[0].level
	ys := b.polyEach(ps, r0.Init.Depth(), func(i int, pe *he.PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
		return pe.EvalChebyshev(ct, rs[i].Init, rlwe.Scale{})
	})
	b.end(ys[0].level)
	n := len(xs)
	for it := 0; it < r0.Iters; it++ {
		b.begin(fmt.Sprintf("%s.newton%d", name, it), "recip", min(ps[0].level, ys[0].level))
		all := b.ensure(append(append([]*cval(nil), ps...), ys...), 2, m, false)
		ps, ys = all[:n], append([]*cval(nil), all[n:]...)
		for i := range ys {
			t := b.mulRelin(ps[i], ys[i])
			t = b.negAddConst(t, 2)
			ys[i] = b.mulRelin(ys[i], t)
		}
		b.end(ys[0].level)
	}
	return ys
}

// rotate returns rot(x, k) (one key-switch).
func (b *backend) rotate(x *cval, k int) *cval {
	b.rots(x.level, k)
	if b.dry || b.err != nil {
		return &cval{level: x.level}
	}
	ct, err := b.s.ev.Rotate(x.ct, k)
	b.fail(err)
	return &cval{ct: ct, level: x.level}
}

// polyEach is polyAll with the part's index passed to f.
func (b *backend) polyEach(parts []*cval, depth int, f func(int, *he.PolyEvaluator, *rlwe.Ciphertext) (*rlwe.Ciphertext, error)) []*cval {
	out := make([]*cval, len(parts))
	for i, p := range parts {
		out[i] = &cval{level: p.level - depth}
		b.req.AddRelin(p.level)
	}
	if b.dry || b.err != nil {
		return out
	}
	errs := make([]error, len(parts))
	parallelDo(b.s.workers, len(parts), func(i int) {
		pe := he.NewPolyEvaluator(b.e.params, b.s.ev.Eval)
		t0 := time.Now()
		ct, err := f(i, pe, parts[i].ct)
		errs[i] = err
		if err == nil {
			out[i] = &cval{ct: ct, level: ct.Level()}
		}
		b.s.counters.Add(he.OpMulCtCt, 0, time.Since(t0))
	})
	for _, err := range errs {
		b.fail(err)
	}
	return out
}
