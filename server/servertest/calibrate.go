package servertest

import (
	"math/rand/v2"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/model"
)

// CalibrateWide calibrates a small random model for encrypted tests: on 16
// random token sequences of its full context, with widened ranges (ratio
// margin 4) and loose Newton tolerances. Random models reach softmax
// denominators beyond a small calibration sample, and in bootstrap mode
// every bootstrap divides by a bound taken from these ranges, so they need
// the margin. Deterministic.
func CalibrateWide(w *model.Weights) (*approx.Set, error) {
	cfg := w.Config
	r := rand.New(rand.NewPCG(2, 7))
	seqs := make([][]int, 16)
	for i := range seqs {
		seqs[i] = make([]int, cfg.Context)
		for j := range seqs[i] {
			seqs[i][j] = r.IntN(cfg.Vocab)
		}
	}
	cal, err := model.Calibrate(w, seqs, model.CalibrateOptions{RatioMargin: 4, RecipTol: 1e-3, InvSqrtTol: 1e-3})
	if err != nil {
		return nil, err
	}
	return cal.Set, nil
}
