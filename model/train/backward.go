package train

import (
	"math"

	"github.com/entropi-ai/entropi/model"
)

// backward propagates dL/dlogits (in ws.logits) and dL/dE(l,h) (dE) to every
// parameter gradient. Reparametrized block matrices receive the gradient with
// respect to their effective weight in ws.effG; finishReparam maps it back.
func (ws *Workspace) backward(p *Params, inputs [][]int, B, T int, dE [][]float64) {
	cfg := p.Config
	d, H, V := cfg.Dim, cfg.Heads, cfg.Vocab
	dk := d / H
	N := B * T
	L := len(p.blocks)
	dlog := ws.logits[:N*V]
	z := ws.zf[:N*d]

	// LM head (tied): logits = z·wteᵀ.
	gwte := ws.grads[p.wte.idx]
	gemm(true, false, V, d, N, 1, dlog, V, z, d, 1, gwte, d)
	dz := ws.dh[:N*d]
	gemm(false, false, N, d, V, 1, dlog, V, p.wte.Data, d, 0, dz, d)

	g := ws.dx[:N*d] // dL/d(residual stream) at the current boundary
	xl := ws.xs[L][:N*d]
	switch cfg.FinalNorm {
	case model.FinalLayerNorm:
		clear(g)
		layerNormBwd(dz, N, d, p.lnfg.Data, ws.xhatf, ws.rstdf, ws.grads[p.lnfg.idx], ws.grads[p.lnfb.idx], g)
	case model.FinalScale:
		s := p.fscale.Data[0]
		var ds float64
		for i, v := range dz {
			ds += v * xl[i]
			g[i] = s * v
		}
		ws.grads[p.fscale.idx][0] += ds
	default:
		copy(g, dz)
	}

	invSqrt := 1 / math.Sqrt(float64(dk))
	for l := L - 1; l >= 0; l-- {
		blk := &p.blocks[l]
		a := &ws.acts[l]
		x := ws.xs[l][:N*d]
		xh := a.xh[:N*d]
		f := a.f[:N*d]
		dxh := ws.dxh[:N*d]
		df := g
		if cfg.FFNScaling {
			al, be := blk.alpha.Data[0], blk.beta.Data[0]
			var dal, dbe float64
			df = ws.dy[:N*d]
			for i, v := range g {
				dbe += v * xh[i]
				dal += v * f[i]
				dxh[i] = be * v
				df[i] = v / al
			}
			ws.grads[blk.alpha.idx][0] -= dal / (al * al)
			ws.grads[blk.beta.idx][0] += dbe
		} else {
			copy(dxh, g)
		}

		// FFN.
		h2 := xh
		if cfg.LayerNorm {
			h2 = a.h2[:N*d]
		}
		dh2 := ws.dh[:N*d]
		if cfg.FusedFFN {
			ws.linearBwd(p, l, linFused, h2, df, N, dh2)
		} else {
			hid := cfg.FFNHidden
			du := ws.du[:N*hid]
			ws.linearBwd(p, l, linOut, a.a[:N*hid], df, N, du)
			u := a.u[:N*hid]
			switch cfg.Activation {
			case model.ActGELU:
				cdf := a.cdf[:N*hid]
				for i, v := range u {
					du[i] *= cdf[i] + v*math.Exp(-0.5*v*v)*invSqrt2Pi
				}
			case model.ActReLU:
				for i, v := range u {
					if v <= 0 {
						du[i] = 0
					}
				}
			}
			ws.linearBwd(p, l, linFC, h2, du, N, dh2)
		}
		if cfg.LayerNorm {
			layerNormBwd(dh2, N, d, blk.ln2g.Data, a.xhat2, a.rstd2, ws.grads[blk.ln2g.idx], ws.grads[blk.ln2b.idx], dxh)
		} else {
			for i, v := range dh2 {
				dxh[i] += v
			}
		}

		// Attention output projection.
		dy := ws.dy[:N*d]
		ws.linearBwd(p, l, linProj, a.y[:N*d], dxh, N, dy)

		// Attention core.
		qkv := a.qkv[:N*3*d]
		dqkv := ws.dqkv[:N*3*d]
		TT := T * T
		var gtemp []float64
		if blk.temp != nil {
			gtemp = ws.grads[blk.temp.idx]
		}
		invBT := 1 / float64(B*T)
		for h := 0; h < H; h++ {
			c := ws.coef[:T]
			for i := range c {
				c[i] = invSqrt
				if blk.temp != nil {
					c[i] = invSqrt * math.Exp(-blk.temp.Data[h*cfg.Context+i])
				}
			}
			ce := dE[l][h] * invBT
			for b := 0; b < B; b++ {
				base := b * T * 3 * d
				S := a.S[(b*H+h)*TT : (b*H+h+1)*TT]
				A := a.A[(b*H+h)*TT : (b*H+h+1)*TT]
				dYh := dy[b*T*d+h*dk:]
				dA := ws.dA[:TT]
				// dA = dY·Vᵀ, dV = Aᵀ·dY.
				Q, K, Vv := qkv[base+h*dk:], qkv[base+d+h*dk:], qkv[base+2*d+h*dk:]
				dQ, dK, dV := dqkv[base+h*dk:], dqkv[base+d+h*dk:], dqkv[base+2*d+h*dk:]
				// By row blocks [r0, r1) (keys [0, r1)); the last block, which
				// covers every key row, goes first and overwrites dK, dV.
				for r0 := (T - 1) / attnBlock * attnBlock; r0 >= 0; r0 -= attnBlock {
					r1 := min(r0+attnBlock, T)
					beta := 1.0
					if r1 == T {
						beta = 0
					}
					gemm(false, true, r1-r0, r1, dk, 1, dYh[r0*d:], d, Vv, 3*d, 0, dA[r0*T:], T)
					gemm(true, false, r1, dk, r1-r0, 1, A[r0*T:], T, dYh[r0*d:], d, beta, dV, 3*d)
				}
				for i := 0; i < T; i++ {
					arow := A[i*T : i*T+i+1]
					drow := dA[i*T : (i+1)*T]
					if ce != 0 {
						for j, av := range arow {
							drow[j] -= ce * (math.Log(av+entropyEps) + av/(av+entropyEps))
						}
					}
					var rho float64
					for j, av := range arow {
						rho += av * drow[j]
					}
					srow := S[i*T : i*T+i+1]
					var dt float64
					gm := ws.meanGrad(p, srow, arow, B, T)
					for j, av := range arow {
						ds := av*(drow[j]-rho+gm) + ws.scoreGrad(p, srow[j], B, T)
						dt -= srow[j] * ds
						drow[j] = c[i] * ds
					}
					clear(drow[i+1:])
					if gtemp != nil {
						gtemp[h*cfg.Context+i] += dt
					}
				}
				// dQ = dR·K, dK = dRᵀ·Q.
				for r0 := (T - 1) / attnBlock * attnBlock; r0 >= 0; r0 -= attnBlock {
					r1 := min(r0+attnBlock, T)
					beta := 1.0
					if r1 == T {
						beta = 0
					}
					gemm(false, false, r1-r0, dk, r1, 1, dA[r0*T:], T, K, 3*d, 0, dQ[r0*3*d:], 3*d)
					gemm(true, false, r1, dk, r1-r0, 1, dA[r0*T:], T, Q[r0*3*d:], 3*d, beta, dK, 3*d)
				}
			}
		}

		h1 := x
		if cfg.LayerNorm {
			h1 = a.h1[:N*d]
		}
		dh1 := ws.dh[:N*d]
		ws.linearBwd(p, l, linAttn, h1, dqkv, N, dh1)
		// g becomes dL/dx at the block input.
		copy(g, dxh)
		if cfg.LayerNorm {
			layerNormBwd(dh1, N, d, blk.ln1g.Data, a.xhat1, a.rstd1, ws.grads[blk.ln1g.idx], ws.grads[blk.ln1b.idx], g)
		} else {
			for i, v := range dh1 {
				g[i] += v
			}
		}
	}

	// Embeddings.
	gwpe := ws.grads[p.wpe.idx]
	for b, seq := range inputs {
		for i, tok := range seq {
			r := g[(b*T+i)*d : (b*T+i+1)*d]
			we := gwte[tok*d : (tok+1)*d]
			pe := gwpe[i*d : (i+1)*d]
			for j, v := range r {
				we[j] += v
				pe[j] += v
			}
		}
	}
}

