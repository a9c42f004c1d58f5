package he

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/lintrans"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Benchmarks at the 128-bit presets (N14 "n14-128", N15 "n15-128"):
//
//	go test -bench . -run '^$' -benchtime 3x ./he/
//
// The secret key of each preset is cached for the whole run; the evaluation
// keys of each benchmark are generated once before its timer starts and
// dropped afterwards (a full N=2^15 key set would not fit in memory).
// Metrics: ns/op is the wall time of one evaluation; level_in/level_out;
// keyswitch/op (rotations incl. hoisted, + relinearizations), hoisted/op,
// ptmul/op, ctmul/op counted by the Counters during the timed loop.

var benchPresets = []Preset{N14, N15}

type benchEnv struct {
	params ckks.Parameters
	ck     *ClientKeys
	evals  map[*MatVec]evalCnt
}

type evalCnt struct {
	e   *Evaluator
	cnt *Counters
}

var benchEnvs = map[string]*benchEnv{}

func getBenchEnv(b *testing.B, p Preset) *benchEnv {
	b.Helper()
	if env, ok := benchEnvs[p.Name]; ok {
		return env
	}
	params, err := p.Parameters(false)
	if err != nil {
		b.Fatal(err)
	}
	env := &benchEnv{params: params, ck: NewClientKeys(params)}
	benchEnvs[p.Name] = env
	return env
}

// release drops the cached key set (keys at N=2^15 are ~94 MB each).
func (env *benchEnv) release() {
	env.evals = nil
	runtime.GC()
}

// evaluator generates exactly the keys of the given rotations (+ relin),
// only up to keyLevel (the level at which they are used).
func (env *benchEnv) evaluator(b *testing.B, rots []int, relin bool, workers, keyLevel int) (*Evaluator, *Counters) {
	b.Helper()
	req := NewKeyRequest(env.params)
	req.AddRotations(keyLevel, rots...)
	if relin {
		req.AddRelin(keyLevel)
	}
	keys, err := env.ck.GenEvaluationKeys(req, KeyOptions{AtUsedLevels: true})
	if err != nil {
		b.Fatal(err)
	}
	cnt := &Counters{}
	e, err := NewEvaluator(env.params, keys, cnt)
	if err != nil {
		b.Fatal(err)
	}
	e.Workers = workers
	return e, cnt
}

func (env *benchEnv) encrypt(b *testing.B, v []float64, level int) *rlwe.Ciphertext {
	ct, err := env.ck.Encrypt(v, level)
	if err != nil {
		b.Fatal(err)
	}
	return ct
}

func reportCounts(b *testing.B, cnt *Counters, levelIn, levelOut int) {
	n := float64(b.N)
	b.ReportMetric(float64(levelIn), "level_in")
	b.ReportMetric(float64(levelOut), "level_out")
	b.ReportMetric(float64(cnt.KeySwitches())/n, "keyswitch/op")
	b.ReportMetric(float64(cnt.Count(OpHoistDec))/n, "hoistdec/op")
	b.ReportMetric(float64(cnt.Count(OpMulPtCt))/n, "ptmul/op")
	if c := cnt.Count(OpMulCtCt); c > 0 {
		b.ReportMetric(float64(c)/n, "ctmul/op")
	}
}

// checkResult verifies one output against float64 (so a benchmark never
// times a wrong circuit).
func (env *benchEnv) checkResult(b *testing.B, ct *rlwe.Ciphertext, want []float64, what string) {
	b.Helper()
	got, err := env.ck.Decrypt(ct)
	if err != nil {
		b.Fatal(err)
	}
	if e := relErr(got, want); e > relTol {
		b.Fatalf("%s: relative error %.3g > 2^-20", what, e)
	}
}

