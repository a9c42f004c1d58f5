package he

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sync"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/ring"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"github.com/tuneinsight/lattigo/v6/utils/bignum"
	"github.com/tuneinsight/lattigo/v6/utils/sampling"
)

// Refresher raises ciphertexts to a higher level. Two implementations share
// the interface: MaskedRefresher (client-aided, one round trip) and
// Bootstrapper (non-interactive, Lattigo bootstrapping).
type Refresher interface {
	// Refresh returns, for each input ciphertext, an encryption of the same
	// slot values (or of Maps[i] applied to them) at opts.Level and
	// opts.Scale. The inputs are not modified.
	Refresh(ctx context.Context, cts []*rlwe.Ciphertext, opts RefreshOptions) ([]*rlwe.Ciphertext, error)
}

// RefreshOptions says what a refresh must produce.
type RefreshOptions struct {
	// Level is the level of the refreshed ciphertexts; negative means the
	// parameters' maximum level.
	Level int
	// Scale is the scale of the refreshed ciphertexts; zero means the
	// parameters' default scale.
	Scale rlwe.Scale
	// Maps, if not empty, has one entry per ciphertext: a public linear slot
	// map applied during the refresh (nil entries: identity). Only the
	// masked refresher supports maps (they are free there).
	Maps []*SlotMap
}

// SlotMap is a public linear map on the slot vector that only moves values:
// out[i] = in[Src[i]], or 0 where Src[i] < 0. It covers replication
// ("take the first d slots and repeat them"), pre-rotated replication,
// permutations and zeroing. len(Src) must equal the ciphertext's slot count.
type SlotMap struct {
	Src []int32 `json:"src"`
}

// ReplicateMap returns the map out[i] = in[(i+shift) mod d]: the first d slots
// replicated over all slots, rotated left by shift (shift = 0: plain
// replication).
func ReplicateMap(slots, d, shift int) *SlotMap {
	if d <= 0 || d > slots {
		panic(fmt.Sprintf("he: ReplicateMap: d=%d must be in [1, %d]", d, slots))
	}
	m := &SlotMap{Src: make([]int32, slots)}
	for i := range m.Src {
		m.Src[i] = int32(((i+shift)%d + d) % d)
	}
	return m
}

// Apply applies the map to a slot vector (plaintext reference).
func (m *SlotMap) Apply(in []complex128) []complex128 {
	out := make([]complex128, len(m.Src))
	for i, s := range m.Src {
		if s >= 0 {
			out[i] = in[s]
		}
	}
	return out
}

func (m *SlotMap) check(slots int) error {
	if len(m.Src) != slots {
		return fmt.Errorf("slot map has %d entries for %d slots", len(m.Src), slots)
	}
	for i, s := range m.Src {
		if int(s) >= slots {
			return fmt.Errorf("slot map entry %d = %d is out of range [-1, %d)", i, s, slots)
		}
	}
	return nil
}

func (m *SlotMap) applyBig(in []*bignum.Complex, prec uint) []*bignum.Complex {
	out := make([]*bignum.Complex, len(m.Src))
	for i, s := range m.Src {
		if s >= 0 {
			out[i] = in[s].Clone()
		} else {
			out[i] = bignum.NewComplex().SetPrec(prec)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Wire messages of the refresh round.

// SeedSize is the size of the seed of a SeededCiphertext.
const SeedSize = 32

// SeededCiphertext is a fresh secret-key encryption (c0, c1) sent as c0 and
// the seed of the PRNG that generates the uniform c1: half the bytes of a
// ciphertext. Expand rebuilds the ciphertext.
type SeededCiphertext struct {
	Seed [SeedSize]byte
	// C0 is a degree-0 ciphertext holding c0 and the metadata (level,
	// scale, NTT flag, slot count).
	C0 *rlwe.Ciphertext
}

// BinarySize is the serialized size in bytes.
func (s *SeededCiphertext) BinarySize() int { return SeedSize + s.C0.BinarySize() }

// MarshalBinary serializes the seeded ciphertext.
func (s *SeededCiphertext) MarshalBinary() ([]byte, error) {
	b, err := s.C0.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), s.Seed[:]...), b...), nil
}

