package engine

import (
	"context"
	"math"
	"os"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
)

// insecureBootDeep is a bootstrappable test preset with n16-boot-128's
// residual modulus chain (9 levels of 40 bits above a 60-bit q0) at
// N=2^12: NO SECURITY (log2(QP) = 1546 at N=2^12; tests only). Its plans
// have exactly the levels of n16-boot-128 (bootstraps per token included),
// at 1/16 of the ring degree. he.InsecureBootTest (3 levels) cannot hold
// the model's polynomials (exp alone has depth ≥ 4).
var insecureBootDeep = he.Preset{
	Name: "insecure-boot-deep", LogN: 12,
	LogQ: []int{60, 40, 40, 40, 40, 40, 40, 40, 40, 40},
	LogP: []int{61, 61}, LogDefaultScale: 40, Secret: he.SecretSparse,
	SecurityBits: 0, Note: "engine bootstrap tests only: N=2^12 with n16-boot-128's 9 residual levels, no security",
}

func TestBootstrapPlan(t *testing.T) {
	for _, kind := range []string{"entropy-guided", "baseline"} {
		cfg := tinyConfig(kind)
		w, err := model.NewRandom(cfg, 1)
		require.NoError(t, err)
		cal, err := model.Calibrate(w, randomSeqs(cfg, 4, cfg.Context, 2), testCalibration)
		require.NoError(t, err)
		eng, err := New(w, cal.Set, Options{Preset: insecureBootDeep, AllowInsecure: true, Refresh: RefreshBootstrap})
		require.NoError(t, err)
		p := eng.Plan()
		t.Logf("%s bound %g\n%s", kind, eng.BootstrapBound(), p)
	}
}

// bootFixture builds engine, client (JSON spec only), keys and session in
// bootstrap mode at insecureBootDeep (NO SECURITY: tests only). The
// session gets no RefreshFunc: a client round is impossible.
func bootFixture(t *testing.T, cfg model.Config) (*fixture, *Keys) {
	t.Helper()
	w, err := model.NewRandom(cfg, 1)
	require.NoError(t, err)
	cal, err := model.Calibrate(w, randomSeqs(cfg, 16, cfg.Context, 2), testCalibration)
	require.NoError(t, err)
	t0 := time.Now()
	eng, err := New(w, cal.Set, Options{Preset: insecureBootDeep, AllowInsecure: true, Refresh: RefreshBootstrap})
	require.NoError(t, err)
	js, err := eng.Spec().Marshal()
	require.NoError(t, err)
	spec, err := UnmarshalSpec(js)
	require.NoError(t, err)
	require.Equal(t, RefreshBootstrap, spec.Refresh)
	client, err := NewClient(spec, nil)
	require.NoError(t, err)
	t1 := time.Now()
	keys, err := client.Keys()
	require.NoError(t, err)
	require.NotNil(t, keys.Bootstrap)
	tKeys := time.Since(t1)
	sess, err := eng.NewSession(keys, nil)
	require.NoError(t, err)
	t.Logf("%s: engine %v, client keys %v (planned %d B, bootstrapping %d B), session %v; %d bootstraps per token planned",
		cfg.Name, t1.Sub(t0).Round(time.Millisecond), tKeys.Round(time.Millisecond), keys.Evaluation.BinarySize(), keys.Bootstrap.BinarySize(),
		time.Since(t1.Add(tKeys)).Round(time.Millisecond), eng.Plan().RefreshCts)
	return &fixture{w: w, set: cal.Set, cal: cal, eng: eng, client: client, sess: sess}, keys
}

// testBootMatch: the bootstrapped decoder against the approximation
// backend (same polynomials in float64). Stated bound: every logit within
// 2% of the logit spread (max − min) of the approximation backend (the
// interactive test's 1%, doubled: each bootstrap adds an absolute error of
// about 2^-25 times its value bound); greedy tokens equal.
func testBootMatch(t *testing.T, cfg model.Config, promptLen, steps int) {
	f, _ := bootFixture(t, cfg)
	ctx := context.Background()
	prompt := randomSeqs(cfg, 1, promptLen, 99)[0]

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
	require.Zero(t, ref.Ranges.Violations(), "approximation range violations in the reference run")

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
		require.Less(t, e, 0.02*spread(want), "step %d: logit error %.3g vs spread %.3g", s, e, spread(want))
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
	st := f.sess.Stats()
	p := f.eng.Plan()
	for _, tok := range st.Tokens {
		require.Equal(t, p.Refreshes, tok.Refreshes, "refresh points per token")
		require.Equal(t, p.RefreshCts, tok.RefreshCts, "bootstraps per token")
	}
	dec, n := st.Phase("decode")
	t.Logf("%s (bootstrap mode, insecure-boot-deep): max logit error %.3g (%.2e of the spread) over %d positions, greedy %v; decode %v/token, %d bootstraps/token, %d rotations/token, 0 client rounds",
		cfg.Name, maxErr, maxRel, steps+1, gotToks, dec.Time/time.Duration(n), dec.RefreshCts/n, dec.Rotations/int64(n))
	t.Logf("last token: %v", &st.Tokens[len(st.Tokens)-1])
}

// TestBootstrapEntropyGuided: a 1-layer entropy-guided model, prompt of 2
// tokens, 2 greedy steps (~40 s on 2 cores). ENTROPI_TEST_BOOTSTRAP_LONG=1
// runs the full check instead (both block types, 2 layers, 8-token
// prompt, 16 steps: tens of minutes).
func TestBootstrapEntropyGuided(t *testing.T) {
	if os.Getenv("ENTROPI_TEST_BOOTSTRAP_LONG") == "1" {
		testBootMatch(t, tinyConfig("entropy-guided"), 8, 16)
		return
	}
	testBootMatch(t, model.EntropyGuided(64, 32, 32, 1, 2), 2, 2)
}

// TestBootstrapBaseline: the baseline (LayerNorm, GELU) block; only with
// ENTROPI_TEST_BOOTSTRAP_LONG=1 (or _BASELINE=1 for a short run).
func TestBootstrapBaseline(t *testing.T) {
	switch {
	case os.Getenv("ENTROPI_TEST_BOOTSTRAP_LONG") == "1":
		testBootMatch(t, tinyConfig("baseline"), 8, 16)
	case os.Getenv("ENTROPI_TEST_BOOTSTRAP_BASELINE") == "1":
		testBootMatch(t, model.Baseline(64, 32, 32, 1, 2), 2, 2)
	default:
		t.Skip("bootstrapped baseline: ~25 bootstraps per token; set ENTROPI_TEST_BOOTSTRAP_BASELINE=1 (short) or ENTROPI_TEST_BOOTSTRAP_LONG=1")
	}
}