// benchMatVec generates the keys and checks one result (once), and returns
// the timed child benchmark.
func benchMatVec(b *testing.B, env *benchEnv, mv *MatVec, in *rlwe.Ciphertext, want []float64, workers int) func(*testing.B) {
	b.Helper()
	ev, ok := env.evals[mv]
	if !ok {
		env.release()
		e, cnt := env.evaluator(b, mv.Rotations(), false, workers, mv.KeyLevel())
		out, err := e.EvaluateOne(mv, in)
		if err != nil {
			b.Fatal(err)
		}
		env.checkResult(b, out, want, mv.String())
		ev = evalCnt{e, cnt}
		env.evals = map[*MatVec]evalCnt{mv: ev} // keep one key set alive at a time
	}
	e, cnt := ev.e, ev.cnt
	return func(b *testing.B) {
		e.Workers = workers
		cnt.Reset()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := e.EvaluateOne(mv, in); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		reportCounts(b, cnt, mv.LevelIn(), mv.LevelOut())
	}
}

// BenchmarkMatVec256 compares, on the same 256-dim vector at the top level:
// the replication-aware product (PreRotated input), the BSGS product on a
// plainly replicated input, and Lattigo's generic linear transformation
// (circuits/ckks/lintrans: 256 full-slot diagonals of period 256 on the same
// replicated input, BSGS ratio 2^1 as in Lattigo's own tests, then the same
// rescale). workers=1 is the single-core comparison; workers=N uses all cores.
func BenchmarkMatVec256(b *testing.B) {
	const d = 256
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			params := env.params
			slots := params.MaxSlots()
			level := params.MaxLevel()
			r := rand.New(rand.NewPCG(1, 1))
			w := randMat(r, d, d)
			x := randVec(r, d)
			rep := Replicated{D: d, Period: d, Slots: slots}
			want := rep.Encode(matVec(w, x))
			planner := NewPlanner(params)

			b.Run("prerotated", func(b *testing.B) {
				mv, err := planner.PreRotated(w, d, level)
				if err != nil {
					b.Fatal(err)
				}
				lay, _ := NewPreRotated(d, slots)
				in := env.encrypt(b, lay.Encode(x), level)
				for _, wk := range []int{1, runtime.NumCPU()} {
					b.Run(fmt.Sprintf("workers=%d", wk), benchMatVec(b, env, mv, in, want, wk))
				}
			})
			b.Run("bsgs", func(b *testing.B) {
				mv, err := planner.Replicated(w, d, d, level)
				if err != nil {
					b.Fatal(err)
				}
				in := env.encrypt(b, rep.Encode(x), level)
				for _, wk := range []int{1, runtime.NumCPU()} {
					b.Run(fmt.Sprintf("workers=%d", wk), benchMatVec(b, env, mv, in, want, wk))
				}
			})
			env.release()
			{
				diags := lintrans.Diagonals[float64]{}
				for k := 0; k < d; k++ {
					v := make([]float64, slots)
					for s := range v {
						v[s] = w[s%d][(s+k)%d]
					}
					diags[k] = v
				}
				lt := lintrans.NewTransformation(params, lintrans.Parameters{
					DiagonalsIndexList:        diags.DiagonalsIndexList(),
					LevelQ:                    level,
					LevelP:                    params.MaxLevelP(),
					Scale:                     rlwe.NewScale(params.Q()[level]),
					LogDimensions:             params.LogMaxDimensions(),
					LogBabyStepGiantStepRatio: 1,
				})
				if err := lintrans.Encode(ckks.NewEncoder(params), diags, lt); err != nil {
					b.Fatal(err)
				}
				rots := rotationsOf(params, lt.GaloisElements(params))
				e, _ := env.evaluator(b, rots, false, 1, level)
				ltEval := lintrans.NewEvaluator(e.Eval)
				in := env.encrypt(b, rep.Encode(x), level)
				run := func() *rlwe.Ciphertext {
					out, err := ltEval.EvaluateNew(in, lt)
					if err != nil {
						b.Fatal(err)
					}
					if err := e.Eval.Rescale(out, out); err != nil {
						b.Fatal(err)
					}
					return out
				}
				env.checkResult(b, run(), want, "lintrans")
				b.Run("lattigo-lintrans", func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						run()
					}
					b.StopTimer()
					b.ReportMetric(float64(level), "level_in")
					b.ReportMetric(float64(level-1), "level_out")
					b.ReportMetric(float64(len(rots)), "keys")
					b.ReportMetric(float64(d), "ptmul/op")
				})
			}
		})
	}
}

