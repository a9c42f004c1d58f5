package he

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// OpKind names a class of homomorphic operation for counting and timing.
type OpKind int

// Operation kinds counted by Counters.
const (
	OpRotate    OpKind = iota // one key-switched rotation (plain or hoisted)
	OpHoistDec                // one hoisted decomposition (shared by several rotations)
	OpMulCtCt                 // ciphertext × ciphertext product (tensor only)
	OpRelin                   // relinearization (one key-switch)
	OpMulPtCt                 // plaintext × ciphertext product
	OpRescale                 // rescale by one prime
	OpAdd                     // ciphertext additions (not timed)
	OpLinear                  // a whole linear operation (MatVec…), wall time
	OpAttention               // a whole attention primitive, wall time
	numOpKinds
)

var opKindNames = [numOpKinds]string{"rotate", "hoist-decomp", "mul-ct-ct", "relin", "mul-pt-ct", "rescale", "add", "linear", "attention"}

func (k OpKind) String() string {
	if k < 0 || k >= numOpKinds {
		return fmt.Sprintf("OpKind(%d)", int(k))
	}
	return opKindNames[k]
}

// Counters counts homomorphic operations and accumulates wall time per kind.
// All methods are safe for concurrent use and a nil *Counters is a valid
// no-op sink. Times of operations run in parallel add up (they measure work,
// not latency), except OpLinear/OpAttention which time whole calls.
type Counters struct {
	n  [numOpKinds]atomic.Int64
	ns [numOpKinds]atomic.Int64
}

// Add records count operations of the given kind taking d in total.
func (c *Counters) Add(kind OpKind, count int, d time.Duration) {
	if c == nil {
		return
	}
	c.n[kind].Add(int64(count))
	c.ns[kind].Add(int64(d))
}

// since records one operation of kind started at t0.
func (c *Counters) since(kind OpKind, t0 time.Time) {
	if c == nil {
		return
	}
	c.Add(kind, 1, time.Since(t0))
}

// Count returns how many operations of kind were recorded.
func (c *Counters) Count(kind OpKind) int64 {
	if c == nil {
		return 0
	}
	return c.n[kind].Load()
}

// Time returns the accumulated time of operations of kind.
func (c *Counters) Time(kind OpKind) time.Duration {
	if c == nil {
		return 0
	}
	return time.Duration(c.ns[kind].Load())
}

// KeySwitches is rotations plus relinearizations: the number of evaluation
// key applications, the dominant cost of a circuit.
func (c *Counters) KeySwitches() int64 { return c.Count(OpRotate) + c.Count(OpRelin) }

// Reset sets every counter to zero.
func (c *Counters) Reset() {
	if c == nil {
		return
	}
	for i := range c.n {
		c.n[i].Store(0)
		c.ns[i].Store(0)
	}
}

// Snapshot is a plain copy of the counters.
type Snapshot struct {
	Count [numOpKinds]int64
	Time  [numOpKinds]time.Duration
}

// Snapshot copies the current values.
func (c *Counters) Snapshot() (s Snapshot) {
	if c == nil {
		return
	}
	for i := range c.n {
		s.Count[i] = c.n[i].Load()
		s.Time[i] = time.Duration(c.ns[i].Load())
	}
	return
}

// Sub returns s − t (the operations done between two snapshots).
func (s Snapshot) Sub(t Snapshot) (d Snapshot) {
	for i := range s.Count {
		d.Count[i] = s.Count[i] - t.Count[i]
		d.Time[i] = s.Time[i] - t.Time[i]
	}
	return
}

// Get returns the count of one kind.
func (s Snapshot) Get(kind OpKind) int64 { return s.Count[kind] }

// KeySwitches is rotations plus relinearizations.
func (s Snapshot) KeySwitches() int64 { return s.Count[OpRotate] + s.Count[OpRelin] }

func (s Snapshot) String() string {
	var b strings.Builder
	for i := OpKind(0); i < numOpKinds; i++ {
		if s.Count[i] == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		if s.Time[i] > 0 {
			fmt.Fprintf(&b, "%s=%d(%v)", i, s.Count[i], s.Time[i].Round(time.Microsecond))
		} else {
			fmt.Fprintf(&b, "%s=%d", i, s.Count[i])
		}
	}
	return b.String()
}

func (c *Counters) String() string { return c.Snapshot().String() }
