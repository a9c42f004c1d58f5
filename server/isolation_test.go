package server_test

import (
	"context"
	"math"
	"testing"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// untilLogits answers refresh rounds until the logits arrive.
func untilLogits(t *testing.T, cr *servertest.Crypto, st pb.Entropi_GenerateClient) (uint32, *rlwe.Ciphertext) {
	t.Helper()
	params := cr.ClientKeys().Params
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r := m.GetRefresh(); r != nil {
			answerRefresh(t, cr, st, r)
			continue
		}
		if l := m.GetLogits(); l != nil {
			ct, err := pb.UnmarshalCiphertext(params, l.Ciphertext, pb.AnyLevelRule(params))
			if err != nil {
				t.Fatal(err)
			}
			return l.Position, ct
		}
	}
}

// oneHot reports whether v is (close to) the one-hot of want.
func oneHot(v []float64, want int) bool {
	for i, x := range v {
		target := 0.0
		if i == want {
			target = 1
		}
		if math.Abs(x-target) > 0.2 {
			return false
		}
	}
	return true
}

// Two sessions of two clients, their generations interleaved step by step:
// each session's generation state (the fake's position, standing in for
// the KV cache) and keys are its own. A's logits decrypt to A's next token
// under A's key and to noise under B's (the server flooded and refreshed
// with A's public key), and B's steps between A's do not move A's position.
func TestSessionIsolation(t *testing.T) {
	h := start(t, server.Config{}, fakeModel(t))
	ctx := context.Background()
	crA, stA, _ := rawGeneration(t, ctx, h.addr, 2) // tokens 0, 1 at positions 0, 1
	crB, stB, _ := rawGeneration(t, ctx, h.addr, 1) // token 0 at position 0

	step := func(name string, cr, other *servertest.Crypto, st pb.Entropi_GenerateClient, token, pos int) int {
		t.Helper()
		p, ct := untilLogits(t, cr, st)
		if int(p) != pos+1 {
			t.Fatalf("%s: logits for position %d, want %d", name, p, pos+1)
		}
		v, err := cr.DecryptLogits(ct)
		if err != nil {
			t.Fatal(err)
		}
		want := servertest.Next(token, pos)
		if !oneHot(v, want) {
			t.Fatalf("%s: logits after token %d at position %d are not the one-hot of %d: %v", name, token, pos, want, v)
		}
		w, err := other.DecryptLogits(ct)
		if err == nil && oneHot(w, want) {
			t.Fatalf("%s: the other client's key decrypts this session's logits", name)
		}
		return want
	}
	send := func(st pb.Entropi_GenerateClient, cr *servertest.Crypto, token, pos int) {
		t.Helper()
		ct, err := cr.EncryptToken(token, pos)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := ct.MarshalBinary()
		if err := st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_NextToken{NextToken: &pb.TokenCiphertext{Position: uint32(pos), Ciphertext: b}}}); err != nil {
			t.Fatal(err)
		}
	}
	a := step("A prefill", crA, crB, stA, 1, 1)
	b := step("B prefill", crB, crA, stB, 0, 0)
	send(stB, crB, b, 1)
	step("B decode", crB, crA, stB, b, 1) // B moves on while A waits
	send(stA, crA, a, 2)
	step("A decode", crA, crB, stA, a, 2)
	for _, st := range []pb.Entropi_GenerateClient{stA, stB} {
		st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_End{End: &pb.End{}}})
		st.CloseSend()
		for {
			if _, err := st.Recv(); err != nil {
				break
			}
		}
	}
}
