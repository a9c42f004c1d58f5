package protocol

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
)

// Phase is the part of a session a message belongs to.
type Phase string

// Phases: setup (model list and key upload), prefill (from Start to the
// first logits), decode (every later token).
const (
	PhaseSetup   Phase = "setup"
	PhasePrefill Phase = "prefill"
	PhaseDecode  Phase = "decode"
)

// Kind is what a message carries.
type Kind string

// Message kinds.
const (
	KindControl        Kind = "control" // headers, start, end, done, model list
	KindKeys           Kind = "keys"    // evaluation and public key chunks
	KindPrompt         Kind = "prompt"
	KindRefreshRequest Kind = "refresh_request"
	KindRefreshAnswer  Kind = "refresh_answer"
	KindLogits         Kind = "logits"
	KindNextToken      Kind = "next_token"
)

// Direction of a message: up is client to server.
type Direction bool

// Directions.
const (
	Up   Direction = true
	Down Direction = false
)

// KindOf classifies a protocol message.
func KindOf(m proto.Message) Kind {
	switch x := m.(type) {
	case *CreateSessionRequest:
		if x.GetChunk() != nil {
			return KindKeys
		}
	case *GenerateRequest:
		switch x.Msg.(type) {
		case *GenerateRequest_Prompt:
			return KindPrompt
		case *GenerateRequest_RefreshAnswer:
			return KindRefreshAnswer
		case *GenerateRequest_NextToken:
			return KindNextToken
		}
	case *GenerateResponse:
		switch x.Msg.(type) {
		case *GenerateResponse_Refresh:
			return KindRefreshRequest
		case *GenerateResponse_Logits:
			return KindLogits
		}
	}
	return KindControl
}

// Size is the encoded size of a message: the bytes counted for it. gRPC
// adds 5 bytes of framing per message, HTTP/2 and TLS a little more; those
// are not counted.
func Size(m proto.Message) int { return proto.Size(m) }

type meterKey struct {
	phase Phase
	kind  Kind
}

type meterCount struct{ up, down, msgs uint64 }

// Meter counts bytes by phase, kind and direction. Safe for concurrent use.
// Client and server each keep one; for a session both see the same
// messages, so their counts agree.
type Meter struct {
	mu sync.Mutex
	m  map[meterKey]*meterCount
}

// NewMeter returns an empty meter.
func NewMeter() *Meter { return &Meter{m: map[meterKey]*meterCount{}} }

// Add counts n bytes of one message.
func (mt *Meter) Add(phase Phase, kind Kind, dir Direction, n int) {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	k := meterKey{phase, kind}
	c := mt.m[k]
	if c == nil {
		c = &meterCount{}
		mt.m[k] = c
	}
	if dir == Up {
		c.up += uint64(n)
	} else {
		c.down += uint64(n)
	}
	c.msgs++
}

// Merge adds a snapshot's counts (messages included).
func (mt *Meter) Merge(t Traffic) {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	for _, r := range t {
		k := meterKey{r.Phase, r.Kind}
		c := mt.m[k]
		if c == nil {
			c = &meterCount{}
			mt.m[k] = c
		}
		c.up += r.Up
		c.down += r.Down
		c.msgs += r.Messages
	}
}

// Count counts one message and returns its size.
func (mt *Meter) Count(phase Phase, dir Direction, m proto.Message) int {
	n := Size(m)
	mt.Add(phase, KindOf(m), dir, n)
	return n
}

// Traffic is a snapshot of a meter.
type Traffic []TrafficRow

// TrafficRow is the count of one phase and kind.
type TrafficRow struct {
	Phase    Phase  `json:"phase"`
	Kind     Kind   `json:"kind"`
	Up       uint64 `json:"up_bytes"`
	Down     uint64 `json:"down_bytes"`
	Messages uint64 `json:"messages"`
}

var phaseOrder = map[Phase]int{PhaseSetup: 0, PhasePrefill: 1, PhaseDecode: 2}

// Snapshot returns the counts, sorted by phase then kind.
func (mt *Meter) Snapshot() Traffic {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	t := make(Traffic, 0, len(mt.m))
	for k, c := range mt.m {
		t = append(t, TrafficRow{Phase: k.phase, Kind: k.kind, Up: c.up, Down: c.down, Messages: c.msgs})
	}
	t.sort()
	return t
}

func (t Traffic) sort() {
	slices.SortFunc(t, func(a, b TrafficRow) int {
		if d := phaseOrder[a.Phase] - phaseOrder[b.Phase]; d != 0 {
			return d
		}
		return strings.Compare(string(a.Kind), string(b.Kind))
	})
}

// Bytes sums the traffic of a phase ("" for all phases) in one direction.
func (t Traffic) Bytes(phase Phase, dir Direction) uint64 {
	var n uint64
	for _, r := range t {
		if phase == "" || r.Phase == phase {
			if dir == Up {
				n += r.Up
			} else {
				n += r.Down
			}
		}
	}
	return n
}

// Kind sums the traffic of one kind in a phase ("" for all phases).
func (t Traffic) Kind(phase Phase, kind Kind) (up, down uint64) {
	for _, r := range t {
		if (phase == "" || r.Phase == phase) && r.Kind == kind {
			up += r.Up
			down += r.Down
		}
	}
	return
}

// Proto converts the snapshot for the wire.
func (t Traffic) Proto() *TrafficReport {
	out := &TrafficReport{}
	for _, r := range t {
		out.Entries = append(out.Entries, &TrafficEntry{Phase: string(r.Phase), Kind: string(r.Kind), UpBytes: r.Up, DownBytes: r.Down, Messages: r.Messages})
	}
	return out
}

// TrafficFromProto converts a received snapshot.
func TrafficFromProto(m *TrafficReport) Traffic {
	var t Traffic
	for _, e := range m.GetEntries() {
		t = append(t, TrafficRow{Phase: Phase(e.Phase), Kind: Kind(e.Kind), Up: e.UpBytes, Down: e.DownBytes, Messages: e.Messages})
	}
	t.sort()
	return t
}

// String formats the traffic as a table.
func (t Traffic) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %-16s %14s %14s %6s\n", "phase", "kind", "up bytes", "down bytes", "msgs")
	for _, r := range t {
		fmt.Fprintf(&b, "%-8s %-16s %14d %14d %6d\n", r.Phase, r.Kind, r.Up, r.Down, r.Messages)
	}
	return b.String()
}
