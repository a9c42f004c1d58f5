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

// testCalibration widens the positive ranges (random models reach softmax
// denominators beyond the calibration sample) and accepts 1e-3 relative
// error in 1/x and 1/√x (fewer Newton steps; the comparison is against the
// same polynomials in float64, so it does not loosen the test).
var testCalibration = model.CalibrateOptions{RatioMargin: 4, RecipTol: 1e-3, InvSqrtTol: 1e-3}

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
	// The client only sees the JSON spec.
	js, err := eng.Spec().Marshal()
	require.NoError(t, err)
	spec, err := UnmarshalSpec(js)
	require.NoError(t, err)
	client, err := NewClient(spec, nil)
	require.NoError(t, err)
	keys, err := client.Keys()
	require.NoError(t, err)
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
	ref, err := model.NewApprox(cfg, f.set)
	require.NoError(t, err)
	rs := model.NewSession(f.w, ref)
	pl, err := rs.Prefill(prompt)
	require.NoError(t, err)
	wantLogits := [][]float64{append([]float64(nil), pl.RawRowView(len(prompt)-1)...)}
	var wantToks []int
	for s := 0; s < steps; s++ {
		tok := argmax(wantLogits[s])
		wantToks = append(wantToks, tok)
		l, err := rs.Step(tok)
		require.NoError(t, err)
		wantLogits = append(wantLogits, append([]float64(nil), l...))
	}
	viol := ref.Ranges.Violations()
	t.Logf("%s reference ranges:\n%s", kind, ref.Ranges)
	require.Zero(t, viol, "approximation range violations in the reference run: the calibration does not cover this prompt")

	cts, err := f.client.EncryptPrompt(prompt)
	require.NoError(t, err)
	out, err := f.sess.Prefill(ctx, cts)
	require.NoError(t, err)
	var maxErr, maxRel float64
	var gotToks []int
	for s := 0; ; s++ {
		got, err := f.client.DecryptLogits(out)
		require.NoError(t, err)
		want := wantLogits[s]
		var e float64
		for i := range want {
			e = math.Max(e, math.Abs(got[i]-want[i]))
		}
		maxErr, maxRel = math.Max(maxErr, e), math.Max(maxRel, e/spread(want))
		require.Less(t, e, 0.01*spread(want), "step %d: logit error %.3g vs spread %.3g", s, e, spread(want))
		if s == steps {
			break
		}
		tok := argmax(got)
		gotToks = append(gotToks, tok)
		ct, err := f.client.EncryptToken(tok, len(prompt)+s)
		require.NoError(t, err)
		out, err = f.sess.Decode(ctx, ct)
		require.NoError(t, err)
	}
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

var _ = errors.New
var _ = rlwe.NewCiphertext
