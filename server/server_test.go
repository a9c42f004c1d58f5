package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// All tests run on 127.0.0.1 with the insecure test preset (N=2^12): the
// service and its validation are the same at every preset.

type harness struct {
	srv  *server.Server
	addr string
	stop func()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, cfg server.Config, models ...server.Model) *harness {
	t.Helper()
	return startWith(t, cfg, nil, models...)
}

func startWith(t *testing.T, cfg server.Config, opts []grpc.ServerOption, models ...server.Model) *harness {
	t.Helper()
	cfg.AllowInsecure = true
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	srv, err := server.New(cfg, models...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, 2*time.Second, opts...) }()
	h := &harness{srv: srv, addr: lis.Addr().String()}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func fakeModel(t *testing.T) *servertest.Model {
	t.Helper()
	m, err := servertest.NewModel("fake")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func dialFake(t *testing.T, addr string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), addr, &client.Options{
		AllowInsecurePresets: true,
		NewCrypto: func(info *client.ModelInfo, allow bool) (client.Crypto, error) {
			return servertest.NewCrypto(info.Spec, allow)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantStatus(t *testing.T, err error, c codes.Code, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v containing %q", c, substr)
	}
	if got := pb.Code(err); got != c && pb.Code(errors.Unwrap(err)) != c {
		t.Fatalf("error %v: code %v, want %v", err, got, c)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not contain %q", err, substr)
	}
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFakeEndToEnd(t *testing.T) {
	h := start(t, server.Config{}, fakeModel(t))
	c := dialFake(t, h.addr)
	if len(c.Models()) != 1 || c.Models()[0].Name != "fake" || c.Models()[0].Preset.Name != he.InsecureTest.Name {
		t.Fatalf("models %+v", c.Models())
	}
	ctx := context.Background()
	sess, err := c.NewSession(ctx, "fake")
	if err != nil {
		t.Fatal(err)
	}
	if h.srv.Sessions() != 1 || h.srv.KeyBytes() <= 0 {
		t.Fatalf("sessions %d, key bytes %d", h.srv.Sessions(), h.srv.KeyBytes())
	}
	prompt := []int{5, 9, 40}
	var streamed []int
	res, err := sess.Generate(ctx, prompt, 6, client.GenerateOptions{}, func(tk client.Token) error {
		streamed = append(streamed, tk.ID)
		if tk.BytesUp == 0 || tk.BytesDown == 0 || tk.Latency <= 0 {
			t.Errorf("token %+v without bytes or latency", tk)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := servertest.Greedy(prompt, 6)
	if !equalInts(res.Tokens, want) || !equalInts(streamed, want) {
		t.Fatalf("tokens %v (streamed %v), want %v", res.Tokens, streamed, want)
	}
	// Client and server count the same bytes for every non-control kind.
	st := res.Stats
	for _, ph := range []pb.Phase{pb.PhasePrefill, pb.PhaseDecode} {
		for _, k := range []pb.Kind{pb.KindPrompt, pb.KindRefreshRequest, pb.KindRefreshAnswer, pb.KindLogits, pb.KindNextToken} {
			cu, cd := st.Traffic.Kind(ph, k)
			su, sd := st.ServerTraffic.Kind(ph, k)
			if cu != su || cd != sd {
				t.Errorf("%s/%s: client counted %d up %d down, server %d up %d down", ph, k, cu, cd, su, sd)
			}
		}
	}
	if up, _ := st.Traffic.Kind(pb.PhaseSetup, pb.KindKeys); up == 0 || st.Setup.BytesUp < up {
		t.Errorf("setup traffic %+v", st.Setup)
	}
	if _, d := st.Traffic.Kind(pb.PhaseDecode, pb.KindLogits); d == 0 {
		t.Error("no decode logits counted")
	}
	if st.Prefill.Seconds <= 0 || st.Decode.Seconds <= 0 || st.ServerPrefillSeconds <= 0 || len(st.EngineStats) == 0 {
		t.Errorf("stats %+v", st)
	}
	t.Logf("traffic:\n%v", st.Traffic)

	// The session serves another generation (a fresh KV cache), via the iterator.
	var it []int
	for tk, err := range sess.Tokens(ctx, []int{7}, 3, client.GenerateOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		it = append(it, tk.ID)
	}
	if want := servertest.Greedy([]int{7}, 3); !equalInts(it, want) {
		t.Fatalf("iterator tokens %v, want %v", it, want)
	}
	// Breaking out of the iterator ends the generation; the session stays.
	for range sess.Tokens(ctx, []int{7}, 5, client.GenerateOptions{}) {
		break
	}
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if h.srv.Sessions() != 0 || h.srv.KeyBytes() != 0 {
		t.Fatalf("after Close: %d sessions, %d key bytes", h.srv.Sessions(), h.srv.KeyBytes())
	}
	wantStatus(t, sess.Close(), codes.NotFound, "no session")
}

func TestInsecurePresetRefused(t *testing.T) {
	_, err := server.New(server.Config{Logger: quietLogger()}, fakeModel(t))
	if !errors.Is(err, he.ErrInsecure) {
		t.Fatalf("server without the test flag built with an insecure model: %v", err)
	}
	// A client refuses an insecure preset unless told otherwise.
	h := start(t, server.Config{}, fakeModel(t))
	c, err := client.Dial(context.Background(), h.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.NewSession(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "insecure") {
		t.Fatalf("client accepted an insecure preset: %v", err)
	}
}

// raw opens a bare protocol connection.
func raw(t *testing.T, addr string) pb.EntropiClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(256<<20), grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewEntropiClient(conn)
}

// upload sends a header and chunks and returns the server's answer.
func upload(rpc pb.EntropiClient, hdr *pb.SessionHeader, chunks ...*pb.KeyChunk) (*pb.CreateSessionResponse, error) {
	st, err := rpc.CreateSession(context.Background())
	if err != nil {
		return nil, err
	}
	if err := st.Send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: hdr}}); err != nil {
		return st.CloseAndRecv()
	}
	for _, c := range chunks {
		if err := st.Send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: c}}); err != nil {
			break
		}
	}
	return st.CloseAndRecv()
}

