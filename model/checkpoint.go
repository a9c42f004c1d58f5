package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/approx"
)

// Checkpoint files are safetensors files. The header metadata holds
//
//	"format":    "entropi"
//	"version":   "1"
//	"config":    the Config as JSON
//	"tokenizer": the Tokenizer as JSON (absent when Tokenizer is nil)
//	"approx":    the approx.Set as JSON (absent when Approx is nil)
//	"meta":      Checkpoint.Meta as a JSON object of strings (absent when empty)
//
// Other metadata keys are ignored. Tensors carry GPT-2's names for everything
// GPT-2 has (wte.weight, wpe.weight, h.{l}.ln_1.weight/bias,
// h.{l}.attn.c_attn.weight/bias, h.{l}.attn.c_proj.weight/bias,
// h.{l}.ln_2.weight/bias, h.{l}.mlp.c_fc.weight/bias,
// h.{l}.mlp.c_proj.weight/bias, ln_f.weight/bias; matrices [in, out]) and
// these for the rest:
//
//	h.{l}.attn.temperature         [heads, context]  Temperature models
//	h.{l}.mlp.c_fused.weight       [dim, dim]        FusedFFN models
//	h.{l}.mlp.c_fused.bias         [dim]             FusedFFN models with Bias
//	h.{l}.mlp.alpha, h.{l}.mlp.beta [1]              FFNScaling models
//	h.{l}.attn.entropy_threshold   [heads]           optional (training diagnostics)
//	final_scale                    [1]               FinalNorm "scale"
//
// A file holds exactly the tensors its config uses (the entropy thresholds
// optionally); anything else is an error, so a file and its config cannot
// silently disagree.

// CheckpointVersion is the checkpoint format version this code writes and
// the newest it reads.
const CheckpointVersion = 1

// Checkpoint is a model with what it needs to run.
type Checkpoint struct {
	Weights *Weights
	// Tokenizer is nil for an imported GPT-2 file (its tokenizer is not
	// byte-level BPE over our pre-tokenizer).
	Tokenizer *Tokenizer
	// Approx holds the HE approximations calibrated for this model; optional.
	Approx *approx.Set
	// Meta is free-form provenance: training command, tokens seen, etc.
	Meta map[string]string
}

// SaveOptions control how a checkpoint is written.
type SaveOptions struct {
	// Dtype is F32 (the default when empty: half the size, within float32
	// rounding) or F64 (bit-exact).
	Dtype Dtype
}

// Save writes ck to path as F32 safetensors. The file is written to a
// temporary name in the same directory and renamed, so a crash never leaves
// a half-written checkpoint under path.
func Save(path string, ck *Checkpoint) error { return SaveWith(path, ck, SaveOptions{}) }

// SaveWith is Save with options.
func SaveWith(path string, ck *Checkpoint, opts SaveOptions) error {
	var buf bytes.Buffer
	if err := WriteCheckpoint(&buf, ck, opts); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint: writing %s: %w", path, err)
	}
	return nil
}

// WriteCheckpoint writes ck in the checkpoint format. The weights must pass
// CheckShapes (no missing tensors, wrong shapes, NaNs or Infs).
func WriteCheckpoint(w io.Writer, ck *Checkpoint, opts SaveOptions) error {
	if ck == nil || ck.Weights == nil {
		return errors.New("checkpoint: nothing to save (nil checkpoint or weights)")
	}
	dtype := opts.Dtype
	if dtype == "" {
		dtype = F32
	}
	wt := ck.Weights
	if err := wt.CheckShapes(); err != nil {
		return fmt.Errorf("checkpoint: refusing to save: %w", err)
	}
	cfg := wt.Config
	if ck.Tokenizer != nil && ck.Tokenizer.VocabSize() > cfg.Vocab {
		return fmt.Errorf("checkpoint: tokenizer has %d ids but the model's vocabulary is %d", ck.Tokenizer.VocabSize(), cfg.Vocab)
	}
	tensors := map[string]Tensor{}
	for _, b := range bindTensors(wt) {
		if b.optional && b.isNil() {
			continue
		}
		t := b.get()
		if err := checkFinite(b.name, t.Data); err != nil {
			return fmt.Errorf("checkpoint: refusing to save: %w", err)
		}
		if !slices.Equal(t.Shape, b.shape) {
			return fmt.Errorf("checkpoint: refusing to save: tensor %s has shape %s, the config needs %s", b.name, formatShape(t.Shape), formatShape(b.shape))
		}
		tensors[b.name] = t
	}
	meta := map[string]string{"format": "entropi", "version": strconv.Itoa(CheckpointVersion)}
	cj, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("checkpoint: config: %w", err)
	}
	meta["config"] = string(cj)
	if ck.Tokenizer != nil {
		tj, err := json.Marshal(ck.Tokenizer)
		if err != nil {
			return fmt.Errorf("checkpoint: tokenizer: %w", err)
		}
		meta["tokenizer"] = string(tj)
	}
	if ck.Approx != nil {
		if err := validateApprox(ck.Approx); err != nil {
			return fmt.Errorf("checkpoint: refusing to save: %w", err)
		}
		aj, err := json.Marshal(ck.Approx)
		if err != nil {
			return fmt.Errorf("checkpoint: approximations: %w", err)
		}
		meta["approx"] = string(aj)
	}
	if len(ck.Meta) > 0 {
		mj, err := json.Marshal(ck.Meta)
		if err != nil {
			return fmt.Errorf("checkpoint: meta: %w", err)
		}
		meta["meta"] = string(mj)
	}
	return WriteSafetensors(w, tensors, meta, dtype)
}

