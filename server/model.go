package server

import (
	"context"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

// Model is a model as the server runs it: the encrypted decoder behind the
// service. The real one is the engine (EngineModel); tests use a small fake.
// A Model is shared by all sessions and must be safe for concurrent use.
type Model interface {
	Info() ModelInfo
	// NewSession starts one generation's server state (the encrypted KV
	// cache) over a client's public keys; refresh carries masked-refresh
	// rounds to that client (nil in bootstrap mode: no client rounds).
	NewSession(keys *Keys, refresh RefreshFunc) (ModelSession, error)
}

// ModelSession is one generation: Prefill the prompt (one ciphertext per
// token), then Decode one token at a time; both return the flooded
// encrypted logits. Calls are sequential.
type ModelSession interface {
	Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error)
	Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error)
}

// StatsReporter is implemented by model sessions that time their phases;
// the JSON goes to the client in the Done message.
type StatsReporter interface {
	StatsJSON() ([]byte, error)
}

// RefreshFunc carries one masked-refresh round to the client and back.
type RefreshFunc func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error)

// Keys are the public keys a client uploads for a session. There is no
// field, here or anywhere in this package, that can hold a secret key.
type Keys struct {
	Evaluation *he.EvaluationKeys
	Public     *rlwe.PublicKey
	// Bootstrap are the client's bootstrapping keys (public evaluation
	// keys under the bootstrapping parameters), bootstrap mode only.
	Bootstrap *bootstrapping.EvaluationKeys
}

// ModelInfo is what the server announces about a model.
type ModelInfo struct {
	Name   string
	Config model.Config
	Preset he.Preset
	// ClientSideEmbedding: the client looks up embeddings (reveals wte).
	ClientSideEmbedding bool
	// InputLevel is the level of every token ciphertext (prompt and next
	// token); they come at the default scale.
	InputLevel int
	// GaloisElements and Relinearize are the evaluation keys the circuit
	// needs: exactly those, no more.
	GaloisElements []uint64
	Relinearize    bool
	// Spec is the engine's public contract (JSON), opaque to the service.
	Spec []byte
	// Tokenizer, if any, is sent to clients (public).
	Tokenizer *model.Tokenizer
	// Refresh is the model's refresh mode ("" : interactive). In bootstrap
	// mode the preset must be a bootstrapping one, clients upload
	// bootstrapping keys with the session and answer no refresh rounds.
	Refresh engine.RefreshMode
}
