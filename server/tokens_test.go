package server_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/client"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// Token ids and positions. The server never sees a token id (it is
// encrypted), so ids are checked by the client before it encrypts; the
// server checks each next token's position and the generation's token
// budget.
func TestTokenValidation(t *testing.T) {
	h := start(t, server.Config{}, fakeModel(t))
	ctx := context.Background()

	t.Run("client refuses ids outside the vocabulary", func(t *testing.T) {
		c := dialFake(t, h.addr)
		s, err := c.NewSession(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, bad := range [][]int{{-1}, {servertest.Vocab}, {1, servertest.Vocab + 7}} {
			_, err := s.Generate(ctx, bad, 1, client.GenerateOptions{}, nil)
			if err == nil {
				t.Fatalf("prompt %v accepted", bad)
			}
			wantStatus(t, err, codes.Unknown, "outside the vocabulary")
		}
		res, err := s.Generate(ctx, []int{1}, 2, client.GenerateOptions{}, nil)
		if err != nil || !equalInts(res.Tokens, servertest.Greedy([]int{1}, 2)) {
			t.Fatalf("the session after the refusals: %v %v", res, err)
		}
	})

	next := func(st pb.Entropi_GenerateClient, cr *servertest.Crypto, pos uint32) {
		t.Helper()
		ct, _ := cr.EncryptToken(0, int(pos))
		b, _ := ct.MarshalBinary()
		if err := st.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_NextToken{NextToken: &pb.TokenCiphertext{Position: pos, Ciphertext: b}}}); err != nil {
			t.Fatal(err)
		}
	}
	finish := func(st pb.Entropi_GenerateClient) error {
		for {
			if _, err := st.Recv(); err != nil {
				return err
			}
		}
	}
	t.Run("next token at the wrong position", func(t *testing.T) {
		cr, st, _ := rawGeneration(t, ctx, h.addr, 1)
		if p, _ := untilLogits(t, cr, st); p != 1 {
			t.Fatalf("logits for position %d", p)
		}
		next(st, cr, 7)
		wantStatus(t, finish(st), codes.InvalidArgument, "next token for position 7, the session is at position 1")
	})
	t.Run("token budget of the generation", func(t *testing.T) {
		cr, st, _ := rawGeneration(t, ctx, h.addr, 1) // max_new_tokens 2
		untilLogits(t, cr, st)
		next(st, cr, 1)
		if p, _ := untilLogits(t, cr, st); p != 2 {
			t.Fatalf("logits for position %d", p)
		}
		next(st, cr, 2)
		wantStatus(t, finish(st), codes.OutOfRange, "max_new_tokens 2 reached")
	})
}
