package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Schema names the layout of Results (results.json); bump it when a field
// changes meaning.
const Schema = "entropi-bench/1"

// Results are everything one `entropi bench` invocation measured.
type Results struct {
	Schema  string  `json:"schema"`
	Command string  `json:"command"`
	Machine Machine `json:"machine"`
	// Random is true when any model has random weights (no checkpoint):
	// the cryptographic costs are real, the text and accuracy of a trained
	// model are not.
	Random      bool         `json:"random_weights"`
	Networks    []Network    `json:"networks"`
	Runs        []Run        `json:"runs"`
	Skipped     []Skip       `json:"skipped,omitempty"`
	Comparisons []Comparison `json:"comparisons,omitempty"`
	Paper       Paper        `json:"paper"`
	Notes       []string     `json:"notes,omitempty"`
}

// Machine describes where the numbers were taken.
type Machine struct {
	CPU             string  `json:"cpu"`
	Cores           int     `json:"cores"`
	MemoryGiB       float64 `json:"memory_gib"`
	MemAvailableGiB float64 `json:"mem_available_gib"`
	GoVersion       string  `json:"go_version"`
	OS              string  `json:"os"`
	Arch            string  `json:"arch"`
	Date            string  `json:"date"` // RFC 3339, UTC, at the start
	LoadAverage     string  `json:"load_average,omitempty"`
	Note            string  `json:"note,omitempty"`
}

// Skip is a configuration that was not measured, and why.
type Skip struct {
	Model  string `json:"model,omitempty"`
	Preset string `json:"preset,omitempty"`
	Mode   string `json:"mode,omitempty"`
	// Context is 0 when the whole (model, preset, mode) was skipped.
	Context int    `json:"context,omitempty"`
	Reason  string `json:"reason"`
}

// Run is one measured configuration: a model, a preset, a refresh mode and
// a context length.
type Run struct {
	Model        string `json:"model"`
	Kind         string `json:"kind"` // baseline | entropy-guided
	Random       bool   `json:"random_weights"`
	Source       string `json:"source"` // checkpoint path, or "random (seed N)"
	ModelConfig  string `json:"model_config"`
	Preset       string `json:"preset"`
	LogN         int    `json:"log_n"`
	SecurityBits int    `json:"security_bits"`
	Mode         string `json:"mode"` // interactive | bootstrap
	// Context is the number of positions the last decode token attends
	// over: prompt tokens + decode tokens.
	Context      int `json:"context"`
	PromptTokens int `json:"prompt_tokens"`
	DecodeTokens int `json:"decode_tokens"`

	Plan    PlanSummary `json:"plan"`
	Setup   Setup       `json:"setup"`
	Prefill Prefill     `json:"prefill"`
	Decode  Decode      `json:"decode"`
	// Tokens are the decode steps, one per generated token after the first.
	Tokens   []TokenRun  `json:"tokens"`
	Accuracy Accuracy    `json:"accuracy"`
	Project  []Projected `json:"projection"`
}

// PlanSummary is the engine's static plan of one decode step.
type PlanSummary struct {
	// RefreshRounds are client round trips (0 in bootstrap mode);
	// RefreshCts the ciphertexts refreshed, and in bootstrap mode
	// Bootstraps the same count (one bootstrap per ciphertext, on the
	// server).
	RefreshRounds int `json:"refresh_rounds"`
	RefreshCts    int `json:"refresh_ciphertexts"`
	Bootstraps    int `json:"bootstraps,omitempty"`
	KeySwitches   int `json:"key_switches"`
	CtCt          int `json:"ct_ct"`
	RotationKeys  int `json:"rotation_keys"`
	// KeySwitchesByKind: the plan's key-switches per operation kind (how
	// attention's work splits between scores, exp and reciprocal).
	KeySwitchesByKind map[string]int `json:"key_switches_by_kind"`
}

// Setup is the session set-up: engine build (server, once per model and
// preset), key generation (client) and key upload.
type Setup struct {
	EngineBuildSeconds float64 `json:"engine_build_seconds"`
	KeygenSeconds      float64 `json:"keygen_seconds"`
	Seconds            float64 `json:"seconds"` // keygen + serialization + upload + server checks
	KeyBytesUp         uint64  `json:"key_bytes_up"`
	BytesUp            uint64  `json:"bytes_up"`
	BytesDown          uint64  `json:"bytes_down"`
}

