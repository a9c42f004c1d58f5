package model

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Safetensors (https://github.com/huggingface/safetensors) layout:
//
//	8 bytes   little-endian uint64 N, the header length
//	N bytes   JSON object: {"__metadata__": {string: string}, "name":
//	          {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//	rest      the byte buffer; offsets are relative to its start, tensors are
//	          row-major little-endian, and together they cover it exactly.
//
// The reader is strict: anything the format does not allow is an error that
// says what is wrong and where.

// Dtype is a safetensors element type.
type Dtype string

// Element types this package reads. It writes F32 and F64 only.
const (
	F64  Dtype = "F64"
	F32  Dtype = "F32"
	F16  Dtype = "F16"
	BF16 Dtype = "BF16"
)

// MaxSafetensorsHeader bounds the JSON header (the reference implementation
// uses the same 100 MB limit).
const MaxSafetensorsHeader = 100_000_000

// Tensor is a dense row-major tensor. A scalar has an empty Shape and one
// element.
type Tensor struct {
	Shape []int
	Data  []float64
}

// Size returns the number of elements Shape describes.
func (t Tensor) Size() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// DtypeSize returns the size in bytes of one element, or 0 for a dtype this
// package cannot read.
func DtypeSize(d Dtype) int {
	switch d {
	case F64:
		return 8
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

// knownDtypes are the dtypes the format defines; reading those we do not
// convert gives "unsupported" rather than "unknown".
var knownDtypes = map[string]bool{
	"BOOL": true, "U8": true, "I8": true, "U16": true, "I16": true, "U32": true, "I32": true,
	"U64": true, "I64": true, "F8_E5M2": true, "F8_E4M3": true, "F8_E8M0": true, "F4": true, "F6_E2M3": true, "F6_E3M2": true,
}

// tensorInfo is one header entry.
type tensorInfo struct {
	Dtype       *string   `json:"dtype"`
	Shape       *[]int    `json:"shape"`
	DataOffsets *[]uint64 `json:"data_offsets"`
}

// SafetensorsHeader is a parsed and validated header.
type SafetensorsHeader struct {
	Meta    map[string]string
	Tensors map[string]TensorInfo
	// DataLen is the length of the byte buffer the header describes.
	DataLen uint64
}

// TensorInfo describes one tensor in a header.
type TensorInfo struct {
	Dtype      Dtype
	Shape      []int
	Begin, End uint64
}

// ReadSafetensors reads a whole safetensors stream. Every tensor is converted
// to float64 (F64, F32, F16 and BF16 are supported). Trailing bytes after the
// described buffer are an error. Memory grows with the bytes actually read, so
// a lying header cannot make it allocate more than the input holds.
func ReadSafetensors(r io.Reader) (map[string]Tensor, map[string]string, error) {
	var n [8]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, nil, fmt.Errorf("safetensors: reading the 8-byte header length: %w (file empty or truncated)", err)
	}
	hlen := binary.LittleEndian.Uint64(n[:])
	if hlen > MaxSafetensorsHeader {
		return nil, nil, fmt.Errorf("safetensors: header length %d exceeds the %d-byte limit (not a safetensors file, or corrupt)", hlen, MaxSafetensorsHeader)
	}
	hdr, err := readAtMost(r, int(hlen))
	if err != nil {
		return nil, nil, fmt.Errorf("safetensors: reading the %d-byte header: %w", hlen, err)
	}
	if len(hdr) < int(hlen) {
		return nil, nil, fmt.Errorf("safetensors: file truncated inside the header (%d of %d bytes)", len(hdr), hlen)
	}
	h, err := ParseSafetensorsHeader(hdr)
	if err != nil {
		return nil, nil, err
	}
	// Read one byte more than described to detect trailing data.
	var buf []byte
	if h.DataLen < math.MaxInt64 {
		buf, err = readAtMost(r, int64ToInt(int64(h.DataLen)+1))
	} else {
		err = fmt.Errorf("data length %d too large", h.DataLen)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("safetensors: reading the data buffer: %w", err)
	}
	if uint64(len(buf)) < h.DataLen {
		return nil, nil, fmt.Errorf("safetensors: file truncated: the header describes %d data bytes, only %d present", h.DataLen, len(buf))
	}
	if uint64(len(buf)) > h.DataLen {
		return nil, nil, fmt.Errorf("safetensors: trailing bytes after the %d-byte data buffer (corrupt or concatenated file)", h.DataLen)
	}
	ts, err := h.decode(buf)
	if err != nil {
		return nil, nil, err
	}
	return ts, h.Meta, nil
}

// ParseSafetensors parses a safetensors file held in memory.
func ParseSafetensors(b []byte) (map[string]Tensor, map[string]string, error) {
	return ReadSafetensors(bytes.NewReader(b))
}

func int64ToInt(v int64) int {
	if v > math.MaxInt {
		return math.MaxInt
	}
	return int(v)
}

// readAtMost reads up to n bytes, growing the buffer as data arrives.
func readAtMost(r io.Reader, n int) ([]byte, error) {
	var buf bytes.Buffer
	if n < 1<<20 {
		buf.Grow(n)
	}
	_, err := io.Copy(&buf, io.LimitReader(r, int64(n)))
	return buf.Bytes(), err
}

// ParseSafetensorsHeader parses and validates the JSON header (without the
// 8-byte length prefix): entries, dtypes, shapes and offsets, which must tile
// [0, DataLen) without gaps or overlaps.
func ParseSafetensorsHeader(hdr []byte) (*SafetensorsHeader, error) {
	trimmed := bytes.TrimRight(hdr, " ") // writers pad with spaces for alignment
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("safetensors: header is not a JSON object (not a safetensors file, or corrupt)")
	}
	if err := checkJSONNoDuplicates(trimmed); err != nil {
		return nil, fmt.Errorf("safetensors: malformed header: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &raw); err != nil {
		return nil, fmt.Errorf("safetensors: malformed header JSON: %w", err)
	}
	h := &SafetensorsHeader{Tensors: make(map[string]TensorInfo, len(raw))}
	type span struct {
		name       string
		begin, end uint64
	}
	var spans []span
	for name, v := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(v, &h.Meta); err != nil {
				return nil, fmt.Errorf("safetensors: __metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		var ti tensorInfo
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ti); err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: malformed entry: %w", name, err)
		}
		if ti.Dtype == nil || ti.Shape == nil || ti.DataOffsets == nil {
			return nil, fmt.Errorf("safetensors: tensor %q: entry needs dtype, shape and data_offsets", name)
		}
		dt := Dtype(*ti.Dtype)
		es := DtypeSize(dt)
		if es == 0 {
			if knownDtypes[*ti.Dtype] {
				return nil, fmt.Errorf("safetensors: tensor %q: dtype %s is not supported (entropi reads F64, F32, F16, BF16; convert the file)", name, *ti.Dtype)
			}
			return nil, fmt.Errorf("safetensors: tensor %q: unknown dtype %q", name, *ti.Dtype)
		}
		nel := uint64(1)
		for _, d := range *ti.Shape {
			if d < 0 {
				return nil, fmt.Errorf("safetensors: tensor %q: negative dimension in shape %v", name, *ti.Shape)
			}
			if d != 0 && nel > (1<<56)/uint64(d) {
				return nil, fmt.Errorf("safetensors: tensor %q: shape %v is too large", name, *ti.Shape)
			}
			nel *= uint64(d)
		}
		off := *ti.DataOffsets
		if len(off) != 2 || off[0] > off[1] {
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets %v must be [begin, end] with begin ≤ end", name, off)
		}
		if off[1]-off[0] != nel*uint64(es) {
			return nil, fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, data_offsets %v give %d", name, *ti.Shape, dt, nel*uint64(es), off, off[1]-off[0])
		}
		h.Tensors[name] = TensorInfo{Dtype: dt, Shape: slices.Clone(*ti.Shape), Begin: off[0], End: off[1]}
		spans = append(spans, span{name, off[0], off[1]})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		if spans[i].end != spans[j].end {
			return spans[i].end < spans[j].end
		}
		return spans[i].name < spans[j].name
	})
	var pos uint64
	for i, s := range spans {
		if s.begin != pos {
			if s.begin < pos {
				return nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d, %d] overlap tensor %q", s.name, s.begin, s.end, spans[i-1].name)
			}
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d, %d] leave a gap at byte %d of the data buffer", s.name, s.begin, s.end, pos)
		}
		pos = s.end
	}
	h.DataLen = pos
	return h, nil
}

