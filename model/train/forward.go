package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/entropi-ai/entropi/model"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
)

// Workspace holds one goroutine's activations, scratch and gradient buffers
// (aligned with Params.List). Params are only read, so several workspaces may
// run concurrently on shared Params.
type Workspace struct {
	maxB, maxT int
	grads      [][]float64

	// Score-range penalty of the last forward pass (range.go).
	rangeSum, scoreMax, meanSum float64

	// Effective block matrices (reparametrized models only) and the gradient
	// with respect to them, per layer and linear kind.
	eff, effG [][numLin][]float64
	sn        [][numLin]snCache

	xs   [][]float64 // [L+1][N·d] residual stream at each block boundary
	acts []layerActs
	// final norm
	xhatf, rstdf, zf []float64
	logits           []float64 // [N·V], overwritten by dL/dlogits in ForwardBackward

	// backward scratch
	dx, dxh, dh, dy []float64 // [N·d]
	dqkv            []float64 // [N·3d]
	du              []float64 // [N·hidden]
	dA              []float64 // [T·T]
	coef            []float64 // attention scale c_i per position [T]

	ent [][]float64 // [L][H] Σ over rows of the row entropies
}

type snCache struct {
	sigma, zn float64
	uh, v     []float64
}

type layerActs struct {
	xhat1, rstd1, h1 []float64 // ln_1
	qkv              []float64 // [N·3d]
	S, A             []float64 // [B·H·T·T] scaled scores and probabilities (lower triangle)
	y                []float64 // [N·d] heads concatenated
	xh               []float64 // [N·d] x + attention
	xhat2, rstd2, h2 []float64 // ln_2
	u, a             []float64 // [N·hidden] FFN pre- and post-activation (two-matrix)
	cdf              []float64 // [N·hidden] Φ(u) for GELU, reused by the backward pass
	f                []float64 // [N·d] FFN output
}

// NewWorkspace allocates a workspace for batches of up to batch sequences of
// up to seqLen tokens (seqLen ≤ Config.Context).
func NewWorkspace(p *Params, batch, seqLen int) *Workspace {
	cfg := p.Config
	if seqLen > cfg.Context {
		seqLen = cfg.Context
	}
	if batch < 1 {
		batch = 1
	}
	if seqLen < 1 {
		seqLen = 1
	}
	d, H, L := cfg.Dim, cfg.Heads, cfg.Layers
	N := batch * seqLen
	hid := cfg.FFNHidden
	ws := &Workspace{maxB: batch, maxT: seqLen}
	for _, q := range p.List {
		ws.grads = append(ws.grads, make([]float64, len(q.Data)))
	}
	reparam := p.Opts.WeightNorm || p.Opts.SpectralNorm
	ws.eff = make([][numLin][]float64, L)
	ws.effG = make([][numLin][]float64, L)
	ws.sn = make([][numLin]snCache, L)
	for l, b := range p.blocks {
		for k, lin := range b.lin {
			if lin == nil {
				continue
			}
			if reparam {
				ws.eff[l][k] = make([]float64, lin.in*lin.out)
				ws.effG[l][k] = make([]float64, lin.in*lin.out)
			} else {
				ws.eff[l][k] = lin.w.Data
				ws.effG[l][k] = ws.grads[lin.w.idx]
			}
		}
	}
	f := func(n int) []float64 { return make([]float64, n) }
	ws.xs = make([][]float64, L+1)
	for l := range ws.xs {
		ws.xs[l] = f(N * d)
	}
	ws.acts = make([]layerActs, L)
	for l := range ws.acts {
		a := &ws.acts[l]
		if cfg.LayerNorm {
			a.xhat1, a.rstd1, a.h1 = f(N*d), f(N), f(N*d)
			a.xhat2, a.rstd2, a.h2 = f(N*d), f(N), f(N*d)
		}
		a.qkv = f(N * 3 * d)
		a.S, a.A = f(batch*H*seqLen*seqLen), f(batch*H*seqLen*seqLen)
		a.y, a.xh, a.f = f(N*d), f(N*d), f(N*d)
		if !cfg.FusedFFN {
			a.u = f(N * hid)
			if cfg.Activation == model.ActNone {
				a.a = a.u
			} else {
				a.a = f(N * hid)
			}
			if cfg.Activation == model.ActGELU {
				a.cdf = f(N * hid)
			}
		}
	}
	if cfg.FinalNorm == model.FinalLayerNorm {
		ws.xhatf, ws.rstdf = f(N*d), f(N)
	}
	ws.zf = f(N * d)
	ws.logits = f(N * cfg.Vocab)
	ws.dx, ws.dxh, ws.dh, ws.dy = f(N*d), f(N*d), f(N*d), f(N*d)
	ws.dqkv = f(N * 3 * d)
	if !cfg.FusedFFN {
		ws.du = f(N * hid)
	}
	ws.dA = f(seqLen * seqLen)
	ws.coef = f(seqLen)
	ws.ent = make([][]float64, L)
	for l := range ws.ent {
		ws.ent[l] = f(H)
	}
	return ws
}

