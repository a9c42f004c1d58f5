package engine

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// All tests use insecure presets (he.InsecureTest: N=2^12, 12 levels; no
// security) and tiny random models.

type fixture struct {
	w      *model.Weights
	set    *approx.Set
	cal    *model.Calibration
	eng    *Engine
	client *Client
	sess   *Session
}

// testCalibration accepts 1e-3 relative
// error in 1/x and 1/√x (fewer Newton steps; the comparison is against the
// same polynomials in float64, so it does not loosen the test).
var testCalibration = model.CalibrateOptions{RecipTol: 1e-3, InvSqrtTol: 1e-3}

func tinyConfig(kind string) model.Config {
	if kind == "baseline" {
		return model.Baseline(64, 32, 32, 2, 2)
	}
	return model.EntropyGuided(64, 32, 32, 2, 2)
}

func randomSeqs(cfg model.Config, n, length int, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 7))
	seqs := make([][]int, n)
	for i := range seqs {
		seqs[i] = make([]int, length)
		for j := range seqs[i] {
			seqs[i][j] = r.IntN(cfg.Vocab)
		}
	}
	return seqs
}

func newFixture(t testing.TB, cfg model.Config, preset he.Preset, opts Options) *fixture {
	t.Helper()
	w, err := model.NewRandom(cfg, 1)
	require.NoError(t, err)
	cal, err := model.Calibrate(w, randomSeqs(cfg, 16, cfg.Context, 2), testCalibration)
	require.NoError(t, err)
	opts.Preset, opts.AllowInsecure = preset, true
	t0 := time.Now()
	eng, err := New(w, cal.Set, opts)
	require.NoError(t, err)
	t.Logf("%s: engine built in %v (calibration: %s)", cfg.Name, time.Since(t0).Round(time.Millisecond), strings.Join(cal.Report, "; "))
	client, keys := clientOf(t, eng)
	sess, err := eng.NewSession(keys, client.AnswerRefresh)
	require.NoError(t, err)
	return &fixture{w: w, set: cal.Set, cal: cal, eng: eng, client: client, sess: sess}
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func spread(v []float64) float64 {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return hi - lo
}

func TestPlanDryRun(t *testing.T) {
	for _, kind := range []string{"entropy-guided", "baseline"} {
		cfg := tinyConfig(kind)
		w, err := model.NewRandom(cfg, 1)
		require.NoError(t, err)
		cal, err := model.Calibrate(w, randomSeqs(cfg, 4, cfg.Context, 2), model.CalibrateOptions{})
		require.NoError(t, err)
		eng, err := New(w, cal.Set, Options{Preset: he.InsecureTest, AllowInsecure: true})
		require.NoError(t, err)
		p := eng.Plan()
		t.Logf("%s\n%s", kind, p)
		require.NotEmpty(t, p.Ops)
		for _, o := range p.Ops {
			require.GreaterOrEqual(t, o.LevelOut, 0, o.Op)
			require.LessOrEqual(t, o.LevelOut, o.LevelIn, o.Op)
		}
	}
}

// The encrypted decoder matches the approximation backend (same
// polynomials in float64) and greedy decoding picks the same tokens.
// Stated bound: every logit within 1% of the logit spread (max − min) of
// the approximation backend; measured errors are ~1e-4 of the spread.
func testMatch(t *testing.T, kind string) {
	t.Parallel()
	cfg := tinyConfig(kind)
	f := newFixture(t, cfg, he.InsecureTest, Options{})
	ctx := context.Background()
	const steps = 16
	prompt := randomSeqs(cfg, 1, 8, 99)[0]

	// Reference run first: greedy tokens, logits, range violations.
	wantLogits, wantToks, ref := approxGreedy(t, f, cfg, prompt, steps)
	viol := ref.Ranges.Violations()
	t.Logf("%s reference ranges:\n%s", kind, ref.Ranges)
	require.Zero(t, viol, "approximation range violations in the reference run: the calibration does not cover this prompt")

	cts, err := f.client.EncryptPrompt(prompt)
	require.NoError(t, err)
	out, err := f.sess.Prefill(ctx, cts)
	require.NoError(t, err)
	gotToks, maxErr, maxRel := decodeGreedy(t, f, out, wantLogits, len(prompt), 0.01)
	require.Equal(t, wantToks, gotToks, "greedy tokens")
	t.Logf("%s: max logit error %.3g (%.2e of the logit spread) over %d positions, greedy %v", kind, maxErr, maxRel, steps+1, gotToks)
	st := f.sess.Stats()
	dec, n := st.Phase("decode")
	t.Logf("decode: %d tokens, %v/token, %d rotations/token, %d ct×ct/token, %d refresh rounds/token", n,
		dec.Time/time.Duration(n), dec.Rotations/int64(n), dec.CtCt/int64(n), dec.Refreshes/n)
	t.Logf("last token: %v", &st.Tokens[len(st.Tokens)-1])
}

func TestEntropyGuidedMatchesApprox(t *testing.T) { testMatch(t, "entropy-guided") }
func TestBaselineMatchesApprox(t *testing.T)      { testMatch(t, "baseline") }

// Malformed or wrong-level token ciphertexts are refused with a clear
// error before anything runs; a failing refresh round aborts the step and
// the session; keys without a planned rotation are refused.
func TestErrors(t *testing.T) {
	cfg := tinyConfig("entropy-guided")
	f := newFixture(t, cfg, he.InsecureTest, Options{})
	ctx := context.Background()
	spec := f.eng.Spec()

	good, err := f.client.EncryptToken(3, 0)
	require.NoError(t, err)
	wrongLevel, err := f.client.ck.Encrypt(make([]float64, 8), spec.InputLevel+1)
	require.NoError(t, err)
	deg2 := rlwe.NewCiphertext(f.eng.params, 2, spec.InputLevel)
	other, err := he.InsecureN13.Parameters(true)
	require.NoError(t, err)
	otherRing := rlwe.NewCiphertext(other, 1, spec.InputLevel)
	scaled := good.CopyNew()
	scaled.Scale = scaled.Scale.Mul(rlwe.NewScale(2))
	unreduced := good.CopyNew()
	unreduced.Value[0].Coeffs[0][0] = f.eng.params.Q()[0]
	for name, c := range map[string]struct {
		ct   *rlwe.Ciphertext
		want string
	}{
		"nil":         {nil, "missing"},
		"wrong level": {wrongLevel, "level"},
		"degree 2":    {deg2, "degree 2"},
		"other ring":  {otherRing, "ring degree"},
		"scale":       {scaled, "scale"},
		"unreduced":   {unreduced, "not reduced"},
	} {
		_, err := f.sess.Decode(ctx, c.ct)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), c.want, name)
		_, err = f.sess.Prefill(ctx, []*rlwe.Ciphertext{good, c.ct})
		require.Error(t, err, name)
	}
	require.Equal(t, 0, f.sess.Pos(), "rejected inputs must not touch the cache")

	// A refresh round that fails aborts the step and the session.
	keys, err := f.client.Keys()
	require.NoError(t, err)
	boom := errors.New("network down")
	calls := 0
	sess, err := f.eng.NewSession(keys, func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
		calls++
		if calls == 2 {
			return nil, boom
		}
		return f.client.AnswerRefresh(ctx, req)
	})
	require.NoError(t, err)
	_, err = sess.Decode(ctx, good)
	require.ErrorIs(t, err, boom)
	_, err = sess.Decode(ctx, good)
	require.ErrorContains(t, err, "aborted")

	// A response with the wrong number of ciphertexts is rejected.
	sess, err = f.eng.NewSession(keys, func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
		return &he.RefreshResponse{}, nil
	})
	require.NoError(t, err)
	_, err = sess.Decode(ctx, good)
	require.ErrorContains(t, err, "refresh")

	// Keys without a planned rotation are refused at session creation.
	req := f.client.KeyRequest()
	for k := range req.Rotations {
		delete(req.Rotations, k)
		break
	}
	ek, err := f.client.ck.GenEvaluationKeys(req, he.KeyOptions{})
	require.NoError(t, err)
	_, err = f.eng.NewSession(&Keys{Evaluation: ek, Public: keys.Public}, f.client.AnswerRefresh)
	require.ErrorContains(t, err, "lack rotation")
}

