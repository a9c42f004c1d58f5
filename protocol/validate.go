package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"slices"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"github.com/tuneinsight/lattigo/v6/utils/structs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/entropi-ai/entropi/he"
)

// Version is the protocol version. Client and server must agree on it; it
// changes whenever a message changes meaning.
const Version = 1

// Caps bound what a peer may send. The server announces them in ListModels
// (message Limits); both sides enforce them on what they receive.
type Caps struct {
	// MaxMessageBytes bounds one gRPC message (a ciphertext at N=2^15 with
	// 18 moduli is about 9 MiB; a refresh round carries several).
	MaxMessageBytes int
	// MaxChunkBytes bounds the data of one key chunk.
	MaxChunkBytes int
	// MaxKeyBytes bounds the keys of one session and, on the server, the key
	// memory of all sessions together.
	MaxKeyBytes int64
	// MaxSessions bounds concurrent sessions (server).
	MaxSessions int
	// MaxNewTokens bounds the tokens one Generate may produce.
	MaxNewTokens int
}

// DefaultCaps are sized for the 128-bit presets (n15 keys run to a few
// GiB uncompressed).
func DefaultCaps() Caps {
	return Caps{
		MaxMessageBytes: 64 << 20,
		MaxChunkBytes:   4 << 20,
		MaxKeyBytes:     8 << 30,
		MaxSessions:     16,
		MaxNewTokens:    1024,
	}
}

// Check reports nonsensical limits.
func (l Caps) Check() error {
	switch {
	case l.MaxMessageBytes < 1<<16:
		return fmt.Errorf("limits: max message bytes %d below 64 KiB", l.MaxMessageBytes)
	case l.MaxChunkBytes < 1<<10 || l.MaxChunkBytes > l.MaxMessageBytes-1024:
		return fmt.Errorf("limits: max chunk bytes %d must lie in [1 KiB, max message bytes − 1 KiB]", l.MaxChunkBytes)
	case l.MaxKeyBytes < 1:
		return fmt.Errorf("limits: max key bytes %d must be positive", l.MaxKeyBytes)
	case l.MaxSessions < 1:
		return fmt.Errorf("limits: max sessions %d must be positive", l.MaxSessions)
	case l.MaxNewTokens < 1:
		return fmt.Errorf("limits: max new tokens %d must be positive", l.MaxNewTokens)
	}
	return nil
}

// Proto is the announcement of the caps (with the idle timeout).
func (l Caps) Proto(idle time.Duration) *Limits {
	return &Limits{
		MaxMessageBytes: uint64(l.MaxMessageBytes), MaxChunkBytes: uint64(l.MaxChunkBytes),
		MaxKeyBytes: uint64(l.MaxKeyBytes), MaxSessions: uint32(l.MaxSessions),
		MaxNewTokens: uint32(l.MaxNewTokens), SessionIdleTimeoutMs: idle.Milliseconds(),
	}
}

// Errorf returns a gRPC status error.
func Errorf(c codes.Code, format string, args ...any) error {
	return status.Errorf(c, format, args...)
}

// Code returns the gRPC code of err (codes.Unknown for plain errors, OK for nil).
func Code(err error) codes.Code { return status.Code(err) }

// Wrap keeps the code of err (InvalidArgument for plain errors) and
// prefixes its message.
func Wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	c := codes.InvalidArgument
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		c, msg = s.Code(), s.Message()
	}
	return status.Errorf(c, "%s: %s", fmt.Sprintf(format, args...), msg)
}

// ---------------------------------------------------------------- presets

// PresetToProto converts a preset for the wire.
func PresetToProto(p he.Preset) *Preset {
	return &Preset{
		Name: p.Name, LogN: int32(p.LogN), LogQ: toInt32(p.LogQ), LogP: toInt32(p.LogP),
		LogDefaultScale: int32(p.LogDefaultScale), Secret: p.Secret, SecurityBits: int32(p.SecurityBits),
	}
}

