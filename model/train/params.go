package train

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/entropi-ai/entropi/model"
	"gonum.org/v1/gonum/mat"
)

// Options selects the training-only parts of the objective and the
// training-time reparametrizations of the block matrices.
type Options struct {
	// EntropyReg adds λ·L_ent (design notes §1) to the loss; the per-head
	// thresholds θ become parameters.
	EntropyReg bool
	Lambda     float64 // λ
	Gamma      float64 // tolerance γ of the two-sided margin; 0 means the default 0.2
	// WeightNorm and SpectralNorm reparametrize the linear weights of every
	// block (zero inference cost: folded at export). They are exclusive.
	WeightNorm   bool
	SpectralNorm bool
	// ScorePenalty μ > 0 adds μ·L_range, a penalty on attention scores
	// outside [−ScoreBound, ScoreBound] (range.go): CKKS evaluates exp and
	// the softmax's reciprocal as polynomials on a fixed range, with no max
	// subtraction, so the scores must stay in a range known in advance.
	ScorePenalty float64 `json:",omitempty"`
	ScoreBound   float64 `json:",omitempty"`
	// MeanPenalty ν > 0 adds ν·L_mean, a penalty on each attention row's
	// log mean exp-score outside [−MeanBound, MeanBound] (range.go): the
	// encrypted softmax divides by the mean exp-score with a Newton
	// reciprocal whose step count grows with the ratio of that mean's
	// range.
	MeanPenalty float64 `json:",omitempty"`
	MeanBound   float64 `json:",omitempty"`
}

// DefaultGamma is the design notes' tolerance margin γ.
const DefaultGamma = 0.2

// DefaultThreshold is the initial entropy threshold weight θ when the
// weights carry none.
const DefaultThreshold = 0.5

func (o Options) gamma() float64 {
	if o.Gamma == 0 {
		return DefaultGamma
	}
	return o.Gamma
}

// Param is one trainable tensor, row-major.
type Param struct {
	Name  string
	Shape []int
	Data  []float64
	// Grad is a buffer of len(Data) owned by the caller (e.g. the reduced
	// gradient of several workspaces); ForwardBackward writes into the
	// workspace's own buffers (Workspace.Grads), never here.
	Grad  []float64
	Decay bool // AdamW weight decay applies

	idx int // position in Params.List
}

// Linear-layer kinds inside a block, in order.
const (
	linAttn = iota
	linProj
	linFC
	linOut
	linFused
	numLin
)

