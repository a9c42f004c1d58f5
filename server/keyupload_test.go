package server_test

import (
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