// fakeKeys generates a fake client's keys, serialized.
func fakeKeys(t *testing.T) (*servertest.Crypto, []byte, []byte) {
	t.Helper()
	m := fakeModel(t)
	cr, err := servertest.NewCrypto(m.Info().Spec, true)
	if err != nil {
		t.Fatal(err)
	}
	ek, pk, err := cr.Keys()
	if err != nil {
		t.Fatal(err)
	}
	params := cr.ClientKeys().Params
	evk, _ := ek.MarshalBinary(params)
	pkb, _ := pk.MarshalBinary()
	return cr, evk, pkb
}

func keyChunks(evk, pkb []byte, size int) []*pb.KeyChunk {
	var out []*pb.KeyChunk
	for _, b := range []struct {
		k pb.KeyKind
		d []byte
	}{{pb.KeyKind_KEY_KIND_EVALUATION, evk}, {pb.KeyKind_KEY_KIND_PUBLIC, pkb}} {
		for off := 0; off < len(b.d); off += size {
			out = append(out, &pb.KeyChunk{Kind: b.k, Offset: uint64(off), Data: b.d[off:min(off+size, len(b.d))]})
		}
	}
	return out
}

func header(model string, p he.Preset, evk, pkb []byte) *pb.SessionHeader {
	return &pb.SessionHeader{ProtocolVersion: pb.Version, Model: model, Preset: pb.PresetToProto(p),
		EvaluationKeyBytes: uint64(len(evk)), PublicKeyBytes: uint64(len(pkb))}
}

