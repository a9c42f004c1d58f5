package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
)

// Model kinds.
const (
	KindBaseline      = "baseline"
	KindEntropyGuided = "entropy-guided"
)

// Refresh modes.
const (
	ModeInteractive = "interactive" // client-aided masked refresh
	ModeBootstrap   = "bootstrap"   // non-interactive bootstrapping
)

// BootstrapMemoryGiB is the available memory a bootstrapped run at
// N=2^16 needs (design card: ~17 GB resident per bootstrap and ~7.3 GiB of
// bootstrapping keys); smaller (insecure test) rings are not held to it.
const BootstrapMemoryGiB = 24

// BootstrapMemoryLogN is the smallest ring degree (log2) whose
// bootstrapped runs are held to BootstrapMemoryGiB.
const BootstrapMemoryLogN = 16

// MinBuildMemoryGiB is the available memory below which a (model, preset)
// is skipped instead of built.
const MinBuildMemoryGiB = 4

// ModelSpec is a model to measure.
type ModelSpec struct {
	Name   string
	Source string // checkpoint path, or a description of the random weights
	Random bool
	// Weights are the model; Approx its calibrated approximations (nil:
	// calibrated on random tokens, as the server does); Tokenizer may be nil.
	Weights   *model.Weights
	Approx    *approx.Set
	Tokenizer *model.Tokenizer
}

// Kind classifies a model: baseline if it has LayerNorm or GELU.
func (m *ModelSpec) Kind() string { return KindOf(m.Weights.Config) }

// KindOf classifies a configuration.
func KindOf(cfg model.Config) string {
	if cfg.LayerNorm || cfg.Activation == model.ActGELU || cfg.FinalNorm == model.FinalLayerNorm {
		return KindBaseline
	}
	return KindEntropyGuided
}

// RandomModel returns random weights of a size for a block type (kind
// baseline or entropy-guided).
func RandomModel(kind string, vocab, context, dim, layers, heads int, seed uint64) (*ModelSpec, error) {
	var cfg model.Config
	switch kind {
	case KindBaseline:
		cfg = model.Baseline(vocab, context, dim, layers, heads)
	case KindEntropyGuided:
		cfg = model.EntropyGuided(vocab, context, dim, layers, heads)
	default:
		return nil, fmt.Errorf("bench: unknown model kind %q", kind)
	}
	cfg.Name = "random-" + kind
	w, err := model.NewRandom(cfg, seed)
	if err != nil {
		return nil, err
	}
	return &ModelSpec{Name: cfg.Name, Source: fmt.Sprintf("random weights (seed %d)", seed), Random: true, Weights: w}, nil
}

// Config is the benchmark matrix.
type Config struct {
	Models  []*ModelSpec
	Presets []he.Preset
	// AllowInsecure permits insecure-… presets (tests; explicit flag).
	AllowInsecure bool
	// Modes: ModeInteractive and/or ModeBootstrap.
	Modes []string
	// Contexts: positions the last decode token attends over; the prompt is
	// Context − DecodeTokens tokens.
	Contexts     []int
	DecodeTokens int // ≥ 1; the median needs ≥ 3
	Workers      int // server goroutines per session (0: all CPUs)
	Seed         uint64
	Networks     []Network // nil: LAN and WAN
	// Calibrate, if set, calibrates a model without approximations (nil:
	// server.CalibrateRandom with seed 1, as `entropi serve` does).
	Calibrate func(w *model.Weights) (*approx.Set, error)
	// Log receives progress lines (nil: none).
	Log io.Writer
	// Command and MachineNote go into the results.
	Command     string
	MachineNote string
}

func (c *Config) logf(format string, a ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", a...)
	}
}

