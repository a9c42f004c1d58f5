package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/server/servertest"
)

// The end-to-end test uses the insecure preset he.InsecureTest (N=2^12, no
// security) and tiny random models; everything else is synthetic.

// tinyCalibrate calibrates with widened ranges (random models reach softmax
// denominators beyond a small calibration sample), as the engine's tests do.
var tinyCalibrate = servertest.CalibrateWide

func tinyModels(t *testing.T) []*ModelSpec {
	var ms []*ModelSpec
	for _, kind := range []string{KindBaseline, KindEntropyGuided} {
		m, err := RandomModel(kind, 32, 8, 16, 1, 2, 1)
		require.NoError(t, err)
		require.Equal(t, kind, m.Kind())
		ms = append(ms, m)
	}
	return ms
}

func TestMeasureTinyInsecure(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end over gRPC")
	}
	var log bytes.Buffer
	cfg := Config{Models: tinyModels(t), Presets: []he.Preset{he.InsecureTest}, AllowInsecure: true,
		Modes: []string{ModeInteractive, ModeBootstrap}, Contexts: []int{4, 99}, DecodeTokens: 2, Seed: 3,
		Calibrate: tinyCalibrate, Log: &log, Command: "test"}
	res, err := Measure(context.Background(), cfg)
	require.NoError(t, err, log.String())
	t.Log(log.String())

	require.Equal(t, Schema, res.Schema)
	require.True(t, res.Random)
	require.Len(t, res.Runs, 2)
	// Context 99 exceeds the models' 8 (one skip each), bootstrapping is
	// skipped with a reason (one per model).
	var ctxSkips, bootSkips int
	for _, s := range res.Skipped {
		require.NotEmpty(t, s.Reason)
		switch {
		case s.Context == 99:
			ctxSkips++
		case s.Mode == ModeBootstrap:
			bootSkips++
		}
	}
	require.Equal(t, 2, ctxSkips)
	require.Equal(t, 2, bootSkips)

	for _, r := range res.Runs {
		require.Equal(t, he.InsecureTest.Name, r.Preset)
		require.Equal(t, 4, r.Context)
		require.Equal(t, 2, r.PromptTokens)
		require.Equal(t, 2, r.DecodeTokens)
		require.Len(t, r.Tokens, 2)
		require.Greater(t, r.Setup.KeyBytesUp, uint64(0))
		require.GreaterOrEqual(t, r.Setup.BytesUp, r.Setup.KeyBytesUp)
		require.Greater(t, r.Setup.KeygenSeconds, 0.0)
		require.Greater(t, r.Prefill.BytesUp, uint64(0))
		require.Greater(t, r.Prefill.BytesDown, uint64(0))
		// Batched prefill: one batch for the 2 prompt tokens, never more
		// rounds than token by token.
		require.Greater(t, r.Prefill.RefreshRounds, 0)
		require.LessOrEqual(t, r.Prefill.RefreshRounds, 2*r.Plan.RefreshRounds)
		d := r.Decode
		require.Greater(t, d.BytesUp, uint64(0))
		require.Greater(t, d.BytesDown, uint64(0))
		require.LessOrEqual(t, d.MinSeconds, d.MedianSeconds)
		require.LessOrEqual(t, d.MedianSeconds, d.MaxSeconds)
		require.Greater(t, d.CPUSeconds, 0.0)
		// Every planned refresh round happened, and the client answered it.
		require.Equal(t, float64(r.Plan.RefreshRounds), d.RefreshRounds)
		require.Equal(t, d.RefreshRounds+1, d.RoundTrips)
		for _, tk := range r.Tokens {
			require.Equal(t, tk.RefreshRounds, tk.RefreshAnswers)
			require.Greater(t, tk.ServerSeconds, 0.0)
			require.LessOrEqual(t, tk.ServerSeconds, tk.Seconds)
			sum := 0.0
			for _, c := range Categories {
				require.GreaterOrEqual(t, tk.Breakdown[c], 0.0, c)
				sum += tk.Breakdown[c]
			}
			// The categories account for the client's latency (within
			// the clamping of the nested refresh estimate).
			require.InDelta(t, tk.Seconds, sum, 0.05*tk.Seconds+0.01)
		}
		require.Greater(t, d.Breakdown["linear"], 0.0)
		require.Greater(t, d.Breakdown["attention"], 0.0)
		if r.Kind == KindBaseline {
			require.Greater(t, d.Breakdown["normalization"], 0.0)
			require.Greater(t, d.Breakdown["activation"], 0.0)
		} else {
			require.Zero(t, d.Breakdown["normalization"])
			require.Zero(t, d.Breakdown["activation"])
		}
		// Accuracy against the approximation backend: the same polynomials.
		a := r.Accuracy
		require.Equal(t, 3, a.Tokens)
		require.Equal(t, a.Tokens, a.AgreeApprox)
		require.Less(t, a.MaxLogitErrApprox, 0.05)
		require.Len(t, r.Project, 2)
		lan, _ := r.Projection("LAN")
		wan, _ := r.Projection("WAN")
		require.Greater(t, wan.TokenSeconds, lan.TokenSeconds)
		require.Greater(t, lan.TokenSeconds, d.MedianSeconds)
	}
	// The baseline moves more bytes per token than the entropy-guided model.
	require.Len(t, res.Comparisons, 1)
	c := res.Comparisons[0]
	require.InDelta(t, float64(c.BaselineBytes)/float64(c.EntropyGuidedBytes), c.CommRatio, 1e-12)
	require.Greater(t, c.CommRatio, 1.0)
	require.False(t, math.IsNaN(c.LatencyRatio))
	require.Contains(t, c.LatencyRatioByNetwork, "WAN")

	// JSON round trip with the schema check.
	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	back, err := ReadResults(bytes.NewReader(buf.Bytes()))
	require.NoError(t, err)
	require.Equal(t, res.Runs[0].Decode.BytesUp, back.Runs[0].Decode.BytesUp)
	require.Equal(t, res.Comparisons[0].CommRatio, back.Comparisons[0].CommRatio)
}

