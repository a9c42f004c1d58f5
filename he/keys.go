package he

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"github.com/tuneinsight/lattigo/v6/utils/buffer"
)

// ClientKeys is the client's key material: the secret key (which never
// leaves the client) with the encoder, encryptor and decryptor built on it.
// Generate evaluation keys for a server with GenEvaluationKeys.
//
// ClientKeys is not safe for concurrent use (the encryptor's sampler is
// stateful).
type ClientKeys struct {
	Params    ckks.Parameters
	SecretKey *rlwe.SecretKey
	Encoder   *ckks.Encoder
	Encryptor *rlwe.Encryptor
	Decryptor *rlwe.Decryptor
	kgen      *rlwe.KeyGenerator
}

// NewClientKeys samples a fresh secret key for params.
func NewClientKeys(params ckks.Parameters) *ClientKeys {
	kgen := rlwe.NewKeyGenerator(params)
	sk := kgen.GenSecretKeyNew()
	return &ClientKeys{
		Params:    params,
		SecretKey: sk,
		Encoder:   ckks.NewEncoder(params),
		Encryptor: rlwe.NewEncryptor(params, sk),
		Decryptor: rlwe.NewDecryptor(params, sk),
		kgen:      kgen,
	}
}

// Encrypt encodes a slot vector (len ≤ Slots; see the layouts in layout.go)
// at the default scale and encrypts it at the given level (-1: the top).
func (ck *ClientKeys) Encrypt(slots []float64, level int) (*rlwe.Ciphertext, error) {
	if level < 0 {
		level = ck.Params.MaxLevel()
	}
	if level > ck.Params.MaxLevel() {
		return nil, fmt.Errorf("encrypt: level %d above the maximum %d", level, ck.Params.MaxLevel())
	}
	if len(slots) > ck.Params.MaxSlots() {
		return nil, fmt.Errorf("encrypt: %d values exceed %d slots", len(slots), ck.Params.MaxSlots())
	}
	pt := ckks.NewPlaintext(ck.Params, level)
	if err := ck.Encoder.Encode(slots, pt); err != nil {
		return nil, fmt.Errorf("encrypt: encode: %w", err)
	}
	ct, err := ck.Encryptor.EncryptNew(pt)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	return ct, nil
}

// Decrypt decrypts and decodes all slots (real parts).
func (ck *ClientKeys) Decrypt(ct *rlwe.Ciphertext) ([]float64, error) {
	pt := ck.Decryptor.DecryptNew(ct)
	v := make([]float64, ck.Params.MaxSlots())
	if err := ck.Encoder.Decode(pt, v); err != nil {
		return nil, fmt.Errorf("decrypt: decode: %w", err)
	}
	return v, nil
}

// RotationUser is anything that needs rotation keys: every planned linear
// operation and attention plan. Rotation amounts are left rotations by k
// slots (negative = right); they are reduced mod Slots by the key request.
type RotationUser interface {
	Rotations() []int
}

// Leveled is implemented by operations that know the highest ciphertext
// level at which they rotate; keys generated with KeyOptions.AtUsedLevels
// then stop at that level.
type Leveled interface {
	KeyLevel() int
}

// KeyRequest is the set of evaluation keys a circuit needs, collected from
// its planned operations: rotation amounts (reduced mod Slots, 0 dropped)
// with the highest level at which each is used, and whether (and up to which
// level) ciphertext×ciphertext products are relinearized.
type KeyRequest struct {
	Rotations   map[int]int // rotation (0 < k < Slots) → highest level used
	Relinearize bool
	RelinLevel  int // highest level at which relinearization is used
	slots       int
}

// NewKeyRequest returns an empty request for params.
func NewKeyRequest(params ckks.Parameters) *KeyRequest {
	return &KeyRequest{Rotations: map[int]int{}, slots: params.MaxSlots(), RelinLevel: -1}
}