// UnmarshalBinary deserializes; the result still has to be validated by the
// receiver (MaskedRefresher does). Lattigo reads the ciphertext through a
// GuardedReader, so forged counts and truncation are errors, not a fatal
// allocation; trailing bytes are refused. (The wire path does not come
// here: protocol.RefreshAnswerFromProto checks the structure against the
// parameters first.)
func (s *SeededCiphertext) UnmarshalBinary(b []byte) (err error) {
	if len(b) < SeedSize {
		return fmt.Errorf("he: seeded ciphertext: %d bytes, shorter than the seed", len(b))
	}
	defer func() {
		if r := recover(); r != nil {
			s.C0, err = nil, fmt.Errorf("he: seeded ciphertext: malformed encoding: %v", r)
		}
	}()
	copy(s.Seed[:], b[:SeedSize])
	body := b[SeedSize:]
	ct := new(rlwe.Ciphertext)
	n, err := ct.ReadFrom(NewGuardedReader(body))
	if err != nil {
		return fmt.Errorf("he: seeded ciphertext: %w", err)
	}
	if int(n) != len(body) {
		return fmt.Errorf("he: seeded ciphertext: %d trailing bytes", len(body)-int(n))
	}
	s.C0 = ct
	return nil
}

// expandSeeded regenerates c1 from the seed: the same uniform sampler, keyed
// by the seed, read at the ciphertext's level, on both sides.
func expandSeeded(params ckks.Parameters, s *SeededCiphertext) (*rlwe.Ciphertext, error) {
	prng, err := sampling.NewKeyedPRNG(s.Seed[:])
	if err != nil {
		return nil, err
	}
	level := s.C0.Level()
	ct := rlwe.NewCiphertext(params, 1, level)
	ct.Value[0].CopyLvl(level, s.C0.Value[0])
	*ct.MetaData = *s.C0.MetaData.CopyNew()
	ring.NewUniformSampler(prng, params.RingQ()).AtLevel(level).Read(ct.Value[1])
	return ct, nil
}

// RefreshItem is one masked ciphertext and what the client must return.
type RefreshItem struct {
	Ct    *rlwe.Ciphertext // masked: (c0 + r, c1) at the masking level
	Level int              // level of the fresh encryption
	Scale rlwe.Scale       // scale of the fresh encryption
	Map   *SlotMap         // optional slot map for the client to apply
}

// RefreshRequest goes from the server to the client.
type RefreshRequest struct{ Items []RefreshItem }

// RefreshResponse goes from the client to the server: fresh encryptions only.
type RefreshResponse struct{ Cts []*SeededCiphertext }

// BinarySize is the size of the ciphertexts in the request (bytes down;
// the per-item level, scale and map are a few bytes, plus 4 bytes per slot
// for an explicit map).
func (r *RefreshRequest) BinarySize() int {
	n := 0
	for _, it := range r.Items {
		n += it.Ct.BinarySize() + 8 + 16
		if it.Map != nil {
			n += 4 * len(it.Map.Src)
		}
	}
	return n
}

// BinarySize is the size of the response (bytes up).
func (r *RefreshResponse) BinarySize() int {
	n := 0
	for _, c := range r.Cts {
		n += c.BinarySize()
	}
	return n
}

// RefreshTransport carries a refresh round to the client and back (the
// network service implements it; tests call the RefreshResponder directly).
type RefreshTransport func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error)

// ---------------------------------------------------------------------------
// Server side.

// MaskOptions are the parameters of the masking; see MaskedRefresher.
type MaskOptions struct {
	// Lambda is the statistical hiding parameter in bits (at least 40).
	Lambda int
	// ValueBound V bounds |Re| and |Im| of every slot value of every
	// ciphertext the refresher sees. The server must know it (approx
	// ranges, calibrated activations); hiding degrades by one bit per
	// bit that the true values exceed it (see MaskedRefresher).
	ValueBound float64
	// LogNoiseBound bounds log2 of the decryption error in coefficient
	// units (‖e‖∞). Noise after a rescale is ~2^5–2^10 at N ≤ 2^16; the
	// default 20 leaves a wide margin and costs nothing visible.
	LogNoiseBound float64
}

