package model

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/approx"
)

// Plain is the float64 backend: activations are *mat.Dense [rows, width]. With
// no approximation set it is the exact reference (softmax with max
// subtraction, exact LayerNorm, erf GELU); NewApprox gives the same backend
// with the HE polynomial approximations (approxbackend.go). It keeps one
// key/value cache per layer; Reset empties it.
type Plain struct {
	cfg        Config
	keys, vals [][]float64 // per layer: cached rows of width d, flattened
	set        *approx.Set // nil: exact nonlinearities
	err        error

	// Ranges, when non-nil, records the input of every nonlinearity (exp:
	// scaled scores; reciprocal: softmax sums; inverse square root: variance
	// + eps; GELU: its inputs) and, for the approximation backend, counts
	// inputs outside the polynomials' ranges.
	Ranges *Ranges
	// OnAttention, when non-nil, receives every attention row: the layer,
	// head and absolute position of the query and its probabilities over
	// positions 0..pos. probs is reused after the call returns.
	OnAttention func(layer, head, pos int, probs []float64)
}

var _ Backend[*mat.Dense] = (*Plain)(nil)

// NewReference returns the exact float64 backend for a configuration.
func NewReference(cfg Config) *Plain {
	return &Plain{cfg: cfg, keys: make([][]float64, cfg.Layers), vals: make([][]float64, cfg.Layers)}
}

// Reset empties the key/value caches and clears a pending error; Ranges
// keep accumulating across sequences.
func (p *Plain) Reset() {
	for l := range p.keys {
		p.keys[l], p.vals[l] = p.keys[l][:0], p.vals[l][:0]
	}
	p.err = nil
}

// Cached returns the number of positions in the key/value cache.
func (p *Plain) Cached() int { return len(p.keys[0]) / p.cfg.Dim }

// Err reports a misuse detected during the last Forward (a cache that does
// not match pos0).
func (p *Plain) Err() error { return p.err }

func (p *Plain) Embed(tokens []int, pos0 int, wte, wpe *mat.Dense) *mat.Dense {
	x := mat.NewDense(len(tokens), p.cfg.Dim, nil)
	for i, t := range tokens {
		row := x.RawRowView(i)
		te, pe := wte.RawRowView(t), wpe.RawRowView(pos0+i)
		for j := range row {
			row[j] = te[j] + pe[j]
		}
	}
	return x
}

func (p *Plain) Linear(_ string, x *mat.Dense, w *mat.Dense, bias []float64) *mat.Dense {
	r, _ := x.Dims()
	_, c := w.Dims()
	y := mat.NewDense(r, c, nil)
	y.Mul(x, w)
	if bias != nil {
		for i := 0; i < r; i++ {
			row := y.RawRowView(i)
			for j := range row {
				row[j] += bias[j]
			}
		}
	}
	return y
}

func (p *Plain) Add(x, y *mat.Dense) *mat.Dense {
	var z mat.Dense
	z.Add(x, y)
	return &z
}

func (p *Plain) Scale(x *mat.Dense, s float64) *mat.Dense {
	var z mat.Dense
	z.Scale(s, x)
	return &z
}

func (p *Plain) LayerNorm(_ string, x *mat.Dense, g, b []float64, eps float64) *mat.Dense {
	r, c := x.Dims()
	y := mat.NewDense(r, c, nil)
	for i := 0; i < r; i++ {
		p.layerNorm(y.RawRowView(i), x.RawRowView(i), g, b, eps)
	}
	return y
}

func (p *Plain) Activate(x *mat.Dense, act string) *mat.Dense {
	r, c := x.Dims()
	y := mat.NewDense(r, c, nil)
	for i := 0; i < r; i++ {
		src, dst := x.RawRowView(i), y.RawRowView(i)
		for j, v := range src {
			dst[j] = p.activate(v, act)
		}
	}
	return y
}

