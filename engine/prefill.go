package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// Batched prefill.
//
// Session.Prefill splits the prompt into batches of up to B tokens (B =
// Options.PrefillBatch, a power of two dividing the KV cache's positions
// per ciphertext Slots/d, so that no batch straddles two cache
// ciphertexts) and runs model.Forward once per batch with rows = T ≤ B on
// the same backend as decoding. A multi-row activation is token-major
// (he.TokenMajor: row t in slots [t·d, (t+1)·d) of each d-wide chunk,
// rows ≥ T zero), so
//
//   - every linear layer runs once per batch: diag(W, …, W) applied to the
//     packed rows by he.Planner.Batched (2d−1 slot diagonals, BSGS: about
//     twice the rotations of one token's replicated product, whatever T);
//     the LM head runs on the last row only (extracted by a mask and
//     log2(Slots/d) rotations, then the decode path's product);
//   - residual adds, biases, pending affine maps and GELU act on all rows
//     at once; LayerNorm too: per-row sums by rotations 1, 2, …, d/2 read
//     at each row's first slot, then broadcast back over the row by
//     rotations −1, …, −d/2 (the same levels as the replicated path, 2·log2
//     d more rotations, once per batch); the inverse square root, its
//     Newton steps and their refreshes once per batch;
//   - every refresh point of the plan carries the whole batch in one round
//     (one ciphertext for a token-major value, T for per-token values), so
//     round trips per prompt drop from (decode rounds)·T to (decode
//     rounds)·⌈T/B⌉.
//
// Attention: the batch's keys and values are already in the KV cache's
// layout (he.KVLayout is token-major with period d), so they join the cache
// in one add per ciphertext (a rotation by the batch's offset in the cache
// ciphertext, with keys the plan already has) — no mask, no per-token
// append. Each token's query is extracted (one mask, log2(Slots/d)
// rotations into the replicated layout) and its scores against the cache
// computed as in decoding (q ⊙ K_c, in-head sums, score mask). Token t is
// causal because its score mask keeps only positions < pos0+t+1 (later
// positions of the batch, already in the cache, get exactly zero weight).
// Then the scores of up to dk tokens are compacted into one ciphertext per
// cache ciphertext (token t at offset t mod dk inside every head segment,
// by a merge tree of rotations −1, −2, …, −dk/2: T − 1 rotations), so the
// exp, the sums over positions, the reciprocal and e ⊙ r run once per dk
// tokens instead of once per token, and their refresh rounds carry
// ⌈T/dk⌉ ciphertexts instead of T. The softmax's 1/n_t differs per token
// (approx.Set.Softmax: r = Recip(Σ/n)/n): the sums are multiplied by 1/n_t
// (a per-slot plaintext, one level) so that one reciprocal polynomial
// serves every slot, and the final 1/n_t rides on the mask below. Per token
// again: its weights move back to the segment starts (a mask holding 1/n_t,
// and popcount(t mod dk) rotations) for the decode path's weighted sum of
// values; the outputs are packed token-major (one mask each) for the
// output projection.
//
// Why not re-lay out the batch by refresh slot maps (free on the server)?
// A slot map turns one ciphertext into one ciphertext, so extracting T
// queries costs T ciphertexts each way in a round (about 1.8 MB each at
// n14-128) against T·log2(Slots/d) rotations here; and the keys and values
// need no re-layout at all. What stays per token: the query extraction, the
// q ⊙ K_c products and the weighted sums of values (about T·(2·log2(Slots/d)
// + log2 dk) rotations and 2·T ct×ct per cache ciphertext); computing the
// score matrix by diagonals (rotations of K and V instead of replicated
// queries) would batch those too.
//
// Plan: the same dry run (levels only) as decoding, with rows = B, records
// the prefill plan (Plan.Prefill), the extra rotation keys (merged into the
// KeyRequest: the client generates every key either path uses) and the
// extra products to encode (batched products, the LM head at its prefill
// level). The encrypted run repeats its decisions, as for decoding.
//
// Memory: a batched d×d product holds 2d−1 plaintexts at its level. Up to
// prefillEncodeBudget bytes they are encoded once with the engine; beyond
// (large d at N ≥ 2^15), each is encoded when used and dropped.

// prefillEncodeBudget bounds the memory of pre-encoded batched products
// (a variable for tests).
var prefillEncodeBudget int64 = 1 << 30