// linearBwd for y = x·W + b: accumulates dW (effective weight) and db, and
// writes dx = dy·Wᵀ (overwriting).
func (ws *Workspace) linearBwd(p *Params, l, kind int, x, dy []float64, N int, dx []float64) {
	lin := p.blocks[l].lin[kind]
	in, out := lin.in, lin.out
	gemm(true, false, in, out, N, 1, x, in, dy, out, 1, ws.effG[l][kind], out)
	if lin.b != nil {
		gb := ws.grads[lin.b.idx]
		for r := 0; r < N; r++ {
			for j, v := range dy[r*out : (r+1)*out] {
				gb[j] += v
			}
		}
	}
	gemm(false, true, N, in, out, 1, dy, out, ws.eff[l][kind], out, 0, dx, in)
}

// layerNormBwd accumulates dg, db and adds dL/dx into dx.
func layerNormBwd(dy []float64, N, d int, g, xhat, rstd, dg, db, dx []float64) {
	for r := 0; r < N; r++ {
		dyr := dy[r*d : (r+1)*d]
		xh := xhat[r*d : (r+1)*d]
		var m1, m2 float64
		for j, v := range dyr {
			dg[j] += v * xh[j]
			db[j] += v
			t := v * g[j]
			m1 += t
			m2 += t * xh[j]
		}
		m1 /= float64(d)
		m2 /= float64(d)
		dxr := dx[r*d : (r+1)*d]
		for j, v := range dyr {
			dxr[j] += rstd[r] * (v*g[j] - m1 - xh[j]*m2)
		}
	}
}