func (p *Plain) Attention(layer int, qkv *mat.Dense, pos0 int, scoreScale *mat.Dense) *mat.Dense {
	d, nh := p.cfg.Dim, p.cfg.Heads
	dk := d / nh
	rows, _ := qkv.Dims()
	out := mat.NewDense(rows, d, nil)
	if cached := len(p.keys[layer]) / d; cached != pos0 && p.err == nil {
		p.err = fmt.Errorf("model: layer %d attention at position %d, but the cache holds %d positions (Reset the backend between sequences)",
			layer, pos0, cached)
	}
	if p.err != nil {
		return out
	}
	for i := 0; i < rows; i++ {
		row := qkv.RawRowView(i)
		p.keys[layer] = append(p.keys[layer], row[d:2*d]...)
		p.vals[layer] = append(p.vals[layer], row[2*d:3*d]...)
	}
	keys, vals := p.keys[layer], p.vals[layer]
	scores := make([]float64, pos0+rows)
	probs := make([]float64, pos0+rows)
	for i := 0; i < rows; i++ {
		pos := pos0 + i
		q := qkv.RawRowView(i)[:d]
		o := out.RawRowView(i)
		for h := 0; h < nh; h++ {
			qh := q[h*dk : (h+1)*dk]
			s := scoreScale.At(h, i)
			for j := 0; j <= pos; j++ {
				kj := keys[j*d+h*dk : j*d+(h+1)*dk]
				var dot float64
				for t, qv := range qh {
					dot += qv * kj[t]
				}
				scores[j] = dot * s
			}
			p.softmax(probs[:pos+1], scores[:pos+1])
			if p.OnAttention != nil {
				p.OnAttention(layer, h, pos, probs[:pos+1])
			}
			oh := o[h*dk : (h+1)*dk]
			for j := 0; j <= pos; j++ {
				vj := vals[j*d+h*dk : j*d+(h+1)*dk]
				a := probs[j]
				for t := range oh {
					oh[t] += a * vj[t]
				}
			}
		}
	}
	return out
}

func (p *Plain) Logits(x *mat.Dense, wte *mat.Dense) *mat.Dense {
	r, _ := x.Dims()
	v, _ := wte.Dims()
	y := mat.NewDense(r, v, nil)
	y.Mul(x, wte.T())
	return y
}

// softmax, layerNorm and activate are the three nonlinearities: exact for the
// reference, approx.Set's polynomials for the approximation backend.

func (p *Plain) softmax(dst, scores []float64) {
	if p.set != nil {
		p.approxSoftmax(dst, scores)
		return
	}
	m := math.Inf(-1)
	for _, v := range scores {
		m = math.Max(m, v)
	}
	var sum float64
	for j, v := range scores {
		dst[j] = math.Exp(v - m)
		sum += dst[j]
	}
	for j := range dst {
		dst[j] /= sum
	}
	if p.Ranges != nil {
		for _, v := range scores {
			p.Ranges.Exp.observe(v)
		}
		p.Ranges.Recip.observe(sum * math.Exp(m) / float64(len(scores))) // the mean HE sees: no max subtraction
	}
}

func (p *Plain) layerNorm(dst, x, g, b []float64, eps float64) {
	if p.set != nil {
		p.approxLayerNorm(dst, x, g, b, eps)
		return
	}
	mu, v2 := meanVar(x)
	if p.Ranges != nil {
		p.Ranges.InvSqrt.observe(v2 + eps)
	}
	r := 1 / math.Sqrt(v2+eps)
	for i, v := range x {
		dst[i] = (v-mu)*r*g[i] + b[i]
	}
}

func (p *Plain) activate(x float64, act string) float64 {
	switch act {
	case ActGELU:
		if p.Ranges != nil {
			p.Ranges.GELU.observe(x)
		}
		if p.set != nil {
			return p.set.GELU.Eval(x)
		}
		return approx.GELUExact(x)
	case ActReLU:
		return math.Max(x, 0)
	}
	return x
}

func meanVar(x []float64) (mu, v2 float64) {
	for _, v := range x {
		mu += v
	}
	mu /= float64(len(x))
	for _, v := range x {
		v2 += (v - mu) * (v - mu)
	}
	return mu, v2 / float64(len(x))
}

// Session runs a model incrementally on a Plain backend: Prefill a prompt,
// then Step one token at a time, reusing the key/value cache.
type Session struct {
	W *Weights
	B *Plain
}

// NewSession returns a session on backend b (nil: a new exact reference).
func NewSession(w *Weights, b *Plain) *Session {
	if b == nil {
		b = NewReference(w.Config)
	}
	return &Session{W: w, B: b}
}

// Pos is the number of tokens processed since the last Reset.
func (s *Session) Pos() int { return s.B.Cached() }

// Reset forgets every processed token.
func (s *Session) Reset() { s.B.Reset() }

// Prefill processes tokens after those already processed and returns the
// logits of every one of them, [len(tokens), vocab].
func (s *Session) Prefill(tokens []int) (*mat.Dense, error) {
	return Forward[*mat.Dense](s.W, s.B, tokens, s.Pos())
}

// Step processes one token and returns the logits that predict the next.
func (s *Session) Step(token int) ([]float64, error) {
	l, err := s.Prefill([]int{token})
	if err != nil {
		return nil, err
	}
	return l.RawRowView(0), nil
}
