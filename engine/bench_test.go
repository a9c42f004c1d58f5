package engine

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

// BenchmarkEngine measures encrypted decoding end to end (client and server
// in one process, masked refresh in process):
//
//	ENTROPI_MODEL=path   a checkpoint (its approximation set, or one
//	                     calibrated on random tokens); default: random models
//	                     of the shipped size (d=256, 4 layers, 4 heads,
//	                     vocab 1024, context 128), both block types, so
//	                     that the baseline / entropy-guided ratio reads off
//	                     one run
//	ENTROPI_PRESET=name  CKKS preset (default n14-128); insecure presets
//	                     are allowed here
//	ENTROPI_PROMPT=n     prompt tokens (default 8)
//
// Each iteration is one decode step after the prompt. Reported: ms per
// decode token, prefill seconds, refresh rounds, rotations and ct×ct
// products per decode token. Approximations deeper than the levels between
// two refreshes are refitted (FitToPreset); accuracy is checked by the
// tests, not here.
//
//	go test -run '^$' -bench Engine -benchtime 2x -timeout 60m ./engine/
func BenchmarkEngine(b *testing.B) {
	presetName := os.Getenv("ENTROPI_PRESET")
	if presetName == "" {
		presetName = he.N14.Name
	}
	preset, err := he.PresetByName(presetName)
	if err != nil {
		b.Fatal(err)
	}
	promptLen := 8
	if s := os.Getenv("ENTROPI_PROMPT"); s != "" {
		if promptLen, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	if path := os.Getenv("ENTROPI_MODEL"); path != "" {
		ck, err := model.Load(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(ck.Weights.Config.Name, func(b *testing.B) { benchModel(b, ck.Weights, ck.Approx, preset, promptLen) })
		return
	}
	for _, cfg := range []model.Config{
		model.Baseline(1024, 128, 256, 4, 4),
		model.EntropyGuided(1024, 128, 256, 4, 4),
	} {
		w, err := model.NewRandom(cfg, 1)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(cfg.Name, func(b *testing.B) { benchModel(b, w, nil, preset, promptLen) })
	}
}

func benchModel(b *testing.B, w *model.Weights, set *approx.Set, preset he.Preset, promptLen int) {
	cfg := w.Config
	ctx := context.Background()
	t0 := time.Now()
	if set == nil {
		cal, err := model.Calibrate(w, randomSeqs(cfg, 8, cfg.Context, 2), model.CalibrateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		set = cal.Set
	}
	set, notes, err := FitToPreset(set, preset, true, cfg.Context)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range notes {
		b.Logf("refit for %s: %s", preset.Name, n)
	}
	eng, err := New(w, set, Options{Preset: preset, AllowInsecure: true, PreRotateLinear: os.Getenv("ENTROPI_REPLICATED") == ""})
	if err != nil {
		b.Fatal(err)
	}
	tEngine := time.Since(t0)
	p := eng.Plan()
	b.Logf("%s at %s: engine (plan + encoding) %v; plan per token: %d refresh rounds (%d cts), %d key-switches, %d ct×ct, %d rotation keys, input level %d, cache levels %v",
		cfg.Name, preset.Name, tEngine.Round(time.Millisecond), p.Refreshes, p.RefreshCts, p.KeySwitches, p.CtCt, p.Rotations, p.InputLevel, p.CacheLevels)
	client, err := NewClient(eng.Spec(), nil)
	if err != nil {
		b.Fatal(err)
	}
	t1 := time.Now()
	keys, err := client.Keys()
	if err != nil {
		b.Fatal(err)
	}
	sz := keys.Evaluation.Sizes()
	b.Logf("keys: %v in %v", sz.Description, time.Since(t1).Round(time.Millisecond))
	sess, err := eng.NewSession(keys, client.AnswerRefresh)
	if err != nil {
		b.Fatal(err)
	}
	prompt := make([]int, promptLen)
	for i := range prompt {
		prompt[i] = (7*i + 3) % cfg.Vocab
	}
	cts, err := client.EncryptPrompt(prompt)
	if err != nil {
		b.Fatal(err)
	}
	t2 := time.Now()
	out, err := sess.Prefill(ctx, cts)
	if err != nil {
		b.Fatal(err)
	}
	tPrefill := time.Since(t2)
	logits, err := client.DecryptLogits(out)
	if err != nil {
		b.Fatal(err)
	}
	tok := argmax(logits)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if sess.Pos() >= cfg.Context {
			b.Skip("context full")
		}
		ct, err := client.EncryptToken(tok, sess.Pos())
		if err != nil {
			b.Fatal(err)
		}
		out, err := sess.Decode(ctx, ct)
		if err != nil {
			b.Fatal(err)
		}
		logits, err := client.DecryptLogits(out)
		if err != nil {
			b.Fatal(err)
		}
		tok = argmax(logits)
	}
	b.StopTimer()
	st := sess.Stats()
	dec, n := st.Phase("decode")
	if n == 0 {
		return
	}
	pre, _ := st.Phase("prefill")
	b.ReportMetric(float64(dec.Time.Milliseconds())/float64(n), "ms/decode-token")
	b.ReportMetric(tPrefill.Seconds(), "s/prefill")
	b.ReportMetric(float64(dec.Refreshes)/float64(n), "refreshes/token")
	b.ReportMetric(float64(dec.Rotations)/float64(n), "rotations/token")
	b.ReportMetric(float64(dec.CtCt)/float64(n), "ctct/token")
	b.Logf("prefill %d tokens: %v (%v)", promptLen, tPrefill.Round(time.Millisecond), &pre)
	b.Logf("decode mean over %d tokens: %v/token; last: %v", n, (dec.Time / time.Duration(n)).Round(time.Millisecond), &st.Tokens[len(st.Tokens)-1])
}

// BenchmarkPrefill compares the batched prefill (Session.Prefill, prompt
// tokens packed token-major) with the token-by-token one
// (Session.PrefillSequential, the decode path per token) on one engine, for
// prompts of 8, 16 and 32 tokens: latency, refresh rounds and refresh
// traffic (client and server in one process, masked refresh in process).
// Each iteration is a fresh session on the same keys. Reported: median
// milliseconds and CPU seconds (the process: server and in-process client
// together; on a shared machine the better measure) per prefill, refresh
// rounds, refreshed ciphertexts, MB down
// (refresh requests) and up (refresh answers) per prefill; the prompt's own
// ciphertexts (the same in both modes) are not counted.
//
// Default: tiny random models (d 32, 2 layers, vocab 64, context 32) of both
// block types at the insecure test preset (N=2^12; no security):
//
//	go test -run '^$' -bench Prefill -benchtime 3x ./engine/
//
// At a 128-bit preset with random models of the shipped size (d 256, 4
// layers, 4 heads, vocab 1024, context 128; about 1 h on 2 cores, several
// GiB of memory):
//
//	ENTROPI_PRESET=n14-128 ENTROPI_PREFILL_MODEL=shipped go test -run '^$' -bench Prefill -benchtime 1x -timeout 180m ./engine/
//
// ENTROPI_MODEL=path uses a checkpoint instead.
func BenchmarkPrefill(b *testing.B) {
	presetName := os.Getenv("ENTROPI_PRESET")
	if presetName == "" {
		presetName = he.InsecureTest.Name
	}
	preset, err := he.PresetByName(presetName)
	if err != nil {
		b.Fatal(err)
	}
	type mdl struct {
		w   *model.Weights
		set *approx.Set
	}
	var models []mdl
	switch {
	case os.Getenv("ENTROPI_MODEL") != "":
		ck, err := model.Load(os.Getenv("ENTROPI_MODEL"))
		if err != nil {
			b.Fatal(err)
		}
		models = append(models, mdl{ck.Weights, ck.Approx})
	case os.Getenv("ENTROPI_PREFILL_MODEL") == "shipped":
		for _, cfg := range []model.Config{model.EntropyGuided(1024, 128, 256, 4, 4), model.Baseline(1024, 128, 256, 4, 4)} {
			w, err := model.NewRandom(cfg, 1)
			if err != nil {
				b.Fatal(err)
			}
			models = append(models, mdl{w, nil})
		}
	default:
		for _, kind := range []string{"entropy-guided", "baseline"} {
			w, err := model.NewRandom(tinyConfig(kind), 1)
			if err != nil {
				b.Fatal(err)
			}
			models = append(models, mdl{w, nil})
		}
	}
	for _, m := range models {
		cfg := m.w.Config
		set := m.set
		if set == nil {
			cal, err := model.Calibrate(m.w, randomSeqs(cfg, 8, cfg.Context, 2), testCalibration)
			if err != nil {
				b.Fatal(err)
			}
			set = cal.Set
		}
		set, _, err := FitToPreset(set, preset, true, cfg.Context)
		if err != nil {
			b.Fatal(err)
		}
		eng, err := New(m.w, set, Options{Preset: preset, AllowInsecure: true})
		if err != nil {
			b.Fatal(err)
		}
		client, err := NewClient(eng.Spec(), nil)
		if err != nil {
			b.Fatal(err)
		}
		keys, err := client.Keys()
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s at %s: prefill batch %d; decode plan %d refresh rounds per token, prefill plan %d per batch",
			cfg.Name, preset.Name, eng.PrefillBatch(), eng.Plan().Refreshes, eng.Plan().Prefill.Refreshes)
		for _, n := range []int{8, 16, 32} {
			if n > cfg.Context {
				continue
			}
			prompt := make([]int, n)
			for i := range prompt {
				prompt[i] = (7*i + 3) % cfg.Vocab
			}
			cts, err := client.EncryptPrompt(prompt)
			if err != nil {
				b.Fatal(err)
			}
			for _, mode := range []string{"batched", "token-by-token"} {
				b.Run(fmt.Sprintf("%s/T=%d/%s", cfg.Name, n, mode), func(b *testing.B) {
					var times, cpus []time.Duration
					var down, up int64
					var rounds, rcts int
					for i := 0; i < b.N; i++ {
						var d, u int64
						sess, err := eng.NewSession(keys, func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
							d += int64(req.BinarySize())
							resp, err := client.AnswerRefresh(ctx, req)
							if err == nil {
								u += int64(resp.BinarySize())
							}
							return resp, err
						})
						if err != nil {
							b.Fatal(err)
						}
						c0 := cpuTime()
						t0 := time.Now()
						if mode == "batched" {
							_, err = sess.Prefill(context.Background(), cts)
						} else {
							_, err = sess.PrefillSequential(context.Background(), cts)
						}
						if err != nil {
							b.Fatal(err)
						}
						times = append(times, time.Since(t0))
						cpus = append(cpus, cpuTime()-c0)
						st, _ := sess.Stats().Phase("prefill")
						rounds, rcts, down, up = st.Refreshes, st.RefreshCts, d, u
					}
					median := func(v []time.Duration) time.Duration {
						sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
						return v[len(v)/2]
					}
					b.ReportMetric(float64(median(times).Milliseconds()), "ms-median/prefill")
					b.ReportMetric(median(cpus).Seconds(), "cpu-s-median/prefill")
					b.ReportMetric(float64(rounds), "rounds/prefill")
					b.ReportMetric(float64(rcts), "refreshed-cts/prefill")
					b.ReportMetric(float64(down)/1e6, "MB-down/prefill")
					b.ReportMetric(float64(up)/1e6, "MB-up/prefill")
				})
			}
		}
	}
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
