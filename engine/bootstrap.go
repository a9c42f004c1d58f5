package engine

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/entropi-ai/entropi/he"
	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
)

// RefreshMode says how ciphertexts regain levels (Options.Refresh,
// Spec.Refresh).
type RefreshMode string

const (
	// RefreshInteractive: client-aided masked refresh (he.MaskedRefresher),
	// one round trip per refresh point through the session's RefreshFunc.
	// The zero value means the same.
	RefreshInteractive RefreshMode = "interactive"
	// RefreshBootstrap: Lattigo bootstrapping on the server
	// (he.Bootstrapper); no client round after the key upload.
	RefreshBootstrap RefreshMode = "bootstrap"
)

// ParseRefreshMode accepts "interactive" (or "") and "bootstrap".
func ParseRefreshMode(s string) (RefreshMode, error) {
	switch RefreshMode(s) {
	case "", RefreshInteractive:
		return RefreshInteractive, nil
	case RefreshBootstrap:
		return RefreshBootstrap, nil
	}
	return "", fmt.Errorf("engine: unknown refresh mode %q (interactive, bootstrap)", s)
}

func (m RefreshMode) bootstrap() bool { return m == RefreshBootstrap }

// bootstrapFloor is the lowest level a ciphertext may be bootstrapped from:
// the value bound divides by the scale metadata, and Lattigo's ScaleDown
// spends one level to match such a scale (he.NewBootstrapperBound).
const bootstrapFloor = 1

// bootPlan is the engine's bootstrapping configuration (bootstrap mode).
//
// Planning in bootstrap mode is the interactive planner with three changes
// (the decoder code, model.Forward over the backend, is the same):
//   - a refresh point is a bootstrap: the refreshed ciphertext comes out at
//     the residual parameters' top level (or the planned lower target) and
//     the input must be at level ≥ bootstrapFloor (the "mask level" of the
//     plan, Plan.MaskLevel);
//   - slot values are divided by the value bound before and multiplied by
//     it after, both free (scale metadata; SlotsToCoeffs matrices);
//   - there are no free slot maps: every d×d product takes the replicated
//     input (he.Planner.Replicated) instead of the pre-rotated layout, and
//     Options.PreRotateLinear is ignored.
type bootPlan struct {
	params bootstrapping.Parameters
	// bound is the general value bound (activations: residual stream,
	// products' outputs); the ranges of the approximations give tighter
	// or wider bounds for the refresh points that feed them (boundFor).
	bound float64
	// Bounds of the approximations' operands: exp input; sum of exp-scores
	// (reciprocal input, any n) and its reciprocal; variance (inverse
	// square root input) and its inverse square root; GELU input; an
	// exp-score.
	exp, sum, inv, variance, invSqrt, gelu, expOut float64
}

// pow2Bound rounds a bound up to a power of two (at least 1).
func pow2Bound(v float64) float64 {
	return math.Exp2(math.Ceil(math.Log2(math.Max(v, 1))))
}

// boundFor is the value bound of part i (of n) refreshed before op: the
// range (with a factor 2 margin) of the approximation operand it is, or
// the general bound. Every slot counts: the engine fills unused slots
// with values inside these ranges. The parts' order is the one of the
// ensure calls in backend.go and attention.go.
func (bp *bootPlan) boundFor(o PlanOp, i, n int) float64 {
	switch {
	case o.Kind == "exp":
		return bp.exp
	case o.Kind == "recip": // init: [x]; Newton: [x, y]
		if i == 0 {
			return bp.sum
		}
		return bp.inv
	case o.Kind == "invsqrt": // init: [x]; Newton: [x/2, y]
		if i == 0 {
			return bp.variance
		}
		return bp.invSqrt
	case o.Kind == "gelu":
		return bp.gelu
	case o.Kind == "attention" && strings.HasSuffix(o.Op, ".weights"): // [e_0 … e_k, r]
		if i == n-1 {
			return bp.inv
		}
		return bp.expOut
	case o.Kind == "norm" && strings.HasSuffix(o.Op, ".scale"): // [x − μ, 1/σ]
		if i == 1 {
			return bp.invSqrt
		}
	}
	return bp.bound
}

