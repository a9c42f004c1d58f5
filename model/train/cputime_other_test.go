//go:build !unix

package train

import "time"

// processCPU is unavailable here: benchmarks report no CPU-time metric.
func processCPU() time.Duration { return 0 }
