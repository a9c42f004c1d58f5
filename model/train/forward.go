package train

import (
	"errors"
)

// Workspace holds one goroutine's activations, scratch and gradient buffers
// (aligned with Params.List). Params are only read.
type Workspace struct {
	grads [][]float64
}

// NewWorkspace allocates a workspace for batches of up to batch sequences of
// up to seqLen tokens.
func NewWorkspace(p *Params, batch, seqLen int) *Workspace {
	ws := &Workspace{}
	for _, q := range p.List {
		ws.grads = append(ws.grads, make([]float64, len(q.Data)))
	}
	return ws
}

// Result summarizes one ForwardBackward.
type Result struct {
	Loss    float64 // CE + Entropy
	CE      float64 // mean next-token cross-entropy (nats)
	Entropy float64 // λ·L_ent (0 without Opts.EntropyReg)
	// HeadEntropy[l][h] is the mean attention entropy of this batch.
	HeadEntropy [][]float64
	Tokens      int
}

// ForwardBackward computes the mean loss over all targets of the batch and
// writes its gradient into the workspace's gradient buffers (zeroed first).
func (ws *Workspace) ForwardBackward(p *Params, inputs, targets [][]int) (Result, error) {
	return Result{}, errors.New("train: ForwardBackward not implemented yet")
}

// Grads returns the gradient buffers, aligned with Params.List.
func (ws *Workspace) Grads() [][]float64 { return ws.grads }

// Forward returns logits[b][i][v] without gradients.
func (ws *Workspace) Forward(p *Params, inputs [][]int) ([][][]float64, error) {
	return nil, errors.New("train: Forward not implemented yet")
}