// Load reads an entropi checkpoint. For a plain GPT-2 safetensors file use
// LoadGPT2.
func Load(path string) (*Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	defer f.Close()
	ck, err := ReadCheckpoint(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ck, nil
}

// ReadCheckpoint reads an entropi checkpoint and validates everything: the
// format and version, the config, every tensor's presence, shape and
// finiteness, the tokenizer and the approximations.
func ReadCheckpoint(r io.Reader) (*Checkpoint, error) {
	ts, meta, err := ReadSafetensors(r)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return checkpointFromTensors(ts, meta)
}

// ParseCheckpoint reads a checkpoint held in memory.
func ParseCheckpoint(b []byte) (*Checkpoint, error) { return ReadCheckpoint(bytes.NewReader(b)) }

func checkpointFromTensors(ts map[string]Tensor, meta map[string]string) (*Checkpoint, error) {
	if meta["format"] != "entropi" {
		if f, ok := meta["format"]; ok {
			return nil, fmt.Errorf("checkpoint: metadata format is %q, not \"entropi\"; a GPT-2 safetensors file loads with LoadGPT2(path, heads)", f)
		}
		return nil, errors.New("checkpoint: not an entropi checkpoint (no \"format\": \"entropi\" metadata); a GPT-2 safetensors file loads with LoadGPT2(path, heads)")
	}
	vs, ok := meta["version"]
	if !ok {
		return nil, errors.New("checkpoint: metadata has no version")
	}
	v, err := strconv.Atoi(vs)
	if err != nil || v < 1 {
		return nil, fmt.Errorf("checkpoint: invalid version %q", vs)
	}
	if v > CheckpointVersion {
		return nil, fmt.Errorf("checkpoint: checkpoint version %d is newer than this entropi understands (%d); upgrade entropi", v, CheckpointVersion)
	}
	cs, ok := meta["config"]
	if !ok {
		return nil, errors.New("checkpoint: metadata has no config")
	}
	var cfg Config
	if err := strictJSON([]byte(cs), &cfg); err != nil {
		if strings.Contains(err.Error(), "unknown field") {
			return nil, fmt.Errorf("checkpoint: config: %w (written by a newer entropi? upgrade)", err)
		}
		return nil, fmt.Errorf("checkpoint: config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	w, err := weightsFromTensors(cfg, ts)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	ck := &Checkpoint{Weights: w}
	if s, ok := meta["tokenizer"]; ok {
		ck.Tokenizer = new(Tokenizer)
		if err := json.Unmarshal([]byte(s), ck.Tokenizer); err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		if ck.Tokenizer.VocabSize() > cfg.Vocab {
			return nil, fmt.Errorf("checkpoint: tokenizer has %d ids but the model's vocabulary is %d", ck.Tokenizer.VocabSize(), cfg.Vocab)
		}
	}
	if s, ok := meta["approx"]; ok {
		ck.Approx = new(approx.Set)
		if err := strictJSON([]byte(s), ck.Approx); err != nil {
			return nil, fmt.Errorf("checkpoint: approximations: %w", err)
		}
		if err := validateApprox(ck.Approx); err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
	}
	if s, ok := meta["meta"]; ok {
		if err := strictJSON([]byte(s), &ck.Meta); err != nil {
			return nil, fmt.Errorf("checkpoint: meta must be a JSON object of strings: %w", err)
		}
	}
	return ck, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("extra data after the JSON value")
	}
	return nil
}

// Tensors returns the weights as named tensors with the checkpoint names
// (copies; the entropy thresholds only when present).
func (w *Weights) Tensors() map[string]Tensor {
	if len(w.Blocks) != w.Config.Layers {
		return nil
	}
	out := map[string]Tensor{}
	for _, b := range bindTensors(w) {
		if !b.isNil() {
			out[b.name] = b.get()
		}
	}
	return out
}

// WeightsFromTensors builds weights for cfg from tensors named as in
// checkpoints, with the same checks as Load.
func WeightsFromTensors(cfg Config, ts map[string]Tensor) (*Weights, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return weightsFromTensors(cfg, ts)
}

// weightsFromTensors builds weights for cfg from named tensors: every tensor
// the config needs must be present with its shape and finite values, and no
// other tensor may be present.
func weightsFromTensors(cfg Config, ts map[string]Tensor) (*Weights, error) {
	w := &Weights{Config: cfg, Blocks: make([]Block, cfg.Layers)}
	for l := range w.Blocks {
		w.Blocks[l].Alpha, w.Blocks[l].Beta = 1, 1
	}
	used := map[string]bool{}
	var errs []string
	for _, b := range bindTensors(w) {
		t, ok := ts[b.name]
		if !ok {
			if !b.optional {
				errs = append(errs, fmt.Sprintf("missing tensor %s (shape %s)", b.name, formatShape(b.shape)))
			}
			continue
		}
		used[b.name] = true
		if !slices.Equal(t.Shape, b.shape) {
			errs = append(errs, fmt.Sprintf("tensor %s has shape %s, the config needs %s", b.name, formatShape(t.Shape), formatShape(b.shape)))
			continue
		}
		if err := checkFinite(b.name, t.Data); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		b.set(t.Data)
	}
	var extra []string
	for name := range ts {
		if !used[name] {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		errs = append(errs, fmt.Sprintf("unexpected tensor %s: the config %q does not use it", name, cfg.Name))
	}
	if len(errs) > 0 {
		if len(errs) > 8 {
			errs = append(errs[:8], fmt.Sprintf("and %d more", len(errs)-8))
		}
		return nil, fmt.Errorf("the file does not match its model config (corrupt or mismatched export; re-export the checkpoint): %s", strings.Join(errs, "; "))
	}
	if err := w.CheckShapes(); err != nil {
		return nil, err
	}
	return w, nil
}

func checkFinite(name string, data []float64) error {
	for i, v := range data {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("tensor %s holds %g at element %d (training diverged or the file is corrupt; use an earlier checkpoint)", name, v, i)
		}
	}
	return nil
}

// binding ties a tensor name to a field of Weights.
type binding struct {
	name     string
	shape    []int
	optional bool
	m        **mat.Dense
	v        *[]float64
	s        *float64
}

func (b binding) isNil() bool {
	switch {
	case b.m != nil:
		return *b.m == nil
	case b.v != nil:
		return *b.v == nil
	}
	return false
}

func (b binding) get() Tensor {
	switch {
	case b.m != nil:
		r, c := (*b.m).Dims()
		data := make([]float64, 0, r*c)
		for i := 0; i < r; i++ {
			data = append(data, (*b.m).RawRowView(i)...)
		}
		return Tensor{Shape: []int{r, c}, Data: data}
	case b.v != nil:
		return Tensor{Shape: []int{len(*b.v)}, Data: slices.Clone(*b.v)}
	}
	return Tensor{Shape: []int{1}, Data: []float64{*b.s}}
}

func (b binding) set(data []float64) {
	switch {
	case b.m != nil:
		*b.m = mat.NewDense(b.shape[0], b.shape[1], slices.Clone(data))
	case b.v != nil:
		*b.v = slices.Clone(data)
	default:
		*b.s = data[0]
	}
}

// bindTensors lists the tensors w's config uses, in file order, bound to
// w's fields (w.Blocks must have cfg.Layers entries).
func bindTensors(w *Weights) []binding {
	cfg := w.Config
	d := cfg.Dim
	var bs []binding
	mat2 := func(name string, m **mat.Dense, r, c int) {
		bs = append(bs, binding{name: name, shape: []int{r, c}, m: m})
	}
	vec := func(name string, v *[]float64, n int) {
		bs = append(bs, binding{name: name, shape: []int{n}, v: v})
	}
	scalar := func(name string, s *float64) {
		bs = append(bs, binding{name: name, shape: []int{1}, s: s})
	}
	mat2("wte.weight", &w.Wte, cfg.Vocab, d)
	mat2("wpe.weight", &w.Wpe, cfg.Context, d)
	for l := range w.Blocks {
		b := &w.Blocks[l]
		p := fmt.Sprintf("h.%d.", l)
		if cfg.LayerNorm {
			vec(p+"ln_1.weight", &b.LN1G, d)
			vec(p+"ln_1.bias", &b.LN1B, d)
		}
		mat2(p+"attn.c_attn.weight", &b.Attn, d, 3*d)
		if cfg.Bias {
			vec(p+"attn.c_attn.bias", &b.AttnBias, 3*d)
		}
		mat2(p+"attn.c_proj.weight", &b.Proj, d, d)
		if cfg.Bias {
			vec(p+"attn.c_proj.bias", &b.ProjBias, d)
		}
		if cfg.Temperature {
			mat2(p+"attn.temperature", &b.Temp, cfg.Heads, cfg.Context)
		}
		bs = append(bs, binding{name: p + "attn.entropy_threshold", shape: []int{cfg.Heads}, v: &b.Threshold, optional: true})
		if cfg.LayerNorm {
			vec(p+"ln_2.weight", &b.LN2G, d)
			vec(p+"ln_2.bias", &b.LN2B, d)
		}
		if cfg.FusedFFN {
			mat2(p+"mlp.c_fused.weight", &b.Fused, d, d)
			if cfg.Bias {
				vec(p+"mlp.c_fused.bias", &b.FusedBias, d)
			}
		} else {
			mat2(p+"mlp.c_fc.weight", &b.FC, d, cfg.FFNHidden)
			if cfg.Bias {
				vec(p+"mlp.c_fc.bias", &b.FCBias, cfg.FFNHidden)
			}
			mat2(p+"mlp.c_proj.weight", &b.Out, cfg.FFNHidden, d)
			if cfg.Bias {
				vec(p+"mlp.c_proj.bias", &b.OutBias, d)
			}
		}
		if cfg.FFNScaling {
			scalar(p+"mlp.alpha", &b.Alpha)
			scalar(p+"mlp.beta", &b.Beta)
		}
	}
	switch cfg.FinalNorm {
	case FinalLayerNorm:
		vec("ln_f.weight", &w.LNFG, d)
		vec("ln_f.bias", &w.LNFB, d)
	case FinalScale:
		scalar("final_scale", &w.FinalScale)
	}
	return bs
}

// validateApprox checks what a corrupt or hand-edited file could get wrong:
// ranges, finite coefficients, sane degrees and iteration counts.
func validateApprox(s *approx.Set) error {
	cheb := func(name string, c approx.Chebyshev, positive bool) error {
		switch {
		case math.IsNaN(c.Lo) || math.IsInf(c.Lo, 0) || math.IsNaN(c.Hi) || math.IsInf(c.Hi, 0) || !(c.Hi > c.Lo):
			return fmt.Errorf("approximation %s: invalid range [%g, %g]", name, c.Lo, c.Hi)
		case positive && !(c.Lo > 0):
			return fmt.Errorf("approximation %s: range [%g, %g] must be positive", name, c.Lo, c.Hi)
		case len(c.Coeffs) == 0 || len(c.Coeffs) > 1<<12:
			return fmt.Errorf("approximation %s: %d coefficients (want 1 to %d)", name, len(c.Coeffs), 1<<12)
		}
		for i, v := range c.Coeffs {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("approximation %s: coefficient %d is %g", name, i, v)
			}
		}
		return nil
	}
	iters := func(name string, n int) error {
		if n < 0 || n > 64 {
			return fmt.Errorf("approximation %s: %d Newton iterations (want 0 to 64)", name, n)
		}
		return nil
	}
	if err := cheb("exp", s.Exp.Poly, false); err != nil {
		return err
	}
	if err := cheb("recip", s.Recip.Init, true); err != nil {
		return err
	}
	if err := iters("recip", s.Recip.Iters); err != nil {
		return err
	}
	if s.InvSqrt != nil {
		if err := cheb("inv_sqrt", s.InvSqrt.Init, true); err != nil {
			return err
		}
		if err := iters("inv_sqrt", s.InvSqrt.Iters); err != nil {
			return err
		}
	}
	if s.GELU != nil {
		if err := cheb("gelu", s.GELU.Poly, false); err != nil {
			return err
		}
	}
	return nil
}

// GPT-2 import.

var gpt2Layer = regexp.MustCompile(`^h\.(\d+)\.`)

// gpt2Ignored are buffers that Hugging Face GPT-2 files may carry; they are
// not weights (causal mask, its fill value).
var gpt2Ignored = regexp.MustCompile(`^h\.\d+\.attn\.(bias|masked_bias)$`)

// LoadGPT2 reads a safetensors file in the standard GPT-2 layout (as
// written by Hugging Face: names optionally prefixed "transformer.", causal
// mask buffers h.{l}.attn.bias / masked_bias ignored, lm_head.weight ignored
// when equal to wte.weight, an error otherwise) as a baseline model. Vocab,
// context, dim, layers and FFN width come from the shapes; the head count
// from the metadata keys "n_head", "num_attention_heads" or "heads" when
// present, else from heads (GPT-2 small: 12). The result has no Tokenizer
// (nil): GPT-2's own tokenizer is not ours. An entropi checkpoint passed to
// LoadGPT2 loads as with Load.
func LoadGPT2(path string, heads int) (*Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gpt2: %w", err)
	}
	defer f.Close()
	ck, err := ReadGPT2(f, heads)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ck, nil
}

