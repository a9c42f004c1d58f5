package protocol

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/entropi-ai/entropi/he"
)

// Unit tests use the insecure test preset (N=2^12): same code paths, fast.
func testParams(t testing.TB) (ckks.Parameters, *he.ClientKeys) {
	t.Helper()
	params, err := he.InsecureTest.Parameters(true)
	if err != nil {
		t.Fatal(err)
	}
	return params, he.NewClientKeys(params)
}

func wantCode(t *testing.T, err error, c codes.Code, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v %q", c, substr)
	}
	if Code(err) != c || !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %v, want code %v containing %q", err, c, substr)
	}
}

func TestCiphertextRoundTripAndRejections(t *testing.T) {
	params, ck := testParams(t)
	ct, err := ck.Encrypt([]float64{1, 2, 3}, -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalCiphertext(ct)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != CiphertextBytes(params, 1, params.MaxLevel()) {
		t.Fatalf("CiphertextBytes = %d, encoding has %d", CiphertextBytes(params, 1, params.MaxLevel()), len(b))
	}
	got, err := UnmarshalCiphertext(params, b, FreshRule(params, -1))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ck.Decrypt(got)
	if d := v[2] - 3; d > 1e-6 || d < -1e-6 {
		t.Fatalf("round trip decrypts to %v", v[:3])
	}

	// Level: a fresh ciphertext must be at the top level.
	low := ct.CopyNew()
	low.Resize(1, 3)
	lb, _ := low.MarshalBinary()
	wantCode(t, func() error { _, err := UnmarshalCiphertext(params, lb, FreshRule(params, -1)); return err }(), codes.InvalidArgument, "bytes")
	if _, err := UnmarshalCiphertext(params, lb, AnyLevelRule(params)); err != nil {
		t.Fatalf("level-3 ciphertext under AnyLevelRule: %v", err)
	}

	cases := map[string]struct {
		mut  func([]byte) []byte
		want string
	}{
		"truncated":      {func(b []byte) []byte { return b[:len(b)-100] }, "bytes"},
		"trailing bytes": {func(b []byte) []byte { return append(b, 0, 0, 0, 0, 0, 0, 0, 0) }, "bytes"},
		"empty":          {func(b []byte) []byte { return nil }, "bytes"},
		"no metadata":    {func(b []byte) []byte { b[0] = 0; return b }, "no metadata"},
		"degree 2": {func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[1+metaSize:], 3)
			return b
		}, "degree"},
		"huge row count": {func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[1+metaSize+8:], 1<<40)
			return b
		}, "moduli"},
		"wrong ring degree": {func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[1+metaSize+16:], 1<<40)
			return b
		}, "ring degree"},
		"unreduced coefficient": {func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[1+metaSize+24:], ^uint64(0))
			return b
		}, "not reduced"},
		"garbage metadata": {func(b []byte) []byte { copy(b[1:], "not json at all"); return b }, "malformed"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			bad := tc.mut(append([]byte(nil), b...))
			_, err := UnmarshalCiphertext(params, bad, FreshRule(params, -1))
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
	}

	// A ciphertext from another ring degree (N=2^13) is refused by size.
	p13, _ := he.InsecureN13.Parameters(true)
	ct13, _ := he.NewClientKeys(p13).Encrypt([]float64{1}, -1)
	b13, _ := ct13.MarshalBinary()
	_, err = UnmarshalCiphertext(params, b13, AnyLevelRule(params))
	wantCode(t, err, codes.InvalidArgument, "bytes")

	// Wrong scale.
	sc := ct.CopyNew()
	sc.Scale = rlwe.NewScale(float64(1 << 30))
	sb, _ := sc.MarshalBinary()
	_, err = UnmarshalCiphertext(params, sb, FreshRule(params, -1))
	wantCode(t, err, codes.InvalidArgument, "scale")
}

