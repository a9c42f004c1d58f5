package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropi-ai/entropi/model"
)

// testCheckpoint saves a small random entropy-guided model with a tokenizer
// trained on text, and writes the text as a data file.
func testCheckpoint(t *testing.T) (ckPath, dataPath string) {
	t.Helper()
	dir := t.TempDir()
	text := []byte(strings.Repeat("func main() {\n\tfmt.Println(\"hello, world\")\n\tfor i := 0; i < 10; i++ {\n\t\tx += i\n\t}\n}\n", 40))
	tok, err := model.TrainBPEWith(text, 300, model.BPEOptions{EndOfText: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.NewRandom(model.EntropyGuided(tok.VocabSize(), 16, 8, 2, 2), 1)
	if err != nil {
		t.Fatal(err)
	}
	ckPath, dataPath = filepath.Join(dir, "m.safetensors"), filepath.Join(dir, "data.txt")
	if err := model.Save(ckPath, &model.Checkpoint{Weights: w, Tokenizer: tok}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dataPath, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return ckPath, dataPath
}

func TestEvalCommand(t *testing.T) {
	ck, data := testCheckpoint(t)
	saved := filepath.Join(t.TempDir(), "calibrated.safetensors")
	var out, errb bytes.Buffer
	if err := evalMain([]string{"--model", ck, "--data", data, "--tokens", "200", "--calib-tokens", "64", "--save", saved}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	for _, want := range []string{"calibrated on 64 tokens", "exact:  perplexity", "approx: perplexity", "range violations", "evaluated 199 predictions"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("eval output lacks %q:\n%s", want, out.String())
		}
	}
	// The saved checkpoint carries the approximations: no recalibration.
	out.Reset()
	if err := evalMain([]string{"--model", saved, "--data", filepath.Dir(data), "--ext", ".txt", "--tokens", "100"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "approximations: from the checkpoint") {
		t.Errorf("second eval recalibrated:\n%s", out.String())
	}
	// --exact: the same exact perplexity on the same tokens, nothing else.
	exactLine := func(s string) string {
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "exact:") {
				return l
			}
		}
		t.Fatalf("no exact line in:\n%s", s)
		return ""
	}
	want := exactLine(out.String())
	out.Reset()
	if err := evalMain([]string{"--model", saved, "--data", filepath.Dir(data), "--ext", ".txt", "--tokens", "100", "--exact"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if got := exactLine(out.String()); got != want {
		t.Errorf("--exact: %q, the full eval: %q", got, want)
	}
	if strings.Contains(out.String(), "approx") {
		t.Errorf("--exact evaluated the approximations:\n%s", out.String())
	}
	if err := evalMain([]string{"--model", ck, "--data", data, "--exact", "--calibrate"}, &out, &errb); err == nil {
		t.Error("--exact with --calibrate accepted")
	}
	if err := evalMain([]string{"--model", ck}, &out, &errb); err == nil {
		t.Error("eval without --data accepted")
	}
}

func TestEntropyCommand(t *testing.T) {
	ck, data := testCheckpoint(t)
	pngPath := filepath.Join(t.TempDir(), "h.png")
	var out, errb bytes.Buffer
	if err := entropyMain([]string{"--model", ck, "--data", data, "--tokens", "64", "--png", pngPath}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	for _, want := range []string{"4 windows of 16 tokens", "buckets (M = ", "entropy collapse:", "wrote " + pngPath} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("entropy output lacks %q:\n%s", want, out.String())
		}
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatal(err)
	}
}

func TestSampleCommand(t *testing.T) {
	ck, _ := testCheckpoint(t)
	run := func(args ...string) string {
		var out, errb bytes.Buffer
		if err := sampleMain(append([]string{"--model", ck, "--prompt", "func main"}, args...), &out, &errb); err != nil {
			t.Fatalf("%v\n%s", err, errb.String())
		}
		return out.String()
	}
	a, b := run("--n", "8", "--seed", "5"), run("--n", "8", "--seed", "5")
	if a != b || !strings.HasPrefix(a, "func main") {
		t.Fatalf("same seed gave %q and %q", a, b)
	}
	if g := run("--n", "8", "--temperature", "0"); !strings.HasPrefix(g, "func main") {
		t.Fatalf("greedy output %q", g)
	}
	var out, errb bytes.Buffer
	if err := sampleMain([]string{"--model", ck, "--prompt", "x", "--approx"}, &out, &errb); err == nil {
		t.Fatal("--approx without approximations in the checkpoint accepted")
	}
}