// BenchmarkMatVecLowLevel: the replication-aware 256×256 product planned at
// level 2 (input dropped there first): cheaper rotations and products.
func BenchmarkMatVecLowLevel(b *testing.B) {
	const d, level = 256, 2
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			r := rand.New(rand.NewPCG(2, 2))
			w, x := randMat(r, d, d), randVec(r, d)
			slots := env.params.MaxSlots()
			mv, err := NewPlanner(env.params).PreRotated(w, d, level)
			if err != nil {
				b.Fatal(err)
			}
			lay, _ := NewPreRotated(d, slots)
			in := env.encrypt(b, lay.Encode(x), -1)
			want := Replicated{D: d, Period: d, Slots: slots}.Encode(matVec(w, x))
			b.Run("prerotated/level=2", benchMatVec(b, env, mv, in, want, 1))
		})
	}
}

// BenchmarkMatVecRect: d×4d (wide, 256×1024 on a period-1024 input, 2
// fold rotations) and 4d×d (tall, 1024×256, output period 1024), BSGS,
// single core, top level.
func BenchmarkMatVecRect(b *testing.B) {
	const d = 256
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			slots := env.params.MaxSlots()
			level := env.params.MaxLevel()
			r := rand.New(rand.NewPCG(3, 3))
			for _, sh := range []struct {
				name    string
				out, in int
			}{{"256x1024", d, 4 * d}, {"1024x256", 4 * d, d}} {
				w, x := randMat(r, sh.out, sh.in), randVec(r, sh.in)
				mv, err := NewPlanner(env.params).Replicated(w, sh.out, sh.in, level)
				if err != nil {
					b.Fatal(err)
				}
				in := env.encrypt(b, Replicated{D: sh.in, Period: sh.in, Slots: slots}.Encode(x), level)
				want := Replicated{D: sh.out, Period: sh.out, Slots: slots}.Encode(matVec(w, x))
				b.Run(sh.name, benchMatVec(b, env, mv, in, want, 1))
			}
		})
	}
}

// BenchmarkPrefill: diag(W,…,W) for T = Slots/256 tokens of dimension 256
// in one ciphertext (32 tokens at N=2^14, 64 at N=2^15), single core. At
// N=2^15 it runs at level 8 to bound memory (511 encoded diagonals).
func BenchmarkPrefill(b *testing.B) {
	const d = 256
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			slots := env.params.MaxSlots()
			level := min(env.params.MaxLevel(), 8)
			T := slots / d
			r := rand.New(rand.NewPCG(4, 4))
			w := randMat(r, d, d)
			lay := TokenMajor{D: d, T: T, Slots: slots}
			xs, ys := make([][]float64, T), make([][]float64, T)
			for t := range xs {
				xs[t] = randVec(r, d)
				ys[t] = matVec(w, xs[t])
			}
			mv, err := NewPlanner(env.params).Batched(w, d, T, level)
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("%s", mv)
			in := env.encrypt(b, lay.Encode(xs), level)
			b.Run(fmt.Sprintf("T=%d", T), benchMatVec(b, env, mv, in, lay.Encode(ys), 1))
		})
	}
}