// PresetFromProto converts and checks a preset received from the network
// (he.Preset.Check: shape, naming, security claim). InvalidArgument if it
// fails.
func PresetFromProto(m *Preset) (he.Preset, error) {
	if m == nil {
		return he.Preset{}, Errorf(codes.InvalidArgument, "preset missing")
	}
	if len(m.LogQ) > 64 || len(m.LogP) > 16 {
		return he.Preset{}, Errorf(codes.InvalidArgument, "preset %q: %d Q and %d P moduli is too many", m.Name, len(m.LogQ), len(m.LogP))
	}
	p := he.Preset{
		Name: m.Name, LogN: int(m.LogN), LogQ: toInt(m.LogQ), LogP: toInt(m.LogP),
		LogDefaultScale: int(m.LogDefaultScale), Secret: m.Secret, SecurityBits: int(m.SecurityBits),
	}
	if err := p.Check(); err != nil {
		return he.Preset{}, Errorf(codes.InvalidArgument, "%v", err)
	}
	return p, nil
}

// CheckPresetAgreement compares the preset a peer uses with the one
// required, field by field. FailedPrecondition names the first difference.
func CheckPresetAgreement(got *Preset, want he.Preset) error {
	g, err := PresetFromProto(got)
	if err != nil {
		return err
	}
	diff := func(field string, a, b any) error {
		return Errorf(codes.FailedPrecondition, "preset disagreement: client uses %q, the model requires %q (%s: %v vs %v)",
			g.Name, want.Name, field, a, b)
	}
	switch {
	case g.Name != want.Name:
		return diff("name", g.Name, want.Name)
	case g.LogN != want.LogN:
		return diff("log_n", g.LogN, want.LogN)
	case !slices.Equal(g.LogQ, want.LogQ):
		return diff("log_q", g.LogQ, want.LogQ)
	case !slices.Equal(g.LogP, want.LogP):
		return diff("log_p", g.LogP, want.LogP)
	case g.LogDefaultScale != want.LogDefaultScale:
		return diff("log_default_scale", g.LogDefaultScale, want.LogDefaultScale)
	case g.Secret != want.Secret:
		return diff("secret", g.Secret, want.Secret)
	case g.SecurityBits != want.SecurityBits:
		return diff("security_bits", g.SecurityBits, want.SecurityBits)
	}
	return nil
}

func toInt32(v []int) []int32 {
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out
}

func toInt(v []int32) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// ------------------------------------------------------------- ciphertexts

// CiphertextRule says what a received ciphertext must look like.
type CiphertextRule struct {
	// Degree of the ciphertext (1 for every ciphertext of the protocol;
	// 0 for the c0 part of a seeded ciphertext).
	Degree int
	// MinLevel and MaxLevel bound its level (inclusive).
	MinLevel, MaxLevel int
	// Scale, when non-zero, is the exact scale required; otherwise the
	// scale must lie within 2^±MaxLogScaleDelta of the default scale.
	Scale            rlwe.Scale
	MaxLogScaleDelta float64
}

// FreshRule accepts a fresh encryption: degree 1 at exactly level (−1: the
// top level) and the default scale.
func FreshRule(params ckks.Parameters, level int) CiphertextRule {
	if level < 0 {
		level = params.MaxLevel()
	}
	return CiphertextRule{Degree: 1, MinLevel: level, MaxLevel: level, Scale: params.DefaultScale()}
}

// AnyLevelRule accepts a degree-1 ciphertext at any level, with a scale
// within 2^±20 of the default.
func AnyLevelRule(params ckks.Parameters) CiphertextRule {
	return CiphertextRule{Degree: 1, MinLevel: 0, MaxLevel: params.MaxLevel(), MaxLogScaleDelta: 20}
}

// metaSize is the size of the serialized ciphertext metadata; Lattigo reads
// exactly this many bytes into a fresh MetaData.
var metaSize = rlwe.MetaData{}.BinarySize()

// walker checks the size prefixes of a Lattigo encoding before Lattigo
// allocates anything from them: a forged prefix could otherwise ask for
// terabytes (a fatal, unrecoverable out-of-memory).
type walker struct {
	b   []byte
	off int
}

func (w *walker) u64(what string) (uint64, error) {
	if len(w.b)-w.off < 8 {
		return 0, fmt.Errorf("truncated at %s (offset %d of %d bytes)", what, w.off, len(w.b))
	}
	v := binary.LittleEndian.Uint64(w.b[w.off:])
	w.off += 8
	return v, nil
}

