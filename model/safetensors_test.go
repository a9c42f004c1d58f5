package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"
)

// rawSafetensors builds a file from a header string and data bytes, with a
// correct length prefix.
func rawSafetensors(header string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func stSampleTensors() map[string]Tensor {
	return map[string]Tensor{
		"b.matrix": {Shape: []int{2, 3}, Data: []float64{1, -2.5, math.Pi, 1e-30, -0, 65504.125}},
		"a.vector": {Shape: []int{4}, Data: []float64{0.1, 0.2, 0.3, math.SmallestNonzeroFloat64}},
		"c.scalar": {Shape: []int{}, Data: []float64{42.5}},
		"d.empty":  {Shape: []int{0, 3}, Data: []float64{}},
	}
}

func TestSafetensorsRoundTripF64Exact(t *testing.T) {
	in := stSampleTensors()
	meta := map[string]string{"k": "v", "json": `{"a":1}`}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, in, meta, F64); err != nil {
		t.Fatal(err)
	}
	out, gotMeta, err := ParseSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) || len(gotMeta) != len(meta) {
		t.Fatalf("got %d tensors %d meta, want %d %d", len(out), len(gotMeta), len(in), len(meta))
	}
	for k, v := range meta {
		if gotMeta[k] != v {
			t.Errorf("meta %s = %q, want %q", k, gotMeta[k], v)
		}
	}
	for name, want := range in {
		got := out[name]
		if formatShape(got.Shape) != formatShape(want.Shape) || len(got.Data) != len(want.Data) {
			t.Fatalf("%s: shape %v len %d, want %v len %d", name, got.Shape, len(got.Data), want.Shape, len(want.Data))
		}
		for i := range want.Data {
			if math.Float64bits(got.Data[i]) != math.Float64bits(want.Data[i]) {
				t.Errorf("%s[%d] = %v, want %v (bit-exact)", name, i, got.Data[i], want.Data[i])
			}
		}
	}
}

func TestSafetensorsRoundTripF32(t *testing.T) {
	in := stSampleTensors()
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, in, nil, F32); err != nil {
		t.Fatal(err)
	}
	out, meta, err := ParseSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if meta != nil {
		t.Errorf("no metadata written, got %v", meta)
	}
	for name, want := range in {
		for i, v := range want.Data {
			if got := out[name].Data[i]; got != float64(float32(v)) {
				t.Errorf("%s[%d] = %v, want float32 rounding %v", name, i, got, float64(float32(v)))
			}
		}
	}
}

func TestSafetensorsDeterministicLayout(t *testing.T) {
	var a, b bytes.Buffer
	meta := map[string]string{"z": "1", "a": "2"}
	if err := WriteSafetensors(&a, stSampleTensors(), meta, F32); err != nil {
		t.Fatal(err)
	}
	if err := WriteSafetensors(&b, stSampleTensors(), meta, F32); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two writes of the same tensors differ")
	}
	n := binary.LittleEndian.Uint64(a.Bytes())
	if n%8 != 0 {
		t.Errorf("header length %d not padded to 8", n)
	}
	hdr := string(a.Bytes()[8 : 8+n])
	want := `{"__metadata__":{"a":"2","z":"1"},"a.vector":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},` +
		`"b.matrix":{"dtype":"F32","shape":[2,3],"data_offsets":[16,40]},"c.scalar":{"dtype":"F32","shape":[],"data_offsets":[40,44]},` +
		`"d.empty":{"dtype":"F32","shape":[0,3],"data_offsets":[44,44]}}`
	if strings.TrimRight(hdr, " ") != want {
		t.Errorf("header\n%s\nwant\n%s", hdr, want)
	}
}