// A model that fails (here: the server refuses its empty name) is recorded
// in Skipped with the reason and does not end the run: the next model is
// still measured.
func TestMeasureSkipsFailingModel(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end over gRPC")
	}
	ms := tinyModels(t)
	bad := *ms[1]
	bad.Name = ""
	var log bytes.Buffer
	cfg := Config{Models: []*ModelSpec{&bad, ms[1]}, Presets: []he.Preset{he.InsecureTest}, AllowInsecure: true,
		Contexts: []int{3}, DecodeTokens: 1, Seed: 3, Calibrate: tinyCalibrate, Log: &log, Command: "test"}
	res, err := Measure(context.Background(), cfg)
	require.NoError(t, err, log.String())
	require.Len(t, res.Runs, 1)
	require.Equal(t, ms[1].Name, res.Runs[0].Model)
	require.Len(t, res.Skipped, 1, log.String())
	require.Equal(t, "", res.Skipped[0].Model)
	require.Contains(t, res.Skipped[0].Reason, "failed")
	require.Contains(t, res.Skipped[0].Reason, "empty or duplicate")

	// A cancelled run still ends with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg.Models = []*ModelSpec{ms[1]}
	_, err = Measure(ctx, cfg)
	require.ErrorContains(t, err, "canceled")
}

// TestMeasureBootstrapInsecure runs the bootstrapped mode end to end over
// loopback gRPC at insecure-boot-deep (N=2^12, NO SECURITY: tests only)
// with the smallest entropy-guided model (vocab 32, context 8, d 16, one
// layer), a 2-token prompt and one decode token: a Run with Mode
// "bootstrap", no client refresh round, the planned bootstraps made in the
// decode token, tokens agreeing with the approximation backend. The
// interactive-only preset given alongside is skipped with the reason.
func TestMeasureBootstrapInsecure(t *testing.T) {
	if testing.Short() {
		t.Skip("bootstrapped decoder over gRPC: about a minute")
	}
	m, err := RandomModel(KindEntropyGuided, 32, 8, 16, 1, 2, 1)
	require.NoError(t, err)
	var log bytes.Buffer
	cfg := Config{Models: []*ModelSpec{m}, Presets: []he.Preset{he.InsecureTest, he.InsecureBootDeep}, AllowInsecure: true,
		Modes: []string{ModeBootstrap}, Contexts: []int{3}, DecodeTokens: 1, Seed: 3, Workers: 2,
		Calibrate: tinyCalibrate, Log: &log, Command: "test"}
	res, err := Measure(context.Background(), cfg)
	require.NoError(t, err, log.String())
	t.Log(log.String())
	require.Len(t, res.Skipped, 1, log.String())
	sk := res.Skipped[0]
	require.Equal(t, he.InsecureTest.Name, sk.Preset)
	require.Equal(t, ModeBootstrap, sk.Mode)
	require.Contains(t, sk.Reason, "not a bootstrapping preset")
	require.Len(t, res.Runs, 1, log.String())
	r := res.Runs[0]
	require.Equal(t, ModeBootstrap, r.Mode)
	require.Equal(t, he.InsecureBootDeep.Name, r.Preset)
	require.Equal(t, 1, r.DecodeTokens)
	require.Len(t, r.Tokens, 1)
	// The plan bootstraps; no client round anywhere.
	require.Zero(t, r.Plan.RefreshRounds)
	require.Positive(t, r.Plan.Bootstraps)
	require.Equal(t, r.Plan.RefreshCts, r.Plan.Bootstraps)
	require.Zero(t, r.Prefill.RefreshRounds)
	require.Positive(t, r.Prefill.Bootstraps)
	tk := r.Tokens[0]
	require.Zero(t, tk.RefreshRounds)
	require.Zero(t, tk.RefreshAnswers)
	require.Equal(t, r.Plan.Bootstraps, tk.Bootstraps)
	require.Zero(t, r.Decode.RefreshRounds)
	require.Equal(t, 1.0, r.Decode.RoundTrips)
	require.Equal(t, float64(r.Plan.Bootstraps), r.Decode.Bootstraps)
	// The bootstrapping keys went up with the session.
	require.Greater(t, r.Setup.KeyBytesUp, uint64(100<<20))
	// The same polynomials as the approximation backend.
	require.Equal(t, r.Accuracy.Tokens, r.Accuracy.AgreeApprox)
	var buf bytes.Buffer
	require.NoError(t, res.WriteMarkdown(&buf))
	require.Contains(t, buf.String(), "bootstraps")
}

