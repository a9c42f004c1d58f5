package engine

import (
	"context"
	"os"
	"strconv"
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
