package server_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/server"
)

func heapAfterGC() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Memory, not only goroutines, comes back: sessions created, used and ended
// (closed, or dropped when the client cancels) leave the live heap where it
// was, within one session's keys. A session, its keys or a model session
// kept reachable after it ended would add its expanded keys (about 21 MB
// each at the test preset) per round.
func TestNoHeapGrowthAfterSessions(t *testing.T) {
	per := fakeHeldKeyBytes(t)
	h := start(t, server.Config{}, fakeModel(t))
	c := dialFake(t, h.addr)
	round := func(i int) {
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := s.Generate(context.Background(), []int{i % 7, 3}, 3, client.GenerateOptions{}, nil); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.Generate(ctx, []int{1, 2}, 5, client.GenerateOptions{}, func(client.Token) error {
			cancel()
			return nil
		})
		cancel()
		noSessions(t, h.srv)
	}
	round(0) // warm-up: gRPC buffers, caches
	noSessions(t, h.srv)
	before := heapAfterGC()
	const rounds = 6
	for i := 1; i <= rounds; i++ {
		round(i)
	}
	noSessions(t, h.srv)
	after := heapAfterGC()
	t.Logf("live heap %.1f MB before, %.1f MB after %d sessions (one session's keys: %.1f MB)",
		float64(before)/1e6, float64(after)/1e6, rounds, float64(per)/1e6)
	if after > before+uint64(per) {
		t.Fatalf("live heap grew by %.1f MB over %d sessions (one session's keys are %.1f MB)",
			float64(after-before)/1e6, rounds, float64(per)/1e6)
	}
}
