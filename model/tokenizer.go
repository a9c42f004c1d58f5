package model

import (
	"bytes"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// Byte-level BPE tokenizer.
//
// Ids 0–255 are the single bytes, so every byte string, invalid UTF-8
// included, encodes and decodes back exactly. Ids 256… are merges in the
// order training learned them: merge i joins two earlier ids into id 256+i.
// An optional end-of-text token takes the last id; Encode never produces it
// (the literal text "<|endoftext|>" encodes as ordinary bytes), a sampler
// may, and Decode renders it as "<|endoftext|>".
//
// Pre-tokenization ("code-v1") cuts the input into chunks and merges never
// cross a chunk boundary:
//   - identifiers: a letter, '_' or byte ≥ 0x80 followed by letters, digits,
//     '_' and bytes ≥ 0x80 (so UTF-8 stays inside words);
//   - numbers: runs of ASCII digits;
//   - punctuation: runs of the remaining non-space bytes;
//   - whitespace: runs of ' ', \t, \n, \r, \v, \f;
//   - like GPT-2, one space before an identifier, number or punctuation run
//     belongs to that chunk (" return", " :="), so a whitespace run followed
//     by one of them gives up its last byte if that byte is a space;
//   - no chunk is longer than MaxTokenBytes bytes (longer runs are cut), which
//     bounds the length of every token.

// MaxTokenBytes bounds the pre-tokenizer's chunks and hence every token.
const MaxTokenBytes = 64

// MaxVocab bounds the vocabulary size accepted by training and loading.
const MaxVocab = 1 << 20

// EndOfTextText is how Decode and Token render the end-of-text token.
const EndOfTextText = "<|endoftext|>"

const (
	tokenizerType    = "byte-bpe"
	tokenizerVersion = 1
	pretokenizerName = "code-v1"
	cacheLimit       = 1 << 16
)

// Tokenizer is a trained byte-level BPE tokenizer. It is safe for concurrent
// use. Make one with TrainBPE or json.Unmarshal; the zero value has no
// vocabulary (Decode rejects every id).
type Tokenizer struct {
	merges [][2]int32
	tokens [][]byte         // id → bytes, for ids < 256+len(merges)
	ranks  map[uint64]int32 // pair → merged id
	eot    int              // end-of-text id, or -1

	mu       sync.RWMutex
	cache    map[string][]int32
	cacheMax int // chunks the cache holds at most (0: cacheLimit)
}

// BPEOptions are TrainBPEWith's options.
type BPEOptions struct {
	// EndOfText reserves the last id for an end-of-text token.
	EndOfText bool
}

// TrainBPE learns vocabSize−256 merges from data (no special tokens). See
// TrainBPEWith.
func TrainBPE(data []byte, vocabSize int) (*Tokenizer, error) {
	return TrainBPEWith(data, vocabSize, BPEOptions{})
}

// TrainBPEWith learns merges until the vocabulary (256 bytes, the merges, and
// the end-of-text token if asked for) reaches vocabSize, or until no adjacent
// pair is left in the data, in which case the vocabulary is smaller (check
// VocabSize). Each step merges the most frequent adjacent pair (ties: the
// smallest pair of ids), so training is deterministic.
//
// Training counts the unique chunks once and then keeps pair counts
// incrementally, touching only the chunks that hold the merged pair.
func TrainBPEWith(data []byte, vocabSize int, opts BPEOptions) (*Tokenizer, error) {
	minV := 256
	if opts.EndOfText {
		minV++
	}
	if vocabSize < minV || vocabSize > MaxVocab {
		return nil, fmt.Errorf("tokenizer: vocabulary size %d out of range [%d, %d]", vocabSize, minV, MaxVocab)
	}
	nMerges := vocabSize - minV

	// Unique chunks with their counts.
	index := map[string]int32{}
	type word struct {
		syms  []int32
		count int64
	}
	var words []word
	forEachChunk(data, func(c []byte) {
		if i, ok := index[string(c)]; ok {
			words[i].count++
			return
		}
		index[string(c)] = int32(len(words))
		s := make([]int32, len(c))
		for j, b := range c {
			s[j] = int32(b)
		}
		words = append(words, word{syms: s, count: 1})
	})
	index = nil

	counts := map[uint64]int64{}
	where := map[uint64][]int32{}
	for w, wd := range words {
		for j := 0; j+1 < len(wd.syms); j++ {
			p := pairKey(wd.syms[j], wd.syms[j+1])
			counts[p] += wd.count
			if l := where[p]; len(l) == 0 || l[len(l)-1] != int32(w) {
				where[p] = append(l, int32(w))
			}
		}
	}
	h := &pairHeap{}
	for p, c := range counts {
		*h = append(*h, pairEntry{c, p})
	}
	heap.Init(h)

	stamp := make([]int32, len(words))
	for i := range stamp {
		stamp[i] = -1
	}
	t := &Tokenizer{eot: -1}
	delta := map[uint64]int64{}
	for len(t.merges) < nMerges {
		var best pairEntry
		found := false
		for h.Len() > 0 {
			e := heap.Pop(h).(pairEntry)
			if c, ok := counts[e.pair]; ok && c == e.count {
				best, found = e, true
				break
			}
		}
		if !found {
			break
		}
		a, b := int32(best.pair>>32), int32(uint32(best.pair))
		id := int32(256 + len(t.merges))
		t.merges = append(t.merges, [2]int32{a, b})
		clear(delta)
		for _, w := range where[best.pair] {
			if stamp[w] == id {
				continue
			}
			stamp[w] = id
			wd := &words[w]
			s := wd.syms
			if !containsPair(s, a, b) {
				continue
			}
			for j := 0; j+1 < len(s); j++ {
				delta[pairKey(s[j], s[j+1])] -= wd.count
			}
			s = mergePair(s, a, b, id)
			wd.syms = s
			for j := 0; j+1 < len(s); j++ {
				p := pairKey(s[j], s[j+1])
				delta[p] += wd.count
				if s[j] == id || s[j+1] == id {
					if l := where[p]; len(l) == 0 || l[len(l)-1] != w {
						where[p] = append(l, w)
					}
				}
			}
		}
		delete(where, best.pair)
		for p, d := range delta {
			if d == 0 {
				continue
			}
			c := counts[p] + d
			if c <= 0 {
				delete(counts, p)
				delete(where, p)
				continue
			}
			counts[p] = c
			heap.Push(h, pairEntry{c, p})
		}
	}
	if opts.EndOfText {
		t.eot = 256 + len(t.merges)
	}
	if err := t.build(); err != nil {
		return nil, err // cannot happen for trained merges
	}
	return t, nil
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func containsPair(s []int32, a, b int32) bool {
	for j := 0; j+1 < len(s); j++ {
		if s[j] == a && s[j+1] == b {
			return true
		}
	}
	return false
}

// mergePair replaces every non-overlapping occurrence of (a, b), left to
// right, by id, in place.
func mergePair(s []int32, a, b, id int32) []int32 {
	out := s[:0]
	for j := 0; j < len(s); j++ {
		if j+1 < len(s) && s[j] == a && s[j+1] == b {
			out = append(out, id)
			j++
			continue
		}
		out = append(out, s[j])
	}
	return out
}

type pairEntry struct {
	count int64
	pair  uint64
}

type pairHeap []pairEntry

func (h pairHeap) Len() int { return len(h) }
func (h pairHeap) Less(i, j int) bool {
	if h[i].count != h[j].count {
		return h[i].count > h[j].count
	}
	return h[i].pair < h[j].pair
}
func (h pairHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pairHeap) Push(x any)   { *h = append(*h, x.(pairEntry)) }
func (h *pairHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// build derives the token table and merge ranks from t.merges and validates
// them.
func (t *Tokenizer) build() error {
	n := 256 + len(t.merges)
	if n > MaxVocab {
		return fmt.Errorf("tokenizer: %d merges exceed the vocabulary limit %d", len(t.merges), MaxVocab)
	}
	t.tokens = make([][]byte, n)
	for i := range 256 {
		t.tokens[i] = []byte{byte(i)}
	}
	t.ranks = make(map[uint64]int32, len(t.merges))
	for i, m := range t.merges {
		id := int32(256 + i)
		for _, x := range m {
			if x < 0 || x >= id {
				return fmt.Errorf("tokenizer: merge %d (id %d) refers to id %d, which is not an earlier token", i, id, x)
			}
		}
		p := pairKey(m[0], m[1])
		if _, dup := t.ranks[p]; dup {
			return fmt.Errorf("tokenizer: merge %d (id %d) repeats the pair [%d %d]", i, id, m[0], m[1])
		}
		l := len(t.tokens[m[0]]) + len(t.tokens[m[1]])
		if l > MaxTokenBytes {
			return fmt.Errorf("tokenizer: merge %d (id %d) makes a token of %d bytes, more than the pre-tokenizer's %d", i, id, l, MaxTokenBytes)
		}
		t.ranks[p] = id
		t.tokens[id] = append(append(make([]byte, 0, l), t.tokens[m[0]]...), t.tokens[m[1]]...)
	}
	if t.eot != -1 && t.eot != n {
		return fmt.Errorf("tokenizer: end-of-text id %d must be the last id %d", t.eot, n)
	}
	t.cache = make(map[string][]int32)
	return nil
}

// VocabSize is the number of ids: 256 bytes, the merges, and the
// end-of-text token if there is one.
func (t *Tokenizer) VocabSize() int {
	n := len(t.tokens)
	if t.eot >= 0 {
		n++
	}
	return n
}

// NumMerges is the number of learned merges.
func (t *Tokenizer) NumMerges() int { return len(t.merges) }

// EndOfText returns the end-of-text id, or -1 when the tokenizer has none.
func (t *Tokenizer) EndOfText() int { return t.eot }

// Token returns a copy of the bytes of token id, EndOfTextText for the
// end-of-text token, and nil for an id out of range. Tokens need not be valid
// UTF-8; quote them (%q) for display.
func (t *Tokenizer) Token(id int) []byte {
	if id == t.eot && id >= 0 {
		return []byte(EndOfTextText)
	}
	if id < 0 || id >= len(t.tokens) {
		return nil
	}
	return bytes.Clone(t.tokens[id])
}

// Encode tokenizes b. Decode(Encode(b)) == b for every byte string.
// Chunks already seen are looked up in a bounded cache shared by all calls
// (one read lock per call; new chunks are added in one batch at the end).
func (t *Tokenizer) Encode(b []byte) []int {
	out := make([]int, 0, len(b)/2+1)
	var fresh map[string][]int32
	t.mu.RLock()
	forEachChunk(b, func(c []byte) {
		if len(c) == 1 {
			out = append(out, int(c[0]))
			return
		}
		ids, ok := t.cache[string(c)]
		if !ok {
			if ids, ok = fresh[string(c)]; !ok {
				ids = t.bpe(c)
				if fresh == nil {
					fresh = map[string][]int32{}
				}
				fresh[string(c)] = ids
			}
		}
		for _, id := range ids {
			out = append(out, int(id))
		}
	})
	t.mu.RUnlock()
	if len(fresh) > 0 {
		t.mu.Lock()
		if t.cache == nil {
			t.cache = make(map[string][]int32)
		}
		limit := t.cacheMax
		if limit <= 0 {
			limit = cacheLimit
		}
		if len(t.cache)+len(fresh) > limit {
			clear(t.cache)
		}
		for k, v := range fresh {
			if len(t.cache) >= limit {
				break
			}
			t.cache[k] = v
		}
		t.mu.Unlock()
	}
	return out
}

// bpe applies the merges to one chunk in training order.
func (t *Tokenizer) bpe(c []byte) []int32 {
	s := make([]int32, len(c))
	for i, b := range c {
		s[i] = int32(b)
	}
	for len(s) > 1 {
		best := int32(-1)
		var ba, bb int32
		for j := 0; j+1 < len(s); j++ {
			if id, ok := t.ranks[pairKey(s[j], s[j+1])]; ok && (best < 0 || id < best) {
				best, ba, bb = id, s[j], s[j+1]
			}
		}
		if best < 0 {
			break
		}
		s = mergePair(s, ba, bb, best)
	}
	return s
}

// Decode turns ids back into bytes; an id out of range is an error.
func (t *Tokenizer) Decode(ids []int) ([]byte, error) {
	n := 0
	for i, id := range ids {
		switch {
		case id >= 0 && id < len(t.tokens):
			n += len(t.tokens[id])
		case id == t.eot && id >= 0:
			n += len(EndOfTextText)
		default:
			return nil, fmt.Errorf("tokenizer: id %d at position %d is out of range [0, %d)", id, i, t.VocabSize())
		}
	}
	out := make([]byte, 0, n)
	for _, id := range ids {
		if id == t.eot {
			out = append(out, EndOfTextText...)
			continue
		}
		out = append(out, t.tokens[id]...)
	}
	return out, nil
}

// tokenizerJSON is the serialized form.
type tokenizerJSON struct {
	Type         string     `json:"type"`
	Version      int        `json:"version"`
	Pretokenizer string     `json:"pretokenizer"`
	Merges       [][2]int32 `json:"merges"`
	EndOfText    *int       `json:"end_of_text,omitempty"`
}

// MarshalJSON writes {"type":"byte-bpe","version":1,"pretokenizer":"code-v1",
// "merges":[[a,b],...],"end_of_text":id}; end_of_text is absent when the
// tokenizer has none.
func (t *Tokenizer) MarshalJSON() ([]byte, error) {
	j := tokenizerJSON{Type: tokenizerType, Version: tokenizerVersion, Pretokenizer: pretokenizerName, Merges: t.merges}
	if j.Merges == nil {
		j.Merges = [][2]int32{}
	}
	if t.eot >= 0 {
		e := t.eot
		j.EndOfText = &e
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads and validates MarshalJSON's format: known type,
// version and pre-tokenizer, merges that refer to earlier ids only, no
// repeated pair, tokens no longer than MaxTokenBytes, and an end-of-text id
// equal to the last id.
func (t *Tokenizer) UnmarshalJSON(b []byte) error {
	var j struct {
		Type         string    `json:"type"`
		Version      int       `json:"version"`
		Pretokenizer string    `json:"pretokenizer"`
		Merges       [][]int32 `json:"merges"`
		EndOfText    *int      `json:"end_of_text"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("tokenizer: malformed JSON: %w", err)
	}
	if dec.More() {
		return errors.New("tokenizer: extra data after the JSON object")
	}
	switch {
	case j.Type != tokenizerType:
		return fmt.Errorf("tokenizer: type %q, want %q", j.Type, tokenizerType)
	case j.Version > tokenizerVersion:
		return fmt.Errorf("tokenizer: version %d is newer than this entropi understands (%d); upgrade", j.Version, tokenizerVersion)
	case j.Version != tokenizerVersion:
		return fmt.Errorf("tokenizer: unknown version %d", j.Version)
	case j.Pretokenizer != pretokenizerName:
		return fmt.Errorf("tokenizer: unknown pre-tokenizer %q (this entropi knows %q)", j.Pretokenizer, pretokenizerName)
	}
	nt := &Tokenizer{merges: make([][2]int32, len(j.Merges)), eot: -1}
	for i, m := range j.Merges {
		if len(m) != 2 {
			return fmt.Errorf("tokenizer: malformed merge %d: %v is not a pair of ids", i, m)
		}
		nt.merges[i] = [2]int32{m[0], m[1]}
	}
	if j.EndOfText != nil {
		nt.eot = *j.EndOfText
		if nt.eot < 0 {
			return fmt.Errorf("tokenizer: negative end-of-text id %d", nt.eot)
		}
	}
	if err := nt.build(); err != nil {
		return err
	}
	t.mu.Lock()
	t.merges, t.tokens, t.ranks, t.eot, t.cache = nt.merges, nt.tokens, nt.ranks, nt.eot, nt.cache
	t.mu.Unlock()
	return nil
}

// Byte classes of the pre-tokenizer.
const (
	clsSpace = iota
	clsWord
	clsDigit
	clsPunct
)

var byteClass = func() (c [256]uint8) {
	for i := range c {
		b := byte(i)
		switch {
		case b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f':
			c[i] = clsSpace
		case b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '_' || b >= 0x80:
			c[i] = clsWord
		case b >= '0' && b <= '9':
			c[i] = clsDigit
		default:
			c[i] = clsPunct
		}
	}
	return
}()

// forEachChunk calls f on the pre-tokenizer's chunks of b, in order; they
// partition b. f must not retain the slice.
func forEachChunk(b []byte, f func([]byte)) {
	i := 0
	for i < len(b) {
		j := chunkEnd(b, i)
		if j-i > MaxTokenBytes {
			j = i + MaxTokenBytes
		}
		f(b[i:j])
		i = j
	}
}

// chunkEnd returns the end of the chunk that starts at i.
func chunkEnd(b []byte, i int) int {
	n := len(b)
	start := i
	if b[i] == ' ' && i+1 < n && byteClass[b[i+1]] != clsSpace {
		i++ // the leading space joins the following run
	}
	cls := byteClass[b[i]]
	j := i + 1
	switch cls {
	case clsSpace:
		for j < n && byteClass[b[j]] == clsSpace {
			j++
		}
		// Leave a final space to the following non-space run.
		if j < n && j-start > 1 && b[j-1] == ' ' {
			j--
		}
	case clsWord:
		for j < n && (byteClass[b[j]] == clsWord || byteClass[b[j]] == clsDigit) {
			j++
		}
	default:
		for j < n && byteClass[b[j]] == cls {
			j++
		}
	}
	return j
}
