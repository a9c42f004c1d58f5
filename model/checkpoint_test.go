package model

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/approx"
)

func ckptConfigs() []Config {
	return []Config{
		Baseline(300, 8, 8, 2, 2),
		EntropyGuided(300, 8, 8, 2, 2),
	}
}

func ckptSample(t testing.TB, cfg Config, seed uint64) *Checkpoint {
	t.Helper()
	w, err := NewRandom(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	// Make the scalars and thresholds non-trivial so a mix-up shows.
	for l := range w.Blocks {
		w.Blocks[l].Alpha = 1.5 + float64(l)
		w.Blocks[l].Beta = 0.25 * float64(l+1)
		for h := range w.Blocks[l].Threshold {
			w.Blocks[l].Threshold[h] = 0.1*float64(h) + 0.3
		}
		if !cfg.FFNScaling {
			w.Blocks[l].Alpha, w.Blocks[l].Beta = 1, 1
		}
		if w.Blocks[l].Temp != nil {
			w.Blocks[l].Temp.Set(1, cfg.Context-1, 0.7)
		}
	}
	if cfg.FinalNorm == FinalScale {
		w.FinalScale = 0.3
	}
	tk, err := TrainBPE(tokCorpus, 290)
	if err != nil {
		t.Fatal(err)
	}
	set := &approx.Set{Exp: approx.NewExp(-8, 2, 15), Recip: approx.NewReciprocal(1, 64, 7, 2)}
	if cfg.LayerNorm {
		is := approx.NewInvSqrt(0.01, 10, 7, 2)
		g := approx.NewGELU(-6, 6, 15)
		set.InvSqrt, set.GELU = &is, &g
	}
	return &Checkpoint{Weights: w, Tokenizer: tk, Approx: set, Meta: map[string]string{"command": "entropi train --steps 3", "tokens": "12345"}}
}

// ckptTensors lists the weights as named tensors.
func ckptTensors(w *Weights) map[string]Tensor { return w.Tensors() }

func ckptBytes(t testing.TB, ck *Checkpoint, dtype Dtype) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteCheckpoint(&buf, ck, SaveOptions{Dtype: dtype}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCheckpointRoundTrip(t *testing.T) {
	for _, cfg := range ckptConfigs() {
		for _, dtype := range []Dtype{F64, F32} {
			ck := ckptSample(t, cfg, 7)
			path := filepath.Join(t.TempDir(), "m.safetensors")
			if err := SaveWith(path, ck, SaveOptions{Dtype: dtype}); err != nil {
				t.Fatal(err)
			}
			back, err := Load(path)
			if err != nil {
				t.Fatalf("%s %s: %v", cfg.Name, dtype, err)
			}
			if back.Weights.Config != cfg {
				t.Fatalf("config %+v, want %+v", back.Weights.Config, cfg)
			}
			want, got := ckptTensors(ck.Weights), ckptTensors(back.Weights)
			if len(got) != len(want) {
				t.Fatalf("%d tensors, want %d", len(got), len(want))
			}
			for name, wt := range want {
				gt := got[name]
				if !slices.Equal(gt.Shape, wt.Shape) {
					t.Fatalf("%s: shape %v, want %v", name, gt.Shape, wt.Shape)
				}
				for i, v := range wt.Data {
					if dtype == F32 {
						v = float64(float32(v))
					}
					if math.Float64bits(gt.Data[i]) != math.Float64bits(v) {
						t.Fatalf("%s %s[%d] = %v, want %v", dtype, name, i, gt.Data[i], v)
					}
				}
			}
			for l := range ck.Weights.Blocks {
				a, b := ck.Weights.Blocks[l], back.Weights.Blocks[l]
				if b.Alpha != a.Alpha || b.Beta != a.Beta {
					t.Errorf("block %d alpha/beta %v/%v, want %v/%v", l, b.Alpha, b.Beta, a.Alpha, a.Beta)
				}
			}
			tj, _ := json.Marshal(ck.Tokenizer)
			bj, _ := json.Marshal(back.Tokenizer)
			if !bytes.Equal(tj, bj) {
				t.Error("tokenizer changed")
			}
			if !reflect.DeepEqual(back.Approx, ck.Approx) {
				t.Error("approximations changed")
			}
			if !reflect.DeepEqual(back.Meta, ck.Meta) {
				t.Errorf("meta %v, want %v", back.Meta, ck.Meta)
			}
			if err := back.Weights.CheckShapes(); err != nil {
				t.Fatal(err)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("save left %d files behind", len(entries))
			}
		}
	}
}

func TestCheckpointOptionalParts(t *testing.T) {
	ck := ckptSample(t, ckptConfigs()[1], 3)
	ck.Tokenizer, ck.Approx, ck.Meta = nil, nil, nil
	for l := range ck.Weights.Blocks {
		ck.Weights.Blocks[l].Threshold = nil
	}
	back, err := ParseCheckpoint(ckptBytes(t, ck, F32))
	if err != nil {
		t.Fatal(err)
	}
	if back.Tokenizer != nil || back.Approx != nil || back.Meta != nil || back.Weights.Blocks[0].Threshold != nil {
		t.Error("absent optional parts came back non-nil")
	}
}

func TestCheckpointDeterministic(t *testing.T) {
	ck := ckptSample(t, ckptConfigs()[0], 1)
	if !bytes.Equal(ckptBytes(t, ck, F32), ckptBytes(t, ck, F32)) {
		t.Fatal("two saves of one checkpoint differ")
	}
}

// ckptRewrite reads a checkpoint file, lets f change its tensors and metadata,
// and writes it back (F64).
func ckptRewrite(t *testing.T, file []byte, f func(ts map[string]Tensor, meta map[string]string)) []byte {
	t.Helper()
	ts, meta, err := ParseSafetensors(file)
	if err != nil {
		t.Fatal(err)
	}
	f(ts, meta)
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, ts, meta, F64); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCheckpointRejectsCorruption(t *testing.T) {
	ck := ckptSample(t, ckptConfigs()[1], 5)
	good := ckptBytes(t, ck, F32)
	if _, err := ParseCheckpoint(good); err != nil {
		t.Fatal(err)
	}
	flip := func(old, new string) []byte {
		i := bytes.Index(good, []byte(old))
		if i < 0 {
			t.Fatalf("%q not in file", old)
		}
		b := slices.Clone(good)
		copy(b[i:], new)
		return b
	}
	cases := []struct {
		name string
		file []byte
		want []string
	}{
		{"truncated data", good[:len(good)-3], []string{"truncated"}},
		{"truncated header", good[:100], []string{"truncated inside the header"}},
		{"empty", nil, []string{"empty or truncated"}},
		{"flipped header length", func() []byte { b := slices.Clone(good); b[7] ^= 0x40; return b }(), []string{"header length"}},
		{"flipped header byte", flip(`{"__`, `["__`), []string{"not a JSON object"}},
		{"flipped dtype", flip(`"F32"`, `"G32"`), []string{`unknown dtype "G32"`}},
		{"wrong shape", ckptRewrite(t, good, func(ts map[string]Tensor, _ map[string]string) {
			ts["h.1.attn.c_proj.weight"] = Tensor{Shape: []int{4, 16}, Data: make([]float64, 64)}
		}), []string{"h.1.attn.c_proj.weight", "[4 16]", "[8 8]", "re-export"}},
		{"NaN", ckptRewrite(t, good, func(ts map[string]Tensor, _ map[string]string) {
			ts["h.0.mlp.c_fused.weight"].Data[5] = math.NaN()
		}), []string{"h.0.mlp.c_fused.weight", "NaN", "element 5"}},
		{"Inf scalar", ckptRewrite(t, good, func(ts map[string]Tensor, _ map[string]string) {
			ts["final_scale"].Data[0] = math.Inf(1)
		}), []string{"final_scale", "+Inf"}},
		{"missing tensor", ckptRewrite(t, good, func(ts map[string]Tensor, _ map[string]string) {
			delete(ts, "h.1.mlp.alpha")
		}), []string{"missing tensor h.1.mlp.alpha"}},
		{"unexpected tensor", ckptRewrite(t, good, func(ts map[string]Tensor, _ map[string]string) {
			ts["h.0.ln_1.weight"] = Tensor{Shape: []int{8}, Data: make([]float64, 8)}
		}), []string{"unexpected tensor h.0.ln_1.weight"}},
		{"newer version", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { m["version"] = "2" }),
			[]string{"checkpoint version 2 is newer than this entropi understands", "upgrade"}},
		{"bad version", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { m["version"] = "one" }), []string{`invalid version "one"`}},
		{"no format", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { delete(m, "format") }), []string{"not an entropi checkpoint", "LoadGPT2"}},
		{"other format", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { m["format"] = "pt" }), []string{`format is "pt"`}},
		{"no config", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { delete(m, "config") }), []string{"no config"}},
		{"bad config", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { m["config"] = `{"dim":8,"heads":3}` }), []string{"config"}},
		{"unknown config field", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) {
			m["config"] = strings.Replace(m["config"], `{`, `{"future":1,`, 1)
		}), []string{"unknown field"}},
		{"bad tokenizer", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) {
			m["tokenizer"] = strings.Replace(m["tokenizer"], `"version":1`, `"version":9`, 1)
		}), []string{"tokenizer", "newer"}},
		{"tokenizer larger than vocab", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) {
			big, _ := TrainBPE(tokCorpus, 310)
			j, _ := json.Marshal(big)
			m["tokenizer"] = string(j)
		}), []string{"tokenizer has 310 ids", "vocabulary is 300"}},
		{"bad approx", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) {
			m["approx"] = `{"exp":{"poly":{"Lo":1,"Hi":0,"Coeffs":[1]}},"recip":{"init":{"Lo":1,"Hi":2,"Coeffs":[1]},"iters":1}}`
		}), []string{"approximation exp", "range"}},
		{"bad meta", ckptRewrite(t, good, func(_ map[string]Tensor, m map[string]string) { m["meta"] = `{"a":1}` }), []string{"meta"}},
	}
	for _, c := range cases {
		_, err := ParseCheckpoint(c.file)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
	}
	// Every truncation is an error, never a panic.
	for n := 0; n < len(good); n += 1 + n/7 {
		if _, err := ParseCheckpoint(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
}

func TestSaveRejects(t *testing.T) {
	ck := ckptSample(t, ckptConfigs()[0], 2)
	ck.Weights.Blocks[1].FC.Set(0, 0, math.NaN())
	if err := WriteCheckpoint(&bytes.Buffer{}, ck, SaveOptions{}); err == nil || !strings.Contains(err.Error(), "h.1.mlp.c_fc.weight") {
		t.Errorf("NaN weight: %v", err)
	}
	ck = ckptSample(t, ckptConfigs()[0], 2)
	ck.Weights.Blocks[0].Threshold = []float64{1}
	if err := WriteCheckpoint(&bytes.Buffer{}, ck, SaveOptions{}); err == nil || !strings.Contains(err.Error(), "entropy_threshold") {
		t.Errorf("short threshold: %v", err)
	}
	if err := WriteCheckpoint(&bytes.Buffer{}, &Checkpoint{}, SaveOptions{}); err == nil {
		t.Error("nil weights saved")
	}
	if err := Save(filepath.Join(t.TempDir(), "no", "such", "dir", "m.safetensors"), ckptSample(t, ckptConfigs()[0], 2)); err == nil {
		t.Error("save into a missing directory succeeded")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.safetensors")); err == nil {
		t.Error("loading a missing file succeeded")
	}
}

// gpt2File writes w in the Hugging Face GPT-2 layout: "transformer."
// prefixes, causal-mask buffers, tied lm_head, format "pt" metadata.
func gpt2File(t *testing.T, w *Weights, meta map[string]string, mutate func(map[string]Tensor)) []byte {
	t.Helper()
	ts := map[string]Tensor{}
	for name, tn := range ckptTensors(w) {
		if strings.HasSuffix(name, "entropy_threshold") {
			continue
		}
		ts["transformer."+name] = tn
	}
	T := w.Config.Context
	for l := range w.Blocks {
		mask := make([]float64, T*T)
		for i := 0; i < T; i++ {
			for j := 0; j <= i; j++ {
				mask[i*T+j] = 1
			}
		}
		ts["transformer.h."+tokItoa(l)+".attn.bias"] = Tensor{Shape: []int{1, 1, T, T}, Data: mask}
		ts["transformer.h."+tokItoa(l)+".attn.masked_bias"] = Tensor{Shape: []int{}, Data: []float64{-1e4}}
	}
	ts["lm_head.weight"] = ts["transformer.wte.weight"]
	if mutate != nil {
		mutate(ts)
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, ts, meta, F32); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestLoadGPT2(t *testing.T) {
	cfg := Baseline(300, 8, 8, 3, 2)
	cfg.FFNHidden = 24 // not 4·dim: must be read from the shapes
	w, err := NewRandom(cfg, 11)
	if err != nil {
		t.Fatal(err)
	}
	file := gpt2File(t, w, map[string]string{"format": "pt"}, nil)
	path := filepath.Join(t.TempDir(), "gpt2.safetensors")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	ck, err := LoadGPT2(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg
	want.Name = "gpt2"
	if ck.Weights.Config != want {
		t.Fatalf("config %+v, want %+v", ck.Weights.Config, want)
	}
	if ck.Tokenizer != nil || ck.Approx != nil {
		t.Error("GPT-2 import should have no tokenizer or approximations")
	}
	for name, wt := range ckptTensors(w) {
		if strings.HasSuffix(name, "entropy_threshold") {
			continue
		}
		gt := ckptTensors(ck.Weights)[name]
		for i, v := range wt.Data {
			if gt.Data[i] != float64(float32(v)) {
				t.Fatalf("%s[%d] = %v, want %v", name, i, gt.Data[i], float32(v))
			}
		}
	}
	// Heads from metadata; a disagreeing argument is an error.
	withHeads := gpt2File(t, w, map[string]string{"n_head": "4"}, nil)
	if ck, err := ReadGPT2(bytes.NewReader(withHeads), 0); err != nil || ck.Weights.Config.Heads != 4 {
		t.Errorf("heads from metadata: %v", err)
	}
	if _, err := ReadGPT2(bytes.NewReader(withHeads), 2); err == nil || !strings.Contains(err.Error(), "metadata says 4") {
		t.Errorf("disagreeing heads: %v", err)
	}
	if _, err := ReadGPT2(bytes.NewReader(file), 0); err == nil || !strings.Contains(err.Error(), "pass heads") {
		t.Errorf("no heads: %v", err)
	}
	// The exported tensor view loads back through WeightsFromTensors.
	if w2, err := WeightsFromTensors(cfg, w.Tensors()); err != nil || !mat.Equal(w2.Blocks[2].Out, w.Blocks[2].Out) {
		t.Errorf("WeightsFromTensors(Tensors()): %v", err)
	}
	if _, err := ReadGPT2(bytes.NewReader(file), 3); err == nil || !strings.Contains(err.Error(), "not a multiple of heads") {
		t.Errorf("heads not dividing dim: %v", err)
	}
	// Load (not LoadGPT2) explains what to do with a GPT-2 file.
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "LoadGPT2") {
		t.Errorf("Load on a GPT-2 file: %v", err)
	}
	// LoadGPT2 on an entropi checkpoint loads it.
	if ck, err := ReadGPT2(bytes.NewReader(ckptBytes(t, ckptSample(t, ckptConfigs()[1], 1), F32)), 0); err != nil || !ck.Weights.Config.FusedFFN {
		t.Errorf("entropi checkpoint through ReadGPT2: %v", err)
	}
	bad := []struct {
		name   string
		mutate func(map[string]Tensor)
		want   string
	}{
		{"untied head", func(ts map[string]Tensor) {
			d := slices.Clone(ts["lm_head.weight"].Data)
			d[0]++
			ts["lm_head.weight"] = Tensor{Shape: ts["lm_head.weight"].Shape, Data: d}
		}, "lm_head.weight differs"},
		{"missing block tensor", func(ts map[string]Tensor) { delete(ts, "transformer.h.2.ln_2.bias") }, "missing tensor h.2.ln_2.bias"},
		{"wrong shape", func(ts map[string]Tensor) {
			ts["transformer.h.1.mlp.c_proj.weight"] = Tensor{Shape: []int{8, 24}, Data: make([]float64, 192)}
		}, "h.1.mlp.c_proj.weight has shape [8 24], the config needs [24 8]"},
		{"NaN", func(ts map[string]Tensor) { ts["transformer.wpe.weight"].Data[3] = math.NaN() }, "wpe.weight holds NaN"},
		{"no wte", func(ts map[string]Tensor) { delete(ts, "transformer.wte.weight"); delete(ts, "lm_head.weight") }, "wte.weight"},
		{"duplicate prefix", func(ts map[string]Tensor) { ts["wpe.weight"] = ts["transformer.wpe.weight"] }, "both with and without"},
		{"stray tensor", func(ts map[string]Tensor) {
			ts["transformer.h.0.attn.rotary"] = Tensor{Shape: []int{1}, Data: []float64{0}}
		}, "unexpected tensor h.0.attn.rotary"},
	}
	for _, c := range bad {
		_, err := ReadGPT2(bytes.NewReader(gpt2File(t, w, nil, c.mutate)), 2)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

// FuzzLoadCheckpoint: loading arbitrary bytes never panics, and whatever
// loads passes CheckShapes and saves again.
func FuzzLoadCheckpoint(f *testing.F) {
	// Tiny models keep the seeds small enough for the mutator to work on.
	for i, cfg := range []Config{Baseline(290, 2, 4, 1, 2), EntropyGuided(290, 2, 4, 1, 2)} {
		cfg.FFNHidden = 8
		ck := ckptSample(f, cfg, uint64(i))
		f.Add(ckptBytes(f, ck, F32))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ck, err := ParseCheckpoint(data)
		if err != nil {
			return
		}
		if err := ck.Weights.CheckShapes(); err != nil {
			t.Fatalf("loaded weights fail CheckShapes: %v", err)
		}
		if err := WriteCheckpoint(&bytes.Buffer{}, ck, SaveOptions{Dtype: F64}); err != nil {
			t.Fatalf("loaded checkpoint does not save: %v", err)
		}
	})
}

// BenchmarkCheckpointSaveLoad writes and reads a model of the shipped size
// (entropy-guided, d=256, 4 layers, vocab 1024, context 128) as F32 and
// reports the file size.
//
//	go test -run '^$' -bench CheckpointSaveLoad ./model/
func BenchmarkCheckpointSaveLoad(b *testing.B) {
	w, err := NewRandom(EntropyGuided(1024, 128, 256, 4, 4), 1)
	if err != nil {
		b.Fatal(err)
	}
	ck := &Checkpoint{Weights: w}
	path := filepath.Join(b.TempDir(), "m.safetensors")
	for b.Loop() {
		if err := Save(path, ck); err != nil {
			b.Fatal(err)
		}
		if _, err := Load(path); err != nil {
			b.Fatal(err)
		}
	}
	fi, _ := os.Stat(path)
	b.ReportMetric(float64(fi.Size())/1e6, "MB")
}

// TestCheckpointAblations round-trips every switch of the decoder family.
func TestCheckpointAblations(t *testing.T) {
	var cfgs []Config
	c := Baseline(260, 4, 8, 1, 2)
	c.Bias = false
	cfgs = append(cfgs, c)
	c = Baseline(260, 4, 8, 1, 2)
	c.Activation = ActReLU
	c.FinalNorm = FinalScale
	cfgs = append(cfgs, c)
	c = Baseline(260, 4, 8, 2, 4)
	c.LayerNorm, c.FinalNorm = false, FinalNone
	cfgs = append(cfgs, c)
	c = EntropyGuided(260, 4, 8, 1, 2)
	c.Bias, c.Temperature, c.FFNScaling, c.FinalNorm = false, false, false, FinalNone
	cfgs = append(cfgs, c)
	c = EntropyGuided(260, 4, 8, 1, 1)
	c.LayerNorm, c.LNEps, c.FinalNorm = true, 1e-5, FinalLayerNorm
	cfgs = append(cfgs, c)
	for _, cfg := range cfgs {
		w, err := NewRandom(cfg, 9)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseCheckpoint(ckptBytes(t, &Checkpoint{Weights: w}, F64))
		if err != nil {
			t.Fatalf("%+v: %v", cfg, err)
		}
		if back.Weights.Config != cfg {
			t.Fatalf("config %+v, want %+v", back.Weights.Config, cfg)
		}
		want, got := w.Tensors(), back.Weights.Tensors()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%+v: tensors changed in the round trip", cfg)
		}
		if back.Weights.FinalScale != w.FinalScale {
			t.Errorf("%+v: final scale %v, want %v", cfg, back.Weights.FinalScale, w.FinalScale)
		}
		for l := range w.Blocks {
			a1, b1 := w.Blocks[l].FFNScale(cfg)
			a2, b2 := back.Weights.Blocks[l].FFNScale(cfg)
			if a1 != a2 || b1 != b2 {
				t.Errorf("%+v: block %d FFN scale changed", cfg, l)
			}
		}
	}
}
