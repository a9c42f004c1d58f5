package he

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sync"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/ring"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"github.com/tuneinsight/lattigo/v6/utils"
)

// BootstrapParameters builds Lattigo's bootstrapping parameters for a
// bootstrapping preset (N16Boot, InsecureBootTest): the residual parameters
// are the preset's, the bootstrapping moduli (CoeffsToSlots, EvalMod,
// SlotsToCoeffs, encapsulation with an h=32 ephemeral secret) are Lattigo's
// defaults. It checks the security of the whole set: log2(QP) of the
// bootstrapping parameters against the ternary HE-standard bound (the claim
// for the sparse h=192 secret itself is Lattigo's; see N16Boot).
//
// For ring degrees below 2^16 (test presets) the message ratio is raised by
// 16 − logN bits, as Lattigo's own short tests do, to keep the precision.
func BootstrapParameters(p Preset, allowInsecure bool) (bootstrapping.Parameters, error) {
	if p.Secret != SecretSparse {
		return bootstrapping.Parameters{}, fmt.Errorf("preset %q: bootstrapping needs the sparse secret %q (Lattigo's bootstrapping defaults assume h=192)", p.Name, SecretSparse)
	}
	residual, err := p.Parameters(allowInsecure)
	if err != nil {
		return bootstrapping.Parameters{}, err
	}
	lit := bootstrapping.ParametersLiteral{LogN: utils.Pointy(p.LogN)}
	if p.LogN < 16 {
		lit.LogMessageRatio = utils.Pointy(bootstrapping.DefaultLogMessageRatio + 16 - p.LogN)
	}
	btp, err := bootstrapping.NewParametersFromLiteral(residual, lit)
	if err != nil {
		return bootstrapping.Parameters{}, fmt.Errorf("preset %q: bootstrapping parameters: %w", p.Name, err)
	}
	if !p.Insecure() {
		logQP := btp.BootstrappingParameters.LogQP()
		if bound := MaxLogQPForSecurity(p.LogN, p.SecurityBits); bound == 0 || logQP > float64(bound) {
			return bootstrapping.Parameters{}, fmt.Errorf("preset %q: bootstrapping log2(QP)=%.0f exceeds the %d-bit bound %d for N=2^%d",
				p.Name, logQP, p.SecurityBits, bound, p.LogN)
		}
		if h, ok := btp.BootstrappingParameters.Xs().(ring.Ternary); !ok || h.H != 192 {
			return bootstrapping.Parameters{}, fmt.Errorf("preset %q: unexpected bootstrapping secret distribution %v", p.Name, btp.BootstrappingParameters.Xs())
		}
	}
	return btp, nil
}

// GenBootstrappingKeys is the client's part: from the secret key of the
// residual parameters it generates the bootstrapping evaluation keys (at
// N=2^16 about 7.5 GiB, uploaded once per session). The secret key must have
// been generated for btp.ResidualParameters.
func GenBootstrappingKeys(btp bootstrapping.Parameters, sk *rlwe.SecretKey) (*bootstrapping.EvaluationKeys, error) {
	keys, _, err := btp.GenEvaluationKeys(sk)
	if err != nil {
		return nil, fmt.Errorf("he: bootstrapping keys: %w", err)
	}
	return keys, nil
}

// Bootstrapper is the non-interactive Refresher: Lattigo's CKKS
// bootstrapping (ScaleDown, ModUp, CoeffsToSlots, EvalMod, SlotsToCoeffs).
// The output is at the residual parameters' maximum level (N16Boot: 9) and
// default scale, or dropped to the requested lower level. Slot maps are not
// supported (they would cost a linear transform; use the masked refresher).
// Calls are serialized (Lattigo's evaluator is not safe for concurrent use;
// one bootstrap already needs ~17 GB at N=2^16).
type Bootstrapper struct {
	params ckks.Parameters
	btp    *bootstrapping.Evaluator
	bound  float64
	mu     sync.Mutex
}

// NewBootstrapper builds the server side from the client's bootstrapping
// keys, for slot values in [-1, 1] (NewBootstrapperBound for others).
func NewBootstrapper(btp bootstrapping.Parameters, keys *bootstrapping.EvaluationKeys) (*Bootstrapper, error) {
	return NewBootstrapperBound(btp, keys, 1)
}

