package train

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/model"
)

// markovStream is a learnable synthetic token stream: mostly
// next = (5·cur + 3) mod V, sometimes a uniformly random token.
func markovStream(n, vocab int, seed uint64) []int32 {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := make([]int32, n)
	for i := 1; i < n; i++ {
		if rng.Float64() < 0.8 {
			s[i] = int32((5*int(s[i-1]) + 3) % vocab)
		} else {
			s[i] = int32(rng.IntN(vocab))
		}
	}
	return s
}

const tinyVocab = 32

func tinyConfig(variant string) Config {
	var mc model.Config
	var opts Options
	switch variant {
	case "baseline":
		mc = model.Baseline(tinyVocab, 16, 16, 2, 2)
	case "ereg":
		mc = model.EntropyGuided(tinyVocab, 16, 16, 2, 2)
		opts = Options{EntropyReg: true, Lambda: 1e-2}
	case "spectral":
		mc = model.EntropyGuided(tinyVocab, 16, 16, 2, 2)
		mc.Temperature = false
		opts = Options{SpectralNorm: true}
	}
	return Config{
		Model: mc, Opts: opts, Seed: 11,
		Batch: 8, MicroBatch: 2, Steps: 40,
		LR: 1e-2, MinLR: 1e-3, Warmup: 5, AdamW: DefaultAdamW(), Clip: 1, EvalWindows: 8,
	}
}

func tinyData() (train, held []int32) {
	return markovStream(4000, tinyVocab, 1), markovStream(600, tinyVocab, 2)
}

func TestTrainingLossDecreasesAndCheckpointReloads(t *testing.T) {
	for _, variant := range []string{"baseline", "ereg"} {
		t.Run(variant, func(t *testing.T) {
			train, held := tinyData()
			tr, err := NewTrainer(tinyConfig(variant), train, held, 2)
			if err != nil {
				t.Fatal(err)
			}
			ev0, err := tr.Evaluate()
			if err != nil {
				t.Fatal(err)
			}
			if err := tr.Run(context.Background(), RunOptions{EvalEvery: 20}); err != nil {
				t.Fatal(err)
			}
			if tr.Step != 40 || len(tr.History) != 40 || len(tr.Evals) != 2 {
				t.Fatalf("step %d, %d records, %d evals", tr.Step, len(tr.History), len(tr.Evals))
			}
			first, last := meanCE(tr.History[:5]), meanCE(tr.History[35:])
			ev := tr.Evals[len(tr.Evals)-1]
			t.Logf("train CE %.3f → %.3f; held-out CE %.3f → %.3f (uniform %.3f)", first, last, ev0.CE, ev.CE, math.Log(tinyVocab))
			if !(last < first-0.3) || !(ev.CE < ev0.CE-0.3) {
				t.Errorf("loss did not go down enough: train %.3f → %.3f, held-out %.3f → %.3f", first, last, ev0.CE, ev.CE)
			}
			if variant == "ereg" && len(ev.FFNScale) != 2 {
				t.Errorf("FFN scale not reported: %+v", ev)
			}
			if he := tr.History[0].HeadEntropy; len(he) != 2 || len(he[0]) != 2 {
				t.Errorf("head entropy shape %v", he)
			}
			// Held-out head entropies lie in [0, log T].
			if he := ev.HeadEntropy; len(he) != 2 || len(he[1]) != 2 {
				t.Errorf("held-out head entropy shape %v", he)
			} else {
				for _, hs := range he {
					for _, e := range hs {
						if !(e > 0 && e <= math.Log(16)+1e-9) {
							t.Errorf("held-out head entropy %v outside (0, log 16]", e)
						}
					}
				}
			}

			// Export, save, reload: the reference decoder on the reloaded
			// weights gives the trainer's logits.
			w, err := tr.Export()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "m.safetensors")
			if err := model.SaveWith(path, &model.Checkpoint{Weights: w, Meta: map[string]string{"seed": "11"}}, model.SaveOptions{Dtype: model.F64}); err != nil {
				t.Fatal(err)
			}
			ck, err := model.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if ck.Meta["seed"] != "11" {
				t.Errorf("meta %v", ck.Meta)
			}
			seq := []int{1, 8, 11, 26, 5, 28, 15, 14}
			want, err := tr.ws[0].Forward(tr.Params, [][]int{seq})
			if err != nil {
				t.Fatal(err)
			}
			got, err := model.PlainLogits(ck.Weights, model.NewReference(ck.Weights.Config))(seq)
			if err != nil {
				t.Fatal(err)
			}
			var maxd float64
			for i := range seq {
				for v := 0; v < tinyVocab; v++ {
					maxd = math.Max(maxd, math.Abs(got.At(i, v)-want[0][i][v]))
				}
			}
			if maxd > 1e-9 {
				t.Errorf("reloaded checkpoint's logits differ by %g", maxd)
			}
		})
	}
}

