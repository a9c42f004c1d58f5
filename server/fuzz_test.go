package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Fuzzing the service's handlers: the fuzzer writes a small program whose
// instructions are either valid protocol messages (so that it reaches the
// deep states: a complete key upload, a generation with refresh rounds) or
// hostile ones (raw protobuf bytes, corrupted chunks and ciphertexts), and
// the handler runs on an in-memory stream (no network). Whatever the
// program, the handler must return in time with a status a client can act
// on (never Unknown or Internal), and leave the server's accounting clean.
//
//	go test -run '^$' -fuzz '^FuzzCreateSession$' -fuzztime 60s -parallel 1 ./server/

// memStream is a gRPC server stream over a program of messages.
type memStream[Req, Res any] struct {
	grpc.ServerStream // nil: the handlers use only the methods below
	ctx               context.Context
	next              func() (*Req, error)
	onSend            func(*Res) // called before a message is recorded

	mu   sync.Mutex
	sent []*Res
}

func (m *memStream[Req, Res]) Context() context.Context { return m.ctx }
func (m *memStream[Req, Res]) Recv() (*Req, error)      { return m.next() }
func (m *memStream[Req, Res]) Send(r *Res) error {
	if m.onSend != nil {
		m.onSend(r)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, r)
	return nil
}
func (m *memStream[Req, Res]) SendAndClose(r *Res) error { return m.Send(r) }
func (m *memStream[Req, Res]) last() *Res {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent) == 0 {
		return nil
	}
	return m.sent[len(m.sent)-1]
}

// program reads the fuzzer's bytes.
type program struct{ b []byte }

func (p *program) byte() (byte, bool) {
	if len(p.b) == 0 {
		return 0, false
	}
	c := p.b[0]
	p.b = p.b[1:]
	return c, true
}

func (p *program) bytes() []byte {
	n, k := binary.Uvarint(p.b)
	if k <= 0 {
		n, k = uint64(len(p.b)), 0
	}
	p.b = p.b[k:]
	n = min(n, uint64(len(p.b)))
	out := p.b[:n]
	p.b = p.b[n:]
	return out
}

type fuzzServer struct {
	srv   *server.Server
	cr    *servertest.Crypto
	evk   []byte
	pkb   []byte
	chunk []*pb.KeyChunk
}

func newFuzzServer(f *testing.F) *fuzzServer {
	m, err := servertest.NewModel("fake")
	if err != nil {
		f.Fatal(err)
	}
	caps := pb.DefaultCaps()
	caps.MaxMessageBytes = 2 << 20
	caps.MaxChunkBytes = 1 << 20
	caps.MaxSessions = 2
	srv, err := server.New(server.Config{Caps: caps, AllowInsecure: true, IdleTimeout: time.Minute, Logger: quietLogger()}, m)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Close)
	cr, err := servertest.NewCrypto(m.Info().Spec, true)
	if err != nil {
		f.Fatal(err)
	}
	ek, pk, err := cr.Keys()
	if err != nil {
		f.Fatal(err)
	}
	params := cr.ClientKeys().Params
	evk, _ := ek.MarshalBinary(params)
	pkb, _ := pk.MarshalBinary()
	return &fuzzServer{srv: srv, cr: cr, evk: evk, pkb: pkb, chunk: keyChunks(evk, pkb, 1<<20)}
}

// clientCodes are the statuses a misbehaving client may get.
var clientCodes = map[codes.Code]bool{
	codes.InvalidArgument: true, codes.NotFound: true, codes.FailedPrecondition: true, codes.PermissionDenied: true,
	codes.ResourceExhausted: true, codes.OutOfRange: true, codes.Aborted: true, codes.DeadlineExceeded: true,
}

func runHandler(t *testing.T, what string, h func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- h() }()
	select {
	case err := <-done:
		if err != nil && !clientCodes[pb.Code(err)] {
			t.Fatalf("%s: status %v is not one a client can act on: %v", what, pb.Code(err), err)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the handler hangs", what)
		return nil
	}
}

