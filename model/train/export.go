package train

import (
	"errors"

	"github.com/entropi-ai/entropi/model"
)

// Export folds every reparametrization into the plain matrices the runtime
// uses (see the package documentation for the folding rules).
func (p *Params) Export() (*model.Weights, error) {
	return nil, errors.New("train: Export not implemented yet")
}
