package engine

import (
	"encoding/json"
	"fmt"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"gonum.org/v1/gonum/mat"
)

// Spec is the public description of an engine that a client needs: the
// model configuration (no weights), the preset, the layouts and levels of
// the ciphertexts it sends and receives, and the evaluation keys the plan
// needs. It serializes to JSON.
type Spec struct {
	Model               model.Config `json:"model"`
	Preset              he.Preset    `json:"preset"`
	AllowInsecure       bool         `json:"allow_insecure,omitempty"`
	ClientSideEmbedding bool         `json:"client_side_embedding"`
	// Refresh is the refresh mode: "interactive" (or empty: the client
	// answers masked-refresh rounds) or "bootstrap" (the client uploads
	// bootstrapping keys as well and answers no round).
	Refresh RefreshMode `json:"refresh,omitempty"`
	// InputLevel: the level at which the client encrypts a token.
	InputLevel int `json:"input_level"`
	// InputPeriod: the token ciphertext holds the one-hot of the token
	// (length vocab) replicated with this period (he.Replicated); with
	// client-side embedding, wte[token] (length dim) replicated.
	InputPeriod int `json:"input_period"`
	// LogitPeriod: the logits (length vocab) come replicated with this period.
	LogitPeriod int `json:"logit_period"`
	// Rotations: every rotation key the server needs, with the highest
	// level at which it is used; RelinLevel likewise (-1: none).
	Rotations  map[int]int `json:"rotations"`
	RelinLevel int         `json:"relin_level"`
	// Embedding is wte, only with client-side embedding (it reveals the
	// table to the client; the default keeps it on the server).
	Embedding [][]float64 `json:"embedding,omitempty"`
}

// Spec returns the engine's public description.
func (e *Engine) Spec() *Spec {
	s := &Spec{Model: e.cfg, Preset: e.opts.Preset, AllowInsecure: e.opts.AllowInsecure,
		ClientSideEmbedding: e.opts.ClientSideEmbedding, Refresh: e.mode(), InputLevel: e.plan.InputLevel,
		InputPeriod: e.inPeriod, LogitPeriod: e.logitPeriod, Rotations: map[int]int{}, RelinLevel: -1}
	for k, l := range e.req.Rotations {
		s.Rotations[k] = l
	}
	if e.req.Relinearize {
		s.RelinLevel = e.req.RelinLevel
	}
	if e.opts.ClientSideEmbedding {
		s.Embedding = make([][]float64, e.cfg.Vocab)
		for t := range s.Embedding {
			s.Embedding[t] = mat.Row(nil, t, e.w.Wte)
		}
	}
	return s
}

// MarshalSpec / UnmarshalSpec: JSON round trip with validation.
func (s *Spec) Marshal() ([]byte, error) { return json.Marshal(s) }

// UnmarshalSpec parses and checks a spec received from a server.
func UnmarshalSpec(b []byte) (*Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("engine: spec: %w", err)
	}
	return &s, s.Check()
}

// Check validates the spec's consistency.
func (s *Spec) Check() error {
	if err := s.Model.Validate(); err != nil {
		return fmt.Errorf("engine: spec: %w", err)
	}
	if err := s.Preset.Check(); err != nil {
		return fmt.Errorf("engine: spec: %w", err)
	}
	slots := s.Preset.Slots()
	switch {
	case s.InputLevel < 0 || s.InputLevel > s.Preset.MaxLevel():
		return fmt.Errorf("engine: spec: input level %d out of [0, %d]", s.InputLevel, s.Preset.MaxLevel())
	case s.InputPeriod < 1 || s.InputPeriod > slots || s.LogitPeriod < s.Model.Vocab || s.LogitPeriod > slots:
		return fmt.Errorf("engine: spec: periods %d / %d do not fit %d slots", s.InputPeriod, s.LogitPeriod, slots)
	case s.ClientSideEmbedding && len(s.Embedding) != s.Model.Vocab:
		return fmt.Errorf("engine: spec: client-side embedding without the embedding table")
	}
	if _, err := ParseRefreshMode(string(s.Refresh)); err != nil {
		return fmt.Errorf("engine: spec: %w", err)
	}
	if s.Refresh.bootstrap() && s.Preset.Secret != he.SecretSparse {
		return fmt.Errorf("engine: spec: bootstrap mode needs a bootstrapping preset (sparse secret), %s has %q", s.Preset.Name, s.Preset.Secret)
	}
	for k, l := range s.Rotations {
		if k <= 0 || k >= slots || l < 0 || l > s.Preset.MaxLevel() {
			return fmt.Errorf("engine: spec: rotation %d at level %d out of range", k, l)
		}
	}
	return nil
}