func TestValidation(t *testing.T) {
	caps := pb.DefaultCaps()
	caps.MaxMessageBytes = 2 << 20
	caps.MaxChunkBytes = 1 << 20
	h := start(t, server.Config{Caps: caps}, fakeModel(t))
	rpc := raw(t, h.addr)
	cr, evk, pkb := fakeKeys(t)
	good := keyChunks(evk, pkb, 1<<20)

	t.Run("protocol version", func(t *testing.T) {
		_, err := rpc.ListModels(context.Background(), &pb.ListModelsRequest{ProtocolVersion: 99})
		wantStatus(t, err, codes.FailedPrecondition, "protocol version 99")
	})
	t.Run("unknown model", func(t *testing.T) {
		_, err := upload(rpc, header("nope", he.InsecureTest, evk, pkb), good...)
		wantStatus(t, err, codes.NotFound, `unknown model "nope"`)
	})
	t.Run("wrong preset", func(t *testing.T) {
		_, err := upload(rpc, header("fake", he.N14, evk, pkb), good...)
		wantStatus(t, err, codes.FailedPrecondition, "preset disagreement")
	})
	t.Run("forged preset", func(t *testing.T) {
		hd := header("fake", he.N14, evk, pkb)
		hd.Preset.LogQ = append(hd.Preset.LogQ, 60, 60, 60)
		_, err := upload(rpc, hd, good...)
		wantStatus(t, err, codes.InvalidArgument, "exceeds the HE-standard bound")
	})
	t.Run("oversize chunk", func(t *testing.T) {
		_, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), keyChunks(evk, pkb, (1<<20)+1)...)
		wantStatus(t, err, codes.InvalidArgument, "exceeds the chunk limit")
	})
	t.Run("oversize message", func(t *testing.T) {
		big := &pb.KeyChunk{Kind: pb.KeyKind_KEY_KIND_EVALUATION, Data: make([]byte, 3<<20)}
		_, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), big)
		wantStatus(t, err, codes.ResourceExhausted, "larger than max")
	})
	t.Run("chunk out of order", func(t *testing.T) {
		ch := keyChunks(evk, pkb, 1<<16)
		ch[0], ch[1] = ch[1], ch[0]
		_, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), ch...)
		wantStatus(t, err, codes.InvalidArgument, "contiguous")
	})
	t.Run("truncated upload", func(t *testing.T) {
		ch := keyChunks(evk, pkb, 1<<16)
		_, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), ch[:len(ch)-1]...)
		wantStatus(t, err, codes.InvalidArgument, "upload ended early")
	})
	t.Run("declared size over the key limit", func(t *testing.T) {
		hd := header("fake", he.InsecureTest, evk, pkb)
		hd.EvaluationKeyBytes = uint64(caps.MaxKeyBytes)
		_, err := upload(rpc, hd)
		wantStatus(t, err, codes.InvalidArgument, "exceed the per-session limit")
	})
	t.Run("corrupt keys", func(t *testing.T) {
		bad := append([]byte(nil), evk...)
		for i := len(bad) / 2; i < len(bad)/2+64; i++ {
			bad[i] = 0xff
		}
		_, err := upload(rpc, header("fake", he.InsecureTest, bad, pkb), keyChunks(bad, pkb, 1<<20)...)
		wantStatus(t, err, codes.InvalidArgument, "evaluation keys")
	})
	t.Run("keys for another ring", func(t *testing.T) {
		p13, _ := he.InsecureN13.Parameters(true)
		ck := he.NewClientKeys(p13)
		r := he.NewKeyRequest(p13)
		r.AddRotations(p13.MaxLevel(), 1, 2, 3)
		ek, _ := ck.GenEvaluationKeys(r, he.KeyOptions{})
		b, _ := ek.MarshalBinary(p13)
		_, err := upload(rpc, header("fake", he.InsecureTest, b, pkb), keyChunks(b, pkb, 1<<20)...)
		wantStatus(t, err, codes.InvalidArgument, "do not match")
	})
	t.Run("missing Galois key", func(t *testing.T) {
		params := cr.ClientKeys().Params
		r := he.NewKeyRequest(params)
		r.AddRotations(params.MaxLevel(), 1, 2)
		ek, _ := cr.ClientKeys().GenEvaluationKeys(r, he.KeyOptions{Compressed: true})
		b, _ := ek.MarshalBinary(params)
		_, err := upload(rpc, header("fake", he.InsecureTest, b, pkb), keyChunks(b, pkb, 1<<20)...)
		wantStatus(t, err, codes.InvalidArgument, "1 Galois keys missing")
	})

	// A valid session for the generation checks.
	resp, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), good...)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.SessionId
	params := cr.ClientKeys().Params
	ct, _ := cr.EncryptToken(3, 0)
	ctb, _ := ct.MarshalBinary()

	gen := func(msgs ...*pb.GenerateRequest) error {
		st, err := rpc.Generate(context.Background())
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := st.Send(m); err != nil {
				break
			}
		}
		st.CloseSend()
		for {
			if _, err := st.Recv(); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}
	startMsg := func(id string, prompt, n uint32) *pb.GenerateRequest {
		return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: id, PromptTokens: prompt, PromptCiphertexts: prompt, MaxNewTokens: n}}}
	}
	prompt := func(i uint32, b []byte) *pb.GenerateRequest {
		return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Prompt{Prompt: &pb.PromptCiphertext{Index: i, Ciphertext: b}}}
	}
	t.Run("unknown session", func(t *testing.T) {
		wantStatus(t, gen(startMsg("deadbeef", 1, 1)), codes.NotFound, "no session")
	})
	t.Run("context overflow", func(t *testing.T) {
		wantStatus(t, gen(startMsg(id, servertest.Context, 2)), codes.OutOfRange, "context overflow")
		wantStatus(t, gen(startMsg(id, servertest.Context+1, 1)), codes.OutOfRange, "exceeds the context")
	})
	t.Run("token limit", func(t *testing.T) {
		wantStatus(t, gen(startMsg(id, 1, uint32(caps.MaxNewTokens)+1)), codes.OutOfRange, "server's limit")
	})
	t.Run("malformed ciphertext", func(t *testing.T) {
		bad := append([]byte(nil), ctb...)
		bad = bad[:len(bad)-1]
		wantStatus(t, gen(startMsg(id, 1, 1), prompt(0, bad)), codes.InvalidArgument, "prompt ciphertext 0: ciphertext rejected")
		wantStatus(t, gen(startMsg(id, 1, 1), prompt(0, []byte("garbage"))), codes.InvalidArgument, "ciphertext rejected")
	})
	t.Run("ciphertext at the wrong level", func(t *testing.T) {
		low := ct.CopyNew()
		low.Resize(1, 2)
		b, _ := low.MarshalBinary()
		wantStatus(t, gen(startMsg(id, 1, 1), prompt(0, b)), codes.InvalidArgument, "ciphertext rejected")
	})
	t.Run("ciphertext from another ring", func(t *testing.T) {
		p13, _ := he.InsecureN13.Parameters(true)
		c13, _ := he.NewClientKeys(p13).Encrypt([]float64{1}, -1)
		b, _ := c13.MarshalBinary()
		wantStatus(t, gen(startMsg(id, 1, 1), prompt(0, b)), codes.InvalidArgument, "ciphertext rejected")
	})
	t.Run("wrong order", func(t *testing.T) {
		wantStatus(t, gen(startMsg(id, 2, 1), prompt(1, ctb)), codes.InvalidArgument, "arrived as index 1")
		wantStatus(t, gen(prompt(0, ctb)), codes.InvalidArgument, "must be Start")
	})
	t.Run("bad refresh answer", func(t *testing.T) {
		st, err := rpc.Generate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Send(startMsg(id, 1, 1))
		st.Send(prompt(0, ctb))
		var rerr error
		for {
			m, err := st.Recv()
			if err != nil {
				rerr = err
				break
			}
			if r := m.GetRefresh(); r != nil {
				st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: &pb.RefreshAnswer{Round: r.Round, SeededCiphertexts: [][]byte{make([]byte, 40)}}}})
			}
		}
		wantStatus(t, rerr, codes.InvalidArgument, "refresh answer round 1 item 0")
	})

	// After all of that the server still serves, and the session too.
	c := dialFake(t, h.addr)
	s2, err := c.NewSession(context.Background(), "fake")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s2.Generate(context.Background(), []int{1, 2}, 3, client.GenerateOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := servertest.Greedy([]int{1, 2}, 3); !equalInts(res.Tokens, want) {
		t.Fatalf("tokens %v, want %v", res.Tokens, want)
	}
	// The raw session too: a full exchange by hand.
	st, err := rpc.Generate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(startMsg(id, 1, 1))
	st.Send(prompt(0, ctb))
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("the first session after the errors: %v", err)
		}
		if r := m.GetRefresh(); r != nil {
			req, err := pb.RefreshRequestFromProto(params, r, 8)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := cr.AnswerRefresh(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := pb.RefreshAnswerToProto(r.Round, resp)
			st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: a}})
			continue
		}
		l := m.GetLogits()
		if l == nil {
			continue
		}
		lct, err := pb.UnmarshalCiphertext(params, l.Ciphertext, pb.AnyLevelRule(params))
		if err != nil {
			t.Fatal(err)
		}
		v, _ := cr.DecryptLogits(lct)
		if got, want := argmax(v), servertest.Next(3, 0); got != want {
			t.Fatalf("raw session: token %d, want %d", got, want)
		}
		break
	}
	st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_End{End: &pb.End{}}})
	st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
}