// poly checks one ring.Poly: rows of n coefficients each; rows must lie in
// [minRows, maxRows] and, when wantRows ≥ 0, equal it.
func (w *walker) poly(n, minRows, maxRows int) (rows int, err error) {
	r, err := w.u64("row count")
	if err != nil {
		return 0, err
	}
	if r < uint64(minRows) || r > uint64(maxRows) {
		return 0, fmt.Errorf("polynomial with %d moduli, want %d to %d", r, minRows, maxRows)
	}
	for i := 0; i < int(r); i++ {
		m, err := w.u64("coefficient count")
		if err != nil {
			return 0, err
		}
		if m != uint64(n) {
			return 0, fmt.Errorf("ring degree %d, the session's parameters have %d", m, n)
		}
		if len(w.b)-w.off < 8*n {
			return 0, fmt.Errorf("truncated in the coefficients (offset %d of %d bytes)", w.off, len(w.b))
		}
		w.off += 8 * n
	}
	return int(r), nil
}

// CiphertextBytes is the exact encoded size of a ciphertext of the given
// degree and level.
func CiphertextBytes(params ckks.Parameters, degree, level int) int {
	return 1 + metaSize + 8 + (degree+1)*(8+(level+1)*(8+8*params.N()))
}

// UnmarshalCiphertext parses and validates a ciphertext from the network:
// the encoding's structure (before anything is allocated from it), then
// degree, ring degree, level, scale, domain flags, slot dimensions and that
// every coefficient is reduced. Errors are InvalidArgument.
func UnmarshalCiphertext(params ckks.Parameters, data []byte, rule CiphertextRule) (*rlwe.Ciphertext, error) {
	ct, err := unmarshalCiphertext(params, data, rule)
	if err != nil {
		return nil, Errorf(codes.InvalidArgument, "ciphertext rejected: %v", err)
	}
	return ct, nil
}

func unmarshalCiphertext(params ckks.Parameters, data []byte, rule CiphertextRule) (ct *rlwe.Ciphertext, err error) {
	maxSize := CiphertextBytes(params, rule.Degree, rule.MaxLevel)
	minSize := CiphertextBytes(params, rule.Degree, rule.MinLevel)
	if len(data) < minSize || len(data) > maxSize {
		return nil, fmt.Errorf("%d bytes, a degree-%d ciphertext at levels %d..%d takes %d..%d bytes",
			len(data), rule.Degree, rule.MinLevel, rule.MaxLevel, minSize, maxSize)
	}
	if data[0] != 1 {
		return nil, fmt.Errorf("no metadata")
	}
	w := &walker{b: data, off: 1 + metaSize}
	np, err := w.u64("polynomial count")
	if err != nil {
		return nil, err
	}
	if np != uint64(rule.Degree+1) {
		return nil, fmt.Errorf("degree %d, want %d", int64(np)-1, rule.Degree)
	}
	rows := -1
	for i := 0; i < int(np); i++ {
		r, err := w.poly(params.N(), rule.MinLevel+1, rule.MaxLevel+1)
		if err != nil {
			return nil, err
		}
		if rows >= 0 && r != rows {
			return nil, fmt.Errorf("polynomials at different levels (%d and %d moduli)", rows, r)
		}
		rows = r
	}
	if w.off != len(data) {
		return nil, fmt.Errorf("%d trailing bytes", len(data)-w.off)
	}
	defer func() {
		if r := recover(); r != nil {
			ct, err = nil, fmt.Errorf("malformed encoding: %v", r)
		}
	}()
	ct = new(rlwe.Ciphertext)
	if _, err := ct.ReadFrom(he.NewGuardedReader(data)); err != nil {
		return nil, fmt.Errorf("malformed encoding: %w", err)
	}
	if err := checkCiphertext(params, ct, rule); err != nil {
		return nil, err
	}
	return ct, nil
}