// Result summarizes one ForwardBackward.
type Result struct {
	Loss    float64 // CE + Entropy: the objective whose gradient is returned
	CE      float64 // mean next-token cross-entropy (nats) over the counted targets
	Entropy float64 // λ·L_ent, the λ-weighted entropy penalty (0 without Opts.EntropyReg)
	Range   float64 // μ·L_range, the score-range penalty (0 without Opts.ScorePenalty)
	// ScoreMax is the largest |attention score| of the batch (computed with
	// or without the penalty).
	ScoreMax float64
	// HeadEntropy[l][h] is the mean attention entropy E(l,h) of this batch
	// (nats, averaged over query rows and sequences); computed with or
	// without the regularizer.
	HeadEntropy [][]float64
	Tokens      int // number of counted targets
}

// Grads returns the gradient buffers, aligned with Params.List.
func (ws *Workspace) Grads() [][]float64 { return ws.grads }

func (ws *Workspace) check(p *Params, inputs [][]int) (B, T int, err error) {
	if len(p.List) != len(ws.grads) {
		return 0, 0, errors.New("train: workspace was built for different parameters")
	}
	for i, q := range p.List {
		if len(q.Data) != len(ws.grads[i]) {
			return 0, 0, errors.New("train: workspace was built for different parameters")
		}
	}
	B = len(inputs)
	if B == 0 {
		return 0, 0, errors.New("train: empty batch")
	}
	T = len(inputs[0])
	if B > ws.maxB || T > ws.maxT || T == 0 {
		return 0, 0, fmt.Errorf("train: batch %d×%d does not fit the workspace (%d×%d)", B, T, ws.maxB, ws.maxT)
	}
	V := p.Config.Vocab
	for b, seq := range inputs {
		if len(seq) != T {
			return 0, 0, fmt.Errorf("train: sequence %d has length %d, want %d (all sequences of a batch have one length)", b, len(seq), T)
		}
		for _, t := range seq {
			if t < 0 || t >= V {
				return 0, 0, fmt.Errorf("train: token %d outside the vocabulary [0,%d)", t, V)
			}
		}
	}
	return B, T, nil
}

// Forward returns logits[b][i][v] without gradients.
func (ws *Workspace) Forward(p *Params, inputs [][]int) ([][][]float64, error) {
	B, T, err := ws.check(p, inputs)
	if err != nil {
		return nil, err
	}
	ws.prepare(p)
	ws.forward(p, inputs, B, T)
	V := p.Config.Vocab
	out := make([][][]float64, B)
	for b := range out {
		out[b] = make([][]float64, T)
		for i := range out[b] {
			r := b*T + i
			out[b][i] = append([]float64(nil), ws.logits[r*V:(r+1)*V]...)
		}
	}
	return out, nil
}

