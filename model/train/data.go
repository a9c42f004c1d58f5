package train

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
)

// Loader draws training windows: random contiguous runs of T+1 tokens from
// one token stream (inputs are the first T, targets the last T), start
// positions uniform over the stream, from a seeded PCG generator. The draw
// sequence is a function of (seed, stream length, T) only; its position is
// the generator state, which State/SetState save and restore for resuming.
type Loader struct {
	tokens []int32
	seqLen int
	pcg    *rand.PCG
	rng    *rand.Rand
	drawn  int64
}

// loaderStream distinguishes the loader's PCG stream from other generators
// seeded with the same user seed.
const loaderStream = 0x64617461 // "data"

// NewLoader returns a loader over tokens for sequences of seqLen tokens.
func NewLoader(tokens []int32, seqLen int, seed uint64) (*Loader, error) {
	if seqLen < 1 {
		return nil, fmt.Errorf("loader: sequence length %d < 1", seqLen)
	}
	if len(tokens) < seqLen+1 {
		return nil, fmt.Errorf("loader: stream of %d tokens is shorter than one window of %d+1", len(tokens), seqLen)
	}
	pcg := rand.NewPCG(seed, loaderStream)
	return &Loader{tokens: tokens, seqLen: seqLen, pcg: pcg, rng: rand.New(pcg)}, nil
}

// SeqLen is the window length T.
func (l *Loader) SeqLen() int { return l.seqLen }

// Drawn is the number of windows drawn so far.
func (l *Loader) Drawn() int64 { return l.drawn }

// Next draws n windows.
func (l *Loader) Next(n int) (inputs, targets [][]int) {
	inputs, targets = make([][]int, n), make([][]int, n)
	span := len(l.tokens) - l.seqLen // valid starts: [0, span)
	for b := 0; b < n; b++ {
		s := l.rng.IntN(span)
		inputs[b], targets[b] = window(l.tokens, s, l.seqLen)
	}
	l.drawn += int64(n)
	return inputs, targets
}

func window(tokens []int32, start, seqLen int) (in, tg []int) {
	in, tg = make([]int, seqLen), make([]int, seqLen)
	for i := 0; i < seqLen; i++ {
		in[i] = int(tokens[start+i])
		tg[i] = int(tokens[start+i+1])
	}
	return in, tg
}

// State encodes the loader position: PCG state and the draw count.
func (l *Loader) State() ([]byte, error) {
	b, err := l.pcg.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(b, uint64(l.drawn)), nil
}

// SetState restores a position saved by State.
func (l *Loader) SetState(b []byte) error {
	if len(b) < 8 {
		return errors.New("loader: state too short")
	}
	if err := l.pcg.UnmarshalBinary(b[:len(b)-8]); err != nil {
		return fmt.Errorf("loader: %w", err)
	}
	l.drawn = int64(binary.BigEndian.Uint64(b[len(b)-8:]))
	return nil
}

// EvalWindows returns deterministic evaluation windows over a held-out
// stream: non-overlapping windows of T+1 tokens (consecutive windows share
// no target), at most max of them, spread evenly over the stream when it
// holds more than max.
func EvalWindows(tokens []int32, seqLen, max int) (inputs, targets [][]int, err error) {
	if seqLen < 1 || max < 1 {
		return nil, nil, fmt.Errorf("eval windows: sequence length %d and count %d must be positive", seqLen, max)
	}
	avail := (len(tokens) - 1) / seqLen // windows at starts 0, T, 2T, ...
	if avail < 1 {
		return nil, nil, fmt.Errorf("eval windows: stream of %d tokens is shorter than one window of %d+1", len(tokens), seqLen)
	}
	n := min(avail, max)
	for k := 0; k < n; k++ {
		// k-th of n evenly spaced window indices in [0, avail).
		idx := int(int64(k) * int64(avail) / int64(n))
		in, tg := window(tokens, idx*seqLen, seqLen)
		inputs, targets = append(inputs, in), append(targets, tg)
	}
	return inputs, targets, nil
}
