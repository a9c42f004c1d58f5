package engine

import (
	"context"
	"math"
	"testing"

	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// Helpers shared by the tests that compare the encrypted engine with the
// approximation backend (engine_test.go, prefill_test.go,
// bootstrap_test.go).

// approxGreedy runs the approximation backend (the same polynomials in
// float64) on f's weights: prompt, then steps greedy tokens. It returns
// the logits after the prompt and after each step (steps+1 rows), the
// greedy tokens and the backend (whose Ranges record any violation).
func approxGreedy(t *testing.T, f *fixture, cfg model.Config, prompt []int, steps int) (want [][]float64, toks []int, ref *model.Plain) {
	t.Helper()
	ref, err := model.NewApprox(cfg, f.set)
	require.NoError(t, err)
	rs := model.NewSession(f.w, ref)
	pl, err := rs.Prefill(prompt)
	require.NoError(t, err)
	want = [][]float64{append([]float64(nil), pl.RawRowView(len(prompt)-1)...)}
	for s := 0; s < steps; s++ {
		tok := argmax(want[s])
		toks = append(toks, tok)
		l, err := rs.Step(tok)
		require.NoError(t, err)
		want = append(want, append([]float64(nil), l...))
	}
	return want, toks, ref
}

// decodeGreedy checks the encrypted logits out (after a prompt of
// promptLen tokens) against want[0], then decodes len(want)−1 greedy
// tokens on f.sess, each step's logits against the next row of want:
// every logit within tol times the row's spread (max − min). It returns
// the greedy tokens, the largest logit error and its largest ratio to the
// spread.
func decodeGreedy(t *testing.T, f *fixture, out *rlwe.Ciphertext, want [][]float64, promptLen int, tol float64) (toks []int, maxErr, maxRel float64) {
	t.Helper()
	ctx := context.Background()
	steps := len(want) - 1
	for s := 0; ; s++ {
		got, err := f.client.DecryptLogits(out)
		require.NoError(t, err)
		var e float64
		for i := range want[s] {
			e = math.Max(e, math.Abs(got[i]-want[s][i]))
		}
		maxErr, maxRel = math.Max(maxErr, e), math.Max(maxRel, e/spread(want[s]))
		require.Less(t, e, tol*spread(want[s]), "step %d: logit error %.3g vs spread %.3g", s, e, spread(want[s]))
		if s == steps {
			return toks, maxErr, maxRel
		}
		tok := argmax(got)
		toks = append(toks, tok)
		ct, err := f.client.EncryptToken(tok, promptLen+s)
		require.NoError(t, err)
		out, err = f.sess.Decode(ctx, ct)
		require.NoError(t, err)
	}
}

// clientOf is the client side of eng as a remote client builds it: from
// the JSON spec only (the client never sees the engine), with its keys.
func clientOf(t testing.TB, eng *Engine) (*Client, *Keys) {
	t.Helper()
	js, err := eng.Spec().Marshal()
	require.NoError(t, err)
	spec, err := UnmarshalSpec(js)
	require.NoError(t, err)
	client, err := NewClient(spec, nil)
	require.NoError(t, err)
	keys, err := client.Keys()
	require.NoError(t, err)
	return client, keys
}
