package server_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Fault injection on loopback: clients that vanish at each stage of a
// generation, a client that never answers a refresh round, and a server
// that shuts down under a running generation. After each: no session, no
// key memory, no request goroutine left.

// hookModel wraps the fake model: it signals when the server enters
// Prefill or Decode, and can hold Decode (a long computation) until the
// generation's context ends.
type hookModel struct {
	*servertest.Model
	prefill, decode         chan struct{}
	holdPrefill, holdDecode atomic.Bool
}

func newHookModel(t *testing.T) *hookModel {
	return &hookModel{Model: fakeModel(t), prefill: make(chan struct{}, 1), decode: make(chan struct{}, 1)}
}

func (m *hookModel) NewSession(keys *server.Keys, refresh server.RefreshFunc) (server.ModelSession, error) {
	s, err := m.Model.NewSession(keys, refresh)
	if err != nil {
		return nil, err
	}
	return &hookSession{m: m, s: s}, nil
}

type hookSession struct {
	m *hookModel
	s server.ModelSession
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *hookSession) Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	signal(s.m.prefill)
	if s.m.holdPrefill.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.s.Prefill(ctx, in)
}

func (s *hookSession) Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	signal(s.m.decode)
	if s.m.holdDecode.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.s.Decode(ctx, in)
}

func waitSignal(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("the server never reached %s", what)
	}
}

// generateAsync runs a generation in the background.
func generateAsync(ctx context.Context, s *client.Session, prompt []int, n int) chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := s.Generate(ctx, prompt, n, client.GenerateOptions{}, nil)
		errc <- err
	}()
	return errc
}

func waitErr(t *testing.T, errc chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the client never returned")
		return nil
	}
}

// answerRefresh answers one refresh round on a raw stream.
func answerRefresh(t *testing.T, cr *servertest.Crypto, st pb.Entropi_GenerateClient, r *pb.RefreshRequest) {
	t.Helper()
	req, err := pb.RefreshRequestFromProto(cr.ClientKeys().Params, r, 8)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cr.AnswerRefresh(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := pb.RefreshAnswerToProto(r.Round, resp)
	if err := st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: a}}); err != nil {
		t.Fatal(err)
	}
}

// rawGeneration opens a connection and a session with raw protocol calls
// and starts a generation of a prompt of n tokens (all prompt ciphertexts
// sent). The caller closes the connection.
func rawGeneration(t *testing.T, ctx context.Context, addr string, n int) (*servertest.Crypto, pb.Entropi_GenerateClient, *grpc.ClientConn) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(256<<20), grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rpc := pb.NewEntropiClient(conn)
	cr, evk, pkb := fakeKeys(t)
	resp, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), keyChunks(evk, pkb, 1<<20)...)
	if err != nil {
		t.Fatal(err)
	}
	st, err := rpc.Generate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: resp.SessionId, PromptTokens: uint32(n), PromptCiphertexts: uint32(n), MaxNewTokens: 2}}})
	for i := range n {
		ct, _ := cr.EncryptToken(i, i)
		b, _ := ct.MarshalBinary()
		st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Prompt{Prompt: &pb.PromptCiphertext{Index: uint32(i), Ciphertext: b}}})
	}
	return cr, st, conn
}

