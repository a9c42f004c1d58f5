package bench

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
)

// TopCosts returns the n largest categories of a run's per-token
// breakdown, largest first.
func TopCosts(r *Run, n int) []string {
	type kv struct {
		k string
		v float64
	}
	var all []kv
	for _, c := range Categories {
		if v := r.Decode.Breakdown[c]; v > 0 {
			all = append(all, kv{c, v})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].v > all[j].v })
	var out []string
	for i := 0; i < n && i < len(all); i++ {
		out = append(out, all[i].k)
	}
	return out
}

func pct(part, whole float64) string {
	if whole <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*part/whole)
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", x)
}

// WriteMarkdown writes the results as markdown: the machine, the main
// table, the per-token breakdown, the baseline/entropy-guided comparison
// next to the paper's, the projection, and what was skipped.
func (r *Results) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# entropi bench\n\n")
	if r.Random {
		p("> **RANDOM WEIGHTS.** At least one model has random weights (no trained checkpoint; sizes under Models). The cryptographic costs (time, bytes, rounds) are real; the generated text is noise and the accuracy is that of a random model.\n\n")
	}
	if r.Command != "" {
		p("Command: `%s`\n\n", r.Command)
	}
	m := r.Machine
	p("Machine: %s, %d cores, %.1f GiB memory (%.1f GiB available at start), %s %s/%s, %s", m.CPU, m.Cores, m.MemoryGiB, m.MemAvailableGiB, m.GoVersion, m.OS, m.Arch, m.Date)
	if m.LoadAverage != "" {
		p(", load average %s at start", m.LoadAverage)
	}
	p(".\n")
	if m.Note != "" {
		p("\n> %s\n", m.Note)
	}
	p("\n## Per decode token\n\n")
	p("Latency is the client's view (encrypt, upload, server, refresh rounds, download, decrypt) on loopback gRPC: median (min–max) of the decode tokens. CPU is the process's CPU time per token (server and client share the process). Bytes are protobuf message sizes per token (median). Round trips = refresh rounds + 1. Context = prompt + decode tokens.\n\n")
	p("| model | preset | mode | context | latency | CPU | up | down | round trips | LAN | WAN | agree exact / approx | max logit err (approx) |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.Runs {
		x := &r.Runs[i]
		lan, _ := x.Projection(LAN.Name)
		wan, _ := x.Projection(WAN.Name)
		p("| %s | %s | %s | %d | %s (%s–%s) | %s | %s | %s | %.1f | %s | %s | %d/%d / %d/%d | %.2g |\n",
			x.Model, x.Preset, x.Mode, x.Context, FormatSeconds(x.Decode.MedianSeconds), FormatSeconds(x.Decode.MinSeconds), FormatSeconds(x.Decode.MaxSeconds),
			FormatSeconds(x.Decode.CPUSeconds), FormatBytes(x.Decode.BytesUp), FormatBytes(x.Decode.BytesDown), x.Decode.RoundTrips,
			FormatSeconds(lan.TokenSeconds), FormatSeconds(wan.TokenSeconds),
			x.Accuracy.AgreeExact, x.Accuracy.Tokens, x.Accuracy.AgreeApprox, x.Accuracy.Tokens, x.Accuracy.MaxLogitErrApprox)
	}
	p("\n## Setup and prefill\n\n")
	p("| model | preset | mode | context | engine build (server) | key generation | setup (keygen + upload) | keys up | prefill (prompt tokens) | prefill CPU | prefill up | prefill down | prefill refresh rounds |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.Runs {
		x := &r.Runs[i]
		p("| %s | %s | %s | %d | %s | %s | %s | %s | %s (%d) | %s | %s | %s | %d |\n", x.Model, x.Preset, x.Mode, x.Context,
			FormatSeconds(x.Setup.EngineBuildSeconds), FormatSeconds(x.Setup.KeygenSeconds), FormatSeconds(x.Setup.Seconds), FormatBytes(x.Setup.KeyBytesUp),
			FormatSeconds(x.Prefill.Seconds), x.PromptTokens, FormatSeconds(x.Prefill.CPUSeconds), FormatBytes(x.Prefill.BytesUp), FormatBytes(x.Prefill.BytesDown), x.Prefill.RefreshRounds)
	}
	p("\n## Where the time of a decode token goes\n\n")
	p("Mean seconds per decode token. The engine times its operations by kind; refresh rounds run inside the kinds that need them and are taken out of those kinds here (apportioned by the plan's refreshed ciphertexts) and counted once, split into the client's re-encryption (timed at the client) and the rest (server masking and unmasking, serialization, loopback). Attention includes its softmax (exp and reciprocal polynomials); the plan's key-switch share of the softmax is given for orientation. transport-other is the client's latency minus the server's step and the client's encryption and decryption.\n\n")
	p("| model | preset | mode | context |")
	for _, c := range Categories {
		p(" %s |", c)
	}
	p(" total | top three | softmax share of attention key-switches |\n|---|---|---|---|")
	for range Categories {
		p("---|")
	}
	p("---|---|---|\n")
	for i := range r.Runs {
		x := &r.Runs[i]
		tot := 0.0
		for _, c := range Categories {
			tot += x.Decode.Breakdown[c]
		}
		p("| %s | %s | %s | %d |", x.Model, x.Preset, x.Mode, x.Context)
		for _, c := range Categories {
			v := x.Decode.Breakdown[c]
			p(" %s (%s) |", FormatSeconds(v), pct(v, tot))
		}
		ks := x.Plan.KeySwitchesByKind
		sm := float64(ks["exp"] + ks["recip"])
		p(" %s | %s | %s |\n", FormatSeconds(tot), strings.Join(TopCosts(x, 3), ", "), pct(sm, sm+float64(ks["attention"])))
	}
	p("\n## Baseline against entropy-guided\n\n")
	pp := r.Paper
	p("Ratios baseline / entropy-guided per decode token (> 1: the entropy-guided model is cheaper). The paper's numbers are for %s: baseline %.2f GB / %.2f min per token, entropy-guided %.2f GB / %.2f min, i.e. **%.2f× communication, %.2f× latency**. Ours are pure CKKS with client-aided refresh, on %s.\n\n",
		pp.Source, pp.BaselineGB, pp.BaselineMinutes, pp.EntropyGuidedGB, pp.EntropyGuidedMinute, pp.CommRatio, pp.LatencyRatio, modelSizes(r))
	if len(r.Comparisons) == 0 {
		p("No pair of baseline and entropy-guided runs with the same preset, mode and context.\n")
	} else {
		p("| preset | mode | context | baseline bytes | entropy-guided bytes | communication ratio | baseline latency | entropy-guided latency | latency ratio (loopback) | CPU ratio | round-trip ratio |")
		for _, n := range r.Networks {
			p(" latency ratio (%s) |", n.Name)
		}
		p(" paper: communication / latency |\n|---|---|---|---|---|---|---|---|---|---|---|")
		for range r.Networks {
			p("---|")
		}
		p("---|\n")
		for _, c := range r.Comparisons {
			p("| %s | %s | %d | %s | %s | **%s** | %s | %s | **%s** | %s | %s |", c.Preset, c.Mode, c.Context, FormatBytes(c.BaselineBytes), FormatBytes(c.EntropyGuidedBytes),
				fmtRatio(c.CommRatio), FormatSeconds(c.BaselineSeconds), FormatSeconds(c.EntropySeconds), fmtRatio(c.LatencyRatio), fmtRatio(c.CPURatio), fmtRatio(c.RoundsRatio))
			for _, n := range r.Networks {
				p(" %s |", fmtRatio(c.LatencyRatioByNetwork[n.Name]))
			}
			p(" %s / %s |\n", fmtRatio(pp.CommRatio), fmtRatio(pp.LatencyRatio))
		}
	}
	p("\n## Network projection\n\n")
	p("time = compute + bytes / bandwidth + round trips × RTT, with compute the measured loopback latency (which already contains serialization and the loopback copy, so the projection errs high) and bytes up and down sharing the link. ")
	var links []string
	for _, n := range r.Networks {
		links = append(links, n.String())
	}
	p("Links: %s.\n\n", strings.Join(links, "; "))
	p("| model | preset | mode | context | network | setup | prefill | decode token | of which transfer | of which RTT |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.Runs {
		x := &r.Runs[i]
		for _, pr := range x.Project {
			p("| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", x.Model, x.Preset, x.Mode, x.Context, pr.Network,
				FormatSeconds(pr.SetupSeconds), FormatSeconds(pr.PrefillSeconds), FormatSeconds(pr.TokenSeconds), FormatSeconds(pr.TokenTransferSeconds), FormatSeconds(pr.TokenRTTSeconds))
		}
	}
	p("\n## Models\n\n| model | kind | weights | configuration | engine plan per token |\n|---|---|---|---|---|\n")
	seen := map[string]bool{}
	for i := range r.Runs {
		x := &r.Runs[i]
		key := x.Model + "/" + x.Preset + "/" + x.Mode
		if seen[key] {
			continue
		}
		seen[key] = true
		if x.Mode == ModeBootstrap {
			p("| %s | %s | %s | %s | %s, bootstrap mode: %d bootstraps on the server (no client round), %d key-switches, %d ct×ct, %d rotation keys |\n", x.Model, x.Kind, x.Source, x.ModelConfig,
				x.Preset, x.Plan.Bootstraps, x.Plan.KeySwitches, x.Plan.CtCt, x.Plan.RotationKeys)
			continue
		}
		p("| %s | %s | %s | %s | %s: %d refresh rounds (%d ciphertexts), %d key-switches, %d ct×ct, %d rotation keys |\n", x.Model, x.Kind, x.Source, x.ModelConfig,
			x.Preset, x.Plan.RefreshRounds, x.Plan.RefreshCts, x.Plan.KeySwitches, x.Plan.CtCt, x.Plan.RotationKeys)
	}
	if len(r.Skipped) > 0 {
		p("\n## Skipped\n\n")
		for _, s := range r.Skipped {
			what := strings.TrimSpace(strings.Join([]string{s.Model, s.Preset, s.Mode}, " "))
			if s.Context > 0 {
				what += fmt.Sprintf(" context %d", s.Context)
			}
			p("- %s: %s\n", what, s.Reason)
		}
	}
	if len(r.Notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func modelSizes(r *Results) string {
	seen := map[string]bool{}
	var out []string
	for i := range r.Runs {
		c := r.Runs[i].ModelConfig
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "no model"
	}
	return strings.Join(out, "; ")
}