// prefillState is the engine's batched-prefill configuration and plan.
type prefillState struct {
	batch      int                  // B: tokens per batch (≤ 1: token by token)
	plan       *Plan                // one batch, with the LM head
	bodyRounds int                  // refresh rounds of a batch without the head
	lazy       map[string]*linBlock // batched products encoded at each use
}

// prefillBatchSize resolves Options.PrefillBatch.
func (e *Engine) prefillBatchSize() (int, error) {
	tpc := e.kv.TokensPerCt()
	B := e.opts.PrefillBatch
	if B == 0 {
		B = min(tpc, nextPow2(e.cfg.Context))
		if e.boot != nil {
			// Bootstrap mode bounds the values of each refresh point of the
			// decode plan (bootstrap.go); the batched prefill's refresh
			// points (token-major values, compacted scores) are not
			// bounded yet: token by token unless asked.
			B = 1
		}
	}
	if e.boot != nil && B > 1 {
		return 0, errors.New("engine: the batched prefill is not available in bootstrap mode yet (its refresh points have no value bounds there): use PrefillBatch 0 or 1")
	}
	if B < 1 || B > tpc || B&(B-1) != 0 {
		return 0, fmt.Errorf("engine: prefill batch %d must be a power of two in [1, %d] (slots %d / dim %d)", B, tpc, e.params.MaxSlots(), e.cfg.Dim)
	}
	return B, nil
}

// planPrefill plans one batch of the batched prefill by a dry run with
// rows = B, merges its keys into the KeyRequest and encodes its products.
func (e *Engine) planPrefill() error {
	B, err := e.prefillBatchSize()
	if err != nil {
		return err
	}
	e.pf = prefillState{batch: B}
	if B <= 1 {
		return nil
	}
	e.shapes = map[string]*he.MatVec{}
	defer func() { e.shapes = nil }()
	b := e.newPrefillBackend(true, B)
	b.collect = map[string]*linBlock{}
	if _, err := model.Forward[*val](e.w, b, make([]int, B), 0); err != nil {
		return fmt.Errorf("engine: planning the prefill: %w", err)
	}
	if b.headRound < 0 {
		return errors.New("engine: planning the prefill: the run never reached the LM head")
	}
	pp := *e.plan // preset, mode, levels
	p := &pp
	p.Ops, p.Refreshes, p.RefreshCts, p.RefreshTargets = b.ops, len(b.rounds), b.roundCts, b.rounds
	p.CacheLevels, p.Rows, p.KeySwitches, p.CtCt, p.Prefill = b.cacheLevel, B, 0, 0, nil
	for _, o := range p.Ops {
		p.KeySwitches += o.KeySwitches
		p.CtCt += o.CtCt
	}
	for k, l := range b.req.Rotations {
		e.req.AddRotations(l, k)
	}
	if b.req.Relinearize {
		e.req.AddRelin(b.req.RelinLevel)
	}
	p.Rotations = len(b.req.Rotations)
	e.plan.Rotations = len(e.req.Rotations)
	e.plan.Prefill = p
	e.pf.plan = p
	e.pf.bodyRounds = b.headRound

	// Encode what the decode plan did not (largest first, in parallel);
	// batched products beyond the budget are encoded at each use.
	var blocks []*linBlock
	var bytes int64
	for key, lb := range b.collect {
		if _, ok := e.mats[key]; ok {
			continue
		}
		blocks = append(blocks, lb)
		if lb.batched {
			bytes += int64(2*e.cfg.Dim-1) * int64(lb.level+1) * int64(e.params.N()) * 8
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].key < blocks[j].key })
	lazy := bytes > prefillEncodeBudget
	e.pf.lazy = map[string]*linBlock{}
	var todo []*linBlock
	for _, lb := range blocks {
		if lb.batched && lazy {
			e.pf.lazy[lb.key] = lb
		} else {
			todo = append(todo, lb)
		}
	}
	pl := he.NewPlanner(e.params)
	pl.Workers = 1
	var mu sync.Mutex
	var firstErr error
	parallelDo(e.opts.Workers, len(todo), func(i int) {
		mv, err := e.encodeBlock(pl, todo[i])
		mu.Lock()
		defer mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("engine: encoding %s: %w", todo[i].key, err)
		}
		e.mats[todo[i].key] = mv
	})
	return firstErr
}

