package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/he"
)

// bootKeyMagic starts a serialized bootstrapping-key set (bootstrap mode,
// KEY_KIND_BOOTSTRAP); the version is its last byte.
var bootKeyMagic = []byte("ENTIBTK\x01")

// BootstrapFingerprint identifies a bootstrapping configuration: the
// residual and bootstrapping parameters (he.ParamsFingerprint of each) and
// the ephemeral secret's weight. Keys made for another configuration are
// refused before they are parsed.
func BootstrapFingerprint(btp bootstrapping.Parameters) [32]byte {
	h := sha256.New()
	r := he.ParamsFingerprint(btp.ResidualParameters)
	b := he.ParamsFingerprint(btp.BootstrappingParameters)
	h.Write(r[:])
	h.Write(b[:])
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], uint64(btp.EphemeralSecretWeight))
	h.Write(w[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// BootstrapKeyBytes is the exact length of MarshalBootstrapKeys's output.
func BootstrapKeyBytes(keys *bootstrapping.EvaluationKeys) int {
	return len(bootKeyMagic) + 32 + keys.BinarySize()
}

// MarshalBootstrapKeys encodes the client's bootstrapping keys for the
// wire: magic, BootstrapFingerprint, then Lattigo's encoding
// (bootstrapping.EvaluationKeys.MarshalBinary).
func MarshalBootstrapKeys(btp bootstrapping.Parameters, keys *bootstrapping.EvaluationKeys) ([]byte, error) {
	if keys == nil {
		return nil, fmt.Errorf("bootstrapping keys: nil")
	}
	body, err := keys.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("bootstrapping keys: %w", err)
	}
	fp := BootstrapFingerprint(btp)
	out := make([]byte, 0, len(bootKeyMagic)+32+len(body))
	out = append(out, bootKeyMagic...)
	out = append(out, fp[:]...)
	return append(out, body...), nil
}

// ParseBootstrapKeys parses and validates bootstrapping keys received for
// btp (server side). Lattigo's bootstrapping.EvaluationKeys unmarshalling
// checks nothing, so everything is checked here: the size against maxBytes
// (> 0) and the header and fingerprint before anything is parsed; every
// length prefix against the bytes left while Lattigo parses
// (he.GuardedReader, so a forged count cannot allocate more than a small
// multiple of the input); no trailing bytes; then the structure of every
// key against what Lattigo's bootstrapping evaluator will index: no
// ring-switching keys (residual and bootstrapping rings are the same
// here), both encapsulation keys when the parameters use an ephemeral
// secret (dense→sparse at one Q and one P prime, sparse→dense at all),
// the relinearization key and exactly the Galois keys of the bootstrapping
// circuit, each uncompressed, at its expected levels with its full gadget
// shape (every polynomial, every row of the ring degree), with every
// coefficient reduced. Errors are InvalidArgument.
func ParseBootstrapKeys(btp bootstrapping.Parameters, data []byte, maxBytes int64) (keys *bootstrapping.EvaluationKeys, err error) {
	if maxBytes > 0 && int64(len(data)) > maxBytes {
		return nil, Errorf(codes.InvalidArgument, "bootstrapping keys: %d bytes exceed the limit %d", len(data), maxBytes)
	}
	if len(data) < BootstrapKeyHeaderBytes {
		return nil, Errorf(codes.InvalidArgument, "bootstrapping keys: bad header (not an entropi bootstrapping-key set, or another version)")
	}
	if err := CheckBootstrapKeyHeader(btp, data[:BootstrapKeyHeaderBytes]); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			keys, err = nil, Errorf(codes.InvalidArgument, "bootstrapping keys: malformed encoding: %v", r)
		}
	}()
	body := data[len(bootKeyMagic)+32:]
	keys = new(bootstrapping.EvaluationKeys)
	n, err := keys.ReadFrom(he.NewGuardedReader(body))
	if err != nil {
		return nil, Errorf(codes.InvalidArgument, "bootstrapping keys: malformed or truncated encoding: %v", err)
	}
	if int(n) != len(body) {
		return nil, Errorf(codes.InvalidArgument, "bootstrapping keys: %d trailing bytes after the key set", len(body)-int(n))
	}
	if err := checkBootstrapKeys(btp, keys); err != nil {
		return nil, Errorf(codes.InvalidArgument, "bootstrapping keys: %v", err)
	}
	return keys, nil
}