// FuzzCreateSession: instructions 0 header, 1 next valid key chunk, 2 raw
// CreateSessionRequest bytes, 3 the next valid chunk with one field
// damaged, 4 a header with a fuzzed preset/size.
func FuzzCreateSession(f *testing.F) {
	fs := newFuzzServer(f)
	valid := []byte{0}
	for range fs.chunk {
		valid = append(valid, 1)
	}
	f.Add(valid)
	f.Add([]byte{0, 1, 1})
	f.Add(append([]byte{0, 3, 0, 7}, valid[1:]...))
	f.Add(append(append([]byte{}, valid...), 3, 2, 1))
	f.Add([]byte{4, 0, 0xff, 0xff, 0xff, 0xff, 1, 1})
	hb, _ := proto.Marshal(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, fs.evk, fs.pkb)}})
	f.Add(append([]byte{2, byte(len(hb))}, hb...))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &program{b: data}
		next := 0
		validHeader := func() *pb.CreateSessionRequest {
			return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, fs.evk, fs.pkb)}}
		}
		nextChunk := func() *pb.KeyChunk {
			c := fs.chunk[min(next, len(fs.chunk)-1)]
			next++
			return &pb.KeyChunk{Kind: c.Kind, Offset: c.Offset, Data: c.Data}
		}
		st := &memStream[pb.CreateSessionRequest, pb.CreateSessionResponse]{ctx: context.Background()}
		st.next = func() (*pb.CreateSessionRequest, error) {
			for {
				op, ok := p.byte()
				if !ok {
					return nil, io.EOF
				}
				switch op % 5 {
				case 0:
					return validHeader(), nil
				case 1:
					return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: nextChunk()}}, nil
				case 2:
					var m pb.CreateSessionRequest
					if proto.Unmarshal(p.bytes(), &m) == nil {
						return &m, nil
					}
				case 3:
					c := nextChunk()
					b, _ := p.byte()
					v, _ := p.byte()
					switch b % 4 {
					case 0:
						c.Data = c.Data[:min(int(v)*4096, len(c.Data))]
					case 1:
						c.Offset += uint64(v)
					case 2:
						c.Kind = pb.KeyKind(v % 4)
					case 3:
						d := append([]byte(nil), c.Data...)
						d[(int(v)*7919)%len(d)] ^= 0xff
						c.Data = d
					}
					return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: c}}, nil
				case 4:
					h := validHeader()
					b, _ := p.byte()
					v := p.bytes()
					var x uint64
					for _, c := range v {
						x = x<<8 | uint64(c)
					}
					hh := h.GetHeader()
					switch b % 6 {
					case 0:
						hh.EvaluationKeyBytes = x
					case 1:
						hh.PublicKeyBytes = x
					case 2:
						hh.Preset.LogN = int32(x)
					case 3:
						hh.Preset.SecurityBits = int32(x)
					case 4:
						hh.Preset.LogQ = append(hh.Preset.LogQ, int32(x))
					case 5:
						hh.Model = string(v)
					}
					return h, nil
				}
			}
		}
		err := runHandler(t, "CreateSession", func() error { return fs.srv.CreateSession(st) })
		if bytes.Equal(data, valid) && err != nil {
			t.Fatalf("the valid upload failed: %v", err)
		}
		if err == nil {
			resp := st.last()
			if resp == nil || resp.SessionId == "" {
				t.Fatal("CreateSession succeeded without a session id")
			}
			if _, err := fs.srv.CloseSession(context.Background(), &pb.CloseSessionRequest{SessionId: resp.SessionId}); err != nil {
				t.Fatal(err)
			}
		}
		if n, kb := fs.srv.Sessions(), fs.srv.KeyBytes(); n != 0 || kb != 0 {
			t.Fatalf("after the upload (error %v): %d sessions, %d key bytes accounted", err, n, kb)
		}
	})
}