// BenchmarkPrimitives: one rotation and one ct×ct product (relinearized,
// rescaled) at the top level and at level 1; hoisted rotations (8 at once).
func BenchmarkPrimitives(b *testing.B) {
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			slots := env.params.MaxSlots()
			r := rand.New(rand.NewPCG(5, 5))
			rots := []int{1, 2, 3, 4, 5, 6, 7, 8}
			e, cnt := env.evaluator(b, rots, true, 1, env.params.MaxLevel())
			for _, level := range []int{env.params.MaxLevel(), 1} {
				ct := env.encrypt(b, randVec(r, slots), level)
				b.Run(fmt.Sprintf("rotate/level=%d", level), func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						if _, err := e.Rotate(ct, 1); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(fmt.Sprintf("rotate-hoisted-8/level=%d", level), func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						if _, err := e.RotateHoisted(ct, rots); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(fmt.Sprintf("mul-ct-ct-relin-rescale/level=%d", level), func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						if _, err := e.MulRelin(ct, ct); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			_ = cnt
		})
	}
}

// BenchmarkSizes reports serialized sizes (bytes, MarshalBinary length):
// ciphertexts at the top level and at level 1; one Galois key full and
// seeded (compressed), at the top level and generated only up to level 1;
// the relinearization key; and the full key set of the replication-aware
// 256×256 product (+ relinearization) in each form.
func BenchmarkSizes(b *testing.B) {
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) {
			env := getBenchEnv(b, p)
			params := env.params
			ctTop := env.encrypt(b, []float64{1}, -1)
			ctLow := env.encrypt(b, []float64{1}, 1)
			one := NewKeyRequest(params)
			one.AddRotations(params.MaxLevel(), 1)
			oneLow := NewKeyRequest(params)
			oneLow.AddRotations(1, 1)
			relin := NewKeyRequest(params)
			relin.AddRelin(params.MaxLevel())
			mv, err := NewPlanner(params).PreRotated(nil, 256, -1)
			if err != nil {
				b.Fatal(err)
			}
			set := NewKeyRequest(params)
			set.Add(params.MaxLevel(), mv)
			set.AddRelin(params.MaxLevel())
			size := func(req *KeyRequest, opt KeyOptions) float64 {
				k, err := env.ck.GenEvaluationKeys(req, opt)
				if err != nil {
					b.Fatal(err)
				}
				data, err := k.MarshalBinary(params)
				if err != nil {
					b.Fatal(err)
				}
				return float64(len(data))
			}
			ctSize := func(ct *rlwe.Ciphertext) float64 {
				data, err := ct.MarshalBinary()
				if err != nil {
					b.Fatal(err)
				}
				return float64(len(data))
			}
			m := map[string]float64{
				"ct_top_B":                  ctSize(ctTop),
				"ct_level1_B":               ctSize(ctLow),
				"galois_B":                  size(one, KeyOptions{}),
				"galois_seeded_B":           size(one, KeyOptions{Compressed: true}),
				"galois_level1_B":           size(oneLow, KeyOptions{AtUsedLevels: true}),
				"galois_level1_seeded_B":    size(oneLow, KeyOptions{AtUsedLevels: true, Compressed: true}),
				"relin_B":                   size(relin, KeyOptions{}),
				"relin_seeded_B":            size(relin, KeyOptions{Compressed: true}),
				"matvec256_keyset_B":        size(set, KeyOptions{}),
				"matvec256_keyset_seeded_B": size(set, KeyOptions{Compressed: true}),
				"matvec256_keys":            float64(len(set.Rotations)),
			}
			b.Run("bytes", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
				}
				for k, v := range m {
					b.ReportMetric(v, k)
				}
			})
		})
	}
}

// procCPU is this process's user+system CPU time (both products run on
// one goroutine here; on a loaded shared machine it is steadier than wall
// time, though it includes GC work).
func procCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAcceptance is the project's acceptance measurement (n14-128;
// n15-128 for reference): top level, single core, the replication-aware 256×256 product
// and Lattigo's generic linear transformation (same matrix, same vector,
// same rescale) are timed alternately inside one loop, so machine load
// drifts hit both alike. Reports both medians and their ratio.
func BenchmarkAcceptance(b *testing.B) {
	for _, p := range benchPresets {
		b.Run(p.Name, func(b *testing.B) { benchAcceptance(b, p) })
	}
}

