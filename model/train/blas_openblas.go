//go:build openblas

package train

// Built with `-tags openblas` (cgo, Debian's libopenblas-dev: run
// scripts/install-openblas.sh), every gonum blas64 call of this package, and
// of the rest of the program, goes to OpenBLAS through gonum.org/v1/netlib.
// The default build is pure Go (gonum's native BLAS), about 4.5× slower per
// CPU-second for training (measured figures: loop.go, "BLAS builds").

/*
#cgo LDFLAGS: -lopenblas
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
*/
import "C"

import (
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/netlib/blas/netlib"
)

func init() {
	blas64.Use(netlib.Implementation{})
	BLAS = "openblas"
	setBLASThreads = func(n int) { C.openblas_set_num_threads(C.int(n)) }
	getBLASThreads = func() int { return int(C.openblas_get_num_threads()) }
}
