package he

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// FloodOptions parameterize noise flooding of a ciphertext that the client
// will decrypt unmasked (the logits).
type FloodOptions struct {
	// LogNoiseBound is log2 of a bound E on ‖e‖∞, the decryption error of
	// the ciphertext in coefficient units (what the computation leaves; it
	// depends on the data and the weights).
	LogNoiseBound float64
	// Bits is the flooding width above that bound: the flooding noise is a
	// rounded Gaussian of standard deviation σ = 2^(LogNoiseBound + Bits)
	// per coefficient.
	Bits float64
}

// DefaultFloodOptions floods with σ = 2^23 (E = 2^15, 8 bits above it): at
// scale 2^40 and N = 2^14 that costs a slot error of standard deviation
// σ·√(N/2)/S ≈ 2^-10.5 (≈ 7·10^-4 on a logit), see FloodCost. The measured
// decryption error ‖e‖∞ is 2^5.7 after a plaintext product at N=2^12
// (TestFlood) and 2^8.7 after a matvec at N=2^14 (TestEndToEndN14), so σ is
// 14–17 bits above the real noise; the worst-case bound StatisticalBound is
// nevertheless vacuous at these settings (see Flooder).
func DefaultFloodOptions() FloodOptions { return FloodOptions{LogNoiseBound: 15, Bits: 8} }

// Sigma is the standard deviation of the flooding noise.
func (o FloodOptions) Sigma() float64 { return math.Exp2(o.LogNoiseBound + o.Bits) }

// StatisticalBound is log2 of the bound on the total-variation distance
// between the client's views of two computations whose decryption errors
// differ by at most 2E per coefficient: the flooded error is e + g with g a
// Gaussian of width σ per coefficient, KL(N(δ,σ²)‖N(0,σ²)) = δ²/(2σ²), summed
// over N coefficients, and Pinsker gives TV ≤ √(N·(2E)²/(4σ²)) = √N·E/σ, i.e.
// log2 TV ≤ logN/2 − Bits (rounding to integers only shrinks it, by data
// processing, since e is integer). A value ≥ 0 means the bound is vacuous.
func (o FloodOptions) StatisticalBound(logN int) float64 { return float64(logN)/2 - o.Bits }

// FloodCost returns log2 of the standard deviation of the error that the
// flooding adds to each slot value of a ciphertext at the given scale:
// σ·√(N/2)/S (each slot is a ±1-weighted sum of N coefficients, half of
// whose variance falls on the real part).
func FloodCost(params ckks.Parameters, scale rlwe.Scale, o FloodOptions) float64 {
	return math.Log2(o.Sigma()) + 0.5*float64(params.LogN()-1) - math.Log2(scale.Float64())
}

// Flooder re-randomizes and floods ciphertexts before they leave the server
// for an unmasked decryption (logits). It holds only public material.
//
// Why both steps. A ciphertext (c0, c1) the client decrypts reveals (i) c1,
// which for a server computation is a deterministic function of the client's
// input ciphertexts and the server's weights (e.g. a linear layer gives
// c1 = Σ w·c1_in), and (ii) the decryption error e, which depends on the
// data and weights. Adding a fresh public-key encryption of zero makes c1
// uniform under RLWE (the pk randomness u is fresh: c1 + u·a + e1), and
// adding a Gaussian of width σ ≫ E to c0 makes the error distribution almost
// independent of the computation, as quantified by StatisticalBound.
//
// The trade-off is one bit of slot precision per bit of flooding (FloodCost).
// A worst-case statistical guarantee of λ bits needs Bits ≥ λ + logN/2, i.e.
// a computation whose own precision exceeds λ + logN + (output bits) — about
// 2^-70 relative at N=2^14, which 40-bit-scale CKKS does not reach. The
// default therefore floods by a fixed margin over a conservative noise bound
// (statistical bound vacuous in the worst case, heuristic hiding of the
// data-dependent error) and keeps logits usable; raise Bits when the logits
// are computed at a higher scale.
type Flooder struct {
	params ckks.Parameters
	enc    *rlwe.Encryptor
	opts   FloodOptions
}

// NewFlooder builds a flooder from the client's public key.
func NewFlooder(params ckks.Parameters, pk *rlwe.PublicKey, opts FloodOptions) (*Flooder, error) {
	if pk == nil {
		return nil, errors.New("he: flooder needs the client's public key (to re-randomize c1)")
	}
	if opts.Bits < 0 || opts.LogNoiseBound < 0 || opts.LogNoiseBound+opts.Bits > 50 {
		return nil, fmt.Errorf("he: flooding σ = 2^%.1f out of range (bits ≥ 0, log σ ≤ 50)", opts.LogNoiseBound+opts.Bits)
	}
	return &Flooder{params: params, enc: rlwe.NewEncryptor(params, pk), opts: opts}, nil
}

// Options returns the flooding options.
func (f *Flooder) Options() FloodOptions { return f.opts }

// Flood returns ct + Enc_pk(0) + (g, 0) with g a rounded Gaussian of width
// σ per coefficient (crypto/rand-seeded). ct is not modified. The modulus at
// ct's level must exceed the flooded values by far (σ·2^8 < Q_ℓ/4 is checked).
func (f *Flooder) Flood(ct *rlwe.Ciphertext) (*rlwe.Ciphertext, error) {
	if ct == nil || ct.Degree() != 1 {
		return nil, errors.New("he: flood: need a relinearized (degree-1) ciphertext")
	}
	if ct.Value[0].N() != f.params.N() {
		return nil, fmt.Errorf("he: flood: ring degree %d, parameters have %d", ct.Value[0].N(), f.params.N())
	}
	level := ct.Level()
	logQ := 0.0
	for _, q := range f.params.Q()[:level+1] {
		logQ += math.Log2(float64(q))
	}
	if math.Log2(f.opts.Sigma())+8+2 > logQ {
		return nil, fmt.Errorf("he: flood: σ = 2^%.1f does not fit the modulus at level %d (2^%.0f)", math.Log2(f.opts.Sigma()), level, logQ)
	}
	out := ct.CopyNew()
	zero := rlwe.NewCiphertext(f.params, 1, level)
	zero.MetaData = ct.MetaData.CopyNew()
	if err := f.enc.EncryptZero(zero); err != nil {
		return nil, fmt.Errorf("he: flood: %w", err)
	}
	rq := f.params.RingQ().AtLevel(level)
	rq.Add(out.Value[0], zero.Value[0], out.Value[0])
	rq.Add(out.Value[1], zero.Value[1], out.Value[1])

	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, err
	}
	rng := mrand.New(mrand.NewChaCha8(seed))
	sigma := f.opts.Sigma()
	g := rq.NewPoly()
	for j := 0; j < f.params.N(); j++ {
		x := int64(math.Round(rng.NormFloat64() * sigma))
		for i, q := range f.params.Q()[:level+1] {
			if x >= 0 {
				g.Coeffs[i][j] = uint64(x) % q
			} else {
				g.Coeffs[i][j] = q - uint64(-x)%q
				if g.Coeffs[i][j] == q {
					g.Coeffs[i][j] = 0
				}
			}
		}
	}
	rq.NTT(g, g)
	rq.Add(out.Value[0], g, out.Value[0])
	return out, nil
}
