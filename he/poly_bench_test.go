package he

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// Run: go test -run '^$' -bench 'Poly|MaskedRefresh' -benchtime 3x ./he/
//
// Each polynomial at the n14-128 and n15-128 presets, input at the top level
// (reported: "levels" consumed). At n14 (7 levels) the default reciprocal
// (depth 11) and inverse square root (depth 15) do not fit: the benchmark runs
// shallower variants that do and says so in the name.

type benchPoly struct {
	name   string
	lo, hi float64
	depth  int
	run    func(pe *PolyEvaluator, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error)
}

func benchPolys() []benchPoly {
	exp, rec, isq, gelu := approx.DefaultExp(), approx.DefaultReciprocal(), approx.DefaultInvSqrt(), approx.DefaultGELU()
	rec7 := approx.NewReciprocal(1, 64, 15, 1) // depth 7
	isq7 := approx.NewInvSqrt(0.5, 8, 15, 1)   // depth 7
	return []benchPoly{
		{"exp[-16,4]/31", -16, 4, exp.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalExp(c, exp) }},
		{"gelu[-8,8]/63", -8, 8, gelu.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalGELU(c, gelu) }},
		{"recip[1,512]/63+2", 1, 512, rec.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
			return pe.EvalReciprocal(c, rec)
		}},
		{"recip[1,64]/15+1", 1, 64, rec7.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
			return pe.EvalReciprocal(c, rec7)
		}},
		{"invsqrt[0.01,100]/63+4", 0.01, 100, isq.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalInvSqrt(c, isq) }},
		{"invsqrt[0.5,8]/15+1", 0.5, 8, isq7.Depth(), func(pe *PolyEvaluator, c *rlwe.Ciphertext) (*rlwe.Ciphertext, error) { return pe.EvalInvSqrt(c, isq7) }},
	}
}

func BenchmarkPoly(b *testing.B) {
	for _, p := range []Preset{N14, N15} {
		k := newRFKit(b, p)
		pe := NewPolyEvaluator(k.params, k.eval)
		for _, c := range benchPolys() {
			b.Run(fmt.Sprintf("%s/%s", p.Name, c.name), func(b *testing.B) {
				if c.depth > k.params.MaxLevel() {
					b.Skipf("depth %d > %d levels of %s", c.depth, k.params.MaxLevel(), p.Name)
				}
				ct := k.encrypt(b, uniformIn(k.params.MaxSlots(), c.lo, c.hi, rand.New(rand.NewPCG(1, 1))), k.params.MaxLevel())
				var out *rlwe.Ciphertext
				var err error
				b.ResetTimer()
				cpu0 := cpuTime()
				for i := 0; i < b.N; i++ {
					if out, err = c.run(pe, ct); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
				b.ReportMetric(float64(ct.Level()-out.Level()), "levels")
			})
		}
	}
}

// cpuTime is the process's user+system CPU time: on a shared machine it is
// a steadier measure than wall time (all ops here are single-threaded).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMaskedRefresh: one ciphertext at its masking level refreshed to
// the top level; server time (mask + validate + unmask), client time
// (validate, decrypt, re-encode, seeded encrypt), bytes down/up.
func BenchmarkMaskedRefresh(b *testing.B) {
	for _, p := range []Preset{N14, N15} {
		for _, withMap := range []bool{false, true} {
			k := newRFKit(b, p)
			resp := NewRefreshResponder(k.params, k.sk)
			var client time.Duration
			var down, up int
			tr := func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
				t0 := time.Now()
				r, err := resp.Respond(ctx, req)
				client += time.Since(t0)
				down, up = req.BinarySize(), r.BinarySize()
				return r, err
			}
			mr, err := NewMaskedRefresher(k.params, k.pk(), tr, DefaultMaskOptions())
			if err != nil {
				b.Fatal(err)
			}
			ml, err := mr.MaskLevel(rlwe.Scale{})
			if err != nil {
				b.Fatal(err)
			}
			opts := RefreshOptions{Level: -1}
			name := "integer"
			if withMap {
				opts.Maps = []*SlotMap{ReplicateMap(k.params.MaxSlots(), 256, 0)}
				name = "slotmap"
			}
			b.Run(fmt.Sprintf("%s/%s/level%d-to-%d", p.Name, name, ml, k.params.MaxLevel()), func(b *testing.B) {
				ct := k.encrypt(b, uniformIn(k.params.MaxSlots(), -1, 1, rand.New(rand.NewPCG(2, 2))), ml)
				client = 0
				b.ResetTimer()
				t0, cpu0 := time.Now(), cpuTime()
				for i := 0; i < b.N; i++ {
					if _, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, opts); err != nil {
						b.Fatal(err)
					}
				}
				total := time.Since(t0)
				b.ReportMetric((cpuTime()-cpu0).Seconds()*1000/float64(b.N), "cpu-ms/op")
				b.ReportMetric(float64((total-client).Milliseconds())/float64(b.N), "server-ms/op")
				b.ReportMetric(float64(client.Milliseconds())/float64(b.N), "client-ms/op")
				b.ReportMetric(float64(down), "bytes-down/ct")
				b.ReportMetric(float64(up), "bytes-up/ct")
			})
		}
	}
}
