package model

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReadGPT2: importing a Hugging Face GPT-2 file (downloaded, so not
// trusted) never panics, and whatever imports passes CheckShapes.
//
//	go test -run '^$' -fuzz '^FuzzReadGPT2$' -fuzztime 60s -parallel 1 ./model/
func FuzzReadGPT2(f *testing.F) {
	cfg := Baseline(20, 2, 4, 1, 2)
	cfg.FFNHidden = 8
	w, err := NewRandom(cfg, 5)
	if err != nil {
		f.Fatal(err)
	}
	ts := map[string]Tensor{}
	for name, tn := range w.Tensors() {
		if strings.HasSuffix(name, "entropy_threshold") {
			continue
		}
		ts["transformer."+name] = tn
	}
	ts["transformer.h.0.attn.bias"] = Tensor{Shape: []int{1, 1, 2, 2}, Data: []float64{1, 0, 1, 1}}
	ts["lm_head.weight"] = ts["transformer.wte.weight"]
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, ts, map[string]string{"format": "pt"}, F32); err != nil {
		f.Fatal(err)
	}
	if _, err := ReadGPT2(bytes.NewReader(buf.Bytes()), 2); err != nil {
		f.Fatalf("seed does not import: %v", err)
	}
	f.Add(buf.Bytes(), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, heads uint8) {
		ck, err := ReadGPT2(bytes.NewReader(data), int(heads))
		if err != nil {
			return
		}
		if err := ck.Weights.CheckShapes(); err != nil {
			t.Fatalf("imported weights fail CheckShapes: %v", err)
		}
	})
}
