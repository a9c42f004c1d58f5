package server_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Goroutine-leak checks. Tests in this package do not run in parallel, so
// a goroutine parked in a request handler of the server (or in the fake
// model) after a test's requests have ended is a leak of that test.

// requestFrames mark goroutines that belong to one request: they must be
// gone once its RPC has ended, even while the server keeps running.
var requestFrames = []string{
	"entropi/server.(*Server).Generate",
	"entropi/server.(*Server).CreateSession",
	"entropi/server.(*gen)",
	"entropi/server.recvTimeout",
	"entropi/server/servertest.",
}

// serverFrames mark goroutines of a running server (janitor, Serve, gRPC
// transport): they must be gone once the server is stopped.
var serverFrames = append([]string{
	"entropi/server.",
	"google.golang.org/grpc.(*Server)",
	"google.golang.org/grpc/internal/transport.(*http2Server)",
}, requestFrames...)

// stacksWith returns the stacks of the goroutines (other than the caller's)
// with a frame containing one of frames.
func stacksWith(frames []string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 { // the calling goroutine
			continue
		}
		for _, f := range frames {
			if strings.Contains(g, f) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// settle polls until no goroutine has one of frames and the goroutine count
// is at most limit (limit < 0: not checked), or fails after a generous
// deadline with the offending stacks.
func settle(t *testing.T, frames []string, limit int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := stacksWith(frames)
		n := runtime.NumGoroutine()
		if len(left) == 0 && (limit < 0 || n <= limit) {
			return
		}
		if time.Now().After(deadline) {
			if len(left) > 0 {
				t.Fatalf("%d goroutines left in the server:\n\n%s", len(left), strings.Join(left, "\n\n"))
			}
			t.Fatalf("%d goroutines, want at most %d", n, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goroutineSlack allows for gRPC's and the runtime's own background
// goroutines (resolver, balancer, timers) that come and go.
const goroutineSlack = 4

// settleRequests: the server is idle again (no request goroutine, the
// count back near before).
func settleRequests(t *testing.T, before int) {
	t.Helper()
	settle(t, requestFrames, before+goroutineSlack)
}

// settleStopped: nothing of the server is left running.
func settleStopped(t *testing.T) {
	t.Helper()
	settle(t, serverFrames, -1)
}

// noSessions checks that a server holds no session and no key memory.
func noSessions(t *testing.T, srv *server.Server) {
	t.Helper()
	waitSessions(t, srv, 0)
	deadline := time.Now().Add(10 * time.Second)
	for srv.KeyBytes() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d key bytes still accounted with no session", srv.KeyBytes())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNoLeakAfterChurn creates and ends many sessions and generations in
// every way a client can end them (completed, closed, aborted by the
// client, cancelled, connection closed, session never closed and dropped
// at shutdown), then checks that the server is back to its idle goroutine
// count and holds no key memory, and that nothing is left once stopped.
func TestNoLeakAfterChurn(t *testing.T) {
	m := fakeModel(t)
	h := start(t, server.Config{}, m)
	// Warm-up: the first connection starts gRPC's lazily created
	// goroutines; they are not leaks.
	c0 := dialFake(t, h.addr)
	s0, err := c0.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s0.Generate(context.Background(), []int{1}, 2, client.GenerateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	s0.Close()
	noSessions(t, h.srv)
	settle(t, requestFrames, -1)
	before := runtime.NumGoroutine()

	const rounds = 3
	for i := range rounds {
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		prompt := []int{i, i + 1}
		switch i % 3 {
		case 0: // completed, then closed
			res, err := s.Generate(context.Background(), prompt, 3, client.GenerateOptions{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := servertest.Greedy(prompt, 3); !equalInts(res.Tokens, want) {
				t.Fatalf("tokens %v, want %v", res.Tokens, want)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		case 1: // the client breaks out after one token (Abort), then closes
			for range s.Tokens(context.Background(), prompt, 5, client.GenerateOptions{}) {
				break
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		case 2: // cancelled mid-generation: the server drops the session
			ctx, cancel := context.WithCancel(context.Background())
			_, err := s.Generate(ctx, prompt, 5, client.GenerateOptions{}, func(client.Token) error {
				cancel()
				return nil
			})
			cancel()
			if err == nil {
				t.Fatal("a cancelled generation succeeded")
			}
		}
		c.Close()
		noSessions(t, h.srv)
	}
	settleRequests(t, before)
	t.Logf("goroutines: %d before, %d after %d sessions (slack %d)", before, runtime.NumGoroutine(), rounds, goroutineSlack)

	// A session left open is dropped (keys freed) at shutdown.
	c := dialFake(t, h.addr)
	if _, err := c.NewSession(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if h.srv.KeyBytes() <= 0 {
		t.Fatal("a live session holds no key memory")
	}
	h.stop()
	if h.srv.Sessions() != 0 || h.srv.KeyBytes() != 0 {
		t.Fatalf("after shutdown: %d sessions, %d key bytes", h.srv.Sessions(), h.srv.KeyBytes())
	}
	c.Close()
	c0.Close()
	settleStopped(t)
}