// AddRotations records rotations used at ciphertext level ≤ level.
func (r *KeyRequest) AddRotations(level int, rots ...int) {
	for _, k := range rots {
		k = mod(k, r.slots)
		if k == 0 {
			continue
		}
		if l, ok := r.Rotations[k]; !ok || level > l {
			r.Rotations[k] = level
		}
	}
}

// AddRelin records that ct×ct products are relinearized at level ≤ level.
func (r *KeyRequest) AddRelin(level int) {
	r.Relinearize = true
	r.RelinLevel = max(r.RelinLevel, level)
}

// Add records the rotations of planned operations, at their KeyLevel when
// they implement Leveled (and report a level ≥ 0) and at maxLevel otherwise.
func (r *KeyRequest) Add(maxLevel int, ops ...RotationUser) {
	for _, op := range ops {
		l := maxLevel
		if lv, ok := op.(Leveled); ok && lv.KeyLevel() >= 0 {
			l = lv.KeyLevel()
		}
		r.AddRotations(l, op.Rotations()...)
	}
}

// RotationList returns the requested rotations, sorted.
func (r *KeyRequest) RotationList() []int {
	return slices.Sorted(maps.Keys(r.Rotations))
}

// GaloisElements returns the sorted Galois elements of the requested rotations.
func (r *KeyRequest) GaloisElements(params ckks.Parameters) []uint64 {
	g := params.GaloisElements(r.RotationList())
	slices.Sort(g)
	return g
}

// KeyOptions chooses how evaluation keys are generated.
type KeyOptions struct {
	// Compressed generates seeded keys: only the b-part of each gadget
	// row is sent, the a-part is re-expanded by the server from a 32-byte
	// seed (about half the bytes).
	Compressed bool
	// AtUsedLevels generates each key only up to the highest level at which
	// it is used (LevelQ), instead of the top level. Such a key cannot
	// rotate a ciphertext above that level.
	AtUsedLevels bool
}

// EvaluationKeys is the public evaluation key set of a session: relinearization
// key (optional) and one Galois key per needed rotation.
type EvaluationKeys struct {
	Set *rlwe.MemEvaluationKeySet
}

// GenEvaluationKeys generates exactly the keys in req.
func (ck *ClientKeys) GenEvaluationKeys(req *KeyRequest, opt KeyOptions) (*EvaluationKeys, error) {
	params := ck.Params
	maxL := params.MaxLevelQ()
	evkParams := func(level int) rlwe.EvaluationKeyParameters {
		p := rlwe.EvaluationKeyParameters{Compressed: opt.Compressed}
		if opt.AtUsedLevels && level >= 0 && level < maxL {
			l := level
			p.LevelQ = &l
		}
		return p
	}
	var rlk *rlwe.RelinearizationKey
	if req.Relinearize {
		rlk = ck.kgen.GenRelinearizationKeyNew(ck.SecretKey, evkParams(req.RelinLevel))
	}
	var gks []*rlwe.GaloisKey
	for _, k := range req.RotationList() {
		if k <= 0 || k >= params.MaxSlots() {
			return nil, fmt.Errorf("key request: rotation %d out of (0, %d)", k, params.MaxSlots())
		}
		gks = append(gks, ck.kgen.GenGaloisKeyNew(params.GaloisElement(k), ck.SecretKey, evkParams(req.Rotations[k])))
	}
	return &EvaluationKeys{Set: rlwe.NewMemEvaluationKeySet(rlk, gks...)}, nil
}

// GaloisElements returns the sorted Galois elements present.
func (ek *EvaluationKeys) GaloisElements() []uint64 {
	g := ek.Set.GetGaloisKeysList()
	slices.Sort(g)
	return g
}

// Compressed reports whether any key is still in seeded (compressed) form.
func (ek *EvaluationKeys) Compressed() bool {
	if ek.Set.RelinearizationKey != nil && ek.Set.RelinearizationKey.IsCompressed() {
		return true
	}
	for _, gk := range ek.Set.GaloisKeys {
		if gk.IsCompressed() {
			return true
		}
	}
	return false
}

