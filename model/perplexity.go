package model

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/entropi-ai/entropi/approx"
)

// LogitsFunc returns the logits [len(tokens), vocab] of a fresh sequence at
// positions 0, 1, ...: any backend, including one that decrypts.
type LogitsFunc func(tokens []int) (*mat.Dense, error)

// PlainLogits is the LogitsFunc of a Plain backend (reference or
// approximation): it resets the cache and runs Forward.
func PlainLogits(w *Weights, b *Plain) LogitsFunc {
	return func(tokens []int) (*mat.Dense, error) {
		b.Reset()
		return Forward(w, b, tokens, 0)
	}
}

// PerplexityOptions steer the sliding-window evaluation.
type PerplexityOptions struct {
	// Window is the length of each forward pass (default and maximum: the
	// context length). Stride is how far windows advance, at most Window−1
	// (the default: consecutive windows share one token, so that every token
	// after the first is predicted exactly once). Beyond the first window
	// every prediction sees at least Window − Stride tokens of context.
	Window, Stride int
	// Progress, when non-nil, is called after every window with the number
	// of tokens scored so far and the total to score.
	Progress func(done, total int)
}

// PerplexityResult is a held-out evaluation.
type PerplexityResult struct {
	Tokens    int     // predictions scored (every token but the first)
	NLL       float64 // mean negative log-likelihood, nats per token
	PPL       float64 // exp(NLL)
	NonFinite int     // predictions whose logits were not finite (counted as infinite loss)
}

func (r PerplexityResult) String() string {
	s := fmt.Sprintf("perplexity %.4f (%.4f nats/token over %d tokens)", r.PPL, r.NLL, r.Tokens)
	if r.NonFinite > 0 {
		s += fmt.Sprintf(", %d non-finite predictions", r.NonFinite)
	}
	return s
}

type window struct{ begin, end, from int } // run tokens[begin:end], score targets from..end-1

// windows covers targets 1..n−1 exactly once. A target t is predicted by the
// logits of row t−1−begin.
func windows(n, size, stride int) []window {
	var ws []window
	scored := 1
	for begin := 0; scored < n; begin += stride {
		end := min(begin+size, n)
		ws = append(ws, window{begin, end, max(scored, begin+1)})
		scored = end
	}
	return ws
}

func (o *PerplexityOptions) resolve(cfg Config, n int) error {
	if o.Window == 0 {
		o.Window = cfg.Context
	}
	if o.Stride == 0 {
		o.Stride = o.Window - 1
	}
	switch {
	case o.Window < 2 || o.Window > cfg.Context:
		return fmt.Errorf("perplexity: window %d outside [2, context %d]", o.Window, cfg.Context)
	case o.Stride < 1 || o.Stride >= o.Window:
		return fmt.Errorf("perplexity: stride %d outside [1, window−1 = %d]", o.Stride, o.Window-1)
	case n < 2:
		return fmt.Errorf("perplexity: need at least 2 tokens, got %d", n)
	}
	return nil
}

type nllSum struct {
	sum       float64
	n, nonfin int
}

func (s *nllSum) add(logits *mat.Dense, tokens []int, w window) {
	for t := w.from; t < w.end; t++ {
		row := logits.RawRowView(t - 1 - w.begin)
		l := -logSoftmaxAt(row, tokens[t])
		if math.IsNaN(l) || math.IsInf(l, 0) {
			s.nonfin++
			l = math.Inf(1)
		}
		s.sum += l
		s.n++
	}
}

func (s nllSum) result() PerplexityResult {
	r := PerplexityResult{Tokens: s.n, NonFinite: s.nonfin, NLL: s.sum / float64(s.n)}
	r.PPL = math.Exp(r.NLL)
	return r
}

// logSoftmaxAt returns log softmax(row)[k], computed stably.
func logSoftmaxAt(row []float64, k int) float64 {
	m := math.Inf(-1)
	for _, v := range row {
		m = math.Max(m, v)
	}
	var s float64
	for _, v := range row {
		s += math.Exp(v - m)
	}
	return row[k] - m - math.Log(s)
}

// Perplexity evaluates the model behind logits on a token stream with sliding
// windows (see PerplexityOptions); cfg gives the context length.
func Perplexity(cfg Config, logits LogitsFunc, tokens []int, opt PerplexityOptions) (PerplexityResult, error) {
	if err := opt.resolve(cfg, len(tokens)); err != nil {
		return PerplexityResult{}, err
	}
	var s nllSum
	for _, w := range windows(len(tokens), opt.Window, opt.Stride) {
		l, err := logits(tokens[w.begin:w.end])
		if err != nil {
			return PerplexityResult{}, err
		}
		s.add(l, tokens, w)
		if opt.Progress != nil {
			opt.Progress(s.n, len(tokens)-1)
		}
	}
	return s.result(), nil
}

// ApproxEval compares the exact reference with the HE approximations on the
// same windows.
type ApproxEval struct {
	Exact, Approx PerplexityResult
	// MaxLogitDiff is the largest |logit_approx − logit_exact| over every row.
	MaxLogitDiff float64
	// Ranges holds what the approximation backend's nonlinearities saw and
	// how many inputs fell outside their polynomials' ranges.
	Ranges Ranges
}

// PPLDiff is approximated minus exact perplexity.
func (e *ApproxEval) PPLDiff() float64 { return e.Approx.PPL - e.Exact.PPL }

func (e *ApproxEval) String() string {
	return fmt.Sprintf("exact:  %v\napprox: %v\ndifference %+.4g perplexity (%+.3g%%), max |Δlogit| %.3g, %d range violations\n%v",
		e.Exact, e.Approx, e.PPLDiff(), 100*e.PPLDiff()/e.Exact.PPL, e.MaxLogitDiff, e.Ranges.Violations(), &e.Ranges)
}

// EvalApprox measures held-out perplexity exactly and with the approximation
// set, window by window, and counts range violations.
func EvalApprox(w *Weights, set *approx.Set, tokens []int, opt PerplexityOptions) (*ApproxEval, error) {
	if err := opt.resolve(w.Config, len(tokens)); err != nil {
		return nil, err
	}
	ab, err := NewApprox(w.Config, set)
	if err != nil {
		return nil, err
	}
	exact, approxed := PlainLogits(w, NewReference(w.Config)), PlainLogits(w, ab)
	e := &ApproxEval{}
	var se, sa nllSum
	for _, win := range windows(len(tokens), opt.Window, opt.Stride) {
		le, err := exact(tokens[win.begin:win.end])
		if err != nil {
			return nil, err
		}
		la, err := approxed(tokens[win.begin:win.end])
		if err != nil {
			return nil, err
		}
		se.add(le, tokens, win)
		sa.add(la, tokens, win)
		var d mat.Dense
		d.Sub(la, le)
		for _, v := range d.RawMatrix().Data {
			if v = math.Abs(v); v > e.MaxLogitDiff || math.IsNaN(v) {
				e.MaxLogitDiff = v
			}
		}
		if opt.Progress != nil {
			opt.Progress(se.n, len(tokens)-1)
		}
	}
	e.Exact, e.Approx, e.Ranges = se.result(), sa.result(), *ab.Ranges
	return e, nil
}
