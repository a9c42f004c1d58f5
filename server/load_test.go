package server_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Load on loopback: several sessions at once, each with its own keys and
// generations, under a key-memory cap that holds exactly that many.

// fakeHeldKeyBytes is what the server charges for one fake session (the
// expanded evaluation keys and the public key).
func fakeHeldKeyBytes(t *testing.T) int64 {
	t.Helper()
	cr, evk, pkb := fakeKeys(t)
	params := cr.ClientKeys().Params
	ek, err := pb.ParseEvaluationKeys(params, evk, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ek.Expand(params); err != nil {
		t.Fatal(err)
	}
	return int64(ek.BinarySize() + len(pkb))
}

func TestConcurrentLoad(t *testing.T) {
	const sessions, generations, n = 4, 2, 5
	per := fakeHeldKeyBytes(t)
	caps := pb.DefaultCaps()
	caps.MaxSessions = sessions
	caps.MaxKeyBytes = sessions*per + per/2 // room for exactly `sessions` sessions
	h := start(t, server.Config{Caps: caps}, fakeModel(t))

	// Watch the accounting while the load runs.
	var maxKey, maxSess atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if k := h.srv.KeyBytes(); k > maxKey.Load() {
				maxKey.Store(k)
			}
			if s := int64(h.srv.Sessions()); s > maxSess.Load() {
				maxSess.Store(s)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	var tokens atomic.Int64
	t0 := time.Now()
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(context.Background(), h.addr, &client.Options{
				AllowInsecurePresets: true,
				NewCrypto: func(info *client.ModelInfo, allow bool) (client.Crypto, error) {
					return servertest.NewCrypto(info.Spec, allow)
				},
			})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			s, err := c.NewSession(context.Background(), "")
			if err != nil {
				errs <- fmt.Errorf("session %d: %w", i, err)
				return
			}
			defer s.Close()
			for g := range generations {
				prompt := []int{(7*i + g) % servertest.Vocab, (3*i + 5*g + 1) % servertest.Vocab}
				res, err := s.Generate(context.Background(), prompt, n, client.GenerateOptions{}, nil)
				if err != nil {
					errs <- fmt.Errorf("session %d generation %d: %w", i, g, err)
					return
				}
				if want := servertest.Greedy(prompt, n); !equalInts(res.Tokens, want) {
					errs <- fmt.Errorf("session %d generation %d: tokens %v, want %v", i, g, res.Tokens, want)
					return
				}
				tokens.Add(int64(len(res.Tokens)))
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	close(stop)
	<-watched
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	t.Logf("%d sessions × %d generations × %d tokens: %d tokens in %v (fake model, includes key generation); key memory peak %d of cap %d (%d per session), sessions peak %d",
		sessions, generations, n, tokens.Load(), el.Round(time.Millisecond), maxKey.Load(), caps.MaxKeyBytes, per, maxSess.Load())
	if maxKey.Load() > caps.MaxKeyBytes {
		t.Fatalf("accounted key memory %d exceeded the cap %d", maxKey.Load(), caps.MaxKeyBytes)
	}
	if maxKey.Load() < per {
		t.Fatalf("accounted key memory peaked at %d, less than one session's %d", maxKey.Load(), per)
	}
	if maxSess.Load() > sessions {
		t.Fatalf("%d sessions at once, cap %d", maxSess.Load(), sessions)
	}
	noSessions(t, h.srv)
}

// BenchmarkThroughput: tokens per second across 1, 2 and 4 concurrent
// sessions with the real encrypted decoder (a tiny random entropy-guided
// model: vocab 32, context 8, d 16, 1 layer, 2 heads) at the INSECURE test
// preset (N=2^12, no security: throughput of the machinery, not of a
// deployment). One engine worker per session. Each iteration: every session
// runs one generation (2 prompt tokens, 4 new tokens) at the same time;
// key generation and upload are outside the timing. Run with
//
//	go test -run '^$' -bench Throughput -benchtime 1x ./server/
func BenchmarkThroughput(b *testing.B) {
	cfg := model.EntropyGuided(32, 8, 16, 1, 2)
	w, err := model.NewRandom(cfg, 3)
	if err != nil {
		b.Fatal(err)
	}
	set, err := server.CalibrateRandom(w, 1)
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.New(w, set, engine.Options{Preset: he.InsecureTest, AllowInsecure: true, Workers: 1})
	if err != nil {
		b.Fatal(err)
	}
	m, err := server.EngineModel("tiny", eng, nil)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(server.Config{AllowInsecure: true, Logger: quietLogger()}, m)
	if err != nil {
		b.Fatal(err)
	}
	addr, stop := serveForBench(b, srv)
	defer stop()
	c, err := client.Dial(context.Background(), addr, &client.Options{AllowInsecurePresets: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	prompt := []int{3, 17}
	const n = 4
	var want []int
	for _, k := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("sessions=%d", k), func(b *testing.B) {
			ss := make([]*client.Session, k)
			for i := range ss {
				if ss[i], err = c.NewSession(context.Background(), "tiny"); err != nil {
					b.Fatal(err)
				}
			}
			defer func() {
				for _, s := range ss {
					s.Close()
				}
			}()
			var total atomic.Int64
			b.ResetTimer()
			t0 := time.Now()
			for range b.N {
				var wg sync.WaitGroup
				errs := make([]error, k)
				toks := make([][]int, k)
				for i, s := range ss {
					wg.Add(1)
					go func() {
						defer wg.Done()
						res, err := s.Generate(context.Background(), prompt, n, client.GenerateOptions{}, nil)
						if err == nil {
							toks[i] = res.Tokens
							total.Add(int64(len(res.Tokens)))
						}
						errs[i] = err
					}()
				}
				wg.Wait()
				for i := range ss {
					if errs[i] != nil {
						b.Fatal(errs[i])
					}
					if want == nil {
						want = toks[i]
					}
					if !equalInts(toks[i], want) { // greedy and deterministic: every session agrees
						b.Fatalf("session %d: tokens %v, another session %v", i, toks[i], want)
					}
				}
			}
			el := time.Since(t0)
			b.StopTimer()
			b.ReportMetric(float64(total.Load())/el.Seconds(), "tokens/s")
			b.ReportMetric(el.Seconds()/float64(b.N), "s/round")
			if kb := srv.KeyBytes(); kb <= 0 {
				b.Fatalf("key memory %d with %d live sessions", kb, k)
			}
		})
	}
}

func serveForBench(b *testing.B, srv *server.Server) (string, func()) {
	b.Helper()
	lis, err := netListen()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, 2*time.Second) }()
	return lis.Addr().String(), func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("serve: %v", err)
		}
	}
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
