package engine

import (
	"context"
	"testing"
	"time"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// Batched prefill tests. Insecure test preset (he.InsecureTest: N=2^12,
// 2048 slots; no security), tiny random models (d 32, 2 layers, 2 heads,
// vocab 64, context 32): up to 2048/32 = 64 tokens fit one ciphertext.
//
// Stated bound, as for decoding: every logit within 1% of the logit spread
// (max − min) of the approximation backend (the same polynomials in
// float64); greedy tokens after the prompt identical to that backend's.

type prefillCase struct {
	kind       string
	batch      int // Options.PrefillBatch (0: auto, the whole prompt)
	clientEmb  bool
	prompt     int
	steps      int
	sequential bool // also run the prompt token by token and compare
}

func testPrefill(t *testing.T, c prefillCase) {
	t.Parallel()
	cfg := tinyConfig(c.kind)
	f := newFixture(t, cfg, he.InsecureTest, Options{PrefillBatch: c.batch, ClientSideEmbedding: c.clientEmb})
	ctx := context.Background()
	B := f.eng.PrefillBatch()
	require.Greater(t, B, 1)
	require.NotNil(t, f.eng.Plan().Prefill, "the plan covers the prefill")
	prompt := randomSeqs(cfg, 1, c.prompt, 123)[0]

	want, wantToks, ref := approxGreedy(t, f, cfg, prompt, c.steps)
	require.Zero(t, ref.Ranges.Violations(), "approximation range violations in the reference run:\n%s", ref.Ranges)

	cts, err := f.client.EncryptPrompt(prompt)
	require.NoError(t, err)
	t0 := time.Now()
	out, err := f.sess.Prefill(ctx, cts)
	require.NoError(t, err)
	tBatched := time.Since(t0)
	require.Equal(t, len(prompt), f.sess.Pos())
	gotToks, _, maxRel := decodeGreedy(t, f, out, want, len(prompt), 0.01)
	require.Equal(t, wantToks, gotToks, "greedy tokens after the batched prefill")

	st := f.sess.Stats()
	pre, n := st.Phase("prefill")
	require.Equal(t, len(prompt), n)
	batches := 0
	for _, ts := range st.Tokens {
		if ts.Phase == "prefill" {
			batches++
		}
	}
	// Token by token, every prompt token makes the decode plan's rounds.
	seqRounds := f.eng.Plan().Refreshes * len(prompt)
	require.Less(t, pre.Refreshes, seqRounds, "refresh rounds: batched %d, token by token %d", pre.Refreshes, seqRounds)
	t.Logf("%s (batch %d, client-side embedding %v): %d-token prompt in %d batches, %v; %d refresh rounds (%d cts) against %d token by token; max logit error %.2e of the spread over %d positions; greedy %v",
		c.kind, B, c.clientEmb, len(prompt), batches, tBatched.Round(time.Millisecond), pre.Refreshes, pre.RefreshCts, seqRounds, maxRel, c.steps+1, gotToks)

	for _, ts := range st.Tokens {
		if ts.Phase == "prefill" {
			t.Logf("batch: %v", &ts)
		}
	}
	if !c.sequential {
		return
	}
	// The same prompt token by token in a fresh session: same logits.
	keys, err := f.client.Keys()
	require.NoError(t, err)
	seq, err := f.eng.NewSession(keys, f.client.AnswerRefresh)
	require.NoError(t, err)
	t0 = time.Now()
	sout, err := seq.PrefillSequential(ctx, cts)
	require.NoError(t, err)
	tSeq := time.Since(t0)
	got, err := f.client.DecryptLogits(sout)
	require.NoError(t, err)
	for i := range want[0] {
		require.InDelta(t, want[0][i], got[i], 0.01*spread(want[0]), "token-by-token logit %d", i)
	}
	sp, _ := seq.Stats().Phase("prefill")
	t.Logf("token by token, sum: %v", &sp)
	require.Equal(t, seqRounds, sp.Refreshes)
	t.Logf("token by token: %v, %d refresh rounds (%d cts), %d rotations, %d ct×ct; batched: %v, %d rotations, %d ct×ct",
		tSeq.Round(time.Millisecond), sp.Refreshes, sp.RefreshCts, sp.Rotations, sp.CtCt, tBatched.Round(time.Millisecond), pre.Rotations, pre.CtCt)
}

// One batch holds the whole prompt; compared with token by token.
func TestPrefillBatchedEntropyGuided(t *testing.T) {
	testPrefill(t, prefillCase{kind: "entropy-guided", prompt: 8, steps: 4, sequential: true})
}

// Several batches (8 + 4 tokens): the second batch attends to the first
// through the cache; LayerNorm and GELU on token-major rows.
func TestPrefillBatchedBaselineMultiBatch(t *testing.T) {
	testPrefill(t, prefillCase{kind: "baseline", batch: 8, prompt: 12, steps: 4})
}

// Client-side embedding, several batches.
func TestPrefillBatchedClientSideEmbedding(t *testing.T) {
	testPrefill(t, prefillCase{kind: "entropy-guided", batch: 8, clientEmb: true, prompt: 11, steps: 3})
}

// A prompt after earlier positions (prefill, decode, prefill again) starts
// mid-batch: its first batch is rotated into the cache ciphertext at its
// offset. Plan and keys cover every offset. The batched products are
// encoded at each use here (memory budget 0), the path of large models.
// Not parallel: it sets the package's encoding budget while it builds.
func TestPrefillBatchedOffsets(t *testing.T) {
	cfg := tinyConfig("entropy-guided")
	budget := prefillEncodeBudget
	prefillEncodeBudget = 0
	f := newFixture(t, cfg, he.InsecureTest, Options{PrefillBatch: 4})
	prefillEncodeBudget = budget
	require.NotEmpty(t, f.eng.pf.lazy, "batched products encoded at each use")
	ctx := context.Background()
	seq := randomSeqs(cfg, 1, 9, 5)[0] // 3 prompt tokens, then 6 more at positions 3…8
	ref, err := model.NewApprox(cfg, f.set)
	require.NoError(t, err)
	pl, err := model.NewSession(f.w, ref).Prefill(seq)
	require.NoError(t, err)

	encrypt := func(toks []int, pos0 int) []*rlwe.Ciphertext {
		var cts []*rlwe.Ciphertext
		for i, tk := range toks {
			ct, err := f.client.EncryptToken(tk, pos0+i)
			require.NoError(t, err)
			cts = append(cts, ct)
		}
		return cts
	}
	check := func(out *rlwe.Ciphertext, pos int) {
		got, err := f.client.DecryptLogits(out)
		require.NoError(t, err)
		w := pl.RawRowView(pos)
		for i := range w {
			require.InDelta(t, w[i], got[i], 0.01*spread(w), "position %d logit %d", pos, i)
		}
	}
	out, err := f.sess.Prefill(ctx, encrypt(seq[:3], 0)) // batch of 3 at offset 0
	require.NoError(t, err)
	check(out, 2)
	out, err = f.sess.Prefill(ctx, encrypt(seq[3:9], 3)) // 1 token (pos 3), then a batch of 4 at offset 4, then 1
	require.NoError(t, err)
	check(out, 8)
	var shapes []int
	for _, ts := range f.sess.Stats().Tokens {
		shapes = append(shapes, max(1, ts.Rows))
	}
	require.Equal(t, []int{3, 1, 4, 1}, shapes)
}