// DefaultMaskOptions: λ = 40, values within ±1024, noise below 2^20.
func DefaultMaskOptions() MaskOptions {
	return MaskOptions{Lambda: 40, ValueBound: 1024, LogNoiseBound: 20}
}

// MaskedRefresher is the server side of the client-aided refresh. It holds
// only public material (the parameters, the client's public key) and the
// transport.
//
// Protocol, per ciphertext ct = (c0, c1) at scale S with c0 + c1·s = m + e
// (mod Q_ℓ), m the encoded slot values, e the computation noise:
//
//  1. B = √2·V·S + 2^LogNoiseBound + 1 bounds ‖m + e‖∞: a coefficient of
//     the inverse canonical embedding is an average of N values of modulus
//     at most √2·V.
//  2. The server re-randomizes ct with a fresh encryption of zero under the
//     client's public key: c1 of a server computation is a deterministic
//     function of the client's input ciphertexts and the weights (a
//     plaintext product gives c1 = w·c1_in, from which the client could
//     divide out w); after re-randomization c1 is pseudo-random under RLWE.
//     Its noise (≈ 2^5) becomes part of e. The server drops ct to the
//     lowest level ℓm whose modulus satisfies Q_ℓm ≥ 4·(R + B) (free, and
//     it shrinks the message), samples r with independent coefficients
//     uniform in [−R, R], R = 2^(λ+logN)·B (crypto/rand), and sends
//     (c0 + r, c1).
//  3. The client decrypts the exact integers c = m + e + r (no wrap-around,
//     since |c| ≤ R + B < Q_ℓm/4), optionally decodes them, applies the
//     slot map and re-encodes at the requested scale in big-float precision,
//     and returns a fresh seeded encryption of the result at the requested
//     level. It never returns decrypted values.
//  4. The server subtracts the image of r (r itself, or the big-float
//     encode(map(decode(r))) rounded the same way) at the requested level.
//     By linearity the result encrypts m + e (resp. the mapped values) plus
//     the client's fresh noise, with at most ±1 rounding per coefficient on
//     the big-float path.
//
// Hiding (what the client learns): for a fixed a = m + e with ‖a‖∞ ≤ B,
// each coefficient a_j + r_j is uniform on a window of 2R+1 integers shifted
// by a_j, at statistical distance |a_j|/(2R+1) ≤ B/(2R+1) from the unshifted
// window; over N independent coefficients the distance between the client's
// view and a view independent of (m, e) is at most N·B/(2R+1) < 2^-(λ+1). This
// covers the computation noise e as well, so no flooding is needed before a
// masked refresh. If ‖m + e‖∞ exceeds B by a factor 2^k the bound becomes
// 2^(k−λ): ValueBound and LogNoiseBound are security parameters.
//
// Level: the masking needs log2 Q_ℓm ≥ λ + logN + log2 B + 2; at
// N=2^14, S=2^40, V=1024, λ=40 that is ≈ 107 bits, i.e. level 2 of the n14
// preset (55+40+40 bits). A ciphertext below that level cannot be refreshed
// this way: Refresh returns an error naming the level required.
//
// Slot maps: masking is in the coefficient domain, so the client decodes
// c = m + e + r with a big-float encoder (precision log2 Q_ℓm + logN + 64
// bits), applies the map to the complex slot vector, and re-encodes with
// rounding; the server does the same to r. The map is linear and moves
// values only, so map(decode(c)) − map(decode(r)) = map(decode(m + e)); the
// two roundings add at most ±1 per coefficient.
//
// A MaskedRefresher is safe for concurrent use. Its public material is the
// parameters and the client's public key.
type MaskedRefresher struct {
	params    ckks.Parameters
	transport RefreshTransport
	opts      MaskOptions
	encoders  *encoderCache
	pkEnc     *rlwe.Encryptor
	pkMu      sync.Mutex
}

