// Package servertest has a small stand-in for the encrypted decoder, for
// fast tests of the service: a "model" whose next token is a known function
// of the last token and its position, computed on ciphertexts with the same
// machinery as the engine (one masked-refresh round per token, a rotation
// with the client's Galois keys, flooding with its public key).
//
// It is insecure by construction (insecure-test preset) and is not a model:
// it exists so that protocol, validation, limits and cleanup can be tested
// in seconds.
package servertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/server"
)

// Vocab and Context of the fake model.
const (
	Vocab   = 64
	Context = 16
)

// Next is the fake model's greedy next token after token at position pos.
func Next(token, pos int) int { return ((token-shift(pos))%Vocab + Vocab) % Vocab }

func shift(pos int) int { return 1 + pos%3 }

// Greedy returns the fake model's greedy continuation of prompt (n tokens).
func Greedy(prompt []int, n int) []int {
	last, pos := prompt[len(prompt)-1], len(prompt)-1
	var out []int
	for len(out) < n {
		last = Next(last, pos)
		out = append(out, last)
		pos++
	}
	return out
}

// Spec is the fake's public contract.
type Spec struct {
	Vocab  int       `json:"vocab"`
	Preset he.Preset `json:"preset"`
}

// Model is the fake model (server side).
type Model struct {
	Name   string
	params ckks.Parameters
	enc    *ckks.Encoder
	// StepDelay slows each token down (tests of cancellation).
	StepDelay time.Duration
	// Steps counts tokens processed by all sessions.
	Steps atomic.Int64
}

// NewModel builds the fake on the insecure test preset.
func NewModel(name string) (*Model, error) {
	params, err := he.InsecureTest.Parameters(true)
	if err != nil {
		return nil, err
	}
	return &Model{Name: name, params: params, enc: ckks.NewEncoder(params)}, nil
}

// Config is the fake's announced configuration.
func Config() model.Config {
	c := model.EntropyGuided(Vocab, Context, 16, 1, 1)
	c.Name = "fake"
	return c
}

func rotations() []int { return []int{1, 2, 3} }

// Info implements server.Model.
func (m *Model) Info() server.ModelInfo {
	req := he.NewKeyRequest(m.params)
	req.AddRotations(m.params.MaxLevel(), rotations()...)
	js, _ := json.Marshal(Spec{Vocab: Vocab, Preset: he.InsecureTest})
	return server.ModelInfo{Name: m.Name, Config: Config(), Preset: he.InsecureTest, InputLevel: m.params.MaxLevel(),
		GaloisElements: req.GaloisElements(m.params), Spec: js}
}

// NewSession implements server.Model.
func (m *Model) NewSession(keys *server.Keys, refresh server.RefreshFunc) (server.ModelSession, error) {
	ev, err := he.NewEvaluator(m.params, keys.Evaluation, &he.Counters{})
	if err != nil {
		return nil, err
	}
	for _, k := range rotations() {
		if !ev.HasRotation(k, m.params.MaxLevel()) {
			return nil, fmt.Errorf("fake: keys lack rotation %d", k)
		}
	}
	fl, err := he.NewFlooder(m.params, keys.Public, he.DefaultFloodOptions())
	if err != nil {
		return nil, err
	}
	mr, err := he.NewMaskedRefresher(m.params, keys.Public, he.RefreshTransport(refresh), he.DefaultMaskOptions())
	if err != nil {
		return nil, err
	}
	return &session{m: m, ev: ev, fl: fl, mr: mr}, nil
}

type session struct {
	m   *Model
	ev  *he.Evaluator
	fl  *he.Flooder
	mr  *he.MaskedRefresher
	pos int
}

func (s *session) step(ctx context.Context, ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	if s.pos >= Context {
		return nil, errors.New("fake: context full")
	}
	if s.m.StepDelay > 0 {
		select {
		case <-time.After(s.m.StepDelay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.m.Steps.Add(1)
	// One refresh round (as the engine does between segments), then the
	// "model": rotate the replicated one-hot left by 1 + pos mod 3.
	low := ct.CopyNew()
	low.Resize(1, 4)
	r, err := s.mr.Refresh(ctx, []*rlwe.Ciphertext{low}, he.RefreshOptions{Level: -1})
	if err != nil {
		return nil, err
	}
	out, err := s.ev.Rotate(r[0], shift(s.pos))
	if err != nil {
		return nil, err
	}
	s.pos++
	return s.fl.Flood(out)
}

func (s *session) Prefill(ctx context.Context, in []*rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	var out *rlwe.Ciphertext
	for _, ct := range in {
		var err error
		if out, err = s.step(ctx, ct); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *session) Decode(ctx context.Context, in *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	return s.step(ctx, in)
}

func (s *session) StatsJSON() ([]byte, error) { return json.Marshal(map[string]int{"tokens": s.pos}) }

// Crypto is the fake's client side (it holds the secret key).
type Crypto struct {
	ck *he.ClientKeys
	rr *he.RefreshResponder
}

// NewCrypto builds the client side from the announced spec.
func NewCrypto(specJSON []byte, allowInsecure bool) (*Crypto, error) {
	var sp Spec
	if err := json.Unmarshal(specJSON, &sp); err != nil {
		return nil, err
	}
	params, err := sp.Preset.Parameters(allowInsecure)
	if err != nil {
		return nil, err
	}
	ck := he.NewClientKeys(params)
	return &Crypto{ck: ck, rr: he.NewRefreshResponder(params, ck.SecretKey)}, nil
}

// Keys generates the rotation keys and the public key.
func (c *Crypto) Keys() (*he.EvaluationKeys, *rlwe.PublicKey, error) {
	req := he.NewKeyRequest(c.ck.Params)
	req.AddRotations(c.ck.Params.MaxLevel(), rotations()...)
	ek, err := c.ck.GenEvaluationKeys(req, he.KeyOptions{Compressed: true})
	if err != nil {
		return nil, nil, err
	}
	return ek, rlwe.NewKeyGenerator(c.ck.Params).GenPublicKeyNew(c.ck.SecretKey), nil
}

// EncryptToken encrypts the one-hot of token, replicated with period Vocab.
func (c *Crypto) EncryptToken(token, pos int) (*rlwe.Ciphertext, error) {
	if token < 0 || token >= Vocab {
		return nil, fmt.Errorf("fake: token %d out of range", token)
	}
	x := make([]float64, Vocab)
	x[token] = 1
	lay, err := he.NewReplicated(Vocab, c.ck.Params.MaxSlots())
	if err != nil {
		return nil, err
	}
	return c.ck.Encrypt(lay.Encode(x), -1)
}

// AnswerRefresh answers a refresh round.
func (c *Crypto) AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	return c.rr.Respond(ctx, req)
}

// DecryptLogits decrypts the first Vocab slots.
func (c *Crypto) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error) {
	v, err := c.ck.Decrypt(ct)
	if err != nil {
		return nil, err
	}
	return v[:Vocab], nil
}

// ClientKeys exposes the secret key material (tests that forge messages).
func (c *Crypto) ClientKeys() *he.ClientKeys { return c.ck }