// FuzzGenerate: on a live session, instructions 0 Start (fuzzed sizes), 1
// the next prompt ciphertext, 2 the valid answer to the last refresh round,
// 3 the next token at the current position, 4 End, 5 Abort, 6 raw
// GenerateRequest bytes, 7 a damaged ciphertext, 8 a damaged refresh
// answer.
func FuzzGenerate(f *testing.F) {
	fs := newFuzzServer(f)
	st := &memStream[pb.CreateSessionRequest, pb.CreateSessionResponse]{ctx: context.Background()}
	i := -1
	st.next = func() (*pb.CreateSessionRequest, error) {
		i++
		switch {
		case i == 0:
			return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, fs.evk, fs.pkb)}}, nil
		case i <= len(fs.chunk):
			return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: fs.chunk[i-1]}}, nil
		}
		return nil, io.EOF
	}
	if err := fs.srv.CreateSession(st); err != nil {
		f.Fatal(err)
	}
	id := st.last().SessionId
	params := fs.cr.ClientKeys().Params
	ct, err := fs.cr.EncryptToken(3, 0)
	if err != nil {
		f.Fatal(err)
	}
	ctb, _ := ct.MarshalBinary()

	// A full generation: Start(1 prompt token, 2 new), prompt, refresh,
	// logits, next token, refresh, logits, End.
	full := []byte{0, 1, 2, 1, 2, 3, 2, 4}
	f.Add(full)
	f.Add([]byte{0, 2, 2, 1, 1, 2, 2, 3, 2, 4})
	f.Add([]byte{0, 1, 2, 1, 8, 0, 7})
	f.Add([]byte{0, 1, 1, 7, 0, 9})
	f.Add([]byte{0, 1, 2, 1, 2, 3, 2, 3, 2, 4})
	f.Add([]byte{0, 0xff, 0xff, 1})
	f.Add([]byte{5})
	sb, _ := proto.Marshal(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: id, PromptTokens: 1, PromptCiphertexts: 1, MaxNewTokens: 1}}})
	f.Add(append([]byte{6, byte(len(sb))}, sb...))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &program{b: data}
		var idx uint32
		gs := &memStream[pb.GenerateRequest, pb.GenerateResponse]{ctx: context.Background()}
		lastRefresh := func() *pb.RefreshRequest {
			gs.mu.Lock()
			defer gs.mu.Unlock()
			for i := len(gs.sent) - 1; i >= 0; i-- {
				if r := gs.sent[i].GetRefresh(); r != nil {
					return r
				}
			}
			return nil
		}
		position := func() uint32 {
			gs.mu.Lock()
			defer gs.mu.Unlock()
			for i := len(gs.sent) - 1; i >= 0; i-- {
				if l := gs.sent[i].GetLogits(); l != nil {
					return l.Position
				}
			}
			return 0
		}
		answer := func() *pb.RefreshAnswer {
			r := lastRefresh()
			if r == nil {
				return &pb.RefreshAnswer{}
			}
			req, err := pb.RefreshRequestFromProto(params, r, 8)
			if err != nil {
				t.Fatalf("the server sent a refresh round its own client refuses: %v", err)
			}
			resp, err := fs.cr.AnswerRefresh(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			a, err := pb.RefreshAnswerToProto(r.Round, resp)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
		gs.next = func() (*pb.GenerateRequest, error) {
			for {
				op, ok := p.byte()
				if !ok {
					return nil, io.EOF
				}
				switch op % 9 {
				case 0:
					a, _ := p.byte()
					b, _ := p.byte()
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: id, PromptTokens: uint32(a), PromptCiphertexts: uint32(a), MaxNewTokens: uint32(b)}}}, nil
				case 1:
					idx++
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Prompt{Prompt: &pb.PromptCiphertext{Index: idx - 1, Ciphertext: ctb}}}, nil
				case 2:
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: answer()}}, nil
				case 3:
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_NextToken{NextToken: &pb.TokenCiphertext{Position: position(), Ciphertext: ctb}}}, nil
				case 4:
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_End{End: &pb.End{}}}, nil
				case 5:
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Abort{Abort: &pb.Abort{Code: 1, Message: "fuzz"}}}, nil
				case 6:
					var m pb.GenerateRequest
					if proto.Unmarshal(p.bytes(), &m) == nil {
						return &m, nil
					}
				case 7:
					a, _ := p.byte()
					b, _ := p.byte()
					d := append([]byte(nil), ctb...)
					d[(int(a)<<8|int(b))*37%len(d)] ^= 1 << (b % 8)
					idx++
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_Prompt{Prompt: &pb.PromptCiphertext{Index: idx - 1, Ciphertext: d}}}, nil
				case 8:
					a := answer()
					k, _ := p.byte()
					v, _ := p.byte()
					switch {
					case len(a.SeededCiphertexts) == 0:
					case k%3 == 0:
						a.Round += uint64(v)
					case k%3 == 1:
						c := append([]byte(nil), a.SeededCiphertexts[0]...)
						c[(int(v)*104729)%len(c)] ^= 0x80
						a.SeededCiphertexts[0] = c
					default:
						a.SeededCiphertexts = append(a.SeededCiphertexts, a.SeededCiphertexts[0][:int(v)%len(a.SeededCiphertexts[0])])
					}
					return &pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: a}}, nil
				}
			}
		}
		err := runHandler(t, "Generate", func() error { return fs.srv.Generate(gs) })
		if bytes.Equal(data, full) && err != nil {
			t.Fatalf("the valid generation failed: %v", err)
		}
		if err == nil {
			if gs.last().GetDone() == nil {
				t.Fatal("Generate ended without error and without Done")
			}
		}
		if n := fs.srv.Sessions(); n != 1 {
			t.Fatalf("after the generation (error %v): %d sessions, want the one live session", err, n)
		}
	})
}
