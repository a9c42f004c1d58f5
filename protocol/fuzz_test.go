package protocol

import (
	"testing"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/he"
)

// The parsers face the network: whatever the bytes, they return an error or
// a validated value, never panic or allocate from a forged length.

func FuzzUnmarshalCiphertext(f *testing.F) {
	params, ck := testParams(f)
	ct, _ := ck.Encrypt([]float64{1, 2}, 1)
	b, _ := ct.MarshalBinary()
	f.Add(b)
	f.Add(b[:100])
	f.Add([]byte{1})
	rule := CiphertextRule{Degree: 1, MinLevel: 0, MaxLevel: 2, MaxLogScaleDelta: 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		ct, err := UnmarshalCiphertext(params, data, rule)
		if err == nil && (ct.Level() > 2 || ct.Degree() != 1 || ct.Value[0].N() != params.N()) {
			t.Fatalf("accepted a ciphertext outside the rule: level %d degree %d", ct.Level(), ct.Degree())
		}
	})
}

func FuzzParseEvaluationKeys(f *testing.F) {
	params, ck := testParams(f)
	req := he.NewKeyRequest(params)
	req.AddRotations(1, 1)
	ek, _ := ck.GenEvaluationKeys(req, he.KeyOptions{Compressed: true, AtUsedLevels: true})
	b, _ := ek.MarshalBinary(params)
	f.Add(b)
	f.Add(b[:len(b)/3])
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	pb, _ := pk.MarshalBinary()
	f.Fuzz(func(t *testing.T, data []byte) {
		if ek, err := ParseEvaluationKeys(params, data, 1<<24); err == nil {
			if err := ek.Validate(params); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = ParsePublicKey(params, append(pb[:0:0], data...))
	})
}