// checkJSONNoDuplicates rejects duplicate keys in any object of a JSON
// document (encoding/json silently keeps the last).
func checkJSONNoDuplicates(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > 64 {
			return errors.New("JSON nested too deeply")
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k, ok := kt.(string)
				if !ok {
					return fmt.Errorf("object key is not a string")
				}
				if seen[k] {
					return fmt.Errorf("duplicate key %q", k)
				}
				seen[k] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		case '[':
			for dec.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		}
		_, err = dec.Token() // closing delimiter
		return err
	}
	if err := walk(0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("extra data after the JSON header")
	}
	return nil
}

func (h *SafetensorsHeader) decode(buf []byte) (map[string]Tensor, error) {
	out := make(map[string]Tensor, len(h.Tensors))
	for name, ti := range h.Tensors {
		b := buf[ti.Begin:ti.End]
		es := DtypeSize(ti.Dtype)
		data := make([]float64, len(b)/es)
		switch ti.Dtype {
		case F64:
			for i := range data {
				data[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
			}
		case F32:
			for i := range data {
				data[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
			}
		case F16:
			for i := range data {
				data[i] = halfToFloat(binary.LittleEndian.Uint16(b[2*i:]))
			}
		case BF16:
			for i := range data {
				data[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16))
			}
		}
		out[name] = Tensor{Shape: slices.Clone(ti.Shape), Data: data}
	}
	return out, nil
}

// halfToFloat converts IEEE 754 binary16 to float64.
func halfToFloat(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(frac, -24)
	case 0x1f:
		if frac == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * math.Ldexp(1024+frac, exp-25)
}

// WriteSafetensors writes tensors and metadata in the safetensors format
// with element type dtype (F32 or F64). The output is deterministic: tensors
// are laid out in name order and the header is padded with spaces to a
// multiple of 8 bytes, as the reference writer does. Writing F32 fails if a
// finite value overflows float32.
func WriteSafetensors(w io.Writer, tensors map[string]Tensor, meta map[string]string, dtype Dtype) error {
	if dtype != F32 && dtype != F64 {
		return fmt.Errorf("safetensors: can write F32 or F64, not %q", dtype)
	}
	es := uint64(DtypeSize(dtype))
	names := make([]string, 0, len(tensors))
	for name := range tensors {
		if name == "__metadata__" {
			return fmt.Errorf("safetensors: invalid tensor name %q", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var hdr strings.Builder
	hdr.WriteByte('{')
	if len(meta) > 0 {
		mb, err := json.Marshal(meta) // sorted keys
		if err != nil {
			return fmt.Errorf("safetensors: metadata: %w", err)
		}
		hdr.WriteString(`"__metadata__":`)
		hdr.Write(mb)
	}
	var off uint64
	for i, name := range names {
		t := tensors[name]
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("safetensors: tensor %q: negative dimension in shape %v", name, t.Shape)
			}
		}
		if t.Size() != len(t.Data) {
			return fmt.Errorf("safetensors: tensor %q: shape %v holds %d elements, data has %d", name, t.Shape, t.Size(), len(t.Data))
		}
		if i > 0 || len(meta) > 0 {
			hdr.WriteByte(',')
		}
		nb, _ := json.Marshal(name)
		hdr.Write(nb)
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sb, _ := json.Marshal(shape)
		end := off + uint64(len(t.Data))*es
		fmt.Fprintf(&hdr, `:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, dtype, sb, off, end)
		off = end
	}
	hdr.WriteByte('}')
	for hdr.Len()%8 != 0 {
		hdr.WriteByte(' ')
	}
	if hdr.Len() > MaxSafetensorsHeader {
		return fmt.Errorf("safetensors: header of %d bytes exceeds the %d-byte limit (too much metadata or too many tensors)", hdr.Len(), MaxSafetensorsHeader)
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(hdr.Len()))
	bw.Write(n[:])
	bw.WriteString(hdr.String())
	var scratch [8]byte
	for _, name := range names {
		for i, v := range tensors[name].Data {
			if dtype == F64 {
				binary.LittleEndian.PutUint64(scratch[:], math.Float64bits(v))
				bw.Write(scratch[:8])
				continue
			}
			f := float32(v)
			if math.IsInf(float64(f), 0) && !math.IsInf(v, 0) {
				return fmt.Errorf("safetensors: tensor %q element %d = %g overflows float32; save as F64", name, i, v)
			}
			binary.LittleEndian.PutUint32(scratch[:], math.Float32bits(f))
			bw.Write(scratch[:4])
		}
	}
	return bw.Flush()
}

// formatShape renders a shape for error messages.
func formatShape(s []int) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.Itoa(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}
