package protocol

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/he"
)

// TestParseBootstrapKeys (insecure-boot-test: N=2^12, NO SECURITY): real
// bootstrapping keys round-trip; oversize, foreign, truncated, forged,
// trailing, incomplete and unreduced encodings are refused with
// InvalidArgument and a reason, never a panic or a huge allocation.
func TestParseBootstrapKeys(t *testing.T) {
	btp, err := he.BootstrapParameters(he.InsecureBootTest, true)
	require.NoError(t, err)
	sk := rlwe.NewKeyGenerator(btp.ResidualParameters).GenSecretKeyNew()
	keys, err := he.GenBootstrappingKeys(btp, sk)
	require.NoError(t, err)
	data, err := MarshalBootstrapKeys(btp, keys)
	require.NoError(t, err)
	require.Equal(t, BootstrapKeyBytes(keys), len(data))
	t.Logf("insecure-boot-test bootstrapping keys: %d bytes, %d Galois keys", len(data), len(keys.GaloisKeys))

	got, err := ParseBootstrapKeys(btp, data, int64(len(data)))
	require.NoError(t, err)
	require.Equal(t, keys.BinarySize(), got.BinarySize())
	require.Equal(t, BootstrapGaloisElements(btp), (&he.EvaluationKeys{Set: got.MemEvaluationKeySet}).GaloisElements())

	refused := func(b []byte, max int64, msg string) {
		t.Helper()
		_, err := ParseBootstrapKeys(btp, b, max)
		require.Error(t, err)
		require.Equal(t, codes.InvalidArgument, Code(err), err.Error())
		require.ErrorContains(t, err, msg)
	}
	refused(data, int64(len(data)-1), "exceed the limit")
	refused(data[:20], 0, "bad header")
	bad := append([]byte(nil), data...)
	bad[0] ^= 1
	refused(bad, 0, "bad header")
	deep, err := he.BootstrapParameters(he.InsecureBootDeep, true)
	require.NoError(t, err)
	_, err = ParseBootstrapKeys(deep, data, 0)
	require.ErrorContains(t, err, "other bootstrapping parameters")
	refused(data[:len(data)-1000], 0, "bootstrapping keys")
	refused(append(append([]byte(nil), data...), 0), 0, "trailing bytes")

	// Forged fields: the five key-presence flags, then each 8-byte field
	// of the first key's structure (base-2 decomposition, gadget rows and
	// columns, polynomial count, Q row count, first row length) and its
	// first coefficient, each overwritten with 2^62, one at a time. Each
	// is refused (a count past the bytes left, a missing key, trailing
	// bytes, a wrong shape, an unreduced coefficient); none panics out or
	// allocates from the forged value.
	body := len(bootKeyMagic) + 32
	offs := []int{body, body + 1, body + 2, body + 3, body + 4}
	for k := 0; k <= 6; k++ {
		offs = append(offs, body+5+8*k)
	}
	for _, off := range offs {
		b := append([]byte(nil), data...)
		binary.LittleEndian.PutUint64(b[off:], 1<<62)
		_, err := ParseBootstrapKeys(btp, b, 0)
		require.Error(t, err, "offset %d", off)
		require.Equal(t, codes.InvalidArgument, Code(err))
	}

	// Structurally valid encodings of wrong key sets.
	remarshal := func(k *bootstrapping.EvaluationKeys) []byte {
		b, err := MarshalBootstrapKeys(btp, k)
		require.NoError(t, err)
		return b
	}
	missing := *keys
	missing.MemEvaluationKeySet = rlwe.NewMemEvaluationKeySet(keys.RelinearizationKey)
	for g, gk := range keys.GaloisKeys {
		if g != BootstrapGaloisElements(btp)[0] {
			missing.GaloisKeys[g] = gk
		}
	}
	refused(remarshal(&missing), 0, "Galois keys")
	noEnc := *keys
	noEnc.EvkSparseToDense = nil
	refused(remarshal(&noEnc), 0, "encapsulation keys")
	noRlk := *keys
	noRlk.MemEvaluationKeySet = rlwe.NewMemEvaluationKeySet(nil)
	for g, gk := range keys.GaloisKeys {
		noRlk.GaloisKeys[g] = gk
	}
	refused(remarshal(&noRlk), 0, "relinearization key")
	swap := *keys
	swap.EvkSparseToDense, swap.EvkDenseToSparse = keys.EvkDenseToSparse, keys.EvkSparseToDense
	refused(remarshal(&swap), 0, "key")

	// An unreduced coefficient in the relinearization key.
	rlk := keys.RelinearizationKey.Value[0][0][0].Q.Coeffs[0]
	old := rlk[5]
	rlk[5] = btp.BootstrappingParameters.Q()[0]
	unreduced := remarshal(keys)
	rlk[5] = old
	refused(unreduced, 0, "not reduced")
}
