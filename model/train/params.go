package train

import (
	"errors"

	"github.com/entropi-ai/entropi/model"
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
}

// DefaultGamma is the design notes' tolerance margin γ.
const DefaultGamma = 0.2

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
	Grad  []float64 // a spare buffer of len(Data) for the optimizer's use; ForwardBackward writes into Workspace grads
	Decay bool      // AdamW weight decay applies
}

// Params is the whole trainable state.
type Params struct {
	Config model.Config
	Opts   Options
	List   []*Param // stable order

	// TODO: index of parameters per block, spectral power-iteration vectors.
}

// NewParams initializes parameters consistently with model.NewRandom
// (unit-scale embeddings and 1/√d attention init for LayerNorm-free models).
func NewParams(cfg model.Config, opts Options, seed uint64) (*Params, error) {
	return nil, errors.New("train: NewParams not implemented yet")
}

// FromWeights builds parameters from exported weights (fine-tuning, resume).
func FromWeights(w *model.Weights, opts Options) (*Params, error) {
	return nil, errors.New("train: FromWeights not implemented yet")
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

// UpdateSpectral advances the spectral-normalization power iteration by one
// step (no-op without Opts.SpectralNorm). Call it after each optimizer update,
// when no ForwardBackward runs concurrently.
func (p *Params) UpdateSpectral() {}
