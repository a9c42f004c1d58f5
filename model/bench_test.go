package model

import "testing"

// BenchmarkForward: one window of 128 tokens through a d=256, 4-layer,
// 4-head model (the design notes' prototype size), exact and approximated.
func BenchmarkForward(b *testing.B) {
	for _, cfg := range []Config{EntropyGuided(1024, 128, 256, 4, 4), Baseline(1024, 128, 256, 4, 4)} {
		w, err := NewRandom(cfg, 1)
		if err != nil {
			b.Fatal(err)
		}
		toks := randomTokens(1, cfg.Vocab, cfg.Context)
		cal, err := Calibrate(w, [][]int{toks}, CalibrateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ab, err := NewApprox(cfg, cal.Set)
		if err != nil {
			b.Fatal(err)
		}
		for name, p := range map[string]*Plain{"exact": NewReference(cfg), "approx": ab} {
			b.Run(cfg.Name+"/"+name, func(b *testing.B) {
				for b.Loop() {
					p.Reset()
					if _, err := Forward(w, p, toks, 0); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*len(toks))/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}