// Measure runs the matrix. A configuration that cannot run (the engine
// refuses the preset, the context does not fit, bootstrapping without the
// memory) or fails while running (a session refused, a lost connection) is
// recorded in Skipped with its reason and the rest of the matrix runs;
// only bad arguments and a cancelled context end the run with an error.
func Measure(ctx context.Context, cfg Config) (*Results, error) {
	if len(cfg.Models) == 0 || len(cfg.Presets) == 0 || len(cfg.Contexts) == 0 {
		return nil, errors.New("bench: need models, presets and contexts")
	}
	if cfg.DecodeTokens < 1 {
		return nil, errors.New("bench: need at least one decode token")
	}
	if len(cfg.Modes) == 0 {
		cfg.Modes = []string{ModeInteractive}
	}
	if cfg.Networks == nil {
		cfg.Networks = Networks()
	}
	res := &Results{Schema: Schema, Command: cfg.Command, Machine: ReadMachine(cfg.MachineNote), Networks: cfg.Networks, Paper: PaperNumbers()}
	for _, p := range cfg.Presets {
		if p.Insecure() && !cfg.AllowInsecure {
			return nil, fmt.Errorf("bench: preset %s is insecure (test use only): pass the explicit insecure flag", p.Name)
		}
	}
	for _, m := range cfg.Models {
		res.Random = res.Random || m.Random
		if m.Approx == nil {
			cal := cfg.Calibrate
			if cal == nil {
				cal = func(w *model.Weights) (*approx.Set, error) { return server.CalibrateRandom(w, 1) }
			}
			cfg.logf("%s: calibrating the approximations on random tokens (no calibration in the checkpoint)", m.Name)
			set, err := cal(m.Weights)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: calibrate: %w", m.Name, err)
			}
			m.Approx = set
		}
	}
	for _, preset := range cfg.Presets {
		for _, mode := range cfg.Modes {
			for _, m := range cfg.Models {
				skip := func(reason string, c int) {
					cfg.logf("SKIP %s %s %s: %s", m.Name, preset.Name, mode, reason)
					res.Skipped = append(res.Skipped, Skip{Model: m.Name, Preset: preset.Name, Mode: mode, Context: c, Reason: reason})
				}
				switch mode {
				case ModeInteractive:
				case ModeBootstrap:
					if err := server.CheckRefreshPreset(engine.RefreshBootstrap, preset); err != nil {
						skip(fmt.Sprintf("preset %s is not a bootstrapping preset: %v", preset.Name, err), 0)
						continue
					}
					if _, avail := MemInfo(); preset.LogN >= BootstrapMemoryLogN && avail < BootstrapMemoryGiB {
						skip(fmt.Sprintf("bootstrapping at N=2^%d needs about %d GiB of available memory (bootstrapping keys ~7.3 GiB, ~17 GB resident per bootstrap); this machine has %.1f GiB available", preset.LogN, BootstrapMemoryGiB, avail), 0)
						continue
					}
				default:
					return nil, fmt.Errorf("bench: unknown mode %q", mode)
				}
				runs, skips, err := runModel(ctx, &cfg, m, preset, mode)
				res.Runs = append(res.Runs, runs...)
				res.Skipped = append(res.Skipped, skips...)
				if err != nil {
					// A cancelled run ends here; a model that fails
					// (a session refused, a lost connection, a decode
					// error) is recorded with its reason and the rest
					// of the matrix still runs.
					if ctx.Err() != nil {
						return nil, err
					}
					skip(fmt.Sprintf("failed: %v", err), 0)
				}
			}
		}
	}
	res.Comparisons = Compare(res.Runs)
	if res.Random {
		res.Notes = append(res.Notes, "RANDOM WEIGHTS: models without a checkpoint have random weights (their sizes are under Models); the cryptographic costs are real, the generated text is noise and accuracy is that of a random model.")
	}
	return res, nil
}