// ReadGPT2 is LoadGPT2 on a stream.
func ReadGPT2(r io.Reader, heads int) (*Checkpoint, error) {
	ts, meta, err := ReadSafetensors(r)
	if err != nil {
		return nil, fmt.Errorf("gpt2: %w", err)
	}
	if meta["format"] == "entropi" {
		return checkpointFromTensors(ts, meta)
	}
	names := map[string]Tensor{}
	for name, t := range ts {
		n := strings.TrimPrefix(name, "transformer.")
		if _, dup := names[n]; dup {
			return nil, fmt.Errorf("gpt2: tensor %s appears both with and without the \"transformer.\" prefix", n)
		}
		names[n] = t
	}
	var lmHead *Tensor
	for n, t := range names {
		switch {
		case n == "lm_head.weight":
			lmHead = &t
			delete(names, n)
		case gpt2Ignored.MatchString(n):
			delete(names, n)
		}
	}
	wte, ok := names["wte.weight"]
	if !ok || len(wte.Shape) != 2 {
		return nil, errors.New("gpt2: no 2-d tensor wte.weight (is this a GPT-2 file?)")
	}
	wpe, ok := names["wpe.weight"]
	if !ok || len(wpe.Shape) != 2 {
		return nil, errors.New("gpt2: no 2-d tensor wpe.weight (is this a GPT-2 file?)")
	}
	if lmHead != nil && (!slices.Equal(lmHead.Shape, wte.Shape) || !slices.Equal(lmHead.Data, wte.Data)) {
		return nil, errors.New("gpt2: lm_head.weight differs from wte.weight; entropi models tie the LM head to the embedding")
	}
	layers := 0
	for n := range names {
		if m := gpt2Layer.FindStringSubmatch(n); m != nil {
			l, err := strconv.Atoi(m[1])
			if err != nil || l > 1<<16 {
				return nil, fmt.Errorf("gpt2: tensor %s: bad layer index", n)
			}
			layers = max(layers, l+1)
		}
	}
	if layers == 0 {
		return nil, errors.New("gpt2: no h.{l}.* block tensors")
	}
	fc, ok := names["h.0.mlp.c_fc.weight"]
	if !ok || len(fc.Shape) != 2 {
		return nil, errors.New("gpt2: no 2-d tensor h.0.mlp.c_fc.weight")
	}
	h := 0
	for _, k := range []string{"n_head", "num_attention_heads", "heads"} {
		if s, ok := meta[k]; ok {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 {
				return nil, fmt.Errorf("gpt2: metadata %s=%q is not a positive head count", k, s)
			}
			h = v
			break
		}
	}
	switch {
	case h == 0 && heads < 1:
		return nil, errors.New("gpt2: the file does not say how many attention heads the model has; pass heads (GPT-2 small: 12)")
	case h == 0:
		h = heads
	case heads > 0 && heads != h:
		return nil, fmt.Errorf("gpt2: heads %d given, but the file's metadata says %d", heads, h)
	}
	cfg := Baseline(wte.Shape[0], wpe.Shape[0], wte.Shape[1], layers, h)
	cfg.Name = "gpt2"
	cfg.FFNHidden = fc.Shape[1]
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gpt2: inferred %w", err)
	}
	w, err := weightsFromTensors(cfg, names)
	if err != nil {
		return nil, fmt.Errorf("gpt2: %w", err)
	}
	return &Checkpoint{Weights: w}, nil
}