func benchAcceptance(b *testing.B, p Preset) {
	const d = 256
	env := getBenchEnv(b, p)
	env.release()
	params := env.params
	slots, level := params.MaxSlots(), params.MaxLevel()
	r := rand.New(rand.NewPCG(1, 1))
	w, x := randMat(r, d, d), randVec(r, d)
	rep := Replicated{D: d, Period: d, Slots: slots}
	want := rep.Encode(matVec(w, x))

	mv, err := NewPlanner(params).PreRotated(w, d, level)
	if err != nil {
		b.Fatal(err)
	}
	lay, _ := NewPreRotated(d, slots)
	inPre := env.encrypt(b, lay.Encode(x), level)
	inRep := env.encrypt(b, rep.Encode(x), level)

	diags := lintrans.Diagonals[float64]{}
	for k := 0; k < d; k++ {
		v := make([]float64, slots)
		for s := range v {
			v[s] = w[s%d][(s+k)%d]
		}
		diags[k] = v
	}
	lt := lintrans.NewTransformation(params, lintrans.Parameters{
		DiagonalsIndexList: diags.DiagonalsIndexList(), LevelQ: level, LevelP: params.MaxLevelP(),
		Scale: rlwe.NewScale(params.Q()[level]), LogDimensions: params.LogMaxDimensions(), LogBabyStepGiantStepRatio: 1,
	})
	if err := lintrans.Encode(ckks.NewEncoder(params), diags, lt); err != nil {
		b.Fatal(err)
	}
	rots := append(mv.Rotations(), rotationsOf(params, lt.GaloisElements(params))...)
	// At n14-128 the plain BSGS product (replicated input) joins the
	// alternation, to compare it with lintrans under the same load.
	var bsgs *MatVec
	if p.Name == N14.Name {
		if bsgs, err = NewPlanner(params).Replicated(w, d, d, level); err != nil {
			b.Fatal(err)
		}
		rots = append(rots, bsgs.Rotations()...)
	}
	e, _ := env.evaluator(b, rots, false, 1, level)
	ltEval := lintrans.NewEvaluator(e.Eval)
	runLT := func() *rlwe.Ciphertext {
		out, err := ltEval.EvaluateNew(inRep, lt)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Eval.Rescale(out, out); err != nil {
			b.Fatal(err)
		}
		return out
	}
	runPre := func() *rlwe.Ciphertext {
		out, err := e.EvaluateOne(mv, inPre)
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	env.checkResult(b, runLT(), want, "lintrans")
	env.checkResult(b, runPre(), want, "pre-rotated")
	if bsgs != nil {
		out, err := e.EvaluateOne(bsgs, inRep)
		if err != nil {
			b.Fatal(err)
		}
		env.checkResult(b, out, want, "bsgs")
	}
	b.Run("alternating", func(b *testing.B) {
		var tPre, tLT, tBSGS []float64
		var cPre, cLT time.Duration
		for i := 0; i < b.N; i++ {
			t0, c0 := time.Now(), procCPU()
			runPre()
			t1, c1 := time.Now(), procCPU()
			runLT()
			cPre += c1 - c0
			cLT += procCPU() - c1
			tPre = append(tPre, float64(t1.Sub(t0).Nanoseconds()))
			tLT = append(tLT, float64(time.Since(t1).Nanoseconds()))
			if bsgs != nil {
				t2 := time.Now()
				if _, err := e.EvaluateOne(bsgs, inRep); err != nil {
					b.Fatal(err)
				}
				tBSGS = append(tBSGS, float64(time.Since(t2).Nanoseconds()))
			}
		}
		if len(tBSGS) > 0 {
			slices.Sort(tBSGS)
			b.ReportMetric(tBSGS[len(tBSGS)/2]/1e6, "bsgs-ms")
		}
		slices.Sort(tPre)
		slices.Sort(tLT)
		mp, ml := tPre[len(tPre)/2], tLT[len(tLT)/2]
		b.ReportMetric(mp/1e6, "prerotated-ms")
		b.ReportMetric(ml/1e6, "lintrans-ms")
		b.ReportMetric(ml/mp, "speedup")
		b.ReportMetric(float64(cPre.Milliseconds())/float64(b.N), "prerotated-cpu-ms")
		b.ReportMetric(float64(cLT.Milliseconds())/float64(b.N), "lintrans-cpu-ms")
		if cPre > 0 {
			b.ReportMetric(float64(cLT)/float64(cPre), "cpu-speedup")
		}
		b.ReportMetric(float64(mv.Cost().KeySwitches()), "prerotated-keyswitch")
	})
}