// NewMaskedRefresher checks the options and builds the server side. pk is
// the client's public key (used to re-randomize c1, see MaskedRefresher).
func NewMaskedRefresher(params ckks.Parameters, pk *rlwe.PublicKey, transport RefreshTransport, opts MaskOptions) (*MaskedRefresher, error) {
	if pk == nil {
		return nil, errors.New("he: masked refresher needs the client's public key (to re-randomize c1 before it is sent)")
	}
	if transport == nil {
		return nil, errors.New("he: masked refresher: nil transport")
	}
	if opts.Lambda < 40 {
		return nil, fmt.Errorf("he: masked refresher: λ = %d bits of statistical hiding is below the minimum 40", opts.Lambda)
	}
	if !(opts.ValueBound > 0) || math.IsInf(opts.ValueBound, 0) {
		return nil, fmt.Errorf("he: masked refresher: value bound %g must be positive and finite", opts.ValueBound)
	}
	if opts.LogNoiseBound < 0 || opts.LogNoiseBound > 60 {
		return nil, fmt.Errorf("he: masked refresher: log noise bound %g out of [0, 60]", opts.LogNoiseBound)
	}
	return &MaskedRefresher{params: params, transport: transport, opts: opts, encoders: newEncoderCache(params),
		pkEnc: rlwe.NewEncryptor(params, pk)}, nil
}

// maskPlan is the masking arithmetic for one ciphertext.
type maskPlan struct {
	B, R  *big.Int // coefficient bound of m+e, mask half-width
	Level int      // masking level
	LogQ  float64  // log2 Q at the masking level
}

// plan computes B, R and the masking level for a ciphertext at scale s.
func (mr *MaskedRefresher) plan(scale rlwe.Scale) (maskPlan, error) {
	b := new(big.Float).SetPrec(256).Mul(&scale.Value, big.NewFloat(math.Sqrt2*mr.opts.ValueBound))
	b.Add(b, new(big.Float).SetFloat64(math.Exp2(mr.opts.LogNoiseBound)+1))
	B, _ := b.Int(nil)
	B.Add(B, big.NewInt(1)) // ceiling
	R := new(big.Int).Lsh(B, uint(mr.opts.Lambda+mr.params.LogN()))
	need := new(big.Int).Lsh(new(big.Int).Add(R, B), 2) // Q ≥ 4(R+B)
	q := big.NewInt(1)
	for l, qi := range mr.params.Q() {
		q.Mul(q, new(big.Int).SetUint64(qi))
		if q.Cmp(need) >= 0 {
			lq, _ := new(big.Float).SetInt(q).Float64()
			return maskPlan{B: B, R: R, Level: l, LogQ: math.Log2(lq)}, nil
		}
	}
	return maskPlan{}, fmt.Errorf("he: masked refresh: no level of these parameters holds the mask (needs log2 Q ≥ %d bits, λ=%d, V=%g, scale 2^%.1f); lower the value bound or the scale",
		need.BitLen(), mr.opts.Lambda, mr.opts.ValueBound, math.Log2(scale.Float64()))
}

// MaskLevel returns the lowest level at which a ciphertext at the given
// scale (zero: default scale) can be masked: Refresh needs inputs at this
// level or above.
func (mr *MaskedRefresher) MaskLevel(scale rlwe.Scale) (int, error) {
	if scale.Value.Sign() == 0 {
		scale = mr.params.DefaultScale()
	}
	p, err := mr.plan(scale)
	return p.Level, err
}

// maskState is what the server keeps between request and response.
type maskState struct {
	plan  maskPlan
	r     []*big.Int // mask coefficients
	inCt  *rlwe.MetaData
	level int
	scale rlwe.Scale
	smap  *SlotMap
}

func (mr *MaskedRefresher) checkInput(i int, ct *rlwe.Ciphertext) error {
	switch {
	case ct == nil:
		return fmt.Errorf("he: refresh: ciphertext %d is nil", i)
	case ct.Degree() != 1:
		return fmt.Errorf("he: refresh: ciphertext %d has degree %d, relinearize it first", i, ct.Degree())
	case ct.Value[0].N() != mr.params.N():
		return fmt.Errorf("he: refresh: ciphertext %d has ring degree %d, parameters have %d", i, ct.Value[0].N(), mr.params.N())
	case !ct.IsNTT:
		return fmt.Errorf("he: refresh: ciphertext %d is not in the NTT domain", i)
	case ct.Level() > mr.params.MaxLevel():
		return fmt.Errorf("he: refresh: ciphertext %d at level %d above the maximum %d", i, ct.Level(), mr.params.MaxLevel())
	}
	return nil
}

