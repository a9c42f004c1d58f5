package engine

import (
	"context"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
)

// insecureBootDeep is he.InsecureBootDeep: n16-boot-128's residual
// modulus chain at N=2^12, NO SECURITY (tests only). Its plans have exactly
// the levels of n16-boot-128 (bootstraps per token included).
var insecureBootDeep = he.InsecureBootDeep

// TestBootstrapPlan: the bootstrap plan (dry run only) uses no slot map
// (replicated-input products only), bootstraps only from level ≥ 1, and
// states the mode; the interactive plan of the same model is unchanged.
// Wrong presets and modes are refused.
func TestBootstrapPlan(t *testing.T) {
	for _, kind := range []string{"entropy-guided", "baseline"} {
		cfg := tinyConfig(kind)
		w, err := model.NewRandom(cfg, 1)
		require.NoError(t, err)
		cal, err := model.Calibrate(w, randomSeqs(cfg, 4, cfg.Context, 2), testCalibration)
		require.NoError(t, err)
		eng, err := New(w, cal.Set, Options{Preset: insecureBootDeep, AllowInsecure: true, Refresh: RefreshBootstrap, PreRotateLinear: true})
		require.NoError(t, err)
		p := eng.Plan()
		t.Logf("%s, general bound %g\n%s", kind, eng.BootstrapBound(), p)
		require.Equal(t, RefreshBootstrap, p.Mode)
		require.Equal(t, RefreshBootstrap, eng.Spec().Refresh)
		require.Equal(t, bootstrapFloor, p.MaskLevel)
		require.Equal(t, insecureBootDeep.MaxLevel(), p.MaxLevel)
		require.Positive(t, p.RefreshCts)
		require.Contains(t, p.String(), "bootstraps per token")
		for _, o := range p.Ops {
			require.NotEqual(t, "pre-rotated", o.Layout, o.Op)
			require.GreaterOrEqual(t, o.LevelOut, 0, o.Op)
			if o.Refresh > 0 {
				require.LessOrEqual(t, o.RefreshLevel, p.MaxLevel, o.Op)
				require.Contains(t, o.Note, "bootstrap bound", o.Op)
			}
		}
		// Same model, interactive mode, a preset of the same size: the
		// pre-rotated layout is used there.
		inter, err := New(w, cal.Set, Options{Preset: he.InsecureTest, AllowInsecure: true, PreRotateLinear: true})
		require.NoError(t, err)
		require.Equal(t, RefreshInteractive, inter.Plan().Mode)
		pre := 0
		for _, o := range inter.Plan().Ops {
			if o.Layout == "pre-rotated" {
				pre++
			}
		}
		require.Positive(t, pre, "interactive plan with PreRotateLinear")
	}
	cfg := tinyConfig("entropy-guided")
	w, err := model.NewRandom(cfg, 1)
	require.NoError(t, err)
	cal, err := model.Calibrate(w, randomSeqs(cfg, 4, cfg.Context, 2), testCalibration)
	require.NoError(t, err)
	_, err = New(w, cal.Set, Options{Preset: he.InsecureTest, AllowInsecure: true, Refresh: RefreshBootstrap})
	require.ErrorContains(t, err, "sparse secret")
	_, err = New(w, cal.Set, Options{Preset: insecureBootDeep, AllowInsecure: true, Refresh: "sometimes"})
	require.ErrorContains(t, err, "unknown refresh mode")
	_, err = ParseRefreshMode("sometimes")
	require.Error(t, err)
	m, err := ParseRefreshMode("")
	require.NoError(t, err)
	require.Equal(t, RefreshInteractive, m)
	// A bootstrap spec on a non-bootstrapping preset is refused by the client.
	eng, err := New(w, cal.Set, Options{Preset: insecureBootDeep, AllowInsecure: true, Refresh: RefreshBootstrap})
	require.NoError(t, err)
	spec := eng.Spec()
	spec.Preset = he.InsecureTest
	require.ErrorContains(t, spec.Check(), "bootstrap mode needs a bootstrapping preset")
	// A session without bootstrapping keys is refused.
	client, err := NewClient(eng.Spec(), nil)
	require.NoError(t, err)
	ek, err := client.ck.GenEvaluationKeys(client.KeyRequest(), he.KeyOptions{})
	require.NoError(t, err)
	_, err = eng.NewSession(&Keys{Evaluation: ek, Public: client.PublicKey()}, nil)
	require.ErrorContains(t, err, "bootstrapping keys")
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

	wantLogits, wantToks, ref := approxGreedy(t, f, cfg, prompt, steps)
	require.Zero(t, ref.Ranges.Violations(), "approximation range violations in the reference run")

	cts, err := f.client.EncryptPrompt(prompt)
	require.NoError(t, err)
	out, err := f.sess.Prefill(ctx, cts)
	require.NoError(t, err)
	gotToks, maxErr, maxRel := decodeGreedy(t, f, out, wantLogits, len(prompt), 0.02)
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

// BenchmarkBootstrapDecode measures decoding in bootstrap mode (client and
// server in one process; no client round): each iteration is one decode
// step after a 2-token prompt. Reported per decode token: seconds,
// bootstraps, rotations; and the key bytes (planned evaluation keys,
// bootstrapping keys) and client key-generation time.
//
//	ENTROPI_BOOT_PRESET  insecure-boot-deep (default; N=2^12, NO SECURITY)
//	                     or n16-boot-128 (needs ≥ 18 GiB available memory:
//	                     checked, skipped otherwise)
//	ENTROPI_BOOT_MODEL   entropy-guided (default) or baseline
//	ENTROPI_BOOT_DIMS    vocab,context,dim,layers,heads (default 64,32,32,1,2)
//
//	go test -run '^$' -bench BootstrapDecode -benchtime 3x -timeout 60m ./engine/
//	ENTROPI_BOOT_PRESET=n16-boot-128 go test -run '^$' -bench BootstrapDecode -benchtime 3x -timeout 120m ./engine/
func BenchmarkBootstrapDecode(b *testing.B) {
	preset := insecureBootDeep
	if name := os.Getenv("ENTROPI_BOOT_PRESET"); name != "" && name != preset.Name {
		p, err := he.PresetByName(name)
		if err != nil {
			b.Fatal(err)
		}
		preset = p
	}
	if preset.LogN >= 16 {
		if avail := bootMemAvailableGiB(); avail < 18 {
			b.Skipf("%s bootstrapping peaks at ~17 GB: only %.1f GiB available", preset.Name, avail)
		}
	}
	dims := []int{64, 32, 32, 1, 2}
	if s := os.Getenv("ENTROPI_BOOT_DIMS"); s != "" {
		parts := strings.Split(s, ",")
		if len(parts) != 5 {
			b.Fatal("ENTROPI_BOOT_DIMS: vocab,context,dim,layers,heads")
		}
		for i, p := range parts {
			v, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				b.Fatal(err)
			}
			dims[i] = v
		}
	}
	cfg := model.EntropyGuided(dims[0], dims[1], dims[2], dims[3], dims[4])
	if os.Getenv("ENTROPI_BOOT_MODEL") == "baseline" {
		cfg = model.Baseline(dims[0], dims[1], dims[2], dims[3], dims[4])
	}
	w, err := model.NewRandom(cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	cal, err := model.Calibrate(w, randomSeqs(cfg, 8, cfg.Context, 2), testCalibration)
	if err != nil {
		b.Fatal(err)
	}
	eng, err := New(w, cal.Set, Options{Preset: preset, AllowInsecure: preset.Insecure(), Refresh: RefreshBootstrap})
	if err != nil {
		b.Fatal(err)
	}
	client, err := NewClient(eng.Spec(), nil)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	keys, err := client.Keys()
	if err != nil {
		b.Fatal(err)
	}
	tKeys := time.Since(t0)
	sess, err := eng.NewSession(keys, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	prompt := []int{1, 2}
	cts, err := client.EncryptPrompt(prompt)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := sess.Prefill(ctx, cts); err != nil {
		b.Fatal(err)
	}
	if b.N > cfg.Context-len(prompt) {
		b.Fatalf("%d iterations exceed the context", b.N)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ct, err := client.EncryptToken(3+i, len(prompt)+i)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := sess.Decode(ctx, ct); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	dec, n := sess.Stats().Phase("decode")
	b.ReportMetric(dec.Time.Seconds()/float64(n), "s/token")
	b.ReportMetric(float64(dec.RefreshCts)/float64(n), "bootstraps/token")
	b.ReportMetric(float64(dec.Rotations)/float64(n), "rotations/token")
	b.ReportMetric(float64(keys.Evaluation.BinarySize()), "planned-key-B")
	b.ReportMetric(float64(keys.Bootstrap.BinarySize()), "boot-key-B")
	b.ReportMetric(tKeys.Seconds(), "keygen-s")
	b.Logf("%s at %s: %d bootstraps/token planned, value bound 2^%.0f, peak RSS %s", cfg.Name, preset.Name, eng.Plan().RefreshCts, math.Log2(eng.BootstrapBound()), bootPeakRSS())
}

func bootMemAvailableGiB() float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / (1 << 20)
		}
	}
	return 0
}

func bootPeakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			return strings.TrimSpace(line[6:])
		}
	}
	return "?"
}