func TestInsecurePresetRefused(t *testing.T) {
	_, err := Measure(context.Background(), Config{Models: tinyModels(t), Presets: []he.Preset{he.InsecureTest}, Contexts: []int{4}, DecodeTokens: 1})
	require.ErrorContains(t, err, "insecure")
}

func TestProjection(t *testing.T) {
	// 125 MB over 100 Mbps is 10 s; 10 round trips of 80 ms are 0.8 s.
	require.InDelta(t, 2+10+0.8, WAN.Project(2, 125_000_000, 10), 1e-9)
	require.InDelta(t, 2+1+0.005, LAN.Project(2, 125_000_000, 10), 1e-9)
	r := syntheticRun("b", KindBaseline, 10, 4<<20, 2<<20, 30)
	p := ProjectRun(&r, WAN)
	require.Equal(t, "WAN", p.Network)
	require.InDelta(t, float64(6<<20)*8/100e6, p.TokenTransferSeconds, 1e-12)
	require.InDelta(t, 31*0.08, p.TokenRTTSeconds, 1e-12)
	require.InDelta(t, 10+p.TokenTransferSeconds+p.TokenRTTSeconds, p.TokenSeconds, 1e-12)
	require.InDelta(t, r.Setup.KeygenSeconds+float64(r.Setup.BytesUp+r.Setup.BytesDown)*8/100e6+0.08, p.SetupSeconds, 1e-12)
	require.InDelta(t, r.Prefill.Seconds+float64(r.Prefill.BytesUp+r.Prefill.BytesDown)*8/100e6+float64(r.Prefill.RefreshRounds+1)*0.08, p.PrefillSeconds, 1e-12)
}

// syntheticRun is a run with given per-token numbers.
func syntheticRun(name, kind string, sec float64, up, down uint64, rounds int) Run {
	r := Run{Model: name, Kind: kind, Preset: "n15-128", Mode: ModeInteractive, Context: 16, PromptTokens: 13, DecodeTokens: 3,
		ModelConfig: "synthetic", Source: "synthetic",
		Setup:   Setup{KeygenSeconds: 5, Seconds: 7, KeyBytesUp: 300 << 20, BytesUp: 301 << 20, BytesDown: 1 << 10},
		Prefill: Prefill{Seconds: 13 * sec, BytesUp: 13 * up, BytesDown: 13 * down, RefreshRounds: 13 * rounds},
		Decode: Decode{Tokens: 3, MedianSeconds: sec, MinSeconds: 0.9 * sec, MaxSeconds: 1.2 * sec, CPUSeconds: 1.5 * sec,
			BytesUp: up, BytesDown: down, RefreshRounds: float64(rounds), RoundTrips: float64(rounds + 1),
			Breakdown: map[string]float64{"linear": 0.3 * sec, "attention": 0.3 * sec, "refresh-server": 0.2 * sec, "refresh-client": 0.1 * sec, "transport-other": 0.1 * sec}},
		Plan:     PlanSummary{RefreshRounds: rounds, KeySwitchesByKind: map[string]int{"attention": 30, "exp": 20, "recip": 50}},
		Accuracy: Accuracy{Tokens: 4, AgreeExact: 4, AgreeApprox: 4, MaxLogitErrApprox: 1e-3},
	}
	if kind == KindBaseline {
		r.Decode.Breakdown["normalization"] = 0.2 * sec
	}
	for _, n := range Networks() {
		r.Project = append(r.Project, ProjectRun(&r, n))
	}
	return r
}