// mask drops ct to its masking level and adds a fresh mask to c0.
func (mr *MaskedRefresher) mask(ct *rlwe.Ciphertext) (*rlwe.Ciphertext, maskPlan, []*big.Int, error) {
	p, err := mr.plan(ct.Scale)
	if err != nil {
		return nil, p, nil, err
	}
	if ct.Level() < p.Level {
		return nil, p, nil, fmt.Errorf("he: masked refresh needs the ciphertext at level ≥ %d (log2 Q = %.0f bits hold the λ=%d mask of values ≤ %g at scale 2^%.1f) but it is at level %d: refresh before the segment uses those levels",
			p.Level, p.LogQ, mr.opts.Lambda, mr.opts.ValueBound, math.Log2(ct.Scale.Float64()), ct.Level())
	}
	out := ct.CopyNew()
	out.Resize(1, p.Level)
	// Re-randomize: add a fresh public-key encryption of zero, so that c1 is
	// no longer a function of the computation (weights).
	zero := rlwe.NewCiphertext(mr.params, 1, p.Level)
	zero.MetaData = out.MetaData.CopyNew()
	mr.pkMu.Lock()
	err = mr.pkEnc.EncryptZero(zero)
	mr.pkMu.Unlock()
	if err != nil {
		return nil, p, nil, fmt.Errorf("he: masked refresh: re-randomization: %w", err)
	}
	rq := mr.params.RingQ().AtLevel(p.Level)
	rq.Add(out.Value[0], zero.Value[0], out.Value[0])
	rq.Add(out.Value[1], zero.Value[1], out.Value[1])
	r, err := sampleUniformCentered(mr.params.N(), p.R)
	if err != nil {
		return nil, p, nil, err
	}
	rp := rq.NewPoly()
	rq.SetCoefficientsBigint(r, rp)
	rq.NTT(rp, rp)
	rq.Add(out.Value[0], rp, out.Value[0])
	return out, p, r, nil
}

// sampleUniformCentered returns n integers uniform in [−R, R] from crypto/rand.
func sampleUniformCentered(n int, R *big.Int) ([]*big.Int, error) {
	width := new(big.Int).Add(new(big.Int).Lsh(R, 1), big.NewInt(1))
	out := make([]*big.Int, n)
	for i := range out {
		v, err := rand.Int(rand.Reader, width)
		if err != nil {
			return nil, fmt.Errorf("he: sampling the mask: %w", err)
		}
		out[i] = v.Sub(v, R)
	}
	return out, nil
}