func TestSafetensorsReadHalfTypes(t *testing.T) {
	f16 := []uint16{0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x3555, 0x8000}
	f16want := []float64{1, -2, 65504, math.Ldexp(1, -24), math.Inf(1), math.Inf(-1), 0.333251953125, math.Copysign(0, -1)}
	bf16 := []uint16{0x3F80, 0xC000, 0x4049}
	bf16want := []float64{1, -2, 3.140625}
	var data bytes.Buffer
	binary.Write(&data, binary.LittleEndian, f16)
	binary.Write(&data, binary.LittleEndian, bf16)
	data.Write([]byte{0, 0, 0, 0, 0, 0, 0xf0, 0x3f}) // F64 1.0
	hdr := `{"h":{"dtype":"F16","shape":[8],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},` +
		`"d":{"dtype":"F64","shape":[1],"data_offsets":[22,30]}}`
	ts, _, err := ParseSafetensors(rawSafetensors(hdr, data.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range f16want {
		if g := ts["h"].Data[i]; g != w || math.Signbit(g) != math.Signbit(w) {
			t.Errorf("F16 %#04x = %v, want %v", f16[i], g, w)
		}
	}
	for i, w := range bf16want {
		if g := ts["b"].Data[i]; g != w {
			t.Errorf("BF16 %#04x = %v, want %v", bf16[i], g, w)
		}
	}
	if ts["d"].Data[0] != 1 {
		t.Errorf("F64 = %v, want 1", ts["d"].Data[0])
	}
	if !math.IsNaN(halfToFloat(0x7E00)) {
		t.Error("F16 0x7E00 should be NaN")
	}
}

func TestSafetensorsRejects(t *testing.T) {
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	ok := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	hugeLen := make([]byte, 8)
	binary.LittleEndian.PutUint64(hugeLen, MaxSafetensorsHeader+1)
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "header length"},
		{"short length", []byte{1, 2, 3}, "header length"},
		{"header too long", hugeLen, "exceeds"},
		{"header truncated", rawSafetensors(ok, f32(2))[:20], "truncated inside the header"},
		{"data truncated", rawSafetensors(ok, f32(2))[:8+len(ok)+5], "truncated"},
		{"trailing bytes", rawSafetensors(ok, f32(3)), "trailing bytes"},
		{"not an object", rawSafetensors(`[1,2]`, nil), "not a JSON object"},
		{"malformed JSON", rawSafetensors(`{"a":{"dtype":"F32",`, nil), "malformed header"},
		{"extra JSON", rawSafetensors(`{} {}`, nil), "extra data"},
		{"unknown dtype", rawSafetensors(`{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}`, f32(2)), `unknown dtype "Q7"`},
		{"unsupported dtype", rawSafetensors(`{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, f32(2)), "I64 is not supported"},
		{"missing field", rawSafetensors(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, f32(2)), "needs dtype, shape and data_offsets"},
		{"unknown field", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}`, f32(2)), "unknown field"},
		{"negative dim", rawSafetensors(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, f32(2)), "negative dimension"},
		{"fractional dim", rawSafetensors(`{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}`, f32(2)), "malformed entry"},
		{"huge shape", rawSafetensors(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, f32(2)), "too large"},
		{"size mismatch", rawSafetensors(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, f32(2)), "needs 12 bytes"},
		{"reversed offsets", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}`, f32(2)), "begin ≤ end"},
		{"three offsets", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}}`, f32(2)), "begin ≤ end"},
		{"overlap", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, f32(3)), "overlap"},
		{"gap", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, f32(3)), "gap"},
		{"duplicate tensor", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, f32(4)), `duplicate key "a"`},
		{"duplicate meta key", rawSafetensors(`{"__metadata__":{"k":"1","k":"2"}}`, nil), `duplicate key "k"`},
		{"non-string meta", rawSafetensors(`{"__metadata__":{"k":1}}`, nil), "strings to strings"},
	}
	for _, c := range cases {
		_, _, err := ParseSafetensors(c.file)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.want)
		}
	}
}

func TestSafetensorsAcceptsPaddingAndEmpty(t *testing.T) {
	for _, hdr := range []string{`{}`, `{}      `, `{"__metadata__":{}}`, `{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}  `} {
		if _, _, err := ParseSafetensors(rawSafetensors(hdr, nil)); err != nil {
			t.Errorf("%q: %v", hdr, err)
		}
	}
}

