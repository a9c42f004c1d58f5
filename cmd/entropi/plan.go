package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
)

func init() {
	commands["plan"] = command{"print the encrypted decoder's level plan (refresh points, levels, key-switches) for a model and preset", runPlan}
}

func runPlan(args []string) error { return planMain(args, os.Stdout, os.Stderr) }

func planMain(args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("plan", flag.ContinueOnError)
	fl.SetOutput(stderr)
	path := fl.String("model", "", "model checkpoint (entropi .safetensors)")
	presetName := fl.String("preset", he.N14.Name, "CKKS preset")
	insecure := fl.Bool("insecure", false, "allow insecure-… test presets")
	clientEmb := fl.Bool("client-embedding", false, "client-side embedding (reveals the embedding table)")
	fit := fl.Bool("fit", true, "refit approximations whose depth exceeds the levels between refreshes of the preset")
	asJSON := fl.Bool("json", false, "print the plan as JSON")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("--model is required")
	}
	preset, err := he.PresetByName(*presetName)
	if err != nil {
		return err
	}
	ck, err := model.Load(*path)
	if err != nil {
		return err
	}
	w := ck.Weights
	set := ck.Approx
	if set == nil {
		// No calibrated set in the checkpoint: calibrate on random tokens
		// (ranges only; use `entropi eval` on real data for a real set).
		r := rand.New(rand.NewPCG(1, 2))
		seqs := make([][]int, 16)
		for i := range seqs {
			seqs[i] = make([]int, w.Config.Context)
			for j := range seqs[i] {
				seqs[i][j] = r.IntN(w.Config.Vocab)
			}
		}
		cal, err := model.Calibrate(w, seqs, model.CalibrateOptions{})
		if err != nil {
			return err
		}
		set = cal.Set
		fmt.Fprintln(stderr, "note: the checkpoint has no approximation set; calibrated on 16 random token sequences")
	}
	if *fit {
		var notes []string
		if set, notes, err = engine.FitToPreset(set, preset, *insecure, w.Config.Context); err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintln(stderr, "refit for", preset.Name+":", n)
		}
	}
	eng, err := engine.New(w, set, engine.Options{Preset: preset, AllowInsecure: *insecure, ClientSideEmbedding: *clientEmb})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(eng.Plan())
	}
	fmt.Fprintf(stdout, "model %s: vocab %d, context %d, d %d, %d layers, %d heads\n", w.Config.Name, w.Config.Vocab, w.Config.Context, w.Config.Dim, w.Config.Layers, w.Config.Heads)
	fmt.Fprint(stdout, eng.Plan())
	return nil
}