// Expand turns seeded keys into full keys (server side, before evaluation).
func (ek *EvaluationKeys) Expand(params ckks.Parameters) error {
	if rlk := ek.Set.RelinearizationKey; rlk != nil && rlk.IsCompressed() {
		if err := rlk.Expand(params, nil); err != nil {
			return fmt.Errorf("expand relinearization key: %w", err)
		}
		rlk.Seed = nil
	}
	for g, gk := range ek.Set.GaloisKeys {
		if gk.IsCompressed() {
			if err := gk.Expand(params, nil); err != nil {
				return fmt.Errorf("expand Galois key %d: %w", g, err)
			}
			gk.Seed = nil
		}
	}
	return nil
}

// KeyLevels returns the LevelQ of each Galois key and of the relinearization
// key (-1 when absent).
func (ek *EvaluationKeys) KeyLevels() (galois map[uint64]int, relin int) {
	galois = map[uint64]int{}
	for g, gk := range ek.Set.GaloisKeys {
		galois[g] = gk.LevelQ()
	}
	relin = -1
	if ek.Set.RelinearizationKey != nil {
		relin = ek.Set.RelinearizationKey.LevelQ()
	}
	return
}

// keySetMagic starts a serialized key set; the version is its last byte.
var keySetMagic = []byte("ENTIEVK\x01")

// ParamsFingerprint identifies a parameter set: SHA-256 over log N, the
// Q and P primes and the ring type. Keys serialized under one fingerprint
// are refused under another.
func ParamsFingerprint(params ckks.Parameters) [32]byte {
	h := sha256.New()
	var b [8]byte
	put := func(v uint64) { binary.LittleEndian.PutUint64(b[:], v); h.Write(b[:]) }
	put(uint64(params.LogN()))
	put(uint64(len(params.Q())))
	for _, q := range params.Q() {
		put(q)
	}
	put(uint64(len(params.P())))
	for _, p := range params.P() {
		put(p)
	}
	put(uint64(params.RingType()))
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// BinarySize is the exact length of MarshalBinary's output.
func (ek *EvaluationKeys) BinarySize() int { return len(keySetMagic) + 32 + ek.Set.BinarySize() }

// MarshalBinary serializes the key set for params: magic, the parameter
// fingerprint, then Lattigo's MemEvaluationKeySet encoding (seeded keys
// stay seeded).
func (ek *EvaluationKeys) MarshalBinary(params ckks.Parameters) ([]byte, error) {
	body, err := ek.Set.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("marshal evaluation keys: %w", err)
	}
	fp := ParamsFingerprint(params)
	out := make([]byte, 0, len(keySetMagic)+32+len(body))
	out = append(out, keySetMagic...)
	out = append(out, fp[:]...)
	return append(out, body...), nil
}

// ErrKeyParams is wrapped by UnmarshalEvaluationKeys when the keys were made
// for other parameters.
var ErrKeyParams = errors.New("evaluation keys do not match the session parameters")