// finishReparam maps the gradient with respect to the effective block
// matrices back to the reparametrization's parameters.
func (ws *Workspace) finishReparam(p *Params) {
	if !p.Opts.WeightNorm && !p.Opts.SpectralNorm {
		return
	}
	for l, b := range p.blocks {
		for k, lin := range b.lin {
			if lin == nil {
				continue
			}
			G := ws.effG[l][k]
			V := lin.w.Data
			gV := ws.grads[lin.w.idx]
			in, out := lin.in, lin.out
			if p.Opts.WeightNorm {
				// W[:,j] = g_j·V[:,j]/n_j.
				g := lin.g.Data
				gg := ws.grads[lin.g.idx]
				n := columnNorms(V, in, out)
				dg := make([]float64, out)
				for i := 0; i < in; i++ {
					for j := 0; j < out; j++ {
						dg[j] += G[i*out+j] * V[i*out+j] / n[j]
					}
				}
				for i := 0; i < in; i++ {
					for j := 0; j < out; j++ {
						gV[i*out+j] += g[j] / n[j] * (G[i*out+j] - V[i*out+j]/n[j]*dg[j])
					}
				}
				for j := range dg {
					gg[j] += dg[j]
				}
				continue
			}
			// W = s·V/σ(V), σ = ‖V·v‖, v = Vᵀu/‖Vᵀu‖.
			sc := ws.sn[l][k]
			s := lin.s.Data[0]
			var gv float64
			for i, w := range G {
				gv += w * V[i]
			}
			ds := gv / sc.sigma
			ws.grads[lin.s.idx][0] += ds
			gsig := -s * ds / sc.sigma
			// gz = (I − v·vᵀ)·(Vᵀ·û)/‖z‖.
			vtu := make([]float64, out)
			for i := 0; i < in; i++ {
				ui := sc.uh[i]
				for j, w := range V[i*out : (i+1)*out] {
					vtu[j] += ui * w
				}
			}
			var dot float64
			for j := range vtu {
				dot += vtu[j] * sc.v[j]
			}
			for j := range vtu {
				vtu[j] = (vtu[j] - dot*sc.v[j]) / sc.zn
			}
			u := lin.u
			for i := 0; i < in; i++ {
				for j := 0; j < out; j++ {
					gV[i*out+j] += s/sc.sigma*G[i*out+j] + gsig*(sc.uh[i]*sc.v[j]+u[i]*vtu[j])
				}
			}
		}
	}
}