// runModel builds the engine of one model at one preset, serves it on a
// loopback port, and runs every context over one client session.
func runModel(ctx context.Context, cfg *Config, m *ModelSpec, preset he.Preset, mode string) ([]Run, []Skip, error) {
	mc := m.Weights.Config
	var skips []Skip
	skip := func(reason string, c int) {
		cfg.logf("SKIP %s %s %s context %d: %s", m.Name, preset.Name, mode, c, reason)
		skips = append(skips, Skip{Model: m.Name, Preset: preset.Name, Mode: mode, Context: c, Reason: reason})
	}
	var contexts []int
	for _, c := range cfg.Contexts {
		switch {
		case c > mc.Context:
			skip(fmt.Sprintf("context %d exceeds the model's %d", c, mc.Context), c)
		case c-cfg.DecodeTokens < 1:
			skip(fmt.Sprintf("context %d leaves no prompt token for %d decode tokens", c, cfg.DecodeTokens), c)
		default:
			contexts = append(contexts, c)
		}
	}
	if len(contexts) == 0 {
		return nil, skips, nil
	}
	// The engine's encoded matrices and a session's keys take many GiB at
	// N=2^15 (the shipped-size baseline passed 21 GB while building): do
	// not start one on a machine that is already short of memory.
	// The previous model's engine and session are unreachable by now but
	// may not be collected yet: give their memory back before measuring
	// what is available.
	runtime.GC()
	debug.FreeOSMemory()
	if _, avail := MemInfo(); avail > 0 && avail < MinBuildMemoryGiB {
		skip(fmt.Sprintf("only %.1f GiB of memory available (want at least %d GiB to build an engine and hold a session's keys)", avail, MinBuildMemoryGiB), 0)
		return nil, skips, nil
	}
	cfg.logf("%s (%s) at %s: building the encrypted decoder…", m.Name, m.Kind(), preset.Name)
	t0 := time.Now()
	// As the server builds it: approximations deeper than the preset's
	// levels between refreshes are refitted (notes say how); accuracy is
	// then measured against the plaintext model with the refitted set.
	eng, fit, notes, err := server.NewEngine(m.Weights, m.Approx, server.LoadOptions{Preset: preset, AllowInsecure: cfg.AllowInsecure, Workers: cfg.Workers,
		Refresh: engine.RefreshMode(mode)})
	if err != nil {
		skip(fmt.Sprintf("the engine refuses this model at this preset: %v", err), 0)
		return nil, skips, nil
	}
	for _, n := range notes {
		cfg.logf("  refitted for %s: %s", preset.Name, n)
	}
	mf := *m
	mf.Approx = fit
	m = &mf
	build := time.Since(t0).Seconds()
	plan := summarizePlan(eng.Plan())
	if plan.Bootstraps > 0 {
		cfg.logf("  built in %.1fs: %d bootstraps (no client rounds), %d key-switches per token", build, plan.Bootstraps, plan.KeySwitches)
	} else {
		cfg.logf("  built in %.1fs: %d refresh rounds, %d key-switches per token", build, plan.RefreshRounds, plan.KeySwitches)
	}
	sm, err := server.EngineModel(m.Name, eng, m.Tokenizer)
	if err != nil {
		return nil, skips, err
	}
	srv, err := server.New(server.Config{AllowInsecure: cfg.AllowInsecure, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, sm)
	if err != nil {
		return nil, skips, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, skips, err
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis, 5*time.Second) }()
	defer func() { stop(); <-served }()

	tc := &timedCrypto{}
	c, err := client.Dial(ctx, lis.Addr().String(), &client.Options{AllowInsecurePresets: cfg.AllowInsecure, NewCrypto: tc.build})
	if err != nil {
		return nil, skips, err
	}
	defer c.Close()
	cfg.logf("  client: key generation and upload…")
	sess, err := c.NewSession(ctx, m.Name)
	if err != nil {
		return nil, skips, err
	}
	defer sess.Close()
	keygen := tc.snapshot().keygen
	cfg.logf("  keys: %.1fs to generate", keygen)

	var runs []Run
	for i, ctxLen := range contexts {
		r, err := runContext(ctx, cfg, m, eng, sess, tc, ctxLen, mode)
		if err != nil {
			return runs, skips, fmt.Errorf("bench: %s %s context %d: %w", m.Name, preset.Name, ctxLen, err)
		}
		r.Preset, r.LogN, r.SecurityBits = preset.Name, preset.LogN, preset.SecurityBits
		r.Plan = plan
		r.Setup.EngineBuildSeconds = build
		r.Setup.KeygenSeconds = keygen
		_ = i
		for _, n := range cfg.Networks {
			r.Project = append(r.Project, ProjectRun(r, n))
		}
		cfg.logf("  context %d: %s/token (cpu %s), %s/token, %.1f round trips/token",
			ctxLen, FormatSeconds(r.Decode.MedianSeconds), FormatSeconds(r.Decode.CPUSeconds), FormatBytes(r.Decode.BytesUp+r.Decode.BytesDown), r.Decode.RoundTrips)
		runs = append(runs, *r)
	}
	return runs, skips, nil
}