// ForwardBackward computes the mean loss over all counted targets of the
// batch (targets[b][i] is the token following inputs[b][i]; a negative target
// is not counted) plus λ·L_ent, and writes its gradient into the workspace's
// gradient buffers (zeroed first).
func (ws *Workspace) ForwardBackward(p *Params, inputs, targets [][]int) (Result, error) {
	B, T, err := ws.check(p, inputs)
	if err != nil {
		return Result{}, err
	}
	if len(targets) != B {
		return Result{}, fmt.Errorf("train: %d target rows for %d input rows", len(targets), B)
	}
	V := p.Config.Vocab
	for b, seq := range targets {
		if len(seq) != T {
			return Result{}, fmt.Errorf("train: target row %d has length %d, want %d", b, len(seq), T)
		}
		for _, t := range seq {
			if t >= V {
				return Result{}, fmt.Errorf("train: target %d outside the vocabulary [0,%d)", t, V)
			}
		}
	}
	for _, g := range ws.grads {
		clear(g)
	}
	ws.prepare(p)
	ws.forward(p, inputs, B, T)

	// Cross-entropy and its gradient, in place in ws.logits.
	var res Result
	N := B * T
	for b := range targets {
		for _, t := range targets[b] {
			if t >= 0 {
				res.Tokens++
			}
		}
	}
	if res.Tokens == 0 {
		return Result{}, errors.New("train: no counted targets")
	}
	inv := 1 / float64(res.Tokens)
	for r := 0; r < N; r++ {
		row := ws.logits[r*V : (r+1)*V]
		t := targets[r/T][r%T]
		if t < 0 {
			clear(row)
			continue
		}
		m := math.Inf(-1)
		for _, z := range row {
			m = max(m, z)
		}
		var s float64
		for j, z := range row {
			e := math.Exp(z - m)
			row[j] = e
			s += e
		}
		res.CE += math.Log(s) - math.Log(row[t])
		for j := range row {
			row[j] *= inv / s
		}
		row[t] -= inv
	}
	res.CE *= inv

	pen, dE := ws.entropyPenalty(p, B, T, &res)
	res.Entropy = pen
	res.Range, res.ScoreMax = ws.rangePenalty(p, B, T)
	res.Loss = res.CE + res.Entropy + res.Range
	ws.backward(p, inputs, B, T, dE)
	ws.finishReparam(p)
	return res, nil
}

// prepare computes the effective block matrices of reparametrized models.
func (ws *Workspace) prepare(p *Params) {
	if !p.Opts.WeightNorm && !p.Opts.SpectralNorm {
		return
	}
	for l, b := range p.blocks {
		for k, lin := range b.lin {
			if lin == nil {
				continue
			}
			W := ws.eff[l][k]
			clear(ws.effG[l][k])
			V := lin.w.Data
			in, out := lin.in, lin.out
			if p.Opts.WeightNorm {
				g := lin.g.Data
				norms := columnNorms(V, in, out)
				for i := 0; i < in; i++ {
					for j := 0; j < out; j++ {
						W[i*out+j] = g[j] * V[i*out+j] / norms[j]
					}
				}
				continue
			}
			sig, uh, v, zn := spectral(V, in, out, lin.u)
			ws.sn[l][k] = snCache{sigma: sig, zn: zn, uh: uh, v: v}
			c := lin.s.Data[0] / sig
			for i := range W {
				W[i] = c * V[i]
			}
		}
	}
}

func columnNorms(V []float64, in, out int) []float64 {
	n := make([]float64, out)
	for i := 0; i < in; i++ {
		for j, x := range V[i*out : (i+1)*out] {
			n[j] += x * x
		}
	}
	for j := range n {
		n[j] = math.Sqrt(n[j])
	}
	return n
}