// NewBootstrapperBound builds a bootstrapper for inputs whose slot values
// (every slot, real and imaginary parts) lie in [-bound, bound]. Lattigo's
// bootstrapping is accurate for messages of magnitude up to about 1 (its
// message ratio); larger values break its modular reduction. The division
// by bound before and the multiplication after are both free: the input's
// scale metadata is multiplied by bound (a ciphertext of scale Δ·bound
// decrypts to m/bound; Lattigo's ScaleDown matches any scale in the level it
// consumes anyway, so with bound ≠ 1 inputs must be at level ≥ 1), and the
// SlotsToCoeffs matrices (plaintext constants) are multiplied by bound. The
// output holds the input's values at the default scale; its absolute error
// is bound times the bootstrapping precision (about 2^-25 at the presets
// here). A power-of-two bound keeps the scales exact. The keys do not
// depend on bound.
func NewBootstrapperBound(btp bootstrapping.Parameters, keys *bootstrapping.EvaluationKeys, bound float64) (*Bootstrapper, error) {
	if keys == nil {
		return nil, errors.New("he: bootstrapper: nil keys")
	}
	if !(bound >= 1) || math.IsInf(bound, 0) {
		return nil, fmt.Errorf("he: bootstrapper: value bound %g must be finite and ≥ 1", bound)
	}
	if bound != 1 {
		s := new(big.Float).SetFloat64(bound)
		if btp.SlotsToCoeffsParameters.Scaling != nil {
			s.Mul(s, btp.SlotsToCoeffsParameters.Scaling)
		}
		btp.SlotsToCoeffsParameters.Scaling = s // btp is a copy: the caller's parameters are untouched
	}
	ev, err := bootstrapping.NewEvaluator(btp, keys)
	if err != nil {
		return nil, fmt.Errorf("he: bootstrapper: %w", err)
	}
	return &Bootstrapper{params: btp.ResidualParameters, btp: ev, bound: bound}, nil
}

// Bound is the value bound the bootstrapper was built for.
func (b *Bootstrapper) Bound() float64 { return b.bound }

// OutputLevel is the level of a bootstrapped ciphertext.
func (b *Bootstrapper) OutputLevel() int { return b.btp.OutputLevel() }

// Refresh bootstraps each ciphertext (any level ≥ 0; at level 0 the scale
// must be exactly the default scale, a power of two for the presets here).
// The inputs are not modified.
func (b *Bootstrapper) Refresh(ctx context.Context, cts []*rlwe.Ciphertext, opts RefreshOptions) ([]*rlwe.Ciphertext, error) {
	return b.RefreshBound(ctx, cts, opts, b.bound)
}

// RefreshBound is Refresh for inputs whose slot values lie in
// [-bound, bound], bound ≥ Bound(): the input is divided by bound (scale
// metadata, free), bootstrapped, and multiplied back by Bound() in
// SlotsToCoeffs and by the integer bound/Bound() (free: no level; the
// absolute error grows by bound, as it must). bound/Bound() must be an
// integer; with powers of two everything stays exact. One bootstrapper
// thus serves refresh points of different ranges.
func (b *Bootstrapper) RefreshBound(ctx context.Context, cts []*rlwe.Ciphertext, opts RefreshOptions, bound float64) ([]*rlwe.Ciphertext, error) {
	k := bound / b.bound
	if !(k >= 1) || k != math.Trunc(k) || k > 1<<40 {
		return nil, fmt.Errorf("he: bootstrap: value bound %g is not an integer multiple (≤ 2^40) of the bootstrapper's bound %g", bound, b.bound)
	}
	level, scale, err := resolveTarget(b.params, opts)
	if err != nil {
		return nil, err
	}
	for _, m := range opts.Maps {
		if m != nil {
			return nil, errors.New("he: bootstrapping refresh does not apply slot maps (it would cost a linear transform): use the masked refresher or a matvec")
		}
	}
	if level > b.btp.OutputLevel() {
		return nil, fmt.Errorf("he: bootstrapping outputs level %d, %d requested", b.btp.OutputLevel(), level)
	}
	if !scale.Equal(b.params.DefaultScale()) {
		return nil, errors.New("he: bootstrapping outputs the default scale only")
	}
	out := make([]*rlwe.Ciphertext, len(cts))
	for i, ct := range cts {
		switch {
		case ct == nil:
			return nil, fmt.Errorf("he: bootstrap: ciphertext %d is nil", i)
		case ct.Degree() != 1:
			return nil, fmt.Errorf("he: bootstrap: ciphertext %d has degree %d, relinearize it first", i, ct.Degree())
		case ct.Value[0].N() != b.params.N():
			return nil, fmt.Errorf("he: bootstrap: ciphertext %d has ring degree %d, parameters have %d", i, ct.Value[0].N(), b.params.N())
		case ct.Level() == 0 && bound != 1:
			return nil, fmt.Errorf("he: bootstrap: ciphertext %d is at level 0: with a value bound (%g) the input needs level ≥ 1 (the scale match spends it)", i, bound)
		case ct.Level() == 0 && !ct.Scale.Equal(b.params.DefaultScale()):
			// Lattigo's ScaleDown at level 0 multiplies by an integer and
			// drops the residual scale error: only exact default scales
			// (powers of two here) are bootstrapped correctly there.
			return nil, fmt.Errorf("he: bootstrap: ciphertext %d is at level 0 with scale 2^%.4f ≠ the default scale: bootstrap it at level ≥ 1 (the scale is then matched) or produce it at the default scale",
				i, math.Log2(ct.Scale.Float64()))
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		in := ct.CopyNew() // Lattigo's ScaleDown works in place
		if bound != 1 {
			in.Scale = in.Scale.Mul(rlwe.NewScale(bound)) // decrypts to m/bound
		}
		b.mu.Lock()
		r, err := b.btp.Bootstrap(in)
		if err == nil && k > 1 {
			err = b.btp.Evaluator.Mul(r, uint64(k), r) // integer: no level, scale unchanged
		}
		b.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("he: bootstrap ciphertext %d: %w", i, err)
		}
		if r.Level() > level {
			r.Resize(1, level)
		}
		out[i] = r
	}
	return out, nil
}