func summarizePlan(p *engine.Plan) PlanSummary {
	s := PlanSummary{RefreshRounds: p.Refreshes, RefreshCts: p.RefreshCts, KeySwitches: p.KeySwitches, CtCt: p.CtCt,
		RotationKeys: p.Rotations, KeySwitchesByKind: map[string]int{}}
	if p.Mode == engine.RefreshBootstrap {
		s.RefreshRounds, s.Bootstraps = 0, p.RefreshCts // the server bootstraps: no client round
	}
	for _, o := range p.Ops {
		s.KeySwitchesByKind[o.Kind] += o.KeySwitches
	}
	return s
}

// step is what the client saw of one generated token.
type step struct {
	tok    client.Token
	cpu    float64
	crypto cryptoTimes
}

func runContext(ctx context.Context, cfg *Config, m *ModelSpec, eng *engine.Engine, sess *client.Session, tc *timedCrypto, ctxLen int, mode string) (*Run, error) {
	mc := m.Weights.Config
	nPrompt := ctxLen - cfg.DecodeTokens
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(ctxLen)))
	prompt := make([]int, nPrompt)
	for i := range prompt {
		prompt[i] = rng.IntN(mc.Vocab)
	}
	n := cfg.DecodeTokens + 1 // the first token comes from the prefill
	cfg.logf("  context %d: prompt %d tokens + %d decode tokens…", ctxLen, nPrompt, cfg.DecodeTokens)
	var steps []step
	prevCPU := cpuSeconds()
	prevCr := tc.snapshot()
	res, err := sess.Generate(ctx, prompt, n, client.GenerateOptions{KeepLogits: true}, func(t client.Token) error {
		cpu, cr := cpuSeconds(), tc.snapshot()
		steps = append(steps, step{tok: t, cpu: cpu - prevCPU, crypto: cr.sub(prevCr)})
		prevCPU, prevCr = cpu, cr
		if len(steps) > 1 {
			cfg.logf("    token at position %d: %s, %s up, %s down", t.Pos-1, FormatSeconds(t.Latency.Seconds()), FormatBytes(t.BytesUp), FormatBytes(t.BytesDown))
		} else {
			cfg.logf("    prefill: %s", FormatSeconds(t.Latency.Seconds()))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(steps) != n {
		return nil, fmt.Errorf("generated %d tokens, want %d", len(steps), n)
	}
	var es engine.Stats
	if len(res.Stats.EngineStats) > 0 {
		if err := json.Unmarshal(res.Stats.EngineStats, &es); err != nil {
			return nil, fmt.Errorf("engine stats: %w", err)
		}
	}
	r := &Run{Model: m.Name, Kind: m.Kind(), Random: m.Random, Source: m.Source, ModelConfig: describe(mc), Mode: mode,
		Context: ctxLen, PromptTokens: nPrompt, DecodeTokens: len(steps) - 1}
	st := res.Stats
	r.Setup.Seconds, r.Setup.BytesUp, r.Setup.BytesDown = st.Setup.Seconds, st.Setup.BytesUp, st.Setup.BytesDown
	r.Setup.KeyBytesUp, _ = st.Traffic.Kind(pb.PhaseSetup, pb.KindKeys)
	pre, _ := es.Phase("prefill")
	boot := mode == ModeBootstrap
	r.Prefill = Prefill{Seconds: st.Prefill.Seconds, ServerSeconds: st.ServerPrefillSeconds, CPUSeconds: steps[0].cpu,
		BytesUp: st.Prefill.BytesUp, BytesDown: st.Prefill.BytesDown, RefreshRounds: pre.Refreshes}
	if boot {
		// The engine's refresh points are bootstraps on the server; the
		// client rounds are the answers it gave (0).
		r.Prefill.RefreshRounds, r.Prefill.Bootstraps = steps[0].crypto.answers, pre.RefreshCts
	}

	decodeStats := map[int]*engine.TokenStats{}
	for i := range es.Tokens {
		if es.Tokens[i].Phase == "decode" {
			decodeStats[es.Tokens[i].Pos] = &es.Tokens[i]
		}
	}
	share := refreshShares(eng.Plan())
	for _, s := range steps[1:] {
		tr := TokenRun{Pos: s.tok.Pos - 1, Seconds: s.tok.Latency.Seconds(), CPUSeconds: s.cpu,
			BytesUp: s.tok.BytesUp, BytesDown: s.tok.BytesDown,
			ClientEncrypt: s.crypto.encrypt, ClientDecrypt: s.crypto.decrypt, ClientRefresh: s.crypto.refresh, RefreshAnswers: s.crypto.answers,
			EngineByKind: map[string]float64{}}
		ts := decodeStats[tr.Pos]
		if ts != nil {
			tr.ServerSeconds = ts.Time.Seconds()
			tr.RefreshRounds, tr.RefreshCts, tr.KeySwitches = ts.Refreshes, ts.RefreshCts, ts.KeySwitches
			if boot {
				tr.RefreshRounds, tr.Bootstraps = s.crypto.answers, ts.RefreshCts
			}
			for k, v := range ts.ByKind {
				tr.EngineByKind[k] = v.Seconds()
			}
		} else {
			tr.RefreshRounds = s.crypto.answers
		}
		tr.Breakdown = breakdown(tr, share)
		r.Tokens = append(r.Tokens, tr)
	}
	r.Decode = summarizeDecode(r.Tokens)
	acc, err := accuracy(m, prompt, res.Tokens, steps)
	if err != nil {
		return nil, fmt.Errorf("accuracy: %w", err)
	}
	r.Accuracy = acc
	return r, nil
}

// refreshShares: the fraction of a token's refreshed ciphertexts that the
// plan makes inside each engine timing kind (the refresh before an
// operation runs inside that operation's timed window).
func refreshShares(p *engine.Plan) map[string]float64 {
	byKind := map[string]float64{}
	total := 0.0
	for _, o := range p.Ops {
		if o.Refresh == 0 {
			continue
		}
		var k string
		switch o.Kind {
		case "attention", "exp", "recip":
			k = "attention"
		case "norm", "invsqrt":
			k = "layernorm"
		case "gelu":
			k = "gelu"
		case "linear", "embed", "logits":
			k = o.Kind
		default:
			k = "" // not inside a timed kind
		}
		byKind[k] += float64(o.Refresh)
		total += float64(o.Refresh)
	}
	if total > 0 {
		for k := range byKind {
			byKind[k] /= total
		}
	}
	return byKind
}

// breakdown maps one token's engine kinds and client timings onto
// Categories (seconds). Nested refresh time is taken out of the kinds it
// ran in, apportioned by refreshed ciphertexts; what cannot be attributed
// is engine-other (inside the server) or transport-other (outside it).
func breakdown(t TokenRun, share map[string]float64) map[string]float64 {
	k := t.EngineByKind
	refresh := k["refresh"]
	excl := func(kind string) float64 { return math.Max(0, k[kind]-refresh*share[kind]) }
	b := map[string]float64{
		"linear":        excl("linear") + excl("embed") + excl("logits"),
		"attention":     excl("attention"),
		"normalization": excl("layernorm"),
		"activation":    excl("gelu"),
		"flood":         k["flood"],
	}
	cr := math.Min(t.ClientRefresh, refresh)
	b["refresh-client"] = cr
	b["refresh-server"] = refresh - cr
	inEngine := 0.0
	for _, c := range Categories {
		inEngine += b[c]
	}
	if t.ServerSeconds > 0 {
		b["engine-other"] = math.Max(0, t.ServerSeconds-inEngine)
	}
	b["client"] = t.ClientEncrypt + t.ClientDecrypt
	server := math.Max(t.ServerSeconds, inEngine)
	b["transport-other"] = math.Max(0, t.Seconds-server-b["client"])
	return b
}

func summarizeDecode(ts []TokenRun) Decode {
	d := Decode{Tokens: len(ts), Breakdown: map[string]float64{}, EngineByKind: map[string]float64{}}
	if len(ts) == 0 {
		return d
	}
	var lat, cpu []float64
	var up, down []uint64
	rounds, boots := 0.0, 0.0
	for _, t := range ts {
		boots += float64(t.Bootstraps)
		lat = append(lat, t.Seconds)
		cpu = append(cpu, t.CPUSeconds)
		up = append(up, t.BytesUp)
		down = append(down, t.BytesDown)
		rounds += float64(t.RefreshRounds)
		for k, v := range t.Breakdown {
			d.Breakdown[k] += v / float64(len(ts))
		}
		for k, v := range t.EngineByKind {
			d.EngineByKind[k] += v / float64(len(ts))
		}
	}
	d.MedianSeconds, d.MinSeconds, d.MaxSeconds = median(lat), slicesMin(lat), slicesMax(lat)
	d.CPUSeconds = median(cpu)
	d.BytesUp, d.BytesDown = medianU(up), medianU(down)
	d.RefreshRounds = rounds / float64(len(ts))
	d.Bootstraps = boots / float64(len(ts))
	d.RoundTrips = d.RefreshRounds + 1
	return d
}

func median(x []float64) float64 {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianU(x []uint64) uint64 {
	f := make([]float64, len(x))
	for i, v := range x {
		f[i] = float64(v)
	}
	return uint64(math.Round(median(f)))
}

func slicesMin(x []float64) float64 {
	m := math.Inf(1)
	for _, v := range x {
		m = math.Min(m, v)
	}
	return m
}

func slicesMax(x []float64) float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = math.Max(m, v)
	}
	return m
}

// accuracy compares the decrypted logits of every generated token with the
// exact model and the approximation backend, teacher-forced on the
// encrypted run's own tokens.
func accuracy(m *ModelSpec, prompt, tokens []int, steps []step) (Accuracy, error) {
	w := m.Weights
	a := Accuracy{Tokens: len(steps)}
	exact := model.NewSession(w, nil)
	ab, err := model.NewApprox(w.Config, m.Approx)
	if err != nil {
		return a, err
	}
	apx := model.NewSession(w, ab)
	le, err := exact.Prefill(prompt)
	if err != nil {
		return a, err
	}
	la, err := apx.Prefill(prompt)
	if err != nil {
		return a, err
	}
	last := len(prompt) - 1
	ex, ap := le.RawRowView(last), la.RawRowView(last)
	for i, s := range steps {
		enc := s.tok.Logits
		if len(enc) < len(ex) {
			return a, fmt.Errorf("token %d: %d decrypted logits, want %d", i, len(enc), len(ex))
		}
		if argmax(enc[:len(ex)]) == argmax(ex) {
			a.AgreeExact++
		}
		if argmax(enc[:len(ap)]) == argmax(ap) {
			a.AgreeApprox++
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for j := range ex {
			a.MaxLogitErrExact = math.Max(a.MaxLogitErrExact, math.Abs(enc[j]-ex[j]))
			a.MaxLogitErrApprox = math.Max(a.MaxLogitErrApprox, math.Abs(enc[j]-ap[j]))
			lo, hi = math.Min(lo, ex[j]), math.Max(hi, ex[j])
		}
		a.LogitRange = math.Max(a.LogitRange, hi-lo)
		if i+1 < len(steps) {
			if ex, err = exact.Step(tokens[i]); err != nil {
				return a, err
			}
			if ap, err = apx.Step(tokens[i]); err != nil {
				return a, err
			}
		}
	}
	// Free-running greedy on the exact model.
	smp, err := model.NewSampler(model.SampleOptions{}, 0)
	if err != nil {
		return a, err
	}
	greedy, err := model.Generate(model.NewSession(w, nil), prompt, len(tokens), smp, nil)
	if err != nil {
		return a, err
	}
	a.MatchesGreedy = len(greedy) == len(tokens)
	for i := range greedy {
		if i >= len(tokens) || greedy[i] != tokens[i] {
			a.MatchesGreedy = false
		}
	}
	return a, nil
}

func argmax(x []float64) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

func describe(c model.Config) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("vocab %d, context %d, d %d, %d layers, %d heads", c.Vocab, c.Context, c.Dim, c.Layers, c.Heads))
	if c.LayerNorm {
		parts = append(parts, "LayerNorm")
	}
	if c.Activation != "" && c.Activation != model.ActNone {
		parts = append(parts, c.Activation)
	}
	if c.FusedFFN {
		parts = append(parts, "fused FFN")
	}
	if c.Temperature {
		parts = append(parts, "temperature")
	}
	return strings.Join(parts, ", ")
}

