package train

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/gob"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The resumable state is one gob file: the Config, every parameter tensor,
// the non-trainable buffers (Params.Buffers: spectral-normalization
// power-iteration vectors), the AdamW moments and
// step count, the loader's generator state, the step and token counters, the
// history, and a SHA-256 of the token streams. Floats are stored exactly, so
// training resumed from a state continues bit-identically to a run that was
// never interrupted (TestResumeEquivalence).

const stateFormat = "entropi-train-state-v1"

type savedState struct {
	Format    string
	Config    Config
	Step      int
	Tokens    int64
	ElapsedNS int64
	Names     []string
	Data      [][]float64
	Spectral  [][]float64 // Params.Buffers, in order
	BufNames  []string
	M, V      [][]float64
	OptSteps  int
	Loader    []byte
	History   []StepRecord
	Evals     []EvalRecord
	DataHash  string
	Meta      map[string]string
}

// spectralVectors returns the non-trainable state (Params.Buffers: the
// spectral-normalization power-iteration vectors), aliasing it.
func spectralVectors(p *Params) [][]float64 {
	var out [][]float64
	for _, b := range p.Buffers() {
		out = append(out, b.Data)
	}
	return out
}

func bufferNames(p *Params) []string {
	var out []string
	for _, b := range p.Buffers() {
		out = append(out, b.Name)
	}
	return out
}

// streamHash fingerprints the token streams a run trains and evaluates on.
func streamHash(train, heldOut []int32) string {
	h := sha256.New()
	var buf []byte
	for _, s := range [][]int32{train, heldOut} {
		buf = binary.LittleEndian.AppendUint64(buf[:0], uint64(len(s)))
		h.Write(buf)
		buf = buf[:0]
		for _, id := range s {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(id))
			if len(buf) >= 1<<16 {
				h.Write(buf)
				buf = buf[:0]
			}
		}
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// SaveState writes the resumable state to path (atomically: a temporary file
// in the same directory, then a rename).
func (t *Trainer) SaveState(path string) error {
	ls, err := t.Loader.State()
	if err != nil {
		return err
	}
	s := savedState{
		Format: stateFormat, Config: t.Config, Step: t.Step, Tokens: t.Tokens, ElapsedNS: int64(t.Elapsed),
		Data: t.data, Spectral: spectralVectors(t.Params), BufNames: bufferNames(t.Params), M: t.Opt.M, V: t.Opt.V, OptSteps: t.Opt.Steps,
		Loader: ls, History: t.History, Evals: t.Evals, DataHash: t.dataHash, Meta: t.Meta,
	}
	for _, q := range t.Params.List {
		s.Names = append(s.Names, q.Name)
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&s); err != nil {
		return fmt.Errorf("train: encoding state: %w", err)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(path, buf.Bytes()); err != nil {
		return fmt.Errorf("train: saving state: %w", err)
	}
	return nil
}

// ResumeTrainer restores a trainer saved by SaveState. The token streams must
// be the ones the run started with (checked by hash).
func ResumeTrainer(path string, train, heldOut []int32, workers int) (*Trainer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	defer f.Close()
	var s savedState
	if err := gob.NewDecoder(f).Decode(&s); err != nil {
		return nil, fmt.Errorf("train: reading state %s: %w", path, err)
	}
	if s.Format != stateFormat {
		return nil, fmt.Errorf("train: %s has format %q, want %q", path, s.Format, stateFormat)
	}
	cfg := s.Config
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("train: state %s: %w", path, err)
	}
	p, err := NewParams(cfg.Model, cfg.Opts, cfg.Seed)
	if err != nil {
		return nil, err
	}
	if len(s.Names) != len(p.List) || len(s.Data) != len(p.List) || len(s.M) != len(p.List) || len(s.V) != len(p.List) {
		return nil, fmt.Errorf("train: state %s holds %d tensors, the configuration has %d", path, len(s.Names), len(p.List))
	}
	for i, q := range p.List {
		if s.Names[i] != q.Name || len(s.Data[i]) != len(q.Data) || len(s.M[i]) != len(q.Data) || len(s.V[i]) != len(q.Data) {
			return nil, fmt.Errorf("train: state %s: tensor %d is %s[%d], want %s[%d]", path, i, s.Names[i], len(s.Data[i]), q.Name, len(q.Data))
		}
		copy(q.Data, s.Data[i])
	}
	bufs := p.Buffers()
	if len(bufs) != len(s.Spectral) || len(bufs) != len(s.BufNames) {
		return nil, fmt.Errorf("train: state %s holds %d buffers, want %d", path, len(s.Spectral), len(bufs))
	}
	for i, b := range bufs {
		if b.Name != s.BufNames[i] || len(b.Data) != len(s.Spectral[i]) {
			return nil, fmt.Errorf("train: state %s: buffer %d is %s[%d], want %s[%d]", path, i, s.BufNames[i], len(s.Spectral[i]), b.Name, len(b.Data))
		}
		copy(b.Data, s.Spectral[i])
	}
	t, err := newTrainer(cfg, p, train, heldOut, workers)
	if err != nil {
		return nil, err
	}
	if t.dataHash != s.DataHash {
		return nil, fmt.Errorf("train: state %s was trained on other token streams (hash %.16s…, now %.16s…)", path, s.DataHash, t.dataHash)
	}
	for i := range t.Opt.M {
		copy(t.Opt.M[i], s.M[i])
		copy(t.Opt.V[i], s.V[i])
	}
	t.Opt.Steps = s.OptSteps
	if err := t.Loader.SetState(s.Loader); err != nil {
		return nil, err
	}
	t.Step, t.Tokens, t.Elapsed = s.Step, s.Tokens, time.Duration(s.ElapsedNS)
	t.History, t.Evals = s.History, s.Evals
	if s.Meta != nil {
		t.Meta = s.Meta
	}
	return t, nil
}

// ReadStateInfo returns the Config, step and Meta of a saved state without
// building a trainer (to find which corpus and vocabulary it needs).
func ReadStateInfo(path string) (cfg Config, step int, meta map[string]string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return cfg, 0, nil, fmt.Errorf("train: %w", err)
	}
	defer f.Close()
	var s savedState
	if err := gob.NewDecoder(f).Decode(&s); err != nil {
		return cfg, 0, nil, fmt.Errorf("train: reading state %s: %w", path, err)
	}
	if s.Format != stateFormat {
		return cfg, 0, nil, fmt.Errorf("train: %s has format %q, want %q", path, s.Format, stateFormat)
	}
	return s.Config, s.Step, s.Meta, nil
}