func TestParseEvaluationKeys(t *testing.T) {
	params, ck := testParams(t)
	req := he.NewKeyRequest(params)
	req.AddRotations(params.MaxLevel(), 1, 2, 5)
	req.AddRotations(3, 64)
	req.AddRelin(params.MaxLevel())
	for _, opt := range []he.KeyOptions{{}, {Compressed: true}, {Compressed: true, AtUsedLevels: true}} {
		ek, err := ck.GenEvaluationKeys(req, opt)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ek.MarshalBinary(params)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseEvaluationKeys(params, b, 0)
		if err != nil {
			t.Fatalf("%+v: %v", opt, err)
		}
		kr := &KeyRequest{GaloisElements: req.GaloisElements(params), Relinearize: true}
		if err := CheckKeyRequest(got, kr); err != nil {
			t.Fatalf("%+v: %v", opt, err)
		}
		// Keys for more rotations than requested are refused.
		kr2 := &KeyRequest{GaloisElements: req.GaloisElements(params)[1:], Relinearize: true}
		wantCode(t, CheckKeyRequest(got, kr2), codes.InvalidArgument, "not requested")
		kr3 := &KeyRequest{GaloisElements: req.GaloisElements(params)}
		wantCode(t, CheckKeyRequest(got, kr3), codes.InvalidArgument, "relinearization")

		_, err = ParseEvaluationKeys(params, b, int64(len(b)-1))
		wantCode(t, err, codes.InvalidArgument, "exceed")
		_, err = ParseEvaluationKeys(params, b[:len(b)/2], 0)
		wantCode(t, err, codes.InvalidArgument, "evaluation keys")
		// A forged length prefix right after the header must not allocate.
		forged := append([]byte(nil), b...)
		for i := 0; i < 8; i++ {
			forged[len(keySetMagic)+32+i] = 0xff
		}
		_, err = ParseEvaluationKeys(params, forged, 0)
		wantCode(t, err, codes.InvalidArgument, "evaluation keys")
	}
	// Keys for other parameters.
	p13, _ := he.InsecureN13.Parameters(true)
	ck13 := he.NewClientKeys(p13)
	r13 := he.NewKeyRequest(p13)
	r13.AddRotations(p13.MaxLevel(), 1)
	ek13, _ := ck13.GenEvaluationKeys(r13, he.KeyOptions{})
	b13, _ := ek13.MarshalBinary(p13)
	_, err := ParseEvaluationKeys(params, b13, 0)
	wantCode(t, err, codes.InvalidArgument, "do not match")
}