// BootstrapKeyHeaderBytes is the length of the bootstrapping keys' header
// (magic and fingerprint).
var BootstrapKeyHeaderBytes = len(bootKeyMagic) + 32

// CheckBootstrapKeyHeader checks the header of bootstrapping keys (their
// first BootstrapKeyHeaderBytes bytes): magic and version, and the
// fingerprint of btp. The server checks it as soon as the first chunk
// arrives, so that keys for other parameters are refused before the rest
// is uploaded. Errors are InvalidArgument.
func CheckBootstrapKeyHeader(btp bootstrapping.Parameters, hdr []byte) error {
	if len(hdr) != BootstrapKeyHeaderBytes || !bytes.Equal(hdr[:len(bootKeyMagic)], bootKeyMagic) {
		return Errorf(codes.InvalidArgument, "bootstrapping keys: bad header (not an entropi bootstrapping-key set, or another version)")
	}
	fp := BootstrapFingerprint(btp)
	if !bytes.Equal(hdr[len(bootKeyMagic):], fp[:]) {
		return Errorf(codes.InvalidArgument, "bootstrapping keys: made for other bootstrapping parameters (want N=2^%d, %d residual and %d bootstrapping Q primes): generate them with the model's preset",
			btp.ResidualParameters.LogN(), len(btp.ResidualParameters.Q()), len(btp.BootstrappingParameters.Q()))
	}
	return nil
}

// BootstrapGaloisElements are the Galois elements of the keys the
// bootstrapping circuit uses (as bootstrapping.Parameters.GenEvaluationKeys
// generates them), sorted.
func BootstrapGaloisElements(btp bootstrapping.Parameters) []uint64 {
	p := btp.BootstrappingParameters
	g := append(btp.GaloisElements(p), p.GaloisElementForComplexConjugation())
	slices.Sort(g)
	return slices.Compact(g)
}

func checkBootstrapKeys(btp bootstrapping.Parameters, k *bootstrapping.EvaluationKeys) error {
	res, boot := btp.ResidualParameters, btp.BootstrappingParameters
	if res.N() != boot.N() || res.RingType() != boot.RingType() {
		return fmt.Errorf("ring switching between residual and bootstrapping parameters is not supported")
	}
	for _, x := range []struct {
		what string
		k    *rlwe.EvaluationKey
	}{{"N1→N2 key", k.EvkN1ToN2}, {"N2→N1 key", k.EvkN2ToN1}, {"real→complex key", k.EvkRealToCmplx}, {"complex→real key", k.EvkCmplxToReal}} {
		if x.k != nil {
			return fmt.Errorf("unexpected %s (residual and bootstrapping rings are the same)", x.what)
		}
	}
	if btp.EphemeralSecretWeight != 0 {
		if k.EvkDenseToSparse == nil || k.EvkSparseToDense == nil {
			return fmt.Errorf("the encapsulation keys (dense→sparse, sparse→dense) are missing")
		}
		// Dense→sparse is generated at one Q and one P prime.
		if err := checkGadget(boot, k.EvkDenseToSparse, 0, 0); err != nil {
			return fmt.Errorf("dense→sparse key: %w", err)
		}
		if err := checkGadget(boot, k.EvkSparseToDense, boot.MaxLevelQ(), boot.MaxLevelP()); err != nil {
			return fmt.Errorf("sparse→dense key: %w", err)
		}
	} else if k.EvkDenseToSparse != nil || k.EvkSparseToDense != nil {
		return fmt.Errorf("unexpected encapsulation keys (the parameters use no ephemeral secret)")
	}
	set := k.MemEvaluationKeySet
	if set == nil || set.RelinearizationKey == nil {
		return fmt.Errorf("the relinearization key is missing")
	}
	if err := checkGadget(boot, &set.RelinearizationKey.EvaluationKey, boot.MaxLevelQ(), boot.MaxLevelP()); err != nil {
		return fmt.Errorf("relinearization key: %w", err)
	}
	want := BootstrapGaloisElements(btp)
	got := slices.Sorted(func(yield func(uint64) bool) {
		for g := range set.GaloisKeys {
			if !yield(g) {
				return
			}
		}
	})
	if !slices.Equal(got, want) {
		return fmt.Errorf("%d Galois keys, the bootstrapping circuit needs exactly %d (elements %v…)", len(got), len(want), head(want))
	}
	nth := boot.RingQ().NthRoot()
	for _, g := range got {
		gk := set.GaloisKeys[g]
		if gk == nil || gk.GaloisElement != g || gk.NthRoot != nth {
			return fmt.Errorf("Galois key filed under %d is malformed (element or NthRoot)", g)
		}
		if err := checkGadget(boot, &gk.EvaluationKey, boot.MaxLevelQ(), boot.MaxLevelP()); err != nil {
			return fmt.Errorf("Galois key %d: %w", g, err)
		}
	}
	return nil
}