func TestWriteSafetensorsRejects(t *testing.T) {
	cases := []struct {
		name  string
		ts    map[string]Tensor
		dtype Dtype
		want  string
	}{
		{"float32 overflow", map[string]Tensor{"x": {Shape: []int{1}, Data: []float64{1e300}}}, F32, "overflows float32"},
		{"shape mismatch", map[string]Tensor{"x": {Shape: []int{2}, Data: []float64{1}}}, F32, "holds 2 elements"},
		{"bad dtype", map[string]Tensor{}, F16, "F32 or F64"},
		{"reserved name", map[string]Tensor{"__metadata__": {Shape: []int{1}, Data: []float64{1}}}, F32, "invalid tensor name"},
	}
	for _, c := range cases {
		err := WriteSafetensors(&bytes.Buffer{}, c.ts, nil, c.dtype)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	// F64 keeps what F32 cannot.
	if err := WriteSafetensors(&bytes.Buffer{}, cases[0].ts, nil, F64); err != nil {
		t.Errorf("F64 write of 1e300: %v", err)
	}
}

// FuzzReadSafetensors: the reader never panics, and whatever it accepts
// writes back (F64) and reads again to the same tensors.
func FuzzReadSafetensors(f *testing.F) {
	var buf bytes.Buffer
	WriteSafetensors(&buf, stSampleTensors(), map[string]string{"format": "pt"}, F32)
	f.Add(buf.Bytes())
	f.Add(rawSafetensors(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}`, []byte{0, 0x3c, 0, 0x7c}))
	f.Add(rawSafetensors(`{"a":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]}}`, []byte{0x80, 0x3f}))
	f.Add(rawSafetensors(`{}`, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, meta, err := ParseSafetensors(data)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteSafetensors(&out, ts, meta, F64); err != nil {
			t.Fatalf("accepted file does not write back: %v", err)
		}
		ts2, meta2, err := ParseSafetensors(out.Bytes())
		if err != nil {
			t.Fatalf("written file does not read back: %v", err)
		}
		if len(ts2) != len(ts) || len(meta2) != len(meta) {
			t.Fatalf("round trip changed counts: %d/%d tensors, %d/%d meta", len(ts2), len(ts), len(meta2), len(meta))
		}
		for name, a := range ts {
			b := ts2[name]
			if formatShape(a.Shape) != formatShape(b.Shape) {
				t.Fatalf("%s: shape %v became %v", name, a.Shape, b.Shape)
			}
			for i := range a.Data {
				if math.Float64bits(a.Data[i]) != math.Float64bits(b.Data[i]) {
					t.Fatalf("%s[%d]: %v became %v", name, i, a.Data[i], b.Data[i])
				}
			}
		}
	})
}

// TestSafetensorsReferenceVectors mirrors the reference implementation's
// Python tests (huggingface/safetensors bindings/python/tests/test_simple.py,
// test_serialization and the load-with-metadata case), with F32 in place of
// I32 (same element size): the same header bytes, padding included.
func TestSafetensorsReferenceVectors(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, map[string]Tensor{"test": {Shape: []int{2, 2}, Data: make([]float64, 4)}}, nil, F32); err != nil {
		t.Fatal(err)
	}
	want := "@\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}    ` + strings.Repeat("\x00", 16)
	if buf.String() != want {
		t.Errorf("serialization\n%q\nwant\n%q", buf.String(), want)
	}
	withMeta := "f\x00\x00\x00\x00\x00\x00\x00" + `{"__metadata__":{"framework":"pt"},"test1":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}       ` + strings.Repeat("\x00", 16)
	ts, meta, err := ParseSafetensors([]byte(withMeta))
	if err != nil {
		t.Fatal(err)
	}
	if meta["framework"] != "pt" || len(ts["test1"].Data) != 4 || formatShape(ts["test1"].Shape) != "[2 2]" {
		t.Errorf("load with metadata: %v %v", ts, meta)
	}
}