// cpuSeconds is the process's user + system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)*1e-6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// timedCrypto wraps the engine's client (the client's default Crypto) and
// times its calls: key generation, token encryption, logits decryption and
// refresh answers.
type timedCrypto struct {
	mu sync.Mutex
	t  cryptoTimes
}

type cryptoTimes struct {
	keygen, encrypt, decrypt, refresh float64
	answers                           int
}

func (a cryptoTimes) sub(b cryptoTimes) cryptoTimes {
	return cryptoTimes{a.keygen - b.keygen, a.encrypt - b.encrypt, a.decrypt - b.decrypt, a.refresh - b.refresh, a.answers - b.answers}
}

func (tc *timedCrypto) snapshot() cryptoTimes {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.t
}

func (tc *timedCrypto) add(f func(*cryptoTimes)) {
	tc.mu.Lock()
	f(&tc.t)
	tc.mu.Unlock()
}

// build is client.Options.NewCrypto: the engine's client from the model's
// spec (as the client package's default), timed.
func (tc *timedCrypto) build(info *client.ModelInfo, allowInsecure bool) (client.Crypto, error) {
	spec, err := engine.UnmarshalSpec(info.Spec)
	if err != nil {
		return nil, err
	}
	if spec.Preset.Name != info.Preset.Name || spec.Preset.LogN != info.Preset.LogN {
		return nil, fmt.Errorf("model %q: the spec's preset %q disagrees with the announced %q", info.Name, spec.Preset.Name, info.Preset.Name)
	}
	spec.AllowInsecure = allowInsecure
	c, err := engine.NewClient(spec, nil)
	if err != nil {
		return nil, err
	}
	return &timedClient{c: c, tc: tc}, nil
}

