package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

// EngineModel serves an engine under a name.
func EngineModel(name string, e *engine.Engine, tok *model.Tokenizer) (Model, error) {
	spec := e.Spec()
	js, err := spec.Marshal()
	if err != nil {
		return nil, err
	}
	// The server's own test flag is none of the client's business.
	var m map[string]any
	if err := json.Unmarshal(js, &m); err == nil {
		delete(m, "allow_insecure")
		if b, err := json.Marshal(m); err == nil {
			js = b
		}
	}
	req := e.KeyRequest()
	return &engineModel{e: e, info: ModelInfo{
		Name: name, Config: e.Config(), Preset: spec.Preset, ClientSideEmbedding: spec.ClientSideEmbedding,
		InputLevel: spec.InputLevel, GaloisElements: req.GaloisElements(e.Params()), Relinearize: req.Relinearize,
		Spec: js, Tokenizer: tok, Refresh: e.Mode(),
	}}, nil
}

type engineModel struct {
	e    *engine.Engine
	info ModelInfo
}

func (m *engineModel) Info() ModelInfo { return m.info }

func (m *engineModel) NewSession(keys *Keys, refresh RefreshFunc) (ModelSession, error) {
	// In bootstrap mode the engine bootstraps and takes no callback (the
	// server passes none).
	s, err := m.e.NewSession(&engine.Keys{Evaluation: keys.Evaluation, Public: keys.Public, Bootstrap: keys.Bootstrap}, engine.RefreshFunc(refresh))
	if err != nil {
		return nil, err
	}
	return engineSession{s}, nil
}

type engineSession struct{ s *engine.Session }

func (s engineSession) Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return s.s.Prefill(ctx, in)
}

func (s engineSession) Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return s.s.Decode(ctx, in)
}

func (s engineSession) StatsJSON() ([]byte, error) { return json.Marshal(s.s.Stats()) }

// LoadOptions say how checkpoints become served models.
type LoadOptions struct {
	// Preset is the CKKS preset; the zero value picks the first of
	// AutoPresets whose levels hold the model's approximations.
	Preset              he.Preset
	AllowInsecure       bool
	ClientSideEmbedding bool
	Workers             int
	Logger              *slog.Logger
	// Refresh is the refresh mode ("" : interactive). Bootstrap mode
	// (engine.RefreshBootstrap: the server bootstraps, clients upload
	// bootstrapping keys and answer no rounds) needs an explicit
	// bootstrapping preset (sparse secret): n16-boot-128, or
	// insecure-boot-deep for tests.
	Refresh engine.RefreshMode
}

