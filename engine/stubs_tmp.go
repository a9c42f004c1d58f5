package engine

import (
	"context"
	"errors"
	"time"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

var errTODO = errors.New("engine: not implemented yet")

// Engine is the server side of one (model, preset): immutable after New and
// shared by all sessions.
type Engine struct{}

// New plans the encrypted decoder of w with the approximations set.
func New(w *model.Weights, set *approx.Set, opts Options) (*Engine, error) { return nil, errTODO }

// Plan is the level plan of one decode step.
type Plan struct{}

func (e *Engine) Plan() *Plan                 { return &Plan{} }
func (e *Engine) KeyRequest() *he.KeyRequest { return nil }

// Spec is the public description of an engine (JSON).
type Spec struct{}

func (e *Engine) Spec() *Spec { return &Spec{} }

// Session is the server side of one client.
type Session struct{}

func (e *Engine) NewSession(keys *Keys, refresh RefreshFunc) (*Session, error) { return nil, errTODO }
func (s *Session) Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return nil, errTODO
}
func (s *Session) Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return nil, errTODO
}

// Stats are the session's counters.
type Stats struct{ Total time.Duration }

func (s *Session) Stats() Stats { return Stats{} }

// Client is the client side; it holds the secret key.
type Client struct{}

func NewClient(spec *Spec, seed []byte) (*Client, error)                 { return nil, errTODO }
func (c *Client) Keys() (*Keys, error)                                   { return nil, errTODO }
func (c *Client) EncryptPrompt(tokens []int) ([]*rlwe.Ciphertext, error) { return nil, errTODO }
func (c *Client) EncryptToken(token, pos int) (*rlwe.Ciphertext, error)  { return nil, errTODO }
func (c *Client) AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	return nil, errTODO
}
func (c *Client) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error) { return nil, errTODO }