func checkCiphertext(params ckks.Parameters, ct *rlwe.Ciphertext, rule CiphertextRule) error {
	md := ct.MetaData
	switch {
	case md == nil:
		return fmt.Errorf("no metadata")
	case ct.Degree() != rule.Degree:
		return fmt.Errorf("degree %d, want %d", ct.Degree(), rule.Degree)
	case ct.Level() < rule.MinLevel || ct.Level() > rule.MaxLevel:
		return fmt.Errorf("level %d outside [%d, %d]", ct.Level(), rule.MinLevel, rule.MaxLevel)
	case !md.IsNTT || md.IsMontgomery || !md.IsBatched || md.IsBitReversed:
		return fmt.Errorf("wrong domain flags (want NTT, batched, not Montgomery, not bit-reversed)")
	case md.LogDimensions.Rows != 0 || md.LogDimensions.Cols < 0 || md.LogDimensions.Cols > params.LogMaxSlots():
		return fmt.Errorf("slot dimensions %v outside the parameters' (0, ≤%d)", md.LogDimensions, params.LogMaxSlots())
	case md.Scale.Mod != nil:
		return fmt.Errorf("modular scale (not CKKS)")
	}
	s := md.Scale.Float64()
	if !(s >= 1) || math.IsInf(s, 0) {
		return fmt.Errorf("invalid scale %g", s)
	}
	if rule.Scale.Value.Sign() != 0 {
		if !md.Scale.Equal(rule.Scale) {
			return fmt.Errorf("scale 2^%.4f, want 2^%.4f", md.Scale.Log2(), rule.Scale.Log2())
		}
	} else if d := math.Abs(md.Scale.Log2() - params.DefaultScale().Log2()); d > rule.MaxLogScaleDelta {
		return fmt.Errorf("scale 2^%.2f is 2^%.1f away from the default 2^%.0f", md.Scale.Log2(), d, params.DefaultScale().Log2())
	}
	for _, p := range ct.Value {
		for i, qi := range params.Q()[:ct.Level()+1] {
			for _, c := range p.Coeffs[i] {
				if c >= qi {
					return fmt.Errorf("coefficient not reduced modulo q_%d", i)
				}
			}
		}
	}
	return nil
}

// MarshalCiphertext encodes a ciphertext for the wire.
func MarshalCiphertext(ct *rlwe.Ciphertext) ([]byte, error) {
	if ct == nil {
		return nil, fmt.Errorf("nil ciphertext")
	}
	return ct.MarshalBinary()
}

// ------------------------------------------------------------------- keys

// keySetMagic is he's key-set header (he/keys.go); a test checks that
// ParseEvaluationKeys reads he.EvaluationKeys.MarshalBinary's output.
var keySetMagic = []byte("ENTIEVK\x01")

// ParseEvaluationKeys parses and validates an evaluation-key set received
// for params (he's encoding: magic, parameter fingerprint, Lattigo key set),
// with allocation guards on every length prefix (he.GuardedReader). Errors
// are InvalidArgument.
func ParseEvaluationKeys(params ckks.Parameters, data []byte, maxBytes int64) (ek *he.EvaluationKeys, err error) {
	if maxBytes > 0 && int64(len(data)) > maxBytes {
		return nil, Errorf(codes.InvalidArgument, "evaluation keys: %d bytes exceed the limit %d", len(data), maxBytes)
	}
	if len(data) < len(keySetMagic)+32 || !bytes.Equal(data[:len(keySetMagic)], keySetMagic) {
		return nil, Errorf(codes.InvalidArgument, "evaluation keys: bad header (not an entropi key set, or another version)")
	}
	fp := he.ParamsFingerprint(params)
	if !bytes.Equal(data[len(keySetMagic):len(keySetMagic)+32], fp[:]) {
		return nil, Errorf(codes.InvalidArgument, "evaluation keys: %v (N=2^%d, %d Q primes): generate them with the session's preset",
			he.ErrKeyParams, params.LogN(), len(params.Q()))
	}
	defer func() {
		if r := recover(); r != nil {
			ek, err = nil, Errorf(codes.InvalidArgument, "evaluation keys: malformed encoding: %v", r)
		}
	}()
	body := data[len(keySetMagic)+32:]
	set := &rlwe.MemEvaluationKeySet{}
	n, err := set.ReadFrom(he.NewGuardedReader(body))
	if err != nil {
		return nil, Errorf(codes.InvalidArgument, "evaluation keys: malformed or truncated encoding: %v", err)
	}
	if int(n) != len(body) {
		return nil, Errorf(codes.InvalidArgument, "evaluation keys: %d trailing bytes after the key set", len(body)-int(n))
	}
	ek = &he.EvaluationKeys{Set: set}
	if err := ek.Validate(params); err != nil {
		return nil, Errorf(codes.InvalidArgument, "%v", err)
	}
	if rlk := set.RelinearizationKey; rlk != nil {
		if err := reducedGadget(params, rlk.Value); err != nil {
			return nil, Errorf(codes.InvalidArgument, "evaluation keys: relinearization key: %v", err)
		}
	}
	for g, gk := range set.GaloisKeys {
		if err := reducedGadget(params, gk.Value); err != nil {
			return nil, Errorf(codes.InvalidArgument, "evaluation keys: Galois key %d: %v", g, err)
		}
	}
	return ek, nil
}