func TestParsePublicKey(t *testing.T) {
	params, ck := testParams(t)
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	b, err := pk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePublicKey(params, b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(pk) {
		t.Fatal("public key round trip differs")
	}
	_, err = ParsePublicKey(params, b[:len(b)-8])
	wantCode(t, err, codes.InvalidArgument, "exactly")
	bad := append([]byte(nil), b...)
	binary.LittleEndian.PutUint64(bad[8:], 1<<50)
	_, err = ParsePublicKey(params, bad)
	wantCode(t, err, codes.InvalidArgument, "moduli")
}

func TestPresetAgreement(t *testing.T) {
	if err := CheckPresetAgreement(PresetToProto(he.N14), he.N14); err != nil {
		t.Fatal(err)
	}
	wantCode(t, CheckPresetAgreement(PresetToProto(he.N15), he.N14), codes.FailedPrecondition, "disagreement")
	m := PresetToProto(he.N14)
	m.LogQ[3] = 41
	wantCode(t, CheckPresetAgreement(m, he.N14), codes.FailedPrecondition, "log_q")
	// A preset claiming 128 bits beyond the HE-standard bound is invalid.
	m = PresetToProto(he.N14)
	m.LogQ = append(m.LogQ, 60)
	wantCode(t, CheckPresetAgreement(m, he.N14), codes.InvalidArgument, "exceeds")
}

func TestRefreshRoundTrip(t *testing.T) {
	params, ck := testParams(t)
	rr := he.NewRefreshResponder(params, ck.SecretKey)
	var round uint64
	// The transport goes through the wire encodings and validators.
	transport := func(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
		round++
		m, err := RefreshRequestToProto(round, req)
		if err != nil {
			return nil, err
		}
		creq, err := RefreshRequestFromProto(params, m, 16)
		if err != nil {
			return nil, err
		}
		resp, err := rr.Respond(ctx, creq)
		if err != nil {
			return nil, err
		}
		a, err := RefreshAnswerToProto(round, resp)
		if err != nil {
			return nil, err
		}
		if _, err := RefreshAnswerFromProto(params, a, req, round+1); Code(err) != codes.InvalidArgument {
			t.Errorf("answer for the wrong round accepted: %v", err)
		}
		return RefreshAnswerFromProto(params, a, req, round)
	}
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	mr, err := he.NewMaskedRefresher(params, pk, transport, he.DefaultMaskOptions())
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := ck.Encrypt([]float64{0.5, -2, 7}, -1)
	ct.Resize(1, 4)
	out, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, he.RefreshOptions{Level: -1, Maps: []*he.SlotMap{he.ReplicateMap(params.MaxSlots(), 4, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Level() != params.MaxLevel() {
		t.Fatalf("refreshed to level %d", out[0].Level())
	}
	v, _ := ck.Decrypt(out[0])
	for i, w := range []float64{0.5, -2, 7, 0, 0.5, -2} {
		if d := v[i] - w; d > 1e-4 || d < -1e-4 {
			t.Fatalf("slot %d = %g, want %g", i, v[i], w)
		}
	}
}

func TestMeter(t *testing.T) {
	m := NewMeter()
	msg := &GenerateRequest{Msg: &GenerateRequest_Prompt{Prompt: &PromptCiphertext{Ciphertext: make([]byte, 1000)}}}
	n := m.Count(PhasePrefill, Up, msg)
	if n < 1000 || n > 1010 {
		t.Fatalf("size %d", n)
	}
	m.Count(PhaseDecode, Down, &GenerateResponse{Msg: &GenerateResponse_Logits{Logits: &Logits{Ciphertext: make([]byte, 10)}}})
	tr := m.Snapshot()
	if up, _ := tr.Kind(PhasePrefill, KindPrompt); up != uint64(n) {
		t.Fatalf("prompt up %d, want %d", up, n)
	}
	if tr.Bytes("", Down) == 0 || tr.Bytes(PhaseSetup, Up) != 0 {
		t.Fatalf("traffic %v", tr)
	}
	m2 := NewMeter()
	m2.Merge(tr)
	m2.Merge(tr)
	if r := m2.Snapshot(); r[0].Messages != 2*tr[0].Messages || r[0].Up != 2*tr[0].Up {
		t.Fatalf("merge: %v", r)
	}
	back := TrafficFromProto(tr.Proto())
	if back.String() != tr.String() {
		t.Fatalf("proto round trip:\n%v\n%v", back, tr)
	}
}

func TestCaps(t *testing.T) {
	if err := DefaultCaps().Check(); err != nil {
		t.Fatal(err)
	}
	c := DefaultCaps()
	c.MaxChunkBytes = c.MaxMessageBytes
	if c.Check() == nil {
		t.Fatal("chunk as large as a message accepted")
	}
}

// A refresh item's scale comes from the server as JSON. Lattigo's
// rlwe.Scale.UnmarshalJSON panics (nil big.Float) on "{}" or an unparsable
// modulus: found by FuzzRefreshRequestFromProto; parseScale refuses them.
func TestRefreshScaleFromHostileServer(t *testing.T) {
	params, _, m, _ := refreshFixture(t)
	good := m.Items[0].Scale
	sc, err := parseScale(good)
	if err != nil {
		t.Fatalf("the server's own scale %s: %v", good, err)
	}
	var ref rlwe.Scale
	if err := ref.UnmarshalJSON([]byte(good)); err != nil || !ref.Equal(sc) {
		t.Fatalf("parseScale(%s) = %v, Lattigo reads %v (%v)", good, sc.Value.String(), ref.Value.String(), err)
	}
	for _, bad := range []string{`{}`, `null`, `{"Value":"1e40","Mod":"x"}`, `{"Value":"1e40","Mod":"7"}`, `{"Value":"-1","Mod":"0"}`, `{"Value":"Inf","Mod":"0"}`, `{"Value":"0","Mod":"0"}`, `[`} {
		bm := proto.Clone(m).(*RefreshRequest)
		bm.Items[0].Scale = bad
		_, err := RefreshRequestFromProto(params, bm, 8)
		wantCode(t, err, codes.InvalidArgument, "malformed scale")
	}
}

// Metadata fields a forged ciphertext may carry: domain flags, slot
// dimensions, a modular scale.
func TestCiphertextMetadataRejections(t *testing.T) {
	params, ck := testParams(t)
	ct, err := ck.Encrypt([]float64{1, 2, 3}, -1)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		mut  func(c *rlwe.Ciphertext)
		want string
	}{
		"not NTT":         {func(c *rlwe.Ciphertext) { c.IsNTT = false }, "domain flags"},
		"Montgomery":      {func(c *rlwe.Ciphertext) { c.IsMontgomery = true }, "domain flags"},
		"not batched":     {func(c *rlwe.Ciphertext) { c.IsBatched = false }, "domain flags"},
		"bit-reversed":    {func(c *rlwe.Ciphertext) { c.IsBitReversed = true }, "domain flags"},
		"too many slots":  {func(c *rlwe.Ciphertext) { c.LogDimensions.Cols = params.LogMaxSlots() + 1 }, "slot dimensions"},
		"matrix slots":    {func(c *rlwe.Ciphertext) { c.LogDimensions.Rows = 1 }, "slot dimensions"},
		"negative slots":  {func(c *rlwe.Ciphertext) { c.LogDimensions.Cols = -1 }, "slot dimensions"},
		"modular scale":   {func(c *rlwe.Ciphertext) { c.Scale = rlwe.NewScaleModT(params.DefaultScale().Float64(), 65537) }, "scale"},
		"scale far below": {func(c *rlwe.Ciphertext) { c.Scale = rlwe.NewScale(2) }, "scale"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := ct.CopyNew()
			tc.mut(c)
			b, err := c.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			_, err = UnmarshalCiphertext(params, b, AnyLevelRule(params))
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
	}
	// Fewer slots than the maximum are legitimate (sparse packing).
	c := ct.CopyNew()
	c.LogDimensions.Cols = params.LogMaxSlots() - 2
	b, _ := c.MarshalBinary()
	if _, err := UnmarshalCiphertext(params, b, AnyLevelRule(params)); err != nil {
		t.Fatalf("a sparse ciphertext: %v", err)
	}
}

// A forged size prefix anywhere in the structure of a key set (not only
// right after the header) is refused before Lattigo allocates from it. The
// same forgery kills the process through he.UnmarshalEvaluationKeys (fatal
// out of memory: FuzzUnmarshalEvaluationKeys found a polynomial whose
// coefficient count asks for 512 GiB), whose reader guards only against
// truncation; the server parses keys here.
func TestParseEvaluationKeysForgedPrefixes(t *testing.T) {
	params, ck := testParams(t)
	req := he.NewKeyRequest(params)
	req.AddRotations(1, 1)
	ek, err := ck.GenEvaluationKeys(req, he.KeyOptions{Compressed: true, AtUsedLevels: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ek.MarshalBinary(params)
	if err != nil {
		t.Fatal(err)
	}
	start := len(keySetMagic) + 32
	var refused int
	for off := start; off+8 <= len(b) && off < start+1024; off++ {
		for _, v := range []uint64{1 << 36, 1<<63 | 5} {
			forged := append([]byte(nil), b...)
			binary.LittleEndian.PutUint64(forged[off:], v)
			got, err := ParseEvaluationKeys(params, forged, 0)
			if err != nil {
				wantCode(t, err, codes.InvalidArgument, "evaluation keys")
				refused++
				continue
			}
			if err := got.Validate(params); err != nil {
				t.Fatalf("offset %d: accepted keys that fail Validate: %v", off, err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("no forgery refused")
	}
}