// Refresh masks the ciphertexts, runs one round through the transport,
// validates the fresh encryptions and unmasks them.
func (mr *MaskedRefresher) Refresh(ctx context.Context, cts []*rlwe.Ciphertext, opts RefreshOptions) ([]*rlwe.Ciphertext, error) {
	level, scale, err := resolveTarget(mr.params, opts)
	if err != nil {
		return nil, err
	}
	if len(opts.Maps) != 0 && len(opts.Maps) != len(cts) {
		return nil, fmt.Errorf("he: refresh: %d slot maps for %d ciphertexts", len(opts.Maps), len(cts))
	}
	req := &RefreshRequest{Items: make([]RefreshItem, len(cts))}
	states := make([]maskState, len(cts))
	for i, ct := range cts {
		if err := mr.checkInput(i, ct); err != nil {
			return nil, err
		}
		var smap *SlotMap
		if len(opts.Maps) != 0 {
			smap = opts.Maps[i]
			if smap != nil {
				if err := smap.check(ct.Slots()); err != nil {
					return nil, fmt.Errorf("he: refresh: ciphertext %d: %w", i, err)
				}
			}
		}
		masked, p, r, err := mr.mask(ct)
		if err != nil {
			return nil, fmt.Errorf("he: refresh: ciphertext %d: %w", i, err)
		}
		req.Items[i] = RefreshItem{Ct: masked, Level: level, Scale: scale, Map: smap}
		states[i] = maskState{plan: p, r: r, inCt: masked.MetaData.CopyNew(), level: level, scale: scale, smap: smap}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	resp, err := mr.transport(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("he: refresh round: %w", err)
	}
	if resp == nil || len(resp.Cts) != len(cts) {
		n := 0
		if resp != nil {
			n = len(resp.Cts)
		}
		return nil, fmt.Errorf("he: refresh response has %d ciphertexts, expected %d", n, len(cts))
	}
	out := make([]*rlwe.Ciphertext, len(cts))
	for i, sc := range resp.Cts {
		if err := checkSeeded(mr.params, sc, states[i].level, states[i].scale, states[i].inCt); err != nil {
			return nil, fmt.Errorf("he: refresh response %d rejected: %w", i, err)
		}
		ct, err := expandSeeded(mr.params, sc)
		if err != nil {
			return nil, err
		}
		img, err := mr.maskImage(&states[i])
		if err != nil {
			return nil, err
		}
		mr.params.RingQ().AtLevel(ct.Level()).Sub(ct.Value[0], img, ct.Value[0])
		out[i] = ct
	}
	return out, nil
}

// maskImage returns, in the NTT domain at the target level, what the client's
// plaintext contains on top of the message: r itself (integer path) or
// encode(map(decode(r))) (big-float path, identical rounding to the client).
func (mr *MaskedRefresher) maskImage(st *maskState) (ring.Poly, error) {
	rq := mr.params.RingQ().AtLevel(st.level)
	if !needsBigPath(st.inCt.Scale, st.scale, st.smap) {
		p := rq.NewPoly()
		rq.SetCoefficientsBigint(st.r, p)
		rq.NTT(p, p)
		return p, nil
	}
	rqm := mr.params.RingQ().AtLevel(st.plan.Level)
	pt := rlwe.NewPlaintext(mr.params, st.plan.Level)
	*pt.MetaData = *st.inCt.CopyNew()
	rqm.SetCoefficientsBigint(st.r, pt.Value)
	rqm.NTT(pt.Value, pt.Value)
	out, err := mr.encoders.remap(pt, st.level, st.scale, st.smap)
	if err != nil {
		return ring.Poly{}, err
	}
	return out.Value, nil
}

func needsBigPath(in, out rlwe.Scale, m *SlotMap) bool { return m != nil || !in.Equal(out) }

func resolveTarget(params ckks.Parameters, opts RefreshOptions) (int, rlwe.Scale, error) {
	level := opts.Level
	if level < 0 {
		level = params.MaxLevel()
	}
	if level > params.MaxLevel() {
		return 0, rlwe.Scale{}, fmt.Errorf("he: refresh: target level %d above the maximum %d", level, params.MaxLevel())
	}
	scale := opts.Scale
	if scale.Value.Sign() == 0 {
		scale = params.DefaultScale()
	}
	if s := scale.Float64(); !(s >= 1) || math.IsInf(s, 0) {
		return 0, rlwe.Scale{}, fmt.Errorf("he: refresh: invalid target scale %g", s)
	}
	return level, scale, nil
}

// checkSeeded validates a fresh encryption from the network before use.
func checkSeeded(params ckks.Parameters, sc *SeededCiphertext, level int, scale rlwe.Scale, in *rlwe.MetaData) error {
	switch {
	case sc == nil || sc.C0 == nil || sc.C0.MetaData == nil:
		return errors.New("missing ciphertext")
	case sc.C0.Degree() != 0:
		return fmt.Errorf("c0 part has degree %d, want 0", sc.C0.Degree())
	case sc.C0.Value[0].N() != params.N():
		return fmt.Errorf("ring degree %d, want %d", sc.C0.Value[0].N(), params.N())
	case sc.C0.Level() != level:
		return fmt.Errorf("level %d, requested %d", sc.C0.Level(), level)
	case !sc.C0.Scale.Equal(scale):
		return fmt.Errorf("scale 2^%.4f, requested 2^%.4f", math.Log2(sc.C0.Scale.Float64()), math.Log2(scale.Float64()))
	case !sc.C0.IsNTT || sc.C0.IsMontgomery || !sc.C0.IsBatched:
		return errors.New("wrong domain flags (want NTT, not Montgomery, batched)")
	case sc.C0.LogDimensions != in.LogDimensions:
		return fmt.Errorf("slot dimensions %v, want %v", sc.C0.LogDimensions, in.LogDimensions)
	}
	for i, qi := range params.Q()[:level+1] {
		for _, c := range sc.C0.Value[0].Coeffs[i] {
			if c >= qi {
				return fmt.Errorf("coefficient not reduced modulo q_%d", i)
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Client side.

// RefreshResponder is the client side: it holds the secret key, decrypts the
// masked ciphertexts and returns fresh seeded encryptions. It never returns
// decrypted values. Safe for concurrent use.
type RefreshResponder struct {
	params   ckks.Parameters
	sk       *rlwe.SecretKey
	dec      *rlwe.Decryptor
	encoders *encoderCache
	mu       sync.Mutex
}

// NewRefreshResponder builds the client side from the secret key.
func NewRefreshResponder(params ckks.Parameters, sk *rlwe.SecretKey) *RefreshResponder {
	return &RefreshResponder{params: params, sk: sk, dec: rlwe.NewDecryptor(params, sk), encoders: newEncoderCache(params)}
}

// Transport returns the in-process transport (tests, benchmarks, local
// sessions): the server's round trip is a direct call.
func (rr *RefreshResponder) Transport() RefreshTransport { return rr.Respond }

// Respond validates the request, decrypts each masked ciphertext to its exact
// integer coefficients, applies the slot map if any, and re-encrypts.
func (rr *RefreshResponder) Respond(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
	if req == nil {
		return nil, errors.New("he: refresh request is nil")
	}
	resp := &RefreshResponse{Cts: make([]*SeededCiphertext, len(req.Items))}
	for i, it := range req.Items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := rr.checkItem(it); err != nil {
			return nil, fmt.Errorf("he: refresh request item %d rejected: %w", i, err)
		}
		rr.mu.Lock()
		pt := rr.dec.DecryptNew(it.Ct)
		rr.mu.Unlock()
		var msg *rlwe.Plaintext
		if needsBigPath(it.Ct.Scale, it.Scale, it.Map) {
			var err error
			if msg, err = rr.encoders.remap(pt, it.Level, it.Scale, it.Map); err != nil {
				return nil, err
			}
		} else {
			// Exact integers m + e + r, re-expressed modulo Q at the target level.
			lq := rr.params.RingQ().AtLevel(pt.Level())
			lq.INTT(pt.Value, pt.Value)
			coeffs := make([]*big.Int, rr.params.N())
			for j := range coeffs {
				coeffs[j] = new(big.Int)
			}
			lq.PolyToBigintCentered(pt.Value, 1, coeffs)
			msg = rlwe.NewPlaintext(rr.params, it.Level)
			*msg.MetaData = *pt.MetaData.CopyNew()
			msg.IsNTT = true
			tq := rr.params.RingQ().AtLevel(it.Level)
			tq.SetCoefficientsBigint(coeffs, msg.Value)
			tq.NTT(msg.Value, msg.Value)
		}
		sc, err := encryptSeeded(rr.params, rr.sk, msg)
		if err != nil {
			return nil, err
		}
		resp.Cts[i] = sc
	}
	return resp, nil
}

func (rr *RefreshResponder) checkItem(it RefreshItem) error {
	ct := it.Ct
	switch {
	case ct == nil || ct.MetaData == nil:
		return errors.New("missing ciphertext")
	case ct.Degree() != 1:
		return fmt.Errorf("degree %d, want 1", ct.Degree())
	case ct.Value[0].N() != rr.params.N():
		return fmt.Errorf("ring degree %d, want %d", ct.Value[0].N(), rr.params.N())
	case ct.Level() > rr.params.MaxLevel():
		return fmt.Errorf("level %d above the maximum %d", ct.Level(), rr.params.MaxLevel())
	case !ct.IsNTT || ct.IsMontgomery || !ct.IsBatched:
		return errors.New("wrong domain flags")
	case it.Level < 0 || it.Level > rr.params.MaxLevel():
		return fmt.Errorf("target level %d out of [0, %d]", it.Level, rr.params.MaxLevel())
	case !(it.Scale.Float64() >= 1) || !(ct.Scale.Float64() >= 1):
		return errors.New("invalid scale")
	}
	if it.Map != nil {
		return it.Map.check(ct.Slots())
	}
	return nil
}

// encryptSeeded encrypts pt (NTT domain) under sk as (−a·s + e + m, a) with
// a generated from a fresh 32-byte seed (so a need not be sent) and e from
// the parameters' error distribution (crypto PRNG).
func encryptSeeded(params ckks.Parameters, sk *rlwe.SecretKey, pt *rlwe.Plaintext) (*SeededCiphertext, error) {
	if !pt.IsNTT {
		return nil, errors.New("he: encryptSeeded: plaintext must be in the NTT domain")
	}
	sc := &SeededCiphertext{}
	if _, err := rand.Read(sc.Seed[:]); err != nil {
		return nil, err
	}
	level := pt.Level()
	prng, err := sampling.NewKeyedPRNG(sc.Seed[:])
	if err != nil {
		return nil, err
	}
	rq := params.RingQ().AtLevel(level)
	a := rq.NewPoly()
	ring.NewUniformSampler(prng, params.RingQ()).AtLevel(level).Read(a)
	noisePRNG, err := sampling.NewPRNG()
	if err != nil {
		return nil, err
	}
	xe, err := ring.NewSampler(noisePRNG, params.RingQ(), params.Xe(), false)
	if err != nil {
		return nil, err
	}
	c0 := rlwe.NewCiphertext(params, 0, level)
	xe.AtLevel(level).Read(c0.Value[0])
	rq.NTT(c0.Value[0], c0.Value[0])
	rq.Add(c0.Value[0], pt.Value, c0.Value[0])
	rq.MulCoeffsMontgomeryThenSub(a, sk.Value.Q, c0.Value[0]) // sk is NTT+Montgomery
	*c0.MetaData = *pt.MetaData.CopyNew()
	c0.IsNTT = true
	sc.C0 = c0
	return sc, nil
}

// ---------------------------------------------------------------------------
// Big-float re-encoding shared by client and server.

// encoderCache holds big-float encoders by precision (building one costs
// the roots of unity at that precision).
type encoderCache struct {
	params ckks.Parameters
	mu     sync.Mutex
	byPrec map[uint]*ckks.Encoder
}

func newEncoderCache(params ckks.Parameters) *encoderCache {
	return &encoderCache{params: params, byPrec: map[uint]*ckks.Encoder{}}
}

// remap decodes pt (at its level and scale) in big-float precision, applies
// the map (nil: identity), and encodes at the target level and scale.
func (c *encoderCache) remap(pt *rlwe.Plaintext, level int, scale rlwe.Scale, m *SlotMap) (*rlwe.Plaintext, error) {
	logQ := 0.0
	for _, qi := range c.params.Q()[:pt.Level()+1] {
		logQ += math.Log2(float64(qi))
	}
	prec := uint(logQ) + uint(c.params.LogN()) + 64
	prec = (prec + 63) &^ 63
	c.mu.Lock()
	ecd, ok := c.byPrec[prec]
	if !ok {
		ecd = ckks.NewEncoder(c.params, prec)
		c.byPrec[prec] = ecd
	}
	c.mu.Unlock()

	slots := pt.Slots()
	vals := make([]*bignum.Complex, slots)
	for i := range vals {
		vals[i] = bignum.NewComplex().SetPrec(prec)
	}
	c.mu.Lock() // Lattigo's encoder keeps scratch buffers
	defer c.mu.Unlock()
	if err := ecd.Decode(pt, vals); err != nil {
		return nil, fmt.Errorf("he: big-float decode: %w", err)
	}
	if m != nil {
		vals = m.applyBig(vals, prec)
	}
	out := rlwe.NewPlaintext(c.params, level)
	out.MetaData = pt.MetaData.CopyNew()
	out.Scale = scale
	out.IsNTT = true
	if err := ecd.Encode(vals, out); err != nil {
		return nil, fmt.Errorf("he: big-float encode: %w", err)
	}
	return out, nil
}
