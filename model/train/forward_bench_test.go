//go:build unix

package train

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"github.com/entropi-ai/entropi/model"
)

// BenchmarkForwardBackward measures training throughput (forward + backward,
// tokens/s) at d = 256, 4 layers, 4 heads, T = 128, vocab 1024, 4 sequences
// per call, with 1 and 2 concurrent workspaces on shared parameters. Run
//
//	go test -bench ForwardBackward -run '^$' -cpu 1,2 ./model/train/
//
// (-cpu sets GOMAXPROCS; gonum's native Dgemm parallelizes internally, so
// one workspace at GOMAXPROCS=2 also uses both cores). tokens/cpu-s divides
// by the process's CPU time instead of wall time.
func BenchmarkForwardBackward(b *testing.B) {
	const V, T, d, L, H, batch = 1024, 128, 256, 4, 4, 4
	for _, mc := range []struct {
		name string
		cfg  model.Config
		opts Options
	}{
		{"baseline", model.Baseline(V, T, d, L, H), Options{}},
		{"entropy-guided", model.EntropyGuided(V, T, d, L, H), Options{EntropyReg: true, Lambda: 1e-5}},
	} {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/workers=%d", mc.name, workers), func(b *testing.B) {
				p, err := NewParams(mc.cfg, mc.opts, 1)
				if err != nil {
					b.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				wss := make([]*Workspace, workers)
				ins := make([][][]int, workers)
				tgs := make([][][]int, workers)
				for w := range wss {
					wss[w] = NewWorkspace(p, batch, T)
					ins[w], tgs[w] = tinyBatch(rng, batch, T, V)
				}
				b.ResetTimer()
				cpu0 := cpuSeconds()
				for i := 0; i < b.N; i++ {
					var wg sync.WaitGroup
					for w := range wss {
						wg.Add(1)
						go func() {
							defer wg.Done()
							if _, err := wss[w].ForwardBackward(p, ins[w], tgs[w]); err != nil {
								panic(err)
							}
						}()
					}
					wg.Wait()
				}
				b.ReportMetric(float64(b.N*workers*batch*T)/b.Elapsed().Seconds(), "tokens/s")
				b.ReportMetric(float64(b.N*workers*batch*T)/(cpuSeconds()-cpu0), "tokens/cpu-s")
			})
		}
	}
}

// BenchmarkForward measures the no-gradient forward (evaluation) alone.
func BenchmarkForward(b *testing.B) {
	const V, T, d, L, H, batch = 1024, 128, 256, 4, 4, 4
	p, err := NewParams(model.EntropyGuided(V, T, d, L, H), Options{}, 1)
	if err != nil {
		b.Fatal(err)
	}
	in, _ := tinyBatch(rand.New(rand.NewPCG(1, 2)), batch, T, V)
	ws := NewWorkspace(p, batch, T)
	b.ResetTimer()
	cpu0 := cpuSeconds()
	for i := 0; i < b.N; i++ {
		if _, err := ws.Forward(p, in); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch*T)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(float64(b.N*batch*T)/(cpuSeconds()-cpu0), "tokens/cpu-s")
}

// cpuSeconds is the process's user+system CPU time: on a shared, loaded
// machine tokens per CPU-second is the load-independent figure (wall-clock
// tokens/s then depends on how many cores the benchmark actually got).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)*1e-6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