// encodeBlock encodes one planned product.
func (e *Engine) encodeBlock(pl *he.Planner, lb *linBlock) (*he.MatVec, error) {
	switch {
	case lb.batched:
		return pl.Batched(lb.rows, e.cfg.Dim, e.pf.batch, lb.level)
	case lb.pre:
		return pl.PreRotated(lb.rows, lb.out, lb.level)
	default:
		return pl.Replicated(lb.rows, lb.out, lb.in, lb.level)
	}
}

// newPrefillBackend is a backend for one batch of rows tokens.
func (e *Engine) newPrefillBackend(dry bool, rows int) *backend {
	b := newBackend(e, dry)
	b.rows = rows
	b.headRound = -1
	b.inputLevel = e.plan.InputLevel
	copy(b.cacheLevel, e.plan.CacheLevels)
	return b
}

// per names the unit of a plan's totals.
func (p *Plan) per() string {
	if p.Rows > 1 {
		return fmt.Sprintf("per batch of %d tokens", p.Rows)
	}
	return "per token"
}

// PrefillBatch is the number of prompt tokens per batch (1: token by token).
func (e *Engine) PrefillBatch() int { return e.pf.batch }

// PrefillSequential runs the prompt token by token through the decode path
// (the path Prefill takes with Options.PrefillBatch = 1; kept for
// comparison: benchmarks and tests).
func (s *Session) PrefillSequential(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return s.prefill(ctx, in, 1)
}

// prefill validates the prompt and runs it in batches of up to batch tokens.
func (s *Session) prefill(ctx context.Context, in []*rlwe.Ciphertext, batch int) (*rlwe.Ciphertext, error) {
	if len(in) == 0 {
		return nil, errors.New("engine: empty prompt")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pos+len(in) > s.e.cfg.Context {
		return nil, fmt.Errorf("engine: prompt of %d tokens at position %d exceeds the context of %d", len(in), s.pos, s.e.cfg.Context)
	}
	for i, ct := range in {
		if err := s.e.checkInput(ct); err != nil {
			return nil, fmt.Errorf("engine: prompt token %d: %w", i, err)
		}
	}
	var out *rlwe.Ciphertext
	for i := 0; i < len(in); {
		// Batches end at multiples of batch (absolute positions), so a
		// batch never straddles two KV cache ciphertexts.
		n := min(batch-s.pos%batch, len(in)-i)
		last := i+n == len(in)
		var err error
		if n == 1 {
			out, err = s.step(ctx, in[i], "prefill", last)
		} else {
			out, err = s.batch(ctx, in[i:i+n], last)
		}
		if err != nil {
			return nil, err
		}
		i += n
	}
	return out, nil
}

// batch runs model.Forward on rows = len(in) prompt tokens packed
// token-major; logits: the batch ends the prompt (run the LM head on its
// last token and flood).
func (s *Session) batch(ctx context.Context, in []*rlwe.Ciphertext, logits bool) (*rlwe.Ciphertext, error) {
	if s.broken != nil {
		return nil, fmt.Errorf("engine: session aborted by an earlier error: %w", s.broken)
	}
	e := s.e
	T := len(in)
	ts := &TokenStats{Pos: s.pos, Rows: T, Phase: "prefill", ByKind: map[string]time.Duration{}, Kinds: map[string]KindStats{}, LevelIn: in[0].Level()}
	snap := s.counters.Snapshot()
	t0 := time.Now()
	b := e.newPrefillBackend(false, T)
	b.s, b.ctx, b.inputs, b.tok = s, ctx, in, ts
	b.skipHead = !logits
	out, err := model.Forward[*val](e.w, b, make([]int, T), s.pos)
	want := e.pf.plan.Refreshes
	if !logits {
		want = e.pf.bodyRounds
	}
	if err == nil && len(b.rounds) != want {
		err = fmt.Errorf("engine: the prefill batch made %d refresh rounds, the plan %d", len(b.rounds), want)
	}
	if err != nil {
		s.broken = err
		return nil, err
	}
	s.pos += T
	var ct *rlwe.Ciphertext
	if logits {
		ct = out.parts[0].ct
		ts.LevelOut = ct.Level()
	}
	return s.finish(ct, logits, ts, t0, snap)
}
