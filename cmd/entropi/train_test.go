package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/model"
)

func TestVariantConfig(t *testing.T) {
	cases := []struct {
		variant           string
		ln, temp, reg     bool
		fused, ffnScaling bool
	}{
		{variantBaseline, true, false, false, false, false},
		{variantSMScFuFN, false, false, false, true, true},
		{variantEReg, false, true, true, true, true},
	}
	for _, c := range cases {
		cfg, opts, err := variantConfig(c.variant, 512, 32, 16, 2, 2, 1e-5, 0.2)
		if err != nil {
			t.Fatalf("%s: %v", c.variant, err)
		}
		if cfg.Name != c.variant || cfg.LayerNorm != c.ln || cfg.Temperature != c.temp || opts.EntropyReg != c.reg ||
			cfg.FusedFFN != c.fused || cfg.FFNScaling != c.ffnScaling {
			t.Errorf("%s: config %+v options %+v", c.variant, cfg, opts)
		}
		if c.reg && (opts.Lambda != 1e-5 || opts.Gamma != 0.2) {
			t.Errorf("%s: λ, γ = %v, %v", c.variant, opts.Lambda, opts.Gamma)
		}
	}
	if _, _, err := variantConfig("gpt-5", 512, 32, 16, 2, 2, 0, 0); err == nil {
		t.Error("unknown variant accepted")
	}
}

// tinyGoroot writes a GOROOT with a few dozen small Go files.
func tinyGoroot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "VERSION"), []byte("go1.99.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		dir := filepath.Join(root, "src", fmt.Sprintf("pkg%02d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("package pkg%02d\n\n// Sum%d adds.\nfunc Sum%d(xs []int) int {\n\ts := %d\n\tfor _, x := range xs {\n\t\ts += x\n\t}\n\treturn s\n}\n", i, i, i, i)
		if err := os.WriteFile(filepath.Join(dir, "sum.go"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// End to end on a tiny corpus: train, export with metadata and tokenizer;
// stopping and resuming gives the same weights.
func TestTrainCommandAndResume(t *testing.T) {
	root, dir := tinyGoroot(t), t.TempDir()
	args := func(out string, extra ...string) []string {
		return append([]string{"--goroot", root, "--held-out", "2000", "--cache", filepath.Join(dir, "cache"),
			"--variant", variantEReg, "--vocab", "300", "--dim", "16", "--layers", "1", "--heads", "2", "--context", "16",
			"--batch", "4", "--micro-batch", "2", "--steps", "6", "--warmup", "2", "--eval-every", "3", "--eval-windows", "4",
			"--workers", "2", "--out", out}, extra...)
	}
	full := filepath.Join(dir, "full.safetensors")
	if err := runTrain(args(full)); err != nil {
		t.Fatal(err)
	}
	ck, err := model.Load(full)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Tokenizer == nil || ck.Tokenizer.VocabSize() != 300 || ck.Weights.Config.Name != variantEReg {
		t.Fatalf("checkpoint: tokenizer %v, config %+v", ck.Tokenizer, ck.Weights.Config)
	}
	for _, k := range []string{"command", "corpus_sha256", "seed", "tokens", "wall_time", "machine", "held_out_ce", "train_config", "held_out_head_entropy"} {
		if ck.Meta[k] == "" {
			t.Errorf("metadata %q missing (%v)", k, ck.Meta)
		}
	}
	if ck.Meta["tokens"] != "384" { // 6 steps × 4 sequences × 16 tokens
		t.Errorf("tokens %q", ck.Meta["tokens"])
	}
	if _, err := os.Stat(full + ".history.json"); err != nil {
		t.Error(err)
	}

	part := filepath.Join(dir, "part.safetensors")
	if err := runTrain(args(part, "--stop-after", "4")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(part); err == nil {
		t.Fatal("a stopped run wrote a checkpoint")
	}
	if err := runTrain([]string{"--goroot", root, "--cache", filepath.Join(dir, "cache"), "--resume", part + ".state", "--out", part}); err != nil {
		t.Fatal(err)
	}
	ck2, err := model.Load(part)
	if err != nil {
		t.Fatal(err)
	}
	a, b := ck.Weights, ck2.Weights
	same := mat.Equal(a.Wte, b.Wte) && mat.Equal(a.Wpe, b.Wpe) && a.FinalScale == b.FinalScale
	for l := range a.Blocks {
		x, y := a.Blocks[l], b.Blocks[l]
		same = same && mat.Equal(x.Attn, y.Attn) && mat.Equal(x.Proj, y.Proj) && mat.Equal(x.Fused, y.Fused) && mat.Equal(x.Temp, y.Temp)
	}
	if !same {
		t.Error("resumed run's weights differ from the uninterrupted run")
	}
	if ck2.Meta["resumed_with"] == "" {
		t.Error("resume not recorded in the metadata")
	}
}
