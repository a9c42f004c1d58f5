package bench

import (
	"fmt"
	"math"
)

// Network is a link the measured traffic is projected onto.
type Network struct {
	Name string `json:"name"`
	// BitsPerSecond is the bandwidth (shared by both directions: bytes up
	// and down are added, as the paper's 2PC numbers are).
	BitsPerSecond float64 `json:"bits_per_second"`
	RTTSeconds    float64 `json:"rtt_seconds"`
}

// The links of the projection: a LAN, and the paper's WAN.
var (
	LAN = Network{Name: "LAN", BitsPerSecond: 1e9, RTTSeconds: 0.5e-3}
	WAN = Network{Name: "WAN", BitsPerSecond: 100e6, RTTSeconds: 80e-3}
)

// Networks are the default projections.
func Networks() []Network { return []Network{LAN, WAN} }

// String describes the link.
func (n Network) String() string {
	return fmt.Sprintf("%s (%s, %s RTT)", n.Name, FormatBitRate(n.BitsPerSecond), FormatSeconds(n.RTTSeconds))
}

// Project is the time of a step on the link: compute + bytes/bandwidth +
// rounds × RTT. compute is the measured time on loopback (which includes
// serialization and the loopback copy, so the projection errs high).
func (n Network) Project(compute float64, bytes uint64, rounds float64) float64 {
	return compute + float64(bytes)*8/n.BitsPerSecond + rounds*n.RTTSeconds
}

// Projected is one run projected onto one link.
type Projected struct {
	Network string `json:"network"`
	// SetupSeconds: key generation + key upload + one round trip.
	SetupSeconds float64 `json:"setup_seconds"`
	// PrefillSeconds: the prompt, with its refresh rounds.
	PrefillSeconds float64 `json:"prefill_seconds"`
	// TokenSeconds: one decode token (median latency, median bytes, mean
	// round trips).
	TokenSeconds float64 `json:"token_seconds"`
	// TokenTransferSeconds and TokenRTTSeconds are the two network terms of
	// TokenSeconds.
	TokenTransferSeconds float64 `json:"token_transfer_seconds"`
	TokenRTTSeconds      float64 `json:"token_rtt_seconds"`
}

// ProjectRun projects a run's setup, prefill and decode token onto a link.
func ProjectRun(r *Run, n Network) Projected {
	tokBytes := r.Decode.BytesUp + r.Decode.BytesDown
	p := Projected{Network: n.Name,
		SetupSeconds:         n.Project(r.Setup.KeygenSeconds, r.Setup.BytesUp+r.Setup.BytesDown, 1),
		PrefillSeconds:       n.Project(r.Prefill.Seconds, r.Prefill.BytesUp+r.Prefill.BytesDown, float64(r.Prefill.RefreshRounds+1)),
		TokenSeconds:         n.Project(r.Decode.MedianSeconds, tokBytes, r.Decode.RoundTrips),
		TokenTransferSeconds: float64(tokBytes) * 8 / n.BitsPerSecond,
		TokenRTTSeconds:      r.Decode.RoundTrips * n.RTTSeconds,
	}
	return p
}

// Projection finds a run's projection onto a named link.
func (r *Run) Projection(network string) (Projected, bool) {
	for _, p := range r.Project {
		if p.Network == network {
			return p, true
		}
	}
	return Projected{}, false
}

// Paper are the numbers of Jha & Reagen (2025) for GPT-2 125M under a 2PC
// HE+MPC protocol (BumbleBee/SecretFlow) on the WAN (100 Mbps, 80 ms),
// per token.
type Paper struct {
	Source              string  `json:"source"`
	BaselineGB          float64 `json:"baseline_gb"`
	BaselineMinutes     float64 `json:"baseline_minutes"`
	EntropyGuidedGB     float64 `json:"entropy_guided_gb"`
	EntropyGuidedMinute float64 `json:"entropy_guided_minutes"`
	CommRatio           float64 `json:"communication_ratio"`
	LatencyRatio        float64 `json:"latency_ratio"`
}