// Prefill is the prompt: from Start to the first token's logits.
type Prefill struct {
	Seconds       float64 `json:"seconds"`
	ServerSeconds float64 `json:"server_seconds"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	BytesUp       uint64  `json:"bytes_up"`
	BytesDown     uint64  `json:"bytes_down"`
	RefreshRounds int     `json:"refresh_rounds"`
	Bootstraps    int     `json:"bootstraps,omitempty"` // bootstrap mode: server bootstraps of the prompt
}

// Decode summarizes the decode steps.
type Decode struct {
	Tokens int `json:"tokens"`
	// Latency per token as the client sees it (encrypt, upload, server,
	// refresh rounds, download, decrypt): median, min, max.
	MedianSeconds float64 `json:"median_seconds"`
	MinSeconds    float64 `json:"min_seconds"`
	MaxSeconds    float64 `json:"max_seconds"`
	// CPUSeconds: median process CPU time per token (server and client
	// share the process, so this is both sides' work; it does not grow
	// when other processes load the machine, wall time does).
	CPUSeconds float64 `json:"cpu_seconds"`
	// Bytes per token (median); rounds per token (refresh rounds, and
	// network round trips = refresh rounds + 1 for token → logits).
	BytesUp       uint64  `json:"bytes_up"`
	BytesDown     uint64  `json:"bytes_down"`
	RefreshRounds float64 `json:"refresh_rounds"`
	RoundTrips    float64 `json:"round_trips"`
	// Bootstraps per token (mean; bootstrap mode, where RefreshRounds is 0).
	Bootstraps float64 `json:"bootstraps,omitempty"`
	// Breakdown: mean seconds per token by category (see Categories).
	Breakdown map[string]float64 `json:"breakdown_seconds"`
	// EngineByKind: mean seconds per token by the engine's own kinds, as
	// reported (kinds nest: attention and linear include the refresh
	// rounds made inside them).
	EngineByKind map[string]float64 `json:"engine_by_kind_seconds"`
}

// TokenRun is one decode step.
type TokenRun struct {
	Pos            int                `json:"pos"` // position of the input token
	Seconds        float64            `json:"seconds"`
	CPUSeconds     float64            `json:"cpu_seconds"`
	ServerSeconds  float64            `json:"server_seconds"`
	BytesUp        uint64             `json:"bytes_up"`
	BytesDown      uint64             `json:"bytes_down"`
	RefreshRounds  int                `json:"refresh_rounds"`
	RefreshCts     int                `json:"refresh_ciphertexts"`
	Bootstraps     int                `json:"bootstraps,omitempty"` // bootstrap mode: the server's bootstraps of this token
	KeySwitches    int64              `json:"key_switches"`
	Breakdown      map[string]float64 `json:"breakdown_seconds"`
	EngineByKind   map[string]float64 `json:"engine_by_kind_seconds"`
	ClientEncrypt  float64            `json:"client_encrypt_seconds"`
	ClientDecrypt  float64            `json:"client_decrypt_seconds"`
	ClientRefresh  float64            `json:"client_refresh_seconds"`
	RefreshAnswers int                `json:"refresh_answers"`
}

// Accuracy compares the decrypted logits with the plaintext model on the
// same prefixes (teacher forcing with the encrypted run's tokens).
type Accuracy struct {
	Tokens int `json:"tokens"` // generated tokens compared (prefill's included)
	// AgreeExact / AgreeApprox: steps whose encrypted argmax equals the
	// exact plaintext model's / the approximation backend's.
	AgreeExact  int `json:"agree_exact"`
	AgreeApprox int `json:"agree_approx"`
	// MatchesGreedy: the encrypted token sequence equals the exact
	// plaintext model's free-running greedy sequence.
	MatchesGreedy bool `json:"matches_plaintext_greedy"`
	// MaxLogitErrApprox / MaxLogitErrExact: max |decrypted − plaintext|
	// over all compared logits.
	MaxLogitErrApprox float64 `json:"max_logit_err_approx"`
	MaxLogitErrExact  float64 `json:"max_logit_err_exact"`
	LogitRange        float64 `json:"logit_range"` // max − min of the exact logits (for scale)
}

// Categories of the per-token breakdown, in stacking order. Engine kinds
// map onto them; the refresh rounds nested in an engine kind are taken out
// of it (apportioned by the plan's refreshed ciphertexts) and counted once,
// under refresh.
var Categories = []string{
	"linear",          // matrix products: QKV, Wo, FFN, embedding, LM head
	"attention",       // scores, softmax (exp, reciprocal), weighted sum, KV append
	"normalization",   // LayerNorm (mean, variance, inverse square root)
	"activation",      // GELU
	"refresh-server",  // masked refresh: masking, unmasking, and its transport
	"refresh-client",  // the client's decrypt and re-encrypt of refresh rounds
	"flood",           // noise flooding of the logits
	"engine-other",    // engine time outside every timed kind (residual adds, scaling)
	"client",          // the client's token encryption and logits decryption
	"transport-other", // serialization, gRPC, loopback, sampling
}

// ReadMachine describes this machine.
func ReadMachine(note string) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		Date: time.Now().UTC().Format(time.RFC3339), Note: note}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if m.CPU == "" {
		m.CPU = "unknown"
	}
	total, avail := MemInfo()
	m.MemoryGiB, m.MemAvailableGiB = round2(total), round2(avail)
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAverage = strings.Join(f[:3], " ")
		}
	}
	return m
}

// MemInfo returns total and available memory in GiB (0 when unknown).
func MemInfo() (total, avail float64) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = kb / (1 << 20)
		case "MemAvailable:":
			avail = kb / (1 << 20)
		}
	}
	return
}

func round2(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

// WriteJSON writes the results, indented.
func (r *Results) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// ReadResults parses results.json and checks its schema.
func ReadResults(rd io.Reader) (*Results, error) {
	var r Results
	dec := json.NewDecoder(rd)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, err
	}
	if r.Schema != Schema {
		return nil, fmt.Errorf("bench: results schema %q, want %q", r.Schema, Schema)
	}
	return &r, nil
}