// initBootstrap configures bootstrap mode (called by New instead of the
// masked refresher's setup).
func (e *Engine) initBootstrap() error {
	btp, err := he.BootstrapParameters(e.opts.Preset, e.opts.AllowInsecure)
	if err != nil {
		return fmt.Errorf("engine: bootstrap mode: %w", err)
	}
	bound := e.opts.BootstrapBound
	if bound == 0 {
		bound = 1024 // the masked refresh's floor (valueBound): the calibration records no activation range
	}
	if !(bound > 0) || math.IsInf(bound, 0) {
		return fmt.Errorf("engine: bootstrap value bound %g", bound)
	}
	set, n := e.set, float64(e.cfg.Context)
	absMax := func(lo, hi float64) float64 { return math.Max(math.Abs(lo), math.Abs(hi)) }
	bp := &bootPlan{params: btp, bound: pow2Bound(bound)}
	elo, ehi := set.Exp.Range()
	bp.exp = pow2Bound(2 * absMax(elo, ehi))
	bp.expOut = pow2Bound(2 * math.Exp(ehi))
	// recipN(n) takes sums of n exp-scores in [n·lo, n·hi]; its iterates
	// approach 1/sum ≤ 1/lo.
	rlo, rhi := set.Recip.Range()
	bp.sum = pow2Bound(2 * n * rhi)
	bp.inv = pow2Bound(2 / rlo)
	bp.variance, bp.invSqrt = bp.bound, bp.bound
	if set.InvSqrt != nil {
		lo, hi := set.InvSqrt.Range()
		bp.variance = pow2Bound(2 * hi)
		bp.invSqrt = pow2Bound(2 / math.Sqrt(lo))
	}
	bp.gelu = bp.bound
	if set.GELU != nil {
		bp.gelu = pow2Bound(2 * absMax(set.GELU.Range()))
	}
	e.boot = bp
	e.maskLevel = bootstrapFloor
	e.preOK, e.preMap = false, nil
	return nil
}

// BootstrapBound is the general power-of-two value bound of the
// bootstraps (0 in interactive mode); refresh points that feed an
// approximation use its range instead (Plan notes).
func (e *Engine) BootstrapBound() float64 {
	if e.boot == nil {
		return 0
	}
	return e.boot.bound
}

// newBootstrapper builds a session's bootstrapper from the client's keys.
func (e *Engine) newBootstrapper(keys *Keys) (he.Refresher, error) {
	if keys.Bootstrap == nil {
		return nil, fmt.Errorf("engine: bootstrap mode: the session needs the client's bootstrapping keys (Keys.Bootstrap)")
	}
	b, err := he.NewBootstrapper(e.boot.params, keys.Bootstrap) // bounds per call (RefreshBound)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if b.OutputLevel() != e.params.MaxLevel() {
		return nil, fmt.Errorf("engine: bootstrapper outputs level %d, the plan assumes %d", b.OutputLevel(), e.params.MaxLevel())
	}
	return b, nil
}

// GenBootstrapKeys generates the bootstrapping keys for a spec in bootstrap
// mode (client side; at N=2^16 about 7.3 GiB).
func (c *Client) genBootstrapKeys() (*bootstrapping.EvaluationKeys, error) {
	btp, err := he.BootstrapParameters(c.spec.Preset, c.spec.AllowInsecure)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return he.GenBootstrappingKeys(btp, c.ck.SecretKey)
}

// mode is the engine's refresh mode (never empty).
func (e *Engine) mode() RefreshMode {
	if e.boot != nil {
		return RefreshBootstrap
	}
	return RefreshInteractive
}

// Mode is the engine's refresh mode.
func (e *Engine) Mode() RefreshMode { return e.mode() }

// refreshCts runs one refresh round on the session's refresher: a masked
// refresh, or in bootstrap mode one bootstrap per ciphertext (cts[j] is
// part idx[j] of n) with the value bound of its operand, output at the
// default scale.
func (b *backend) refreshCts(ctx context.Context, cts []*rlwe.Ciphertext, idx []int, n int, ro he.RefreshOptions) ([]*rlwe.Ciphertext, error) {
	bt, ok := b.s.refresher.(*he.Bootstrapper)
	if !ok {
		return b.s.refresher.Refresh(ctx, cts, ro)
	}
	ro.Scale = rlwe.Scale{}
	out := make([]*rlwe.Ciphertext, len(cts))
	for j, ct := range cts {
		r, err := bt.RefreshBound(ctx, []*rlwe.Ciphertext{ct}, ro, b.e.boot.boundFor(*b.op(), idx[j], n))
		if err != nil {
			return nil, err
		}
		out[j] = r[0]
	}
	return out, nil
}

// annotate notes the value bounds of each refresh point in the plan (the
// dry run does not record which parts were refreshed: the bounds of the
// first and last part).
func (bp *bootPlan) annotate(p *Plan) {
	for i := range p.Ops {
		o := &p.Ops[i]
		if o.Refresh == 0 {
			continue
		}
		lo, hi := math.Log2(bp.boundFor(*o, 0, 2)), math.Log2(bp.boundFor(*o, 1, 2))
		note := fmt.Sprintf("bootstrap bound 2^%.0f", lo)
		if hi != lo {
			note = fmt.Sprintf("bootstrap bounds 2^%.0f, 2^%.0f", lo, hi)
		}
		o.Note = strings.TrimSpace(o.Note + " " + note)
	}
}