func meanCE(rs []StepRecord) float64 {
	var s float64
	for _, r := range rs {
		s += r.CE
	}
	return s / float64(len(rs))
}

// paramsData copies every parameter tensor.
func paramsData(p *Params) [][]float64 {
	var out [][]float64
	for _, q := range p.List {
		out = append(out, append([]float64(nil), q.Data...))
	}
	return out
}

func losses(rs []StepRecord) []float64 {
	var out []float64
	for _, r := range rs {
		out = append(out, r.Loss, r.GradNorm)
	}
	return out
}

// Same seed, same run: bit-identical loss curves and parameters, with 1 or 3
// workers; another seed differs.
func TestDeterministicAcrossWorkers(t *testing.T) {
	train, held := tinyData()
	cfg := tinyConfig("ereg")
	cfg.Steps = 6
	run := func(cfg Config, workers int) *Trainer {
		tr, err := NewTrainer(cfg, train, held, workers)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(context.Background(), RunOptions{}); err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a, b := run(cfg, 1), run(cfg, 3)
	if b.Workers() != 3 {
		t.Fatalf("workers %d", b.Workers())
	}
	if !reflect.DeepEqual(losses(a.History), losses(b.History)) {
		t.Errorf("loss curves differ:\n%v\n%v", losses(a.History), losses(b.History))
	}
	if !reflect.DeepEqual(paramsData(a.Params), paramsData(b.Params)) {
		t.Error("parameters differ between 1 and 3 workers")
	}
	if !reflect.DeepEqual(a.Evals, b.Evals) {
		t.Errorf("evaluations differ: %+v vs %+v", a.Evals, b.Evals)
	}
	cfg.Seed++
	c := run(cfg, 2)
	if reflect.DeepEqual(losses(a.History), losses(c.History)) {
		t.Error("another seed gave the same loss curve")
	}
}

// Stopping after k steps, saving, resuming in a new trainer and finishing
// gives exactly the uninterrupted run (parameters, moments, spectral state,
// data position, history).
func TestResumeEquivalence(t *testing.T) {
	for _, variant := range []string{"ereg", "spectral", "baseline"} {
		t.Run(variant, func(t *testing.T) {
			train, held := tinyData()
			cfg := tinyConfig(variant)
			cfg.Steps = 8
			full, err := NewTrainer(cfg, train, held, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := full.Run(context.Background(), RunOptions{EvalEvery: 3}); err != nil {
				t.Fatal(err)
			}

			path := filepath.Join(t.TempDir(), "state.gob")
			part, err := NewTrainer(cfg, train, held, 1)
			if err != nil {
				t.Fatal(err)
			}
			part.Meta["note"] = "kept"
			if err := part.Run(context.Background(), RunOptions{EvalEvery: 3, StatePath: path, StopAfter: 5}); err != nil {
				t.Fatal(err)
			}
			if part.Step != 5 {
				t.Fatalf("stopped at %d", part.Step)
			}
			res, err := ResumeTrainer(path, train, held, 2)
			if err != nil {
				t.Fatal(err)
			}
			if res.Step != 5 || res.Meta["note"] != "kept" {
				t.Fatalf("resumed at step %d, meta %v", res.Step, res.Meta)
			}
			if err := res.Run(context.Background(), RunOptions{EvalEvery: 3}); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(paramsData(full.Params), paramsData(res.Params)) {
				t.Error("resumed parameters differ from the uninterrupted run")
			}
			if !reflect.DeepEqual(full.Opt.M, res.Opt.M) || !reflect.DeepEqual(full.Opt.V, res.Opt.V) || full.Opt.Steps != res.Opt.Steps {
				t.Error("optimizer state differs")
			}
			if !reflect.DeepEqual(spectralVectors(full.Params), spectralVectors(res.Params)) {
				t.Error("spectral power-iteration state differs")
			}
			if !reflect.DeepEqual(losses(full.History), losses(res.History)) || !reflect.DeepEqual(full.Evals, res.Evals) {
				t.Errorf("history differs:\n%v\n%v", losses(full.History), losses(res.History))
			}
			if full.Tokens != res.Tokens || full.Loader.Drawn() != res.Loader.Drawn() {
				t.Errorf("tokens %d vs %d, drawn %d vs %d", full.Tokens, res.Tokens, full.Loader.Drawn(), res.Loader.Drawn())
			}
			if variant == "spectral" && len(spectralVectors(res.Params)) == 0 {
				t.Error("spectral variant has no power-iteration state")
			}
			// Other token streams are refused.
			if _, err := ResumeTrainer(path, train[:3000], held, 1); err == nil {
				t.Error("resume on another train stream accepted")
			}
		})
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	train, held := tinyData()
	tr, err := NewTrainer(tinyConfig("baseline"), train, held, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	tr.OnStep = func(StepRecord) {
		if n++; n == 3 {
			cancel()
		}
	}
	path := filepath.Join(t.TempDir(), "s")
	if err := tr.Run(ctx, RunOptions{StatePath: path}); err == nil {
		t.Fatal("cancelled run returned nil")
	}
	res, err := ResumeTrainer(path, train, held, 1)
	if err != nil || res.Step != 3 {
		t.Fatalf("state after cancel: step %v, err %v", res, err)
	}
}

func TestConfigValidation(t *testing.T) {
	train, held := tinyData()
	for _, mod := range []func(*Config){
		func(c *Config) { c.Batch = 7 },      // not a multiple of micro-batch 2
		func(c *Config) { c.SeqLen = 17 },    // beyond the context
		func(c *Config) { c.Steps = 0 },      //
		func(c *Config) { c.Warmup = 100 },   // longer than the run
		func(c *Config) { c.AdamW.Eps = 0 },  //
		func(c *Config) { c.Model.Dim = 15 }, // not a multiple of heads
	} {
		cfg := tinyConfig("baseline")
		mod(&cfg)
		if _, err := NewTrainer(cfg, train, held, 1); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	bad := append([]int32(nil), train...)
	bad[10] = tinyVocab
	if _, err := NewTrainer(tinyConfig("baseline"), bad, held, 1); err == nil {
		t.Error("token outside the vocabulary accepted")
	}
}

// BenchmarkTrainStep measures optimizer steps at the design notes' size
// (d=256, 4 layers, 4 heads, T=128, V=1024, batch 16 in micro-batches of 4,
// entropy-guided model with the regularizer) on synthetic tokens; it reports
// tokens/s and tokens per CPU-second. Build with -tags openblas to measure
// OpenBLAS:
//
//	go test -run '^$' -bench TrainStep -benchtime 3x ./model/train/
//	go test -tags openblas -run '^$' -bench TrainStep -benchtime 3x ./model/train/
func BenchmarkTrainStep(b *testing.B) {
	for _, c := range []struct{ workers, threads int }{{1, 1}, {1, 2}, {2, 1}} {
		if c.threads > 1 && BLAS == "gonum" {
			continue // the pure-Go BLAS is single-threaded
		}
		workers := c.workers
		b.Run(fmt.Sprintf("workers=%d/blas-threads=%d", c.workers, c.threads), func(b *testing.B) {
			cfg := Config{
				Model: model.EntropyGuided(1024, 128, 256, 4, 4), Opts: Options{EntropyReg: true, Lambda: 1e-5},
				Seed: 1, Batch: 16, MicroBatch: 4, Steps: 1000, LR: 1e-3, Warmup: 10, AdamW: DefaultAdamW(), Clip: 1, EvalWindows: 1,
			}
			train := markovStream(200000, 1024, 1)
			tr, err := NewTrainer(cfg, train, train[:1000], workers)
			if err != nil {
				b.Fatal(err)
			}
			SetBLASThreads(c.threads)
			if _, err := tr.TrainStep(); err != nil { // allocate
				b.Fatal(err)
			}
			b.ResetTimer()
			start, cpu0 := time.Now(), processCPU()
			for i := 0; i < b.N; i++ {
				if _, err := tr.TrainStep(); err != nil {
					b.Fatal(err)
				}
			}
			tokens := float64(b.N * tr.Config.TokensPerStep())
			b.ReportMetric(tokens/time.Since(start).Seconds(), "tokens/s")
			// On a shared machine wall time depends on the load; tokens per
			// CPU-second does not (a threaded BLAS that spins inflates CPU).
			if cpu := processCPU() - cpu0; cpu > 0 {
				b.ReportMetric(tokens/cpu.Seconds(), "tokens/cpu-s")
			}
		})
	}
}

// TestExtendWithScorePenalty: a finished run extended by a fine-tuning phase
// runs at the final learning rate, with the score-range penalty active, and
// pulls the largest |score| below what the unpenalized run reached.
func TestExtendWithScorePenalty(t *testing.T) {
	train, held := tinyData()
	cfg := tinyConfig("ereg")
	tr, err := NewTrainer(cfg, train, held, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Extend(5, 0, 1, 1); err == nil {
		t.Fatal("Extend before the schedule finished: no error")
	}
	if err := tr.Run(context.Background(), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	before := tr.History[len(tr.History)-1].ScoreMax
	if err := tr.Extend(5, 0, 0, 1); err == nil {
		t.Fatal("penalty without a bound: no error")
	}
	bound := before / 4
	steps := tr.Config.Steps
	if err := tr.Extend(30, 0, bound, 10); err != nil {
		t.Fatal(err)
	}
	if tr.Config.Steps != steps+30 || tr.Config.ScheduleSteps != steps {
		t.Fatalf("steps %d schedule %d, want %d and %d", tr.Config.Steps, tr.Config.ScheduleSteps, steps+30, steps)
	}
	if err := tr.Run(context.Background(), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	ext := tr.History[steps:]
	for _, r := range ext {
		if r.LR != cfg.MinLR {
			t.Fatalf("step %d: lr %g, want the final %g", r.Step, r.LR, cfg.MinLR)
		}
	}
	if !(ext[0].Range > 0) {
		t.Fatalf("penalty inactive at the first extended step (max |s| %g, bound %g)", ext[0].ScoreMax, bound)
	}
	last := ext[len(ext)-1]
	if !(last.ScoreMax < before) || !(last.Range < ext[0].Range) {
		t.Fatalf("max |s| %g → %g, penalty %g → %g: the penalty did not narrow the scores", before, last.ScoreMax, ext[0].Range, last.Range)
	}
	t.Logf("max |s| %.3f → %.3f (bound %.3f), penalty %.4g → %.4g", before, last.ScoreMax, bound, ext[0].Range, last.Range)
}