// UnmarshalEvaluationKeys parses and validates a key set received for params:
// magic and version, parameter fingerprint, then every key's ring degree,
// levels and Galois element. maxBytes > 0 bounds the input size. Seeded keys
// are left seeded (call Expand or NewEvaluator, which expands them).
func UnmarshalEvaluationKeys(params ckks.Parameters, data []byte, maxBytes int) (ek *EvaluationKeys, err error) {
	if maxBytes > 0 && len(data) > maxBytes {
		return nil, fmt.Errorf("evaluation keys: %d bytes exceed the limit %d", len(data), maxBytes)
	}
	if len(data) < len(keySetMagic)+32 || !bytes.Equal(data[:len(keySetMagic)], keySetMagic) {
		return nil, fmt.Errorf("evaluation keys: bad header (not an entropi key set, or another version)")
	}
	fp := ParamsFingerprint(params)
	if !bytes.Equal(data[len(keySetMagic):len(keySetMagic)+32], fp[:]) {
		return nil, fmt.Errorf("%w (N=2^%d, %d Q primes, %d P primes): generate the keys with the session's preset",
			ErrKeyParams, params.LogN(), len(params.Q()), len(params.P()))
	}
	set := &rlwe.MemEvaluationKeySet{}
	defer func() {
		if r := recover(); r != nil {
			ek, err = nil, fmt.Errorf("evaluation keys: malformed encoding: %v", r)
		}
	}()
	body := data[len(keySetMagic)+32:]
	n, err := set.ReadFrom(NewGuardedReader(body))
	if err != nil {
		return nil, fmt.Errorf("evaluation keys: malformed or truncated encoding: %w", err)
	}
	if int(n) != len(body) {
		return nil, fmt.Errorf("evaluation keys: %d trailing bytes after the key set", len(body)-int(n))
	}
	ek = &EvaluationKeys{Set: set}
	if err := ek.Validate(params); err != nil {
		return nil, err
	}
	return ek, nil
}

// ErrLengthPrefix is wrapped by the errors of a GuardedReader that refuses
// a length prefix.
var ErrLengthPrefix = errors.New("length prefix exceeds the bytes left")

// GuardedReader is the buffer.Reader to hand Lattigo's ReadFrom methods
// when the bytes come from a peer. Lattigo v6.2 trusts its input in two
// ways that kill the process (neither is a recoverable panic):
//
//   - length prefixes: structs.Vector and structs.Matrix read a uint64
//     element count and structs.Map a uint32 one, then allocate that many
//     elements before reading any; a forged count of 2^36 coefficients asks
//     for 512 GiB (fatal error: runtime: out of memory);
//   - truncation: buffer.ReadUint64Slice recurses forever (fatal stack
//     overflow) when the input ends inside a slice, because it then peeks 0
//     bytes without error.
//
// Every count on the paths we parse (key sets, ciphertexts, public keys) is
// read alone, as an 8-byte (uint64) or 4-byte (uint32) Peek, while slices
// of coefficients are peeked whole (a multiple of 8 bytes, more than 8 for
// any real ring). So a lone 8- or 4-byte peek is treated as a count and
// refused, before Lattigo allocates from it, when it exceeds the bytes left
// after it: in a well-formed encoding every element takes at least one
// byte. The other lone uint64 fields on these paths (Galois element, NthRoot,
// base-2 decomposition, map keys) are small, far below the bytes that follow
// them, so a valid encoding is never refused. What a forged count can still
// allocate is bounded by a small multiple of the input's length (at most 8
// bytes per coefficient, a few machine words per nested slice or map entry),
// and the input's length is bounded by the caller. Peeking at an exhausted
// buffer is io.ErrUnexpectedEOF.
type GuardedReader struct{ *buffer.Buffer }

// NewGuardedReader returns a GuardedReader over data.
func NewGuardedReader(data []byte) *GuardedReader {
	return &GuardedReader{Buffer: buffer.NewBuffer(data)}
}

// Peek implements buffer.Reader with the checks described on GuardedReader.
func (r *GuardedReader) Peek(n int) ([]byte, error) {
	if r.Buffer.Size() == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	b, err := r.Buffer.Peek(n)
	if err != nil || len(b) != n {
		return b, err
	}
	var v uint64
	switch n {
	case 8:
		v = binary.LittleEndian.Uint64(b)
	case 4:
		v = uint64(binary.LittleEndian.Uint32(b))
	default:
		return b, nil
	}
	if left := uint64(r.Buffer.Size() - n); v > left {
		return nil, fmt.Errorf("%w: a %d-byte count of %d, %d bytes left", ErrLengthPrefix, n, v, left)
	}
	return b, nil
}