// baseline warms a server up (one full generation, so that gRPC's lazily
// started goroutines exist) and returns the idle goroutine count.
func baseline(t *testing.T, h *harness) int {
	t.Helper()
	c := dialFake(t, h.addr)
	s, err := c.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Generate(context.Background(), []int{1}, 2, client.GenerateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	noSessions(t, h.srv)
	settle(t, requestFrames, -1)
	return runtime.NumGoroutine()
}

func TestClientVanishes(t *testing.T) {
	m := newHookModel(t)
	h := start(t, server.Config{}, m)
	before := baseline(t, h)
	drain(m)

	t.Run("mid-prefill", func(t *testing.T) {
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		m.holdPrefill.Store(true) // prefill computes until cancelled
		defer m.holdPrefill.Store(false)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := generateAsync(ctx, s, []int{1, 2, 3}, 4)
		waitSignal(t, m.prefill, "Prefill")
		// The check below is not vacuous: the handler is running now.
		if len(stacksWith(requestFrames)) == 0 {
			t.Fatal("no request goroutine found during a generation (the leak filter is broken)")
		}
		cancel()
		err = waitErr(t, errc)
		wantStatus(t, err, codes.Canceled, "context canceled")
		noSessions(t, h.srv)
		c.Close()
		settleRequests(t, before)
	})

	t.Run("mid-refresh", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, st, conn := rawGeneration(t, ctx, h.addr, 2)
		r, err := st.Recv() // Started
		if err != nil || r.GetStarted() == nil {
			t.Fatalf("expected Started: %v %v", r, err)
		}
		r, err = st.Recv()
		if err != nil || r.GetRefresh() == nil {
			t.Fatalf("expected a refresh round: %v %v", r, err)
		}
		// The server now waits for the answer; the client goes away.
		cancel()
		_, err = st.Recv()
		wantStatus(t, err, codes.Canceled, "context canceled")
		noSessions(t, h.srv)
		conn.Close()
		settleRequests(t, before)
	})

	t.Run("mid-decode", func(t *testing.T) {
		m.holdDecode.Store(true)
		defer m.holdDecode.Store(false)
		steps := m.Steps.Load()
		c, err := client.Dial(context.Background(), h.addr, &client.Options{
			AllowInsecurePresets: true,
			NewCrypto: func(info *client.ModelInfo, allow bool) (client.Crypto, error) {
				return servertest.NewCrypto(info.Spec, allow)
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		errc := generateAsync(context.Background(), s, []int{4, 5}, 4)
		waitSignal(t, m.decode, "Decode")
		// The whole connection goes (as when the client process dies).
		c.Close()
		err = waitErr(t, errc)
		wantStatus(t, err, codes.Canceled, "closing")
		noSessions(t, h.srv)
		settleRequests(t, before)
		if got := m.Steps.Load() - steps; got != 2 {
			t.Errorf("%d model steps, want the 2 of the prefill", got)
		}
	})
	h.stop()
	settleStopped(t)
}

// drain empties the hooks' signals (after a warm-up generation).
func drain(m *hookModel) {
	for _, ch := range []chan struct{}{m.prefill, m.decode} {
		select {
		case <-ch:
		default:
		}
	}
}

// A client that never answers a refresh round loses its session after the
// idle timeout: DeadlineExceeded, keys freed, the handler gone.
func TestRefreshNeverAnswered(t *testing.T) {
	// Long enough that a loaded machine's key upload and first round never
	// sit idle this long (300 ms failed at load average 10), short enough
	// for a unit test.
	h := start(t, server.Config{IdleTimeout: 2 * time.Second}, fakeModel(t))
	before := baseline(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cr, st, conn := rawGeneration(t, ctx, h.addr, 2)
	rounds := 0
	var rerr error
	for {
		r, err := st.Recv()
		if err != nil {
			rerr = err
			break
		}
		if rr := r.GetRefresh(); rr != nil {
			rounds++
			if rounds == 1 { // answer the first round, fall silent in the second
				answerRefresh(t, cr, st, rr)
			}
		}
	}
	if rounds != 2 {
		t.Fatalf("%d refresh rounds seen, want 2", rounds)
	}
	wantStatus(t, rerr, codes.DeadlineExceeded, "refresh answer 2")
	noSessions(t, h.srv)
	// The handler is gone although the client still holds the stream open.
	settle(t, requestFrames, -1)
	conn.Close()
	settleRequests(t, before)
}

// startGrace starts a server with a given shutdown grace; stop cancels its
// context and returns Serve's error.
func startGrace(t *testing.T, grace time.Duration, m server.Model) (*harness, func() error) {
	t.Helper()
	srv, err := server.New(server.Config{AllowInsecure: true, Logger: quietLogger()}, m)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, grace) }()
	var once sync.Once
	var serr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serr = <-done:
			case <-time.After(30 * time.Second):
				serr = errors.New("Serve did not return")
			}
		})
		return serr
	}
	t.Cleanup(func() { stop() })
	return &harness{srv: srv, addr: lis.Addr().String()}, stop
}

