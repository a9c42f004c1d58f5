package server_test

import (
	"context"
	"io"
	"runtime"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
)

// A client-declared key size is checked against the caps, and even then
// the server allocates only as bytes arrive: a header that declares 1 GiB
// followed by a few bytes must not cost the server 1 GiB.
func TestKeyUploadAllocatesWithTheData(t *testing.T) {
	caps := pb.DefaultCaps()
	caps.MaxKeyBytes = 2 << 30
	caps.MaxMessageBytes = 2 << 20
	caps.MaxChunkBytes = 1 << 20
	h := start(t, server.Config{Caps: caps}, fakeModel(t))
	rpc := raw(t, h.addr)
	_, evk, pkb := fakeKeys(t)
	hd := header("fake", he.InsecureTest, evk, pkb)
	hd.EvaluationKeyBytes = 1 << 30
	chunks := keyChunks(evk[:64<<10], nil, 16<<10)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := upload(rpc, hd, chunks...)
	runtime.ReadMemStats(&after)
	wantStatus(t, err, codes.InvalidArgument, "upload ended early")
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
		t.Fatalf("a 1 GiB declaration with 64 KiB sent allocated %d MiB", d>>20)
	}
	if kb := h.srv.KeyBytes(); kb != 0 {
		t.Fatalf("the failed upload left %d bytes reserved", kb)
	}
}

// Seeded (compressed) evaluation keys nearly double when the server
// expands them; keys whose expansion would pass the key-memory cap are
// refused before the expansion is allocated.
func TestExpandedKeysOverTheCapRefused(t *testing.T) {
	_, evk, pkb := fakeKeys(t)
	caps := pb.DefaultCaps()
	caps.MaxKeyBytes = int64(len(evk)+len(pkb)) * 5 / 4 // the upload fits, the expanded keys do not
	h := start(t, server.Config{Caps: caps}, fakeModel(t))
	rpc := raw(t, h.addr)
	_, err := upload(rpc, header("fake", he.InsecureTest, evk, pkb), keyChunks(evk, pkb, 1<<20)...)
	wantStatus(t, err, codes.ResourceExhausted, "would exceed the key memory limit")
	if kb, n := h.srv.KeyBytes(), h.srv.Sessions(); kb != 0 || n != 0 {
		t.Fatalf("after the refusal: %d key bytes, %d sessions", kb, n)
	}
}

// When a session is registered its reservation (declared bytes, one
// pending slot) becomes the session at once. It used to be released only
// when the handler returned, after the response was sent: in between the
// session was counted twice, the accounted key memory passed the cap
// (TestConcurrentLoad under -race) and a concurrent upload was refused a
// slot that was free.
func TestSessionReservationHandedOver(t *testing.T) {
	m := fakeModel(t)
	caps := pb.DefaultCaps()
	caps.MaxSessions = 2
	srv, err := server.New(server.Config{Caps: caps, AllowInsecure: true, Logger: quietLogger()}, m)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, evk, pkb := fakeKeys(t)
	chunks := keyChunks(evk, pkb, 1<<20)
	stream := func() *memStream[pb.CreateSessionRequest, pb.CreateSessionResponse] {
		i := -1
		return &memStream[pb.CreateSessionRequest, pb.CreateSessionResponse]{ctx: context.Background(), next: func() (*pb.CreateSessionRequest, error) {
			i++
			switch {
			case i == 0:
				return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: header("fake", he.InsecureTest, evk, pkb)}}, nil
			case i <= len(chunks):
				return &pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: chunks[i-1]}}, nil
			}
			return nil, io.EOF
		}}
	}
	first := stream()
	var inner error
	first.onSend = func(r *pb.CreateSessionResponse) {
		// The first session is registered; its handler has not returned.
		if kb := srv.KeyBytes(); kb != int64(r.KeyBytes) {
			t.Errorf("with one session of %d bytes, %d bytes accounted", r.KeyBytes, kb)
		}
		inner = srv.CreateSession(stream()) // the second of two slots
	}
	if err := srv.CreateSession(first); err != nil {
		t.Fatal(err)
	}
	if inner != nil {
		t.Fatalf("a second session (limit 2) while the first one's response was being sent: %v", inner)
	}
	if n := srv.Sessions(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
}
