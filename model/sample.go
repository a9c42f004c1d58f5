package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// SampleOptions choose how the next token is drawn from logits.
type SampleOptions struct {
	// Temperature divides the logits; 0 means greedy (argmax).
	Temperature float64
	// TopK keeps only the K most likely tokens (0: all).
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches P (nucleus sampling; 0 or 1: all).
	TopP float64
}

// Sampler draws tokens from logits, deterministically for a seed (PCG).
type Sampler struct {
	opt   SampleOptions
	rng   *rand.Rand
	idx   []int
	probs []float64
}

// NewSampler validates the options and seeds the generator.
func NewSampler(opt SampleOptions, seed uint64) (*Sampler, error) {
	switch {
	case opt.Temperature < 0 || math.IsNaN(opt.Temperature) || math.IsInf(opt.Temperature, 0):
		return nil, fmt.Errorf("sample: temperature %g must be finite and ≥ 0", opt.Temperature)
	case opt.TopK < 0:
		return nil, fmt.Errorf("sample: top-k %d must be ≥ 0", opt.TopK)
	case opt.TopP < 0 || opt.TopP > 1 || math.IsNaN(opt.TopP):
		return nil, fmt.Errorf("sample: top-p %g must lie in [0, 1]", opt.TopP)
	}
	return &Sampler{opt: opt, rng: rand.New(rand.NewPCG(seed, 0x73616d706c65))}, nil
}

// Sample returns the next token. Non-finite logits (NaN from a diverging
// approximation) count as impossible; if no token is possible it fails.
func (s *Sampler) Sample(logits []float64) (int, error) {
	m, arg := math.Inf(-1), -1
	for i, v := range logits {
		if !math.IsNaN(v) && !math.IsInf(v, 0) && v > m {
			m, arg = v, i
		}
	}
	if arg < 0 {
		return 0, fmt.Errorf("sample: no finite logit among %d", len(logits))
	}
	if s.opt.Temperature == 0 {
		return arg, nil
	}
	// Probabilities at temperature T, most likely first (ties by index).
	s.idx, s.probs = s.idx[:0], s.probs[:0]
	for i, v := range logits {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		s.idx = append(s.idx, i)
		s.probs = append(s.probs, math.Exp((v-m)/s.opt.Temperature))
	}
	sort.Sort(byProb{s.idx, s.probs})
	n := len(s.idx)
	if s.opt.TopK > 0 && s.opt.TopK < n {
		n = s.opt.TopK
	}
	var total float64
	for _, p := range s.probs[:n] {
		total += p
	}
	if s.opt.TopP > 0 && s.opt.TopP < 1 { // on the top-k distribution, as in Hugging Face
		var cum float64
		for k, p := range s.probs[:n] {
			cum += p
			if cum >= s.opt.TopP*total {
				n, total = k+1, cum
				break
			}
		}
	}
	u := s.rng.Float64() * total
	for k, p := range s.probs[:n] {
		if u < p {
			return s.idx[k], nil
		}
		u -= p
	}
	return s.idx[n-1], nil // rounding
}

type byProb struct {
	idx   []int
	probs []float64
}

func (b byProb) Len() int { return len(b.idx) }
func (b byProb) Less(i, j int) bool {
	return b.probs[i] > b.probs[j] || (b.probs[i] == b.probs[j] && b.idx[i] < b.idx[j])
}
func (b byProb) Swap(i, j int) {
	b.idx[i], b.idx[j] = b.idx[j], b.idx[i]
	b.probs[i], b.probs[j] = b.probs[j], b.probs[i]
}

// Generate resets the session, prefills the prompt and samples up to n
// tokens, feeding each back through the key/value cache. emit, when non-nil,
// receives each token as it is drawn (streaming); an error from emit stops
// generation. Generation also stops when the context window is full: at most
// Context − len(prompt) + 1 tokens are drawn.
func Generate(s *Session, prompt []int, n int, smp *Sampler, emit func(token int) error) ([]int, error) {
	s.Reset()
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: empty prompt")
	}
	l, err := s.Prefill(prompt)
	if err != nil {
		return nil, err
	}
	r, _ := l.Dims()
	logits := l.RawRowView(r - 1)
	var out []int
	for len(out) < n {
		tok, err := smp.Sample(logits)
		if err != nil {
			return out, err
		}
		out = append(out, tok)
		if emit != nil {
			if err := emit(tok); err != nil {
				return out, err
			}
		}
		if len(out) == n || s.Pos() >= s.W.Config.Context {
			break
		}
		if logits, err = s.Step(tok); err != nil {
			return out, err
		}
	}
	return out, nil
}