// reducedGadget checks that every coefficient of a key is reduced modulo
// its prime (forged or corrupted keys otherwise pass Lattigo's parser).
func reducedGadget(params ckks.Parameters, m structs.Matrix[rlwe.VectorQP]) error {
	q, p := params.Q(), params.P()
	for i := range m {
		for j := range m[i] {
			for _, poly := range m[i][j] {
				if len(poly.Q.Coeffs) > len(q) || len(poly.P.Coeffs) > len(p) {
					return fmt.Errorf("too many moduli")
				}
				for k, row := range poly.Q.Coeffs {
					for _, c := range row {
						if c >= q[k] {
							return fmt.Errorf("coefficient not reduced modulo q_%d", k)
						}
					}
				}
				for k, row := range poly.P.Coeffs {
					for _, c := range row {
						if c >= p[k] {
							return fmt.Errorf("coefficient not reduced modulo p_%d", k)
						}
					}
				}
			}
		}
	}
	return nil
}

// CheckKeyRequest verifies that a key set holds exactly the keys requested:
// the Galois elements (no more, no fewer) and a relinearization key iff
// requested. Errors are InvalidArgument.
func CheckKeyRequest(ek *he.EvaluationKeys, req *KeyRequest) error {
	got := ek.GaloisElements()
	want := slices.Sorted(slices.Values(req.GetGaloisElements()))
	if !slices.Equal(got, want) {
		var missing, extra []uint64
		for _, g := range want {
			if _, ok := slices.BinarySearch(got, g); !ok {
				missing = append(missing, g)
			}
		}
		for _, g := range got {
			if _, ok := slices.BinarySearch(want, g); !ok {
				extra = append(extra, g)
			}
		}
		return Errorf(codes.InvalidArgument, "evaluation keys do not match the model's key request: %d Galois keys missing %v, %d not requested %v",
			len(missing), head(missing), len(extra), head(extra))
	}
	if has := ek.Set.RelinearizationKey != nil; has != req.GetRelinearize() {
		return Errorf(codes.InvalidArgument, "evaluation keys: relinearization key present=%v, requested=%v", has, req.GetRelinearize())
	}
	return nil
}

func head(v []uint64) []uint64 {
	if len(v) > 8 {
		return v[:8]
	}
	return v
}

// PublicKeyBytes is the exact encoded size of a public key for params.
func PublicKeyBytes(params ckks.Parameters) int { return rlwe.NewPublicKey(params).BinarySize() }