func TestShutdownDuringGeneration(t *testing.T) {
	t.Run("graceful: the running generation completes", func(t *testing.T) {
		m := newHookModel(t)
		m.StepDelay = 50 * time.Millisecond
		h, stop := startGrace(t, 20*time.Second, m)
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		prompt := []int{7, 8}
		var res *client.Result
		errc := make(chan error, 1)
		go func() {
			var err error
			res, err = s.Generate(context.Background(), prompt, 5, client.GenerateOptions{}, nil)
			errc <- err
		}()
		waitSignal(t, m.prefill, "Prefill")
		if err := stop(); err != nil { // returns once the generation has ended
			t.Fatal(err)
		}
		if err := waitErr(t, errc); err != nil {
			t.Fatalf("generation cut by a graceful shutdown with time to spare: %v", err)
		}
		if want := servertest.Greedy(prompt, 5); !equalInts(res.Tokens, want) {
			t.Fatalf("tokens %v, want %v", res.Tokens, want)
		}
		if h.srv.Sessions() != 0 || h.srv.KeyBytes() != 0 {
			t.Fatalf("after shutdown: %d sessions, %d key bytes", h.srv.Sessions(), h.srv.KeyBytes())
		}
		_, err = c.NewSession(context.Background(), "")
		wantStatus(t, err, codes.Unavailable, "")
		c.Close()
		settleStopped(t)
	})

	t.Run("grace over: the generation is cut", func(t *testing.T) {
		m := newHookModel(t)
		m.holdDecode.Store(true) // decode outlasts the grace period
		h, stop := startGrace(t, 100*time.Millisecond, m)
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		errc := generateAsync(context.Background(), s, []int{3}, 4)
		waitSignal(t, m.decode, "Decode")
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		err = waitErr(t, errc)
		t.Logf("client error: %v", err)
		wantStatus(t, err, codes.Unavailable, "the server is shutting down")
		if h.srv.Sessions() != 0 || h.srv.KeyBytes() != 0 {
			t.Fatalf("after shutdown: %d sessions, %d key bytes", h.srv.Sessions(), h.srv.KeyBytes())
		}
		c.Close()
		settleStopped(t)
	})
}

// Grace over while the server waits on the client (a refresh round it has
// not answered): the connection is cut; the client sees Unavailable.
func TestShutdownWhileWaitingOnClient(t *testing.T) {
	h, stop := startGrace(t, 100*time.Millisecond, fakeModel(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, st, conn := rawGeneration(t, ctx, h.addr, 1)
	for {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetRefresh() != nil {
			break
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_, err := st.Recv()
	t.Logf("client error: %v", err)
	wantStatus(t, err, codes.Unavailable, "")
	if h.srv.Sessions() != 0 || h.srv.KeyBytes() != 0 {
		t.Fatalf("after shutdown: %d sessions, %d key bytes", h.srv.Sessions(), h.srv.KeyBytes())
	}
	conn.Close()
	settleStopped(t)
}

// A session closed (CloseSession, from another call) while its generation
// runs: the generation stops and the client is told why.
func TestSessionClosedDuringGeneration(t *testing.T) {
	for _, stage := range []string{"prefill", "decode"} {
		t.Run(stage, func(t *testing.T) {
			m := newHookModel(t)
			h := start(t, server.Config{}, m)
			c := dialFake(t, h.addr)
			s, err := c.NewSession(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			ch := m.prefill
			m.holdPrefill.Store(stage == "prefill")
			if stage == "decode" {
				ch = m.decode
				m.holdDecode.Store(true)
			}
			errc := generateAsync(context.Background(), s, []int{1, 2}, 4)
			waitSignal(t, ch, stage)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			err = waitErr(t, errc)
			t.Logf("client error: %v", err)
			wantStatus(t, err, codes.Aborted, "closed")
			noSessions(t, h.srv)
			settle(t, requestFrames, -1)
		})
	}
}