// PaperNumbers are the paper's per-token costs.
func PaperNumbers() Paper {
	return Paper{Source: "Jha & Reagen, Entropy-Guided Attention for Private LLMs (arXiv 2501.03489): GPT-2 125M, T=128, 2PC (BumbleBee), WAN 100 Mbps / 80 ms",
		BaselineGB: 25.32, BaselineMinutes: 8.21, EntropyGuidedGB: 6.43, EntropyGuidedMinute: 4.76,
		CommRatio: 3.94, LatencyRatio: 1.72}
}

// Comparison is baseline against entropy-guided for one (preset, mode,
// context): ratios > 1 mean the entropy-guided model is cheaper.
type Comparison struct {
	Preset        string `json:"preset"`
	Mode          string `json:"mode"`
	Context       int    `json:"context"`
	Baseline      string `json:"baseline"`
	EntropyGuided string `json:"entropy_guided"`
	// Per decode token.
	BaselineBytes      uint64  `json:"baseline_bytes"`
	EntropyGuidedBytes uint64  `json:"entropy_guided_bytes"`
	CommRatio          float64 `json:"communication_ratio"`
	BaselineSeconds    float64 `json:"baseline_seconds"`
	EntropySeconds     float64 `json:"entropy_guided_seconds"`
	LatencyRatio       float64 `json:"latency_ratio"` // loopback, median per token
	CPURatio           float64 `json:"cpu_ratio"`
	RoundsRatio        float64 `json:"round_trips_ratio"`
	// LatencyRatioByNetwork: ratio of the projected per-token times.
	LatencyRatioByNetwork map[string]float64 `json:"latency_ratio_by_network"`
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// Compare pairs every baseline run with the entropy-guided run of the same
// preset, mode and context.
func Compare(runs []Run) []Comparison {
	var out []Comparison
	for i := range runs {
		b := &runs[i]
		if b.Kind != KindBaseline {
			continue
		}
		for j := range runs {
			e := &runs[j]
			if e.Kind != KindEntropyGuided || e.Preset != b.Preset || e.Mode != b.Mode || e.Context != b.Context {
				continue
			}
			c := Comparison{Preset: b.Preset, Mode: b.Mode, Context: b.Context, Baseline: b.Model, EntropyGuided: e.Model,
				BaselineBytes: b.Decode.BytesUp + b.Decode.BytesDown, EntropyGuidedBytes: e.Decode.BytesUp + e.Decode.BytesDown,
				BaselineSeconds: b.Decode.MedianSeconds, EntropySeconds: e.Decode.MedianSeconds,
				LatencyRatioByNetwork: map[string]float64{}}
			c.CommRatio = ratio(float64(c.BaselineBytes), float64(c.EntropyGuidedBytes))
			c.LatencyRatio = ratio(c.BaselineSeconds, c.EntropySeconds)
			c.CPURatio = ratio(b.Decode.CPUSeconds, e.Decode.CPUSeconds)
			c.RoundsRatio = ratio(b.Decode.RoundTrips, e.Decode.RoundTrips)
			for _, pb := range b.Project {
				if pe, ok := e.Projection(pb.Network); ok {
					c.LatencyRatioByNetwork[pb.Network] = ratio(pb.TokenSeconds, pe.TokenSeconds)
				}
			}
			out = append(out, c)
		}
	}
	return out
}

// FormatBytes prints a byte count with a binary unit.
func FormatBytes(n uint64) string {
	x := float64(n)
	switch {
	case x >= 1<<30:
		return fmt.Sprintf("%.2f GiB", x/(1<<30))
	case x >= 1<<20:
		return fmt.Sprintf("%.1f MiB", x/(1<<20))
	case x >= 1<<10:
		return fmt.Sprintf("%.1f KiB", x/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// FormatSeconds prints a duration in seconds with a sensible unit.
func FormatSeconds(s float64) string {
	switch {
	case math.IsNaN(s):
		return "–"
	case s >= 120:
		return fmt.Sprintf("%.1f min", s/60)
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.1f ms", s*1e3)
	}
	return fmt.Sprintf("%.0f µs", s*1e6)
}

// FormatBitRate prints a bandwidth.
func FormatBitRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%g Gbps", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%g Mbps", bps/1e6)
	}
	return fmt.Sprintf("%g kbps", bps/1e3)
}
