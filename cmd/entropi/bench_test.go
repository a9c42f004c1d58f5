package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDefaultBenchModels(t *testing.T) {
	dir := t.TempDir()
	touch := func(name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
		return p
	}
	// Nothing there: nothing to measure.
	require.Empty(t, defaultBenchModels(dir))
	// Without the pair: every checkpoint, sorted.
	b := touch("b.safetensors")
	a := touch("a.safetensors")
	require.Equal(t, []string{a, b}, defaultBenchModels(dir))
	// With the pair (or part of it): only the pair, baseline first.
	eg := touch("ereg-sm-t-scfuffn.safetensors")
	require.Equal(t, []string{eg}, defaultBenchModels(dir))
	base := touch("baseline.safetensors")
	touch("sm-scfuffn.safetensors")
	require.Equal(t, []string{base, eg}, defaultBenchModels(dir))
}
