package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Session is the server side of one client: the evaluator over that
// client's evaluation keys, the refresher (its RefreshFunc), the flooder
// (its public key) and the encrypted KV cache. Calls are serialized.
type Session struct {
	e         *Engine
	ev        *he.Evaluator
	enc       *ckks.Encoder
	counters  *he.Counters
	refresher he.Refresher
	flooder   *he.Flooder
	caches    []*he.KVCache
	workers   int
	debug     func(op string, ct *rlwe.Ciphertext) // tests: intermediate values

	mu     sync.Mutex
	pos    int
	broken error
	stats  Stats
}

// NewSession validates the client's keys and builds its session. refresh
// carries the masked-refresh rounds to the client; in bootstrap mode it is
// not used (may be nil) and keys.Bootstrap builds the session's
// bootstrapper instead.
func (e *Engine) NewSession(keys *Keys, refresh RefreshFunc) (*Session, error) {
	if keys == nil || keys.Evaluation == nil {
		return nil, errors.New("engine: session needs the client's evaluation keys")
	}
	if refresh == nil && e.boot == nil {
		return nil, errors.New("engine: session needs a refresh callback (the plan refreshes)")
	}
	s := &Session{e: e, counters: &he.Counters{}, workers: e.opts.Workers, enc: ckks.NewEncoder(e.params)}
	var err error
	if s.ev, err = he.NewEvaluator(e.params, keys.Evaluation, s.counters); err != nil {
		return nil, fmt.Errorf("engine: session keys: %w", err)
	}
	s.ev.Workers = s.workers
	// Every planned rotation must be present at its level.
	for k, l := range e.req.Rotations {
		if !s.ev.HasRotation(k, l) {
			return nil, fmt.Errorf("engine: session keys lack rotation %d at level %d (generate them from the engine's Spec)", k, l)
		}
	}
	if s.flooder, err = he.NewFlooder(e.params, keys.Public, floodOptions(e.opts)); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if e.boot != nil {
		if s.refresher, err = e.newBootstrapper(keys); err != nil {
			return nil, err
		}
	} else if s.refresher, err = he.NewMaskedRefresher(e.params, keys.Public, he.RefreshTransport(refresh), e.mask); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	for _, lc := range e.plan.CacheLevels {
		s.caches = append(s.caches, e.att.NewKVCache(lc))
	}
	return s, nil
}

func floodOptions(o Options) he.FloodOptions {
	if o.Flood == (he.FloodOptions{}) {
		return he.DefaultFloodOptions()
	}
	return o.Flood
}

// Pos is the number of positions in the KV cache.
func (s *Session) Pos() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// Prefill runs the prompt's tokens (one ciphertext each, Client.EncryptPrompt)
// through the decoder, filling the KV cache, and returns the flooded logits
// of the last position. The tokens run in batches packed token-major
// (Engine.PrefillBatch per batch; see prefill.go), or token by token
// through the decode path with Options.PrefillBatch = 1.
func (s *Session) Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return s.prefill(ctx, in, s.e.pf.batch)
}

// Decode runs one token (Client.EncryptToken at position Pos()) and returns
// the flooded logits.
func (s *Session) Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.e.checkInput(in); err != nil {
		return nil, fmt.Errorf("engine: token: %w", err)
	}
	return s.step(ctx, in, "decode", true)
}

// step runs model.Forward for one token on the encrypted backend.
func (s *Session) step(ctx context.Context, in *rlwe.Ciphertext, phase string, logits bool) (*rlwe.Ciphertext, error) {
	if s.broken != nil {
		return nil, fmt.Errorf("engine: session aborted by an earlier error: %w", s.broken)
	}
	if s.pos >= s.e.cfg.Context {
		return nil, fmt.Errorf("engine: context window of %d tokens is full", s.e.cfg.Context)
	}
	e := s.e
	ts := &TokenStats{Pos: s.pos, Phase: phase, ByKind: map[string]time.Duration{}, Kinds: map[string]KindStats{}, LevelIn: in.Level()}
	snap := s.counters.Snapshot()
	t0 := time.Now()
	b := newBackend(e, false)
	b.s, b.ctx, b.input, b.tok = s, ctx, in, ts
	b.inputLevel = e.plan.InputLevel
	b.targets = e.plan.RefreshTargets
	copy(b.cacheLevel, e.plan.CacheLevels)
	out, err := model.Forward[*val](e.w, b, []int{0}, s.pos)
	if err == nil && len(b.rounds) != e.plan.Refreshes {
		err = fmt.Errorf("engine: the run made %d refresh rounds, the plan %d", len(b.rounds), e.plan.Refreshes)
	}
	if err != nil {
		s.broken = err
		return nil, err
	}
	s.pos++
	ct := out.parts[0].ct
	ts.LevelOut = ct.Level()
	return s.finish(ct, logits, ts, t0, snap)
}

// finish ends a step (or a prefill batch) that succeeded: it floods the
// logits ct when flood is set (a failure aborts the session), then closes
// ts (time since t0, operations since snap) and appends it to the
// session's statistics.
func (s *Session) finish(ct *rlwe.Ciphertext, flood bool, ts *TokenStats, t0 time.Time, snap he.Snapshot) (*rlwe.Ciphertext, error) {
	if flood {
		tf := time.Now()
		var err error
		if ct, err = s.flooder.Flood(ct); err != nil {
			s.broken = err
			return nil, fmt.Errorf("engine: flood: %w", err)
		}
		ts.add("flood", time.Since(tf))
	}
	ts.Time = time.Since(t0)
	ts.Ops = s.counters.Snapshot().Sub(snap)
	ts.fill()
	s.stats.Tokens = append(s.stats.Tokens, *ts)
	return ct, nil
}

// checkInput validates a token ciphertext from the network.
func (e *Engine) checkInput(ct *rlwe.Ciphertext) error {
	switch {
	case ct == nil || ct.MetaData == nil || len(ct.Value) == 0:
		return errors.New("missing ciphertext")
	case ct.Degree() != 1:
		return fmt.Errorf("ciphertext of degree %d, want 1", ct.Degree())
	case ct.Value[0].N() != e.params.N() || ct.Value[1].N() != e.params.N():
		return fmt.Errorf("ring degree %d, want %d", ct.Value[0].N(), e.params.N())
	case ct.Level() != e.plan.InputLevel:
		return fmt.Errorf("ciphertext at level %d, the plan takes tokens at level %d (Spec.InputLevel)", ct.Level(), e.plan.InputLevel)
	case !ct.Scale.Equal(e.params.DefaultScale()):
		return fmt.Errorf("scale 2^%.3f, want the default 2^%d", logScale(ct), e.params.LogDefaultScale())
	case !ct.IsNTT || ct.IsMontgomery || !ct.IsBatched:
		return errors.New("wrong domain flags (want NTT, batched)")
	case ct.LogDimensions != e.params.LogMaxDimensions():
		return fmt.Errorf("slot dimensions %v, want %v", ct.LogDimensions, e.params.LogMaxDimensions())
	}
	for j, v := range ct.Value {
		for i, q := range e.params.Q()[:ct.Level()+1] {
			for _, c := range v.Coeffs[i] {
				if c >= q {
					return fmt.Errorf("polynomial %d: coefficient not reduced modulo q_%d", j, i)
				}
			}
		}
	}
	return nil
}