// LoadModels builds an engine for every checkpoint (*.safetensors) in dir;
// a model is named after its file (without the extension).
func LoadModels(dir string, opt LoadOptions) ([]Model, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("no checkpoints (*.safetensors) in %s: train one with `entropi train --out %s/NAME.safetensors`", dir, dir)
	}
	var out []Model
	for _, f := range files {
		ck, err := model.Load(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		name := strings.TrimSuffix(filepath.Base(f), ".safetensors")
		m, err := CheckpointModel(name, ck, opt)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// CheckpointModel builds the engine of a checkpoint. A checkpoint without
// calibrated approximations is calibrated on random token sequences (with a
// warning): ranges seen on real text are better (`entropi eval --save`).
func CheckpointModel(name string, ck *model.Checkpoint, opt LoadOptions) (Model, error) {
	if ck == nil || ck.Weights == nil {
		return nil, errors.New("empty checkpoint")
	}
	set := ck.Approx
	if set == nil {
		log := opt.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("checkpoint has no calibrated approximations: calibrating on random tokens", "model", name)
		var err error
		if set, err = CalibrateRandom(ck.Weights, 1); err != nil {
			return nil, err
		}
	}
	e, _, notes, err := NewEngine(ck.Weights, set, opt)
	if err != nil {
		return nil, err
	}
	for _, n := range notes {
		log := opt.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("approximation refitted to the preset's levels", "model", name, "preset", e.Spec().Preset.Name, "change", n)
	}
	return EngineModel(name, e, ck.Tokenizer)
}

// AutoPresets are tried in order when no preset is given: the smaller ring
// first (faster, smaller keys), the larger when the approximations need
// more levels between refreshes.
var AutoPresets = []he.Preset{he.N14, he.N15}

// NewEngine builds the engine at opt.Preset, or at the first of AutoPresets
// that fits when opt.Preset is the zero value. With an explicit preset
// whose levels between refreshes cannot hold an approximation, the
// approximations are refitted to fit (engine.FitToPreset: lower degrees,
// more Newton steps); notes say what changed. It returns the set the engine
// runs (the plaintext model with that set is what it must match).
func NewEngine(w *model.Weights, set *approx.Set, opt LoadOptions) (*engine.Engine, *approx.Set, []string, error) {
	mode, err := engine.ParseRefreshMode(string(opt.Refresh))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := CheckRefreshPreset(mode, opt.Preset); err != nil {
		return nil, nil, nil, err
	}
	presets := []he.Preset{opt.Preset}
	if opt.Preset.Name == "" {
		presets = AutoPresets
	}
	build := func(p he.Preset, s *approx.Set) (*engine.Engine, error) {
		return engine.New(w, s, engine.Options{Preset: p, AllowInsecure: opt.AllowInsecure,
			ClientSideEmbedding: opt.ClientSideEmbedding, Workers: opt.Workers, Refresh: mode})
	}
	var errs []string
	for _, p := range presets {
		e, err := build(p, set)
		if err == nil {
			return e, set, nil, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", p.Name, err))
		// Refit to the preset's levels: always for an explicit preset; in
		// auto mode only a refit that keeps every error, i.e. one that only
		// splits Newton chains (reciprocal, inverse square root: more
		// steps, same error), never one that lowers the degree of exp or
		// GELU (the next, larger ring is tried instead).
		fit, notes, ferr := engine.FitToPreset(set, p, opt.AllowInsecure, w.Config.Context)
		if ferr != nil || len(notes) == 0 || (opt.Preset.Name == "" && !sameDegrees(set, fit)) {
			continue
		}
		e, err = build(p, fit)
		if err == nil {
			return e, fit, notes, nil
		}
		errs = append(errs, fmt.Sprintf("after refitting (%s): %v", strings.Join(notes, "; "), err))
	}
	return nil, nil, nil, errors.New(strings.Join(errs, "; "))
}

// CheckRefreshPreset refuses bootstrap mode without an explicit
// bootstrapping preset (sparse secret); any preset serves interactive mode.
func CheckRefreshPreset(mode engine.RefreshMode, p he.Preset) error {
	if mode != engine.RefreshBootstrap {
		return nil
	}
	var boot []string
	for _, q := range he.Presets() {
		if q.Secret == he.SecretSparse {
			boot = append(boot, q.Name)
		}
	}
	if p.Name == "" {
		return fmt.Errorf("refresh mode bootstrap needs an explicit bootstrapping preset (%s; insecure-… for tests only), not auto", strings.Join(boot, ", "))
	}
	if p.Secret != he.SecretSparse {
		return fmt.Errorf("refresh mode bootstrap needs a bootstrapping preset (sparse secret: %s); %s is not one (use it with --refresh interactive)", strings.Join(boot, ", "), p.Name)
	}
	return nil
}

// sameDegrees reports whether exp and GELU kept their polynomials.
func sameDegrees(a, b *approx.Set) bool {
	if a.Exp.Poly.Degree() != b.Exp.Poly.Degree() {
		return false
	}
	if (a.GELU == nil) != (b.GELU == nil) {
		return false
	}
	return a.GELU == nil || a.GELU.Poly.Degree() == b.GELU.Poly.Degree()
}

// CalibrateRandom calibrates the approximations of w on random sequences.
func CalibrateRandom(w *model.Weights, seed uint64) (*approx.Set, error) {
	cfg := w.Config
	r := rand.New(rand.NewPCG(seed, 7))
	seqs := make([][]int, 8)
	for i := range seqs {
		seqs[i] = make([]int, cfg.Context)
		for j := range seqs[i] {
			seqs[i][j] = r.IntN(cfg.Vocab)
		}
	}
	cal, err := model.Calibrate(w, seqs, model.CalibrateOptions{})
	if err != nil {
		return nil, err
	}
	return cal.Set, nil
}
