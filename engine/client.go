package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Client is the client side of a session: it holds the secret key (which
// never leaves it), encrypts tokens, answers refresh rounds with fresh
// encryptions (never with decrypted values) and decrypts the logits.
// Safe for concurrent use.
type Client struct {
	spec      *Spec
	params    ckks.Parameters
	mu        sync.Mutex
	ck        *he.ClientKeys
	pk        *rlwe.PublicKey
	responder *he.RefreshResponder
}

// NewClient builds a client for an engine's Spec with a fresh secret key.
// seed must be nil: keys always come from crypto randomness (a seeded key
// generator is not implemented).
func NewClient(spec *Spec, seed []byte) (*Client, error) {
	if spec == nil {
		return nil, errors.New("engine: nil spec")
	}
	if seed != nil {
		return nil, errors.New("engine: seeded client keys are not supported (pass nil)")
	}
	if err := spec.Check(); err != nil {
		return nil, err
	}
	params, err := spec.Preset.Parameters(spec.AllowInsecure)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	ck := he.NewClientKeys(params)
	return &Client{spec: spec, params: params, ck: ck,
		pk:        rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey),
		responder: he.NewRefreshResponder(params, ck.SecretKey)}, nil
}

// KeyRequest rebuilds the engine's key request from the spec.
func (c *Client) KeyRequest() *he.KeyRequest {
	req := he.NewKeyRequest(c.params)
	for k, l := range c.spec.Rotations {
		req.AddRotations(l, k)
	}
	if c.spec.RelinLevel >= 0 {
		req.AddRelin(c.spec.RelinLevel)
	}
	return req
}

// Keys generates what the session needs: exactly the planned keys, each
// only up to the level where it is used, compressed (seeded), and the
// public key for flooding; in bootstrap mode (Spec.Refresh) also the
// bootstrapping keys (he.GenBootstrappingKeys: about 7.3 GiB at N=2^16).
func (c *Client) Keys() (*Keys, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ek, err := c.ck.GenEvaluationKeys(c.KeyRequest(), he.KeyOptions{Compressed: true, AtUsedLevels: true})
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	k := &Keys{Evaluation: ek, Public: c.pk}
	if c.spec.Refresh.bootstrap() {
		if k.Bootstrap, err = c.genBootstrapKeys(); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// EvaluationKeys is Keys().Evaluation.
func (c *Client) EvaluationKeys() (*he.EvaluationKeys, error) {
	k, err := c.Keys()
	if err != nil {
		return nil, err
	}
	return k.Evaluation, nil
}

// PublicKey is the client's public key (uploaded with the evaluation keys).
func (c *Client) PublicKey() *rlwe.PublicKey { return c.pk }

// EncryptToken encrypts one token for position pos (the server adds the
// positional embedding): the one-hot of the token replicated with period
// Spec.InputPeriod, or wte[token] with client-side embedding.
func (c *Client) EncryptToken(token, pos int) (*rlwe.Ciphertext, error) {
	cfg := c.spec.Model
	if token < 0 || token >= cfg.Vocab {
		return nil, fmt.Errorf("engine: token %d outside the vocabulary [0, %d)", token, cfg.Vocab)
	}
	if pos < 0 || pos >= cfg.Context {
		return nil, fmt.Errorf("engine: position %d outside the context [0, %d)", pos, cfg.Context)
	}
	var x []float64
	if c.spec.ClientSideEmbedding {
		x = c.spec.Embedding[token]
	} else {
		x = make([]float64, cfg.Vocab)
		x[token] = 1
	}
	lay := he.Replicated{D: len(x), Period: c.spec.InputPeriod, Slots: c.params.MaxSlots()}
	if err := lay.Check(); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ck.Encrypt(lay.Encode(x), c.spec.InputLevel)
}

// EncryptPrompt encrypts the prompt's tokens at positions 0, 1, … (one
// ciphertext per token).
func (c *Client) EncryptPrompt(tokens []int) ([]*rlwe.Ciphertext, error) {
	out := make([]*rlwe.Ciphertext, len(tokens))
	for i, t := range tokens {
		var err error
		if out[i], err = c.EncryptToken(t, i); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// AnswerRefresh answers a refresh round: it decrypts the masked
// ciphertexts and returns fresh encryptions (never decrypted values).
// It is the in-process RefreshFunc.
func (c *Client) AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	return c.responder.Respond(ctx, req)
}

// DecryptLogits decrypts the flooded logits (length vocab).
func (c *Client) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error) {
	if ct == nil || ct.Degree() != 1 || ct.Value[0].N() != c.params.N() {
		return nil, errors.New("engine: malformed logits ciphertext")
	}
	c.mu.Lock()
	v, err := c.ck.Decrypt(ct)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return append([]float64(nil), v[:c.spec.Model.Vocab]...), nil
}
