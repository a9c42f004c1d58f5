package client

import (
	"context"
	"fmt"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
)

// defaultCrypto builds the engine's client from the model's spec. The
// server's opinion on insecure presets is ignored: the caller's decides.
func defaultCrypto(info *ModelInfo, allowInsecure bool) (Crypto, error) {
	spec, err := engine.UnmarshalSpec(info.Spec)
	if err != nil {
		return nil, err
	}
	if spec.Preset.Name != info.Preset.Name || spec.Preset.LogN != info.Preset.LogN {
		return nil, fmt.Errorf("model %q: the spec's preset %q disagrees with the announced %q", info.Name, spec.Preset.Name, info.Preset.Name)
	}
	if spec.Model.Vocab != info.Config.Vocab || spec.Model.Context != info.Config.Context {
		return nil, fmt.Errorf("model %q: the spec's model disagrees with the announced configuration", info.Name)
	}
	spec.AllowInsecure = allowInsecure
	c, err := engine.NewClient(spec, nil)
	if err != nil {
		return nil, err
	}
	return engineCrypto{c}, nil
}

type engineCrypto struct{ c *engine.Client }

func (e engineCrypto) Keys() (*he.EvaluationKeys, *rlwe.PublicKey, error) {
	k, err := e.c.Keys()
	if err != nil {
		return nil, nil, err
	}
	return k.Evaluation, k.Public, nil
}

func (e engineCrypto) EncryptToken(token, pos int) (*rlwe.Ciphertext, error) {
	return e.c.EncryptToken(token, pos)
}

func (e engineCrypto) AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	return e.c.AnswerRefresh(ctx, req)
}

func (e engineCrypto) DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error) {
	return e.c.DecryptLogits(ct)
}