type timedClient struct {
	c    *engine.Client
	tc   *timedCrypto
	boot *bootstrapping.EvaluationKeys // generated by Keys in bootstrap mode, until uploaded
}

// Keys generates all the session's keys (in bootstrap mode the
// bootstrapping keys too: keygen times them all).
func (t *timedClient) Keys() (*he.EvaluationKeys, *rlwe.PublicKey, error) {
	t0 := time.Now()
	k, err := t.c.Keys()
	t.tc.add(func(c *cryptoTimes) { c.keygen += time.Since(t0).Seconds() })
	if err != nil {
		return nil, nil, err
	}
	t.tc.add(func(*cryptoTimes) { t.boot = k.Bootstrap })
	return k.Evaluation, k.Public, nil
}

// BootstrapKeys hands over the bootstrapping keys Keys generated
// (client.BootstrapCrypto).
func (t *timedClient) BootstrapKeys() (*bootstrapping.EvaluationKeys, error) {
	var b *bootstrapping.EvaluationKeys
	t.tc.add(func(*cryptoTimes) { b, t.boot = t.boot, nil })
	if b == nil {
		return nil, errors.New("bench: no bootstrapping keys (the model's spec is not in bootstrap mode, or Keys was not called)")
	}
	return b, nil
}

func (t *timedClient) EncryptToken(token, pos int) (*rlwe.Ciphertext, error) {
	t0 := time.Now()
	ct, err := t.c.EncryptToken(token, pos)
	t.tc.add(func(c *cryptoTimes) { c.encrypt += time.Since(t0).Seconds() })
	return ct, err
}

func (t *timedClient) AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	t0 := time.Now()
	r, err := t.c.AnswerRefresh(ctx, req)
	t.tc.add(func(c *cryptoTimes) { c.refresh += time.Since(t0).Seconds(); c.answers++ })
	return r, err
}

func (t *timedClient) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error) {
	t0 := time.Now()
	l, err := t.c.DecryptLogits(ct)
	t.tc.add(func(c *cryptoTimes) { c.decrypt += time.Since(t0).Seconds() })
	return l, err
}