func TestLimits(t *testing.T) {
	caps := pb.DefaultCaps()
	caps.MaxSessions = 1
	h := start(t, server.Config{Caps: caps}, fakeModel(t))
	c := dialFake(t, h.addr)
	ctx := context.Background()
	s1, err := c.NewSession(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.NewSession(ctx, "")
	wantStatus(t, err, codes.ResourceExhausted, "session limit")
	s1.Close()
	if _, err := c.NewSession(ctx, ""); err != nil {
		t.Fatalf("after closing the first session: %v", err)
	}

	// Key memory: room for one session's keys only.
	cr, evk, pkb := fakeKeys(t)
	params := cr.ClientKeys().Params
	ek, _ := pb.ParseEvaluationKeys(params, evk, 0)
	ek.Expand(params) // the server charges the expanded (held) size
	caps = pb.DefaultCaps()
	caps.MaxKeyBytes = int64(ek.BinarySize()+len(pkb)) * 3 / 2
	h2 := start(t, server.Config{Caps: caps}, fakeModel(t))
	rpc := raw(t, h2.addr)
	if _, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), keyChunks(evk, pkb, 1<<20)...); err != nil {
		t.Fatal(err)
	}
	_, err = upload(rpc, header("fake", he.InsecureTest, evk, pkb), keyChunks(evk, pkb, 1<<20)...)
	wantStatus(t, err, codes.ResourceExhausted, "key memory limit")
}