// ParsePublicKey parses and validates a public key: exact size, structure
// (two QP polynomials at the top levels), reduced coefficients.
func ParsePublicKey(params ckks.Parameters, data []byte) (pk *rlwe.PublicKey, err error) {
	if want := PublicKeyBytes(params); len(data) != want {
		return nil, Errorf(codes.InvalidArgument, "public key: %d bytes, want exactly %d for these parameters", len(data), want)
	}
	w := &walker{b: data}
	np, err := w.u64("polynomial count")
	if err != nil || np != 2 {
		return nil, Errorf(codes.InvalidArgument, "public key: %d polynomials, want 2 (%v)", np, err)
	}
	lq, lp := params.MaxLevelQ()+1, params.MaxLevelP()+1
	for i := 0; i < 2; i++ {
		if _, err := w.poly(params.N(), lq, lq); err != nil {
			return nil, Errorf(codes.InvalidArgument, "public key: Q part: %v", err)
		}
		if _, err := w.poly(params.N(), lp, lp); err != nil {
			return nil, Errorf(codes.InvalidArgument, "public key: P part: %v", err)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			pk, err = nil, Errorf(codes.InvalidArgument, "public key: malformed encoding: %v", r)
		}
	}()
	pk = new(rlwe.PublicKey)
	if _, err := pk.ReadFrom(he.NewGuardedReader(data)); err != nil {
		return nil, Errorf(codes.InvalidArgument, "public key: malformed encoding: %v", err)
	}
	for j, p := range pk.Value {
		for i, qi := range params.Q() {
			for _, c := range p.Q.Coeffs[i] {
				if c >= qi {
					return nil, Errorf(codes.InvalidArgument, "public key: polynomial %d not reduced modulo q_%d", j, i)
				}
			}
		}
		for i, pi := range params.P() {
			for _, c := range p.P.Coeffs[i] {
				if c >= pi {
					return nil, Errorf(codes.InvalidArgument, "public key: polynomial %d not reduced modulo p_%d", j, i)
				}
			}
		}
	}
	return pk, nil
}

// ---------------------------------------------------------------- refresh

// RefreshRequestToProto encodes a refresh round (server side).
func RefreshRequestToProto(round uint64, req *he.RefreshRequest) (*RefreshRequest, error) {
	out := &RefreshRequest{Round: round, Items: make([]*RefreshItem, len(req.Items))}
	for i, it := range req.Items {
		b, err := MarshalCiphertext(it.Ct)
		if err != nil {
			return nil, fmt.Errorf("refresh item %d: %w", i, err)
		}
		sc, err := it.Scale.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("refresh item %d: scale: %w", i, err)
		}
		m := &RefreshItem{Ciphertext: b, Level: int32(it.Level), Scale: string(sc)}
		if it.Map != nil {
			m.HasMap, m.Map = true, it.Map.Src
		}
		out.Items[i] = m
	}
	return out, nil
}

// RefreshRequestFromProto decodes and validates a refresh round (client
// side): each masked ciphertext is degree 1 at a level the parameters have,
// the target level is valid, the scale parses and is sane, a map has one
// entry per slot. maxItems bounds the item count.
func RefreshRequestFromProto(params ckks.Parameters, m *RefreshRequest, maxItems int) (*he.RefreshRequest, error) {
	if n := len(m.GetItems()); n == 0 || n > maxItems {
		return nil, Errorf(codes.InvalidArgument, "refresh round %d: %d items, want 1 to %d", m.GetRound(), n, maxItems)
	}
	req := &he.RefreshRequest{Items: make([]he.RefreshItem, len(m.Items))}
	for i, it := range m.Items {
		ct, err := UnmarshalCiphertext(params, it.Ciphertext, CiphertextRule{Degree: 1, MinLevel: 0, MaxLevel: params.MaxLevel(), MaxLogScaleDelta: 80})
		if err != nil {
			return nil, Wrap(err, "refresh round %d item %d", m.Round, i)
		}
		if it.Level < 0 || int(it.Level) > params.MaxLevel() {
			return nil, Errorf(codes.InvalidArgument, "refresh round %d item %d: target level %d outside [0, %d]", m.Round, i, it.Level, params.MaxLevel())
		}
		sc, err := parseScale(it.Scale)
		if err != nil {
			return nil, Errorf(codes.InvalidArgument, "refresh round %d item %d: malformed scale: %v", m.Round, i, err)
		}
		if d := math.Abs(sc.Log2() - params.DefaultScale().Log2()); !(d <= 20) {
			return nil, Errorf(codes.InvalidArgument, "refresh round %d item %d: target scale 2^%.2f is far from the default", m.Round, i, sc.Log2())
		}
		ri := he.RefreshItem{Ct: ct, Level: int(it.Level), Scale: sc}
		if it.HasMap {
			if len(it.Map) != ct.Slots() {
				return nil, Errorf(codes.InvalidArgument, "refresh round %d item %d: slot map has %d entries for %d slots", m.Round, i, len(it.Map), ct.Slots())
			}
			for _, s := range it.Map {
				if s < -1 || int(s) >= ct.Slots() {
					return nil, Errorf(codes.InvalidArgument, "refresh round %d item %d: slot map entry %d out of range", m.Round, i, s)
				}
			}
			ri.Map = &he.SlotMap{Src: it.Map}
		}
		req.Items[i] = ri
	}
	return req, nil
}

