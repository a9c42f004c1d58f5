package engine

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// PlanOp is one row of the level plan: an operation of one decode step, the
// level of its input and output, the key-switches it costs (rotations plus
// relinearizations) and whether its input was refreshed first.
type PlanOp struct {
	Op          string `json:"op"`   // e.g. "h.0.attn.c_attn", "h.0.attn.exp"
	Kind        string `json:"kind"` // linear, attention, exp, recip, invsqrt, gelu, norm, affine, embed, logits
	LevelIn     int    `json:"level_in"`
	LevelOut    int    `json:"level_out"`
	KeySwitches int    `json:"key_switches"`
	CtCt        int    `json:"ct_ct"` // ciphertext×ciphertext products
	// Refresh: ciphertexts refreshed right before the operation (0: none),
	// and to which level.
	Refresh      int    `json:"refresh,omitempty"`
	RefreshLevel int    `json:"refresh_level,omitempty"`
	Layout       string `json:"layout,omitempty"` // matvec layout (pre-rotated, replicated)
	Note         string `json:"note,omitempty"`
}

// Plan is the level plan of one decode step, derived by a dry run of
// model.Forward with a level-tracking backend (the same code as the
// encrypted run, with no ciphertexts).
type Plan struct {
	Preset string `json:"preset"`
	// Mode: interactive (masked refresh rounds) or bootstrap (each
	// refreshed ciphertext is one bootstrap, no client round).
	Mode       RefreshMode `json:"mode"`
	MaxLevel   int         `json:"max_level"`
	MaskLevel  int         `json:"mask_level"`  // lowest level a masked refresh (or a bootstrap) accepts
	InputLevel int         `json:"input_level"` // level of the client's token ciphertext
	Ops        []PlanOp    `json:"ops"`
	// Refreshes: refresh rounds per token and ciphertexts refreshed.
	Refreshes, RefreshCts int
	// RefreshTargets is the target level of each refresh round, in order.
	RefreshTargets []int `json:"refresh_targets"`
	// CacheLevels is the level of each layer's KV cache.
	CacheLevels []int `json:"cache_levels"`
	KeySwitches int   `json:"key_switches"`
	CtCt        int   `json:"ct_ct"`
	Rotations   int   `json:"rotation_keys"` // distinct rotation keys
	// Rows is the number of tokens of one step: 1 (or 0) for decode, the
	// batch size for the prefill plan.
	Rows int `json:"rows,omitempty"`
	// Prefill is the plan of one batch of the batched prefill (prefill.go)
	// with the LM head (the prompt's last batch; earlier batches stop
	// before ln_f and the LM head). Nil when the prefill runs token by
	// token.
	Prefill *Plan `json:"prefill,omitempty"`
}

// String prints the plan as a table.
func (p *Plan) String() string {
	var b strings.Builder
	if p.Mode == RefreshBootstrap {
		fmt.Fprintf(&b, "preset %s, bootstrap mode: bootstraps output level %d and need level ≥ %d, client encrypts at level %d\n",
			p.Preset, p.MaxLevel, p.MaskLevel, p.InputLevel)
	} else {
		fmt.Fprintf(&b, "preset %s: max level %d, masked refresh needs level ≥ %d, client encrypts at level %d\n",
			p.Preset, p.MaxLevel, p.MaskLevel, p.InputLevel)
	}
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "op\tkind\trefresh\tlevel in\tlevel out\tkey-switches\tct×ct\tnote")
	for _, o := range p.Ops {
		r := ""
		if o.Refresh > 0 {
			r = fmt.Sprintf("%d ct → %d", o.Refresh, o.RefreshLevel)
		}
		note := o.Note
		if o.Layout != "" {
			note = strings.TrimSpace(o.Layout + " " + note)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", o.Op, o.Kind, r, o.LevelIn, o.LevelOut, o.KeySwitches, o.CtCt, note)
	}
	tw.Flush()
	if p.Mode == RefreshBootstrap {
		fmt.Fprintf(&b, "bootstrap mode: %d refresh points, %d bootstraps per token, no client round\n", p.Refreshes, p.RefreshCts)
	}
	fmt.Fprintf(&b, "%s: %d refresh rounds (%d ciphertexts), %d key-switches, %d ct×ct products, %d rotation keys; KV cache levels %v\n",
		p.per(), p.Refreshes, p.RefreshCts, p.KeySwitches, p.CtCt, p.Rotations, p.CacheLevels)
	if p.Prefill != nil {
		fmt.Fprintf(&b, "\nprefill, per batch of %d tokens packed token-major (linear layers, norms, activations and refreshes once per batch; attention per token, in lockstep, against the KV cache; the LM head on the last token only):\n", p.Prefill.Rows)
		b.WriteString(p.Prefill.String())
	}
	return b.String()
}
