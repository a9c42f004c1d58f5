package server_test

import (
	"encoding/json"
	"testing"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

// FuzzModelInfo: what a client decodes from a server's ListModels before
// it generates keys: the model configuration (JSON, then Validate) and the
// engine's spec (engine.UnmarshalSpec; with an accepted spec the client
// builds the preset's parameters next). A hostile server must get an
// error, not a crash. (The tokenizer JSON is fuzzed in package model.)
//
//	go test -run '^$' -fuzz '^FuzzModelInfo$' -fuzztime 60s -parallel 1 ./server/
func FuzzModelInfo(f *testing.F) {
	cfg := model.EntropyGuided(32, 8, 16, 1, 2)
	cj, _ := json.Marshal(cfg)
	params, err := he.InsecureTest.Parameters(true)
	if err != nil {
		f.Fatal(err)
	}
	spec := &engine.Spec{Model: cfg, Preset: he.InsecureTest, InputLevel: params.MaxLevel(), InputPeriod: 32, LogitPeriod: 32,
		Rotations: map[int]int{1: 3, 2: 3, 16: 2}, RelinLevel: 2}
	sj, err := spec.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	if _, err := engine.UnmarshalSpec(sj); err != nil {
		f.Fatalf("seed spec refused: %v", err)
	}
	f.Add(cj, sj)
	f.Add([]byte(`{"vocab":2,"context":1,"dim":1,"layers":1,"heads":1,"activation":"none","fused_ffn":true,"final_norm":"none"}`),
		[]byte(`{"preset":{"name":"x","log_n":30,"log_q":[60],"log_p":[61]},"rotations":{"-1":0}}`))
	f.Add([]byte(`{"heads":0}`), []byte(`null`))
	f.Fuzz(func(t *testing.T, configJSON, specJSON []byte) {
		var c model.Config
		if json.Unmarshal(configJSON, &c) == nil {
			_ = c.Validate()
		}
		s, err := engine.UnmarshalSpec(specJSON)
		if err != nil {
			return
		}
		if err := s.Check(); err != nil {
			t.Fatalf("UnmarshalSpec accepted a spec that fails Check: %v", err)
		}
		if _, err := s.Preset.Parameters(true); err != nil {
			return
		}
	})
}