func syntheticResults() *Results {
	res := &Results{Schema: Schema, Command: "entropi bench --synthetic", Machine: ReadMachine("synthetic"), Random: true,
		Networks: Networks(), Paper: PaperNumbers()}
	res.Runs = []Run{
		syntheticRun("random-baseline", KindBaseline, 40, 40<<20, 20<<20, 30),
		syntheticRun("random-entropy-guided", KindEntropyGuided, 10, 10<<20, 5<<20, 10),
	}
	r3 := syntheticRun("random-entropy-guided", KindEntropyGuided, 14, 10<<20, 5<<20, 10)
	r3.Context = 32
	res.Runs = append(res.Runs, r3)
	res.Comparisons = Compare(res.Runs)
	res.Skipped = []Skip{{Model: "random-baseline", Preset: "n14-128", Mode: ModeInteractive, Reason: "the engine refuses"}}
	return res
}

func TestCompare(t *testing.T) {
	res := syntheticResults()
	require.Len(t, res.Comparisons, 1) // context 32 has no baseline
	c := res.Comparisons[0]
	require.Equal(t, 16, c.Context)
	require.InDelta(t, 4.0, c.CommRatio, 1e-12)
	require.InDelta(t, 4.0, c.LatencyRatio, 1e-12)
	require.InDelta(t, 31.0/11, c.RoundsRatio, 1e-12)
	b, _ := res.Runs[0].Projection("WAN")
	e, _ := res.Runs[1].Projection("WAN")
	require.InDelta(t, b.TokenSeconds/e.TokenSeconds, c.LatencyRatioByNetwork["WAN"], 1e-12)
	require.Equal(t, []string{"linear", "attention", "normalization"}, TopCosts(&res.Runs[0], 3))
}

func TestMedian(t *testing.T) {
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	require.True(t, math.IsNaN(median(nil)))
	require.Equal(t, uint64(5), medianU([]uint64{9, 5, 1}))
}

func TestMarkdown(t *testing.T) {
	res := syntheticResults()
	var b strings.Builder
	require.NoError(t, res.WriteMarkdown(&b))
	md := b.String()
	for _, want := range []string{"RANDOM WEIGHTS", "| random-baseline | n15-128 | interactive | 16 |", "**4.00×**", "3.94×", "1.72×",
		"25.32 GB", "6.43 GB", "## Network projection", "WAN (100 Mbps, 80.0 ms RTT)", "## Skipped", "the engine refuses", "linear, attention, normalization"} {
		require.Contains(t, md, want)
	}
	// Every table row has as many cells as its header.
	var cols int
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			cols = 0
			continue
		}
		n := strings.Count(line, "|")
		if cols == 0 {
			cols = n
		}
		require.Equal(t, cols, n, line)
	}
}

func TestCharts(t *testing.T) {
	res := syntheticResults()
	dir := t.TempDir()
	charts, err := res.WriteCharts(dir)
	require.NoError(t, err)
	require.Len(t, charts, 4)
	for _, c := range charts {
		require.Contains(t, c.Title, "RANDOM")
		f, err := os.Open(c.File)
		require.NoError(t, err)
		img, err := png.Decode(f)
		f.Close()
		require.NoError(t, err, c.File)
		bd := img.Bounds()
		require.GreaterOrEqual(t, bd.Dx(), 1000, c.File)
		require.GreaterOrEqual(t, bd.Dy(), 600, c.File)
		// Not blank: some pixels are coloured (bars, lines).
		require.Greater(t, colouredShare(img), 0.002, c.File)
	}
	_, err = os.Stat(filepath.Join(dir, "breakdown.png"))
	require.NoError(t, err)
}

// colouredShare is the share of pixels that are neither white nor grey.
func colouredShare(img image.Image) float64 {
	bd := img.Bounds()
	n, col := 0, 0
	for y := bd.Min.Y; y < bd.Max.Y; y += 2 {
		for x := bd.Min.X; x < bd.Max.X; x += 2 {
			r, g, b, _ := img.At(x, y).RGBA()
			n++
			if max(r, g, b)-min(r, g, b) > 0x2000 {
				col++
			}
		}
	}
	return float64(col) / float64(n)
}

func TestResultsSchema(t *testing.T) {
	res := syntheticResults()
	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	var raw map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &raw))
	for _, k := range []string{"schema", "command", "machine", "random_weights", "networks", "runs", "comparisons", "paper"} {
		require.Contains(t, raw, k)
	}
	run := raw["runs"].([]any)[0].(map[string]any)
	for _, k := range []string{"model", "kind", "preset", "mode", "context", "setup", "prefill", "decode", "accuracy", "projection"} {
		require.Contains(t, run, k)
	}
	dec := run["decode"].(map[string]any)
	for _, k := range []string{"median_seconds", "min_seconds", "max_seconds", "cpu_seconds", "bytes_up", "bytes_down", "refresh_rounds", "round_trips", "breakdown_seconds"} {
		require.Contains(t, dec, k)
	}
	// A wrong schema is refused.
	bad := strings.Replace(buf.String(), Schema, "entropi-bench/0", 1)
	_, err := ReadResults(strings.NewReader(bad))
	require.ErrorContains(t, err, "schema")
}