// gemm: C = alpha·op(A)·op(B) + beta·C, C is m×n, op(A) m×k, row-major with
// leading dimensions.
func gemm(tA, tB bool, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	ta, tb := blas.NoTrans, blas.NoTrans
	if tA {
		ta = blas.Trans
	}
	if tB {
		tb = blas.Trans
	}
	blas64.Implementation().Dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// linearFwd: y = x·W + b, x [N,in], W [in,out].
func linearFwd(x []float64, N, in, out int, W, bias, y []float64) {
	beta := 0.0
	if bias != nil {
		for r := 0; r < N; r++ {
			copy(y[r*out:(r+1)*out], bias)
		}
		beta = 1
	}
	gemm(false, false, N, out, in, 1, x, in, W, out, beta, y, out)
}

// layerNorm: xhat = (x−μ)·rstd, y = g⊙xhat + b per row.
func layerNorm(x []float64, N, d int, g, b []float64, eps float64, xhat, rstd, y []float64) {
	for r := 0; r < N; r++ {
		row := x[r*d : (r+1)*d]
		var mu float64
		for _, v := range row {
			mu += v
		}
		mu /= float64(d)
		var vr float64
		for _, v := range row {
			vr += (v - mu) * (v - mu)
		}
		vr /= float64(d)
		rs := 1 / math.Sqrt(vr+eps)
		rstd[r] = rs
		xh := xhat[r*d : (r+1)*d]
		yr := y[r*d : (r+1)*d]
		for j, v := range row {
			xh[j] = (v - mu) * rs
			yr[j] = g[j]*xh[j] + b[j]
		}
	}
}

// GELU (erf form, approx.GELUExact): gelu(x) = x·Φ(x), gelu'(x) = Φ(x) + x·φ(x).
var invSqrt2Pi = 1 / math.Sqrt(2*math.Pi)

// attnBlock is the row-block size of the causal attention products: a block
// of query rows [r0, r1) only multiplies keys [0, r1), which skips most of the
// masked upper triangle. (A variable so that tests can exercise several
// blocks on tiny sequences.)
var attnBlock = 32

// entropyEps is the ε inside log(a + ε) of the head entropy (design notes).
const entropyEps = 1e-9

func (ws *Workspace) forward(p *Params, inputs [][]int, B, T int) {
	ws.rangeSum, ws.scoreMax, ws.meanSum = 0, 0, 0
	cfg := p.Config
	d, H, V := cfg.Dim, cfg.Heads, cfg.Vocab
	dk := d / H
	N := B * T
	x := ws.xs[0][:N*d]
	for b, seq := range inputs {
		for i, tok := range seq {
			r := (b*T + i) * d
			e := p.wte.Data[tok*d : (tok+1)*d]
			pe := p.wpe.Data[i*d : (i+1)*d]
			for j := 0; j < d; j++ {
				x[r+j] = e[j] + pe[j]
			}
		}
	}
	invSqrt := 1 / math.Sqrt(float64(dk))
	for l := range p.blocks {
		blk := &p.blocks[l]
		a := &ws.acts[l]
		x := ws.xs[l][:N*d]
		h1 := x
		if cfg.LayerNorm {
			layerNorm(x, N, d, blk.ln1g.Data, blk.ln1b.Data, cfg.LNEps, a.xhat1, a.rstd1, a.h1)
			h1 = a.h1[:N*d]
		}
		qkv := a.qkv[:N*3*d]
		linearFwd(h1, N, d, 3*d, ws.eff[l][linAttn], biasOf(blk.lin[linAttn]), qkv)

		// Causal softmax attention per sequence and head.
		ent := ws.ent[l]
		clear(ent)
		TT := T * T
		for h := 0; h < H; h++ {
			c := ws.coef[:T]
			for i := range c {
				c[i] = invSqrt
				if blk.temp != nil {
					c[i] = invSqrt * math.Exp(-blk.temp.Data[h*cfg.Context+i])
				}
			}
			for b := 0; b < B; b++ {
				base := b * T * 3 * d
				S := a.S[(b*H+h)*TT : (b*H+h+1)*TT]
				A := a.A[(b*H+h)*TT : (b*H+h+1)*TT]
				Q, K, Vv := qkv[base+h*dk:], qkv[base+d+h*dk:], qkv[base+2*d+h*dk:]
				// S = Q·Kᵀ by row blocks: rows [r0, r1) need keys [0, r1).
				for r0 := 0; r0 < T; r0 += attnBlock {
					r1 := min(r0+attnBlock, T)
					gemm(false, true, r1-r0, r1, dk, 1, Q[r0*3*d:], 3*d, K, 3*d, 0, S[r0*T:], T)
				}
				var es float64
				for i := 0; i < T; i++ {
					srow := S[i*T : i*T+i+1]
					arow := A[i*T : (i+1)*T]
					m := math.Inf(-1)
					for j := range srow {
						srow[j] *= c[i]
						m = max(m, srow[j])
					}
					ws.observeScores(p, srow)
					var s float64
					for j, v := range srow {
						e := math.Exp(v - m)
						arow[j] = e
						s += e
					}
					ws.observeMean(p, m+math.Log(s/float64(len(srow))))
					for j := range srow {
						arow[j] /= s
						es -= arow[j] * math.Log(arow[j]+entropyEps)
					}
					clear(arow[i+1:])
				}
				ent[h] += es
				Y := a.y[b*T*d+h*dk:]
				for r0 := 0; r0 < T; r0 += attnBlock {
					r1 := min(r0+attnBlock, T)
					gemm(false, false, r1-r0, dk, r1, 1, A[r0*T:], T, Vv, 3*d, 0, Y[r0*d:], d)
				}
			}
		}

		xh := a.xh[:N*d]
		linearFwd(a.y[:N*d], N, d, d, ws.eff[l][linProj], biasOf(blk.lin[linProj]), xh)
		for i, v := range x {
			xh[i] += v
		}
		h2 := xh
		if cfg.LayerNorm {
			layerNorm(xh, N, d, blk.ln2g.Data, blk.ln2b.Data, cfg.LNEps, a.xhat2, a.rstd2, a.h2)
			h2 = a.h2[:N*d]
		}
		f := a.f[:N*d]
		if cfg.FusedFFN {
			linearFwd(h2, N, d, d, ws.eff[l][linFused], biasOf(blk.lin[linFused]), f)
		} else {
			hid := cfg.FFNHidden
			u := a.u[:N*hid]
			linearFwd(h2, N, d, hid, ws.eff[l][linFC], biasOf(blk.lin[linFC]), u)
			act := a.a[:N*hid]
			switch cfg.Activation {
			case model.ActGELU:
				cdf := a.cdf[:N*hid]
				for i, v := range u {
					cdf[i] = 0.5 * (1 + math.Erf(v/math.Sqrt2))
					act[i] = v * cdf[i]
				}
			case model.ActReLU:
				for i, v := range u {
					act[i] = max(v, 0)
				}
			}
			linearFwd(act, N, hid, d, ws.eff[l][linOut], biasOf(blk.lin[linOut]), f)
		}
		out := ws.xs[l+1][:N*d]
		if cfg.FFNScaling {
			al, be := blk.alpha.Data[0], blk.beta.Data[0]
			for i := range out {
				out[i] = be*xh[i] + f[i]/al
			}
		} else {
			for i := range out {
				out[i] = xh[i] + f[i]
			}
		}
	}
	xl := ws.xs[len(p.blocks)][:N*d]
	z := ws.zf[:N*d]
	switch cfg.FinalNorm {
	case model.FinalLayerNorm:
		layerNorm(xl, N, d, p.lnfg.Data, p.lnfb.Data, cfg.LNEps, ws.xhatf, ws.rstdf, z)
	case model.FinalScale:
		s := p.fscale.Data[0]
		for i, v := range xl {
			z[i] = s * v
		}
	default:
		copy(z, xl)
	}
	gemm(false, true, N, V, d, 1, z, d, p.wte.Data, d, 0, ws.logits[:N*V], V)
}

func biasOf(lin *linear) []float64 {
	if lin == nil || lin.b == nil {
		return nil
	}
	return lin.b.Data
}
