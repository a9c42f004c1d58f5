package server_test

import (
	"context"
	"math"
	"testing"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
)

// The logits the served engine sends are flooded with the configured
// noise: two generations of the same prompt decrypt to logits that differ
// by fresh noise each time. With σ = 2^27 per coefficient (the default
// 2^23 plus 4 bits) the flooding dominates, and the rms difference must
// match √2·σ·√(N/2)/S (the slot error of the flooding, twice); the default
// σ gives a difference about 16× smaller (there the masked refreshes' own
// rounding, measured ≈4·10^-4 with flooding set to σ = 1, is of the same
// order as the flooding). If the engine skipped the flooding, or ignored
// its σ, both differences would be the refresh noise alone. (he.TestFlood
// checks the flooding distribution itself; the masked refresh's bound is
// he.TestMaskedRefreshMaskBound.)
func TestLogitsFlooded(t *testing.T) {
	if testing.Short() {
		t.Skip("encrypted decoder")
	}
	w, set := tinyRandomModel(t)
	spread := func(flood he.FloodOptions) float64 {
		eng, err := engine.New(w, set, engine.Options{Preset: he.InsecureTest, AllowInsecure: true, Workers: 2, Flood: flood})
		if err != nil {
			t.Fatal(err)
		}
		_, s := serveTiny(t, eng)
		defer s.Close()
		var logits [2][]float64
		for i := range logits {
			_, err := s.Generate(context.Background(), []int{3, 17}, 1, client.GenerateOptions{KeepLogits: true}, func(tk client.Token) error {
				logits[i] = tk.Logits
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		var ss float64
		for j := range logits[0] {
			d := logits[0][j] - logits[1][j]
			ss += d * d
		}
		return math.Sqrt(ss / float64(len(logits[0])))
	}
	def := he.DefaultFloodOptions()
	more := def
	more.Bits += 4
	a, b := spread(def), spread(more)
	params, _ := he.InsecureTest.Parameters(true)
	pred := math.Sqrt2 * more.Sigma() * math.Sqrt(float64(params.N()/2)) / params.DefaultScale().Float64()
	t.Logf("rms difference of the logits of two identical generations: %.3g with σ = 2^%.0f, %.3g with σ = 2^%.0f (predicted %.3g; ratio %.1f)",
		a, math.Log2(def.Sigma()), b, math.Log2(more.Sigma()), pred, b/a)
	if b < pred/2 || b > 2*pred {
		t.Fatalf("with σ = 2^%.0f the logits differ by %.3g between identical generations, the flooding alone predicts %.3g",
			math.Log2(more.Sigma()), b, pred)
	}
	if r := b / a; r < 6 {
		t.Fatalf("4 more flooding bits changed the difference only %.1f× (want about 16×)", r)
	}
}