var linNames = [numLin]string{"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "mlp.c_fused"}

// linear is one block matrix [in, out] with its reparametrization.
type linear struct {
	in, out int
	w       *Param    // the weight (plain) or its direction V (weight/spectral norm)
	g       *Param    // weight-norm gains [out]
	s       *Param    // spectral-norm scale [1]
	u       []float64 // spectral-norm power-iteration vector [in]
	b       *Param    // bias [out] (cfg.Bias)
}

type blockParams struct {
	ln1g, ln1b, ln2g, ln2b *Param
	lin                    [numLin]*linear // nil where the configuration has no such matrix
	temp                   *Param          // τ [heads, context]; t = exp(τ)
	alpha, beta            *Param          // [1] each
	theta                  *Param          // [heads]
	threshold              []float64       // θ carried through from the weights when θ is not trained
}

// Params is the whole trainable state.
type Params struct {
	Config model.Config
	Opts   Options
	List   []*Param // stable order

	wte, wpe   *Param
	blocks     []blockParams
	lnfg, lnfb *Param
	fscale     *Param
}

func (o Options) validate() error {
	if o.WeightNorm && o.SpectralNorm {
		return errors.New("train: weight normalization and spectral normalization are exclusive")
	}
	if o.EntropyReg && (o.Lambda < 0 || math.IsNaN(o.Lambda)) {
		return fmt.Errorf("train: entropy regularization needs λ ≥ 0 (got %v)", o.Lambda)
	}
	if g := o.gamma(); g < 0 || math.IsNaN(g) {
		return fmt.Errorf("train: tolerance γ must be ≥ 0 (got %v)", g)
	}
	return nil
}

// NewParams initializes parameters exactly as model.NewRandom (unit-scale
// embeddings and 1/√d attention init for LayerNorm-free models), then
// applies the reparametrizations so that the effective weights equal that
// initialization.
func NewParams(cfg model.Config, opts Options, seed uint64) (*Params, error) {
	w, err := model.NewRandom(cfg, seed)
	if err != nil {
		return nil, err
	}
	return FromWeights(w, opts)
}

func (p *Params) add(name string, decay bool, data []float64, shape ...int) *Param {
	n := 1
	for _, s := range shape {
		n *= s
	}
	if len(data) != n {
		panic(fmt.Sprintf("train: %s: %d values for shape %v", name, len(data), shape))
	}
	q := &Param{Name: name, Shape: shape, Data: append([]float64(nil), data...), Grad: make([]float64, n), Decay: decay, idx: len(p.List)}
	p.List = append(p.List, q)
	return q
}

func denseData(m *mat.Dense) []float64 {
	r, c := m.Dims()
	out := make([]float64, 0, r*c)
	for i := 0; i < r; i++ {
		out = append(out, m.RawRowView(i)...)
	}
	return out
}

// FromWeights builds parameters from exported (or freshly initialized)
// weights, for fine-tuning and resuming. Reparametrizations start at the
// given effective weights: weight-norm gains are the column norms, the
// spectral scale is σ(W) after 30 power iterations. An exported entropy-
// guided model (Alpha = 1, Beta = 0, folded fused matrix) keeps those values:
// the function is preserved, the parametrization is the folded one.
func FromWeights(w *model.Weights, opts Options) (*Params, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if err := w.CheckShapes(); err != nil {
		return nil, err
	}
	cfg := w.Config
	d, H := cfg.Dim, cfg.Heads
	p := &Params{Config: cfg, Opts: opts}
	p.wte = p.add("wte.weight", false, denseData(w.Wte), cfg.Vocab, d)
	p.wpe = p.add("wpe.weight", false, denseData(w.Wpe), cfg.Context, d)
	for l := range w.Blocks {
		wb := &w.Blocks[l]
		pre := fmt.Sprintf("h.%d.", l)
		var b blockParams
		if cfg.LayerNorm {
			b.ln1g = p.add(pre+"ln_1.weight", false, wb.LN1G, d)
			b.ln1b = p.add(pre+"ln_1.bias", false, wb.LN1B, d)
		}
		b.lin[linAttn] = p.addLinear(pre+linNames[linAttn], l, linAttn, wb.Attn, wb.AttnBias)
		b.lin[linProj] = p.addLinear(pre+linNames[linProj], l, linProj, wb.Proj, wb.ProjBias)
		if cfg.Temperature {
			t := denseData(wb.Temp)
			for i, v := range t {
				if !(v > 0) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("train: block %d: temperature %v is not positive and finite", l, v)
				}
				t[i] = math.Log(v)
			}
			b.temp = p.add(pre+"attn.log_temperature", false, t, H, cfg.Context)
		}
		if len(wb.Threshold) == H {
			b.threshold = append([]float64(nil), wb.Threshold...)
		}
		if opts.EntropyReg {
			th := make([]float64, H)
			for h := range th {
				th[h] = DefaultThreshold
				if len(wb.Threshold) == H {
					th[h] = wb.Threshold[h]
				}
			}
			b.theta = p.add(pre+"attn.entropy_threshold", false, th, H)
		}
		if cfg.LayerNorm {
			b.ln2g = p.add(pre+"ln_2.weight", false, wb.LN2G, d)
			b.ln2b = p.add(pre+"ln_2.bias", false, wb.LN2B, d)
		}
		if cfg.FusedFFN {
			b.lin[linFused] = p.addLinear(pre+linNames[linFused], l, linFused, wb.Fused, wb.FusedBias)
		} else {
			b.lin[linFC] = p.addLinear(pre+linNames[linFC], l, linFC, wb.FC, wb.FCBias)
			b.lin[linOut] = p.addLinear(pre+linNames[linOut], l, linOut, wb.Out, wb.OutBias)
		}
		if cfg.FFNScaling {
			b.alpha = p.add(pre+"mlp.alpha", false, []float64{wb.Alpha}, 1)
			b.beta = p.add(pre+"mlp.beta", false, []float64{wb.Beta}, 1)
		}
		p.blocks = append(p.blocks, b)
	}
	switch cfg.FinalNorm {
	case model.FinalLayerNorm:
		p.lnfg = p.add("ln_f.weight", false, w.LNFG, d)
		p.lnfb = p.add("ln_f.bias", false, w.LNFB, d)
	case model.FinalScale:
		p.fscale = p.add("final_scale", false, []float64{w.FinalScale}, 1)
	}
	return p, nil
}

func (p *Params) addLinear(name string, layer, kind int, W *mat.Dense, bias []float64) *linear {
	in, out := W.Dims()
	data := denseData(W)
	lin := &linear{in: in, out: out}
	switch {
	case p.Opts.WeightNorm:
		g := make([]float64, out)
		for j := 0; j < out; j++ {
			var s float64
			for i := 0; i < in; i++ {
				s += data[i*out+j] * data[i*out+j]
			}
			g[j] = math.Sqrt(s)
		}
		lin.w = p.add(name+".weight_v", true, data, in, out)
		lin.g = p.add(name+".weight_g", false, g, out)
	case p.Opts.SpectralNorm:
		lin.w = p.add(name+".weight_v", true, data, in, out)
		rng := rand.New(rand.NewPCG(uint64(layer)*numLin+uint64(kind)+1, 0x73706563))
		lin.u = make([]float64, in)
		for i := range lin.u {
			lin.u[i] = rng.NormFloat64()
		}
		normalize(lin.u)
		for it := 0; it < 30; it++ {
			powerStep(lin.w.Data, in, out, lin.u)
		}
		sig, _, _, _ := spectral(lin.w.Data, in, out, lin.u)
		lin.s = p.add(name+".weight_s", false, []float64{sig}, 1)
	default:
		lin.w = p.add(name+".weight", true, data, in, out)
	}
	if p.Config.Bias {
		lin.b = p.add(name+".bias", false, bias, out)
	}
	return lin
}