func TestIdleTimeout(t *testing.T) {
	h := start(t, server.Config{IdleTimeout: 150 * time.Millisecond}, fakeModel(t))
	c := dialFake(t, h.addr)
	s, err := c.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	waitSessions(t, h.srv, 0)
	_, err = s.Generate(context.Background(), []int{1}, 1, client.GenerateOptions{}, nil)
	wantStatus(t, err, codes.NotFound, "no session")

	// A client that falls silent mid-upload or mid-generation loses its
	// session and its reservations.
	rpc := raw(t, h.addr)
	_, evk, pkb := fakeKeys(t)
	up, err := rpc.CreateSession(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	up.Send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, evk, pkb)}})
	_, err = up.CloseAndRecv() // CloseSend is not a chunk: the server sees EOF
	wantStatus(t, err, codes.InvalidArgument, "upload ended early")
	up, _ = rpc.CreateSession(context.Background())
	up.Send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, evk, pkb)}})
	up.Header() // blocks until the server ends the stream (it sends no header first)
	_, err = up.CloseAndRecv()
	wantStatus(t, err, codes.DeadlineExceeded, "no message from the client")
	if h.srv.KeyBytes() != 0 {
		t.Fatalf("%d key bytes still reserved", h.srv.KeyBytes())
	}
	s2, err := c.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := rpc.Generate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: s2.ID(), PromptTokens: 1, PromptCiphertexts: 1, MaxNewTokens: 1}}})
	var rerr error
	for rerr == nil {
		_, rerr = st.Recv()
	}
	wantStatus(t, rerr, codes.DeadlineExceeded, "no message from the client")
	waitSessions(t, h.srv, 0)
}

func waitSessions(t *testing.T, srv *server.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Sessions() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, want %d", srv.Sessions(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDisconnectMidGeneration(t *testing.T) {
	m := fakeModel(t)
	m.StepDelay = 100 * time.Millisecond
	h := start(t, server.Config{}, m)
	c := dialFake(t, h.addr)
	s, err := c.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := 0
	_, err = s.Generate(ctx, []int{1, 2}, 10, client.GenerateOptions{}, func(client.Token) error {
		got++
		if got == 2 {
			cancel() // the client goes away mid-generation
		}
		return nil
	})
	if err == nil {
		t.Fatal("generation survived its cancelled context")
	}
	waitSessions(t, h.srv, 0)
	if h.srv.KeyBytes() != 0 {
		t.Fatalf("%d key bytes held after the session was dropped", h.srv.KeyBytes())
	}
	// The server stops working on it: no more steps after the drop settles.
	steps := m.Steps.Load()
	time.Sleep(300 * time.Millisecond)
	if m.Steps.Load() != steps {
		t.Fatalf("the model kept stepping after the client left (%d → %d)", steps, m.Steps.Load())
	}
	// And it keeps serving.
	s2, err := dialFake(t, h.addr).NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Generate(context.Background(), []int{3}, 2, client.GenerateOptions{}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestGracefulShutdown(t *testing.T) {
	m := fakeModel(t)
	h := start(t, server.Config{}, m)
	c := dialFake(t, h.addr)
	if _, err := c.NewSession(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	h.stop()
	if h.srv.Sessions() != 0 {
		t.Fatalf("%d sessions after shutdown", h.srv.Sessions())
	}
	if _, err := c.NewSession(context.Background(), ""); err == nil {
		t.Fatal("a stopped server created a session")
	}
}

func TestConcurrentSessions(t *testing.T) {
	h := start(t, server.Config{}, fakeModel(t))
	c := dialFake(t, h.addr)
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			s, err := c.NewSession(context.Background(), "")
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			prompt := []int{i, 2 * i}
			res, err := s.Generate(context.Background(), prompt, 4, client.GenerateOptions{}, nil)
			if err == nil && !equalInts(res.Tokens, servertest.Greedy(prompt, 4)) {
				err = errors.New("wrong tokens in a concurrent session")
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitSessions(t, h.srv, 0)
}