// Sessions share one immutable Engine: two clients decoding concurrently
// get their own correct logits.
func TestConcurrentSessions(t *testing.T) {
	cfg := tinyConfig("entropy-guided")
	f := newFixture(t, cfg, he.InsecureTest, Options{Workers: 1})
	ctx := context.Background()
	prompts := [][]int{{5, 9}, {40, 2}}
	errs := make(chan error, len(prompts))
	results := make([][]float64, len(prompts))
	for i, p := range prompts {
		go func() {
			c, err := NewClient(f.eng.Spec(), nil)
			if err == nil {
				var keys *Keys
				if keys, err = c.Keys(); err == nil {
					var s *Session
					if s, err = f.eng.NewSession(keys, c.AnswerRefresh); err == nil {
						var cts []*rlwe.Ciphertext
						if cts, err = c.EncryptPrompt(p); err == nil {
							var out *rlwe.Ciphertext
							if out, err = s.Prefill(ctx, cts); err == nil {
								results[i], err = c.DecryptLogits(out)
							}
						}
					}
				}
			}
			errs <- err
		}()
	}
	for range prompts {
		require.NoError(t, <-errs)
	}
	for i, p := range prompts {
		ref, err := model.NewApprox(cfg, f.set)
		require.NoError(t, err)
		want, err := model.NewSession(f.w, ref).Prefill(p)
		require.NoError(t, err)
		w := want.RawRowView(len(p) - 1)
		for j := range w {
			require.InDelta(t, w[j], results[i][j], 0.01*spread(w), "session %d logit %d", i, j)
		}
	}
}