// checkGadget checks that an evaluation key has exactly the shape Lattigo
// generates at (levelQ, levelP) without base-2 decomposition: the RNS
// gadget length, degree 1 (uncompressed, no seed), every polynomial with
// levelQ+1 Q rows and levelP+1 P rows of N coefficients, all reduced.
func checkGadget(params ckks.Parameters, k *rlwe.EvaluationKey, levelQ, levelP int) error {
	if k.Seed != nil {
		return fmt.Errorf("compressed (seeded) key: bootstrapping keys are sent expanded")
	}
	if k.BaseTwoDecomposition != 0 {
		return fmt.Errorf("base-2 decomposition %d, want none", k.BaseTwoDecomposition)
	}
	rns := params.BaseRNSDecompositionVectorSize(levelQ, levelP)
	if len(k.Value) != rns {
		return fmt.Errorf("%d gadget rows, want %d", len(k.Value), rns)
	}
	q, p, n := params.Q()[:levelQ+1], params.P()[:levelP+1], params.N()
	for i := range k.Value {
		if len(k.Value[i]) != 1 {
			return fmt.Errorf("gadget row %d has %d entries, want 1", i, len(k.Value[i]))
		}
		v := k.Value[i][0]
		if len(v) != 2 {
			return fmt.Errorf("gadget entry %d has %d polynomials, want 2 (uncompressed)", i, len(v))
		}
		for _, poly := range v {
			if err := reducedRows(poly.Q.Coeffs, q, n, "q"); err != nil {
				return fmt.Errorf("gadget entry %d: %w", i, err)
			}
			if err := reducedRows(poly.P.Coeffs, p, n, "p"); err != nil {
				return fmt.Errorf("gadget entry %d: %w", i, err)
			}
		}
	}
	return nil
}

// reducedRows checks one RNS polynomial: one row of n coefficients per
// modulus, each reduced.
func reducedRows(rows [][]uint64, mod []uint64, n int, name string) error {
	if len(rows) != len(mod) {
		return fmt.Errorf("%d %s-moduli, want %d", len(rows), name, len(mod))
	}
	for k, row := range rows {
		if len(row) != n {
			return fmt.Errorf("ring degree %d, want %d", len(row), n)
		}
		for _, c := range row {
			if c >= mod[k] {
				return fmt.Errorf("coefficient not reduced modulo %s_%d", name, k)
			}
		}
	}
	return nil
}