// Validate checks every key against params: ring degree, levels (full P,
// LevelQ within range), Galois elements valid and filed under their own value.
func (ek *EvaluationKeys) Validate(params ckks.Parameters) error {
	if ek == nil || ek.Set == nil {
		return fmt.Errorf("evaluation keys: empty key set")
	}
	check := func(what string, evk *rlwe.EvaluationKey) error {
		if evk.LevelQ() < 0 || evk.LevelQ() > params.MaxLevelQ() {
			return fmt.Errorf("evaluation keys: %s has LevelQ %d outside [0, %d]", what, evk.LevelQ(), params.MaxLevelQ())
		}
		if evk.LevelP() != params.MaxLevelP() {
			return fmt.Errorf("evaluation keys: %s has LevelP %d, want %d (hoisted rotations use all P primes)", what, evk.LevelP(), params.MaxLevelP())
		}
		if evk.BaseRNSDecompositionVectorSize() == 0 || len(evk.Value) == 0 || len(evk.Value[0]) == 0 {
			return fmt.Errorf("evaluation keys: %s is empty", what)
		}
		if n := evk.Value[0][0][0].Q.N(); n != params.N() {
			return fmt.Errorf("evaluation keys: %s has ring degree %d, want %d", what, n, params.N())
		}
		if evk.IsCompressed() && evk.Seed == nil {
			return fmt.Errorf("evaluation keys: %s is compressed but has no seed", what)
		}
		return nil
	}
	if rlk := ek.Set.RelinearizationKey; rlk != nil {
		if err := check("relinearization key", &rlk.EvaluationKey); err != nil {
			return err
		}
	}
	nth := params.RingQ().NthRoot()
	gs := slices.Sorted(maps.Keys(ek.Set.GaloisKeys))
	for _, g := range gs {
		gk := ek.Set.GaloisKeys[g]
		if gk == nil {
			return fmt.Errorf("evaluation keys: Galois key %d is nil", g)
		}
		if gk.GaloisElement != g || g&1 == 0 || g >= nth || gk.NthRoot != nth {
			return fmt.Errorf("evaluation keys: Galois key filed under %d has element %d, NthRoot %d (want odd < %d)", g, gk.GaloisElement, gk.NthRoot, nth)
		}
		if err := check(fmt.Sprintf("Galois key %d", g), &gk.EvaluationKey); err != nil {
			return err
		}
	}
	return nil
}

// KeySizes reports serialized byte counts of a key set.
type KeySizes struct {
	Total       int // MarshalBinary length (header included)
	Relin       int // relinearization key alone (0 if absent)
	GaloisKeys  int // number of Galois keys
	PerGalois   []int
	Compressed  bool
	MaxLevelQ   int
	MinLevelQ   int
	Description string
}

// Sizes measures the serialized size of the key set.
func (ek *EvaluationKeys) Sizes() KeySizes {
	s := KeySizes{Total: ek.BinarySize(), Compressed: ek.Compressed(), MinLevelQ: 1 << 30, MaxLevelQ: -1}
	if rlk := ek.Set.RelinearizationKey; rlk != nil {
		s.Relin = rlk.BinarySize()
	}
	gs := slices.Sorted(maps.Keys(ek.Set.GaloisKeys))
	for _, g := range gs {
		gk := ek.Set.GaloisKeys[g]
		s.PerGalois = append(s.PerGalois, gk.BinarySize())
		s.MaxLevelQ = max(s.MaxLevelQ, gk.LevelQ())
		s.MinLevelQ = min(s.MinLevelQ, gk.LevelQ())
	}
	s.GaloisKeys = len(gs)
	s.Description = fmt.Sprintf("%d Galois keys + relin=%v, %d bytes (compressed=%v)", s.GaloisKeys, s.Relin > 0, s.Total, s.Compressed)
	return s
}

// rotationsOf converts Galois elements back to rotation amounts (sorted),
// for error messages.
func rotationsOf(params ckks.Parameters, galEls []uint64) []int {
	r := make([]int, 0, len(galEls))
	for _, g := range galEls {
		r = append(r, mod(params.SolveDiscreteLogGaloisElement(g), params.MaxSlots()))
	}
	sort.Ints(r)
	return r
}
