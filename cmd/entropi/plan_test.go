package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/model"
	"github.com/stretchr/testify/require"
)

// `entropi plan` prints the level plan of a saved checkpoint (insecure test
// preset; approximations calibrated on random tokens since the checkpoint
// has none), as a table and as JSON.
func TestPlanCommand(t *testing.T) {
	require.Contains(t, commands, "plan")
	w, err := model.NewRandom(model.EntropyGuided(64, 16, 32, 2, 2), 3)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "m.safetensors")
	require.NoError(t, model.Save(path, &model.Checkpoint{Weights: w}))
	var out, errOut bytes.Buffer
	require.NoError(t, planMain([]string{"--model", path, "--preset", "insecure-test", "--insecure"}, &out, &errOut))
	s := out.String()
	for _, want := range []string{"h.0.attn.c_attn", "h.1.mlp.c_fused", "lm_head", "refresh rounds", "key-switches"} {
		require.Contains(t, s, want)
	}
	out.Reset()
	require.NoError(t, planMain([]string{"--model", path, "--preset", "insecure-test", "--insecure", "--json"}, &out, &errOut))
	var p engine.Plan
	require.NoError(t, json.Unmarshal(out.Bytes(), &p))
	require.NotEmpty(t, p.Ops)
	require.Equal(t, "insecure-test", p.Preset)
	// Insecure presets need the flag.
	err = planMain([]string{"--model", path, "--preset", "insecure-test"}, &out, &errOut)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "insecure"), err.Error())
}