// Lookup returns the parameter with the given name, or nil.
func (p *Params) Lookup(name string) *Param {
	for _, q := range p.List {
		if q.Name == name {
			return q
		}
	}
	return nil
}

// NumValues is the total number of trainable scalars.
func (p *Params) NumValues() int {
	n := 0
	for _, q := range p.List {
		n += len(q.Data)
	}
	return n
}

// UpdateSpectral advances the spectral-normalization power iteration by one
// step (no-op without Opts.SpectralNorm). Call it after each optimizer update,
// when no ForwardBackward runs concurrently.
func (p *Params) UpdateSpectral() {
	for _, b := range p.blocks {
		for _, lin := range b.lin {
			if lin != nil && lin.u != nil {
				powerStep(lin.w.Data, lin.in, lin.out, lin.u)
			}
		}
	}
}

// Clone returns a deep copy (parameters and spectral state).
func (p *Params) Clone() *Params {
	c := &Params{Config: p.Config, Opts: p.Opts}
	m := map[*Param]*Param{}
	for _, q := range p.List {
		n := &Param{Name: q.Name, Shape: append([]int(nil), q.Shape...), Data: append([]float64(nil), q.Data...),
			Grad: make([]float64, len(q.Data)), Decay: q.Decay, idx: q.idx}
		m[q] = n
		c.List = append(c.List, n)
	}
	c.wte, c.wpe, c.lnfg, c.lnfb, c.fscale = m[p.wte], m[p.wpe], m[p.lnfg], m[p.lnfb], m[p.fscale]
	for _, b := range p.blocks {
		nb := blockParams{ln1g: m[b.ln1g], ln1b: m[b.ln1b], ln2g: m[b.ln2g], ln2b: m[b.ln2b],
			temp: m[b.temp], alpha: m[b.alpha], beta: m[b.beta], theta: m[b.theta], threshold: b.threshold}
		for k, lin := range b.lin {
			if lin == nil {
				continue
			}
			nl := *lin
			nl.w, nl.g, nl.s, nl.b = m[lin.w], m[lin.g], m[lin.s], m[lin.b]
			if lin.u != nil {
				nl.u = append([]float64(nil), lin.u...)
			}
			nb.lin[k] = &nl
		}
		c.blocks = append(c.blocks, nb)
	}
	delete(m, nil)
	return c
}

func normalize(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x * x
	}
	n := math.Sqrt(s)
	if n > 0 {
		for i := range v {
			v[i] /= n
		}
	}
	return n
}

// powerStep replaces u by V·v/‖V·v‖ with v = Vᵀu/‖Vᵀu‖ (V is [in, out]).
func powerStep(V []float64, in, out int, u []float64) {
	_, uh, _, _ := spectral(V, in, out, u)
	copy(u, uh)
}

// spectral evaluates σ(V) = ‖V·v‖, v = z/‖z‖, z = Vᵀu, for a fixed u; it also
// returns û = V·v/σ, v and ‖z‖ for the backward pass.
func spectral(V []float64, in, out int, u []float64) (sigma float64, uh, v []float64, zn float64) {
	v = make([]float64, out)
	for i := 0; i < in; i++ {
		ui := u[i]
		row := V[i*out : (i+1)*out]
		for j, x := range row {
			v[j] += ui * x
		}
	}
	zn = normalize(v)
	uh = make([]float64, in)
	for i := 0; i < in; i++ {
		row := V[i*out : (i+1)*out]
		var s float64
		for j, x := range row {
			s += x * v[j]
		}
		uh[i] = s
	}
	sigma = normalize(uh)
	return sigma, uh, v, zn
}

// Buffer is non-trainable state that a checkpoint must keep for a bit-exact
// resume: the spectral-normalization power-iteration vectors. Data aliases
// the live state (copy into it to restore).
type Buffer struct {
	Name string
	Data []float64
}

// Buffers lists the non-trainable state in a stable order (empty without
// Opts.SpectralNorm).
func (p *Params) Buffers() []Buffer {
	var out []Buffer
	for l, b := range p.blocks {
		for k, lin := range b.lin {
			if lin != nil && lin.u != nil {
				out = append(out, Buffer{Name: fmt.Sprintf("h.%d.%s.weight_u", l, linNames[k]), Data: lin.u})
			}
		}
	}
	return out
}
