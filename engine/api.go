package engine

import (
	"context"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// Options configure an Engine.
type Options struct {
	// Preset is the CKKS parameter set (he.N14, he.N15, ...).
	Preset he.Preset
	// AllowInsecure permits "insecure-…" presets (tests, explicit flag).
	AllowInsecure bool
	// ClientSideEmbedding makes the client look up wte[token] itself and
	// encrypt the d-vector (cheaper: no d×V product on the server) at the
	// price of revealing the embedding table to the client (Spec.Embedding).
	// Default false: the client encrypts the one-hot of its token and the
	// server multiplies by the embedding matrix; weights stay private.
	ClientSideEmbedding bool
	// Workers bounds the goroutines of one session (0: all CPUs).
	Workers int
	// PreRotateLinear refreshes the input of every d×d product into the
	// pre-rotated layout (a masked-refresh slot map, free) even when levels
	// remain: the product then needs d²/Slots diagonals instead of d —
	// less time and far less plaintext memory at large d — for one more
	// round trip per product.
	PreRotateLinear bool
	// PrefillBatch is the number of prompt tokens packed token-major into
	// one ciphertext by Session.Prefill (a power of two ≤ Slots/Dim; see
	// prefill.go). 0: Slots/Dim, capped at the context (token by token in
	// bootstrap mode); 1: token by token through the decode path.
	PrefillBatch int
	// Mask are the masked-refresh parameters (zero: he.DefaultMaskOptions
	// with the value bound derived from the calibration).
	Mask he.MaskOptions
	// Flood are the flooding parameters of the logits (zero:
	// he.DefaultFloodOptions).
	Flood he.FloodOptions
	// Refresh chooses how ciphertexts regain levels: RefreshInteractive
	// (default; client-aided masked refresh rounds through a RefreshFunc)
	// or RefreshBootstrap (Lattigo bootstrapping on the server, no client
	// round; needs a bootstrapping preset such as he.N16Boot, and the
	// client's bootstrapping keys in Keys.Bootstrap). See bootstrap.go.
	Refresh RefreshMode
	// BootstrapBound bounds the activations a bootstrap sees (every slot;
	// zero: 1024, the masked refresh's floor), rounded up to a power of
	// two; operands of the approximations use their calibrated ranges
	// instead. Bootstrap mode only.
	BootstrapBound float64
}

// RefreshFunc carries one masked-refresh round to the client and back (the
// service implements it over the network; in process it is
// Client.AnswerRefresh).
type RefreshFunc func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error)

// Keys is what a client uploads for a session: the evaluation keys the plan
// needs (Engine.KeyRequest) and its public key (the server re-randomizes the
// logits with it before they leave, he.Flooder).
type Keys struct {
	Evaluation *he.EvaluationKeys
	Public     *rlwe.PublicKey
	// Bootstrap are the bootstrapping keys (he.GenBootstrappingKeys), only
	// in bootstrap mode (Spec.Refresh).
	Bootstrap *bootstrapping.EvaluationKeys
}

// Interface summary (server side):
//
//	func New(w *model.Weights, set *approx.Set, opts Options) (*Engine, error)
//	func (e *Engine) Plan() *Plan
//	func (e *Engine) KeyRequest() *he.KeyRequest
//	func (e *Engine) Spec() *Spec
//	func (e *Engine) NewSession(keys *Keys, refresh RefreshFunc) (*Session, error) // refresh nil in bootstrap mode
//	func (s *Session) Prefill(ctx, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error)
//	func (s *Session) Decode(ctx, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error)
//	func (s *Session) Stats() Stats
//
// client side:
//
//	func NewClient(spec *Spec, seed []byte) (*Client, error)
//	func (c *Client) Keys() (*Keys, error)
//	func (c *Client) EncryptPrompt(tokens []int) ([]*rlwe.Ciphertext, error)
//	func (c *Client) EncryptToken(token, pos int) (*rlwe.Ciphertext, error)
//	func (c *Client) AnswerRefresh(ctx, req *he.RefreshRequest) (*he.RefreshResponse, error)
//	func (c *Client) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error)
var (
	_ func(*model.Weights, *approx.Set, Options) (*Engine, error) = New
	_ func(*Spec, []byte) (*Client, error)                        = NewClient
)
