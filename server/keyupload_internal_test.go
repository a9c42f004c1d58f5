package server

import (
	"bytes"
	"testing"

	"github.com/entropi-ai/entropi/he"
)

// expandedBytes predicts the memory of expanded keys before they are
// expanded (the server refuses keys whose expansion would pass the cap
// before allocating it).
func TestExpandedBytesPredictsExpand(t *testing.T) {
	params, err := he.InsecureTest.Parameters(true)
	if err != nil {
		t.Fatal(err)
	}
	ck := he.NewClientKeys(params)
	for _, compressed := range []bool{true, false} {
		req := he.NewKeyRequest(params)
		req.AddRotations(params.MaxLevel(), 1, 5)
		req.AddRelin(params.MaxLevel())
		ek, err := ck.GenEvaluationKeys(req, he.KeyOptions{Compressed: compressed, AtUsedLevels: true})
		if err != nil {
			t.Fatal(err)
		}
		before := int64(ek.BinarySize())
		pred := expandedBytes(ek)
		if err := ek.Expand(params); err != nil {
			t.Fatal(err)
		}
		if got := int64(ek.BinarySize()); got != pred {
			t.Fatalf("compressed=%v: predicted %d bytes after expansion, got %d (before: %d)", compressed, pred, got, before)
		}
		if compressed && pred < before*3/2 {
			t.Fatalf("expansion of seeded keys predicted at %d bytes from %d: should nearly double", pred, before)
		}
	}
}

// appendChunk grows with what arrives, never to the declared total at once.
func TestAppendChunkGrowsWithData(t *testing.T) {
	const total = 1 << 30
	var buf []byte
	var want []byte
	for i := range 100 {
		c := bytes.Repeat([]byte{byte(i)}, 1000+i)
		buf = appendChunk(buf, c, total)
		want = append(want, c...)
		if cap(buf) > 2*len(buf)+len(c) {
			t.Fatalf("after %d bytes the buffer has capacity %d", len(buf), cap(buf))
		}
	}
	if !bytes.Equal(buf, want) {
		t.Fatal("appendChunk changed the data")
	}
	// Never past the declared total.
	small := appendChunk(make([]byte, 0, 10), make([]byte, 10), 15)
	small = appendChunk(small, make([]byte, 5), 15)
	if cap(small) != 15 {
		t.Fatalf("capacity %d, want the declared 15", cap(small))
	}
}