// parseScale reads a scale as rlwe.Scale.MarshalJSON writes it
// ({"Value": decimal, "Mod": decimal}) without Lattigo's UnmarshalJSON,
// which dereferences a nil big.Float when Mod does not parse (a hostile
// server could crash the client with the scale "{}"). The value must be a
// finite positive number and the modulus zero (CKKS scales are not modular).
func parseScale(s string) (sc rlwe.Scale, err error) {
	if len(s) > 256 {
		return sc, fmt.Errorf("%d bytes", len(s))
	}
	var aux struct{ Value, Mod string }
	if err := json.Unmarshal([]byte(s), &aux); err != nil {
		return sc, err
	}
	if len(aux.Value) > 128 || len(aux.Mod) > 128 {
		return sc, fmt.Errorf("number too long")
	}
	v, ok := new(big.Float).SetPrec(rlwe.ScalePrecision).SetString(aux.Value)
	if !ok || v.IsInf() || v.Sign() <= 0 {
		return sc, fmt.Errorf("value %q is not a finite positive number", aux.Value)
	}
	if m, ok := new(big.Float).SetString(aux.Mod); !ok || m.Sign() != 0 {
		return sc, fmt.Errorf("modulus %q: want 0 (CKKS scales are not modular)", aux.Mod)
	}
	sc.Value = *v
	return sc, nil
}

// RefreshAnswerToProto encodes the client's fresh encryptions.
func RefreshAnswerToProto(round uint64, resp *he.RefreshResponse) (*RefreshAnswer, error) {
	out := &RefreshAnswer{Round: round, SeededCiphertexts: make([][]byte, len(resp.Cts))}
	for i, c := range resp.Cts {
		b, err := c.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("refresh answer %d: %w", i, err)
		}
		out.SeededCiphertexts[i] = b
	}
	return out, nil
}

// RefreshAnswerFromProto decodes a refresh answer (server side): the round
// number, one seeded ciphertext per item of the request, each at the
// requested level (structure checked before parsing). The masked refresher
// then checks scale, flags and reduction before using them.
func RefreshAnswerFromProto(params ckks.Parameters, m *RefreshAnswer, req *he.RefreshRequest, round uint64) (*he.RefreshResponse, error) {
	if m.GetRound() != round {
		return nil, Errorf(codes.InvalidArgument, "refresh answer for round %d, expected round %d", m.GetRound(), round)
	}
	if len(m.SeededCiphertexts) != len(req.Items) {
		return nil, Errorf(codes.InvalidArgument, "refresh answer round %d: %d ciphertexts for %d items", round, len(m.SeededCiphertexts), len(req.Items))
	}
	resp := &he.RefreshResponse{Cts: make([]*he.SeededCiphertext, len(req.Items))}
	for i, b := range m.SeededCiphertexts {
		lvl := req.Items[i].Level
		if len(b) < he.SeedSize {
			return nil, Errorf(codes.InvalidArgument, "refresh answer round %d item %d: %d bytes, shorter than the seed", round, i, len(b))
		}
		c0, err := unmarshalCiphertext(params, b[he.SeedSize:], CiphertextRule{Degree: 0, MinLevel: lvl, MaxLevel: lvl, Scale: req.Items[i].Scale})
		if err != nil {
			return nil, Errorf(codes.InvalidArgument, "refresh answer round %d item %d: %v", round, i, err)
		}
		sc := &he.SeededCiphertext{C0: c0}
		copy(sc.Seed[:], b[:he.SeedSize])
		resp.Cts[i] = sc
	}
	return resp, nil
}
