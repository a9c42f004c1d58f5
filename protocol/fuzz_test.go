package protocol

import (
	"context"
	"math"
	"testing"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/entropi-ai/entropi/he"
)

// The parsers face the network: whatever the bytes, they return an error or
// a validated value, never panic or allocate from a forged length.
//
// Run one target at a time, e.g.
//
//	go test -run '^$' -fuzz '^FuzzRefreshRequestFromProto$' -fuzztime 60s -parallel 1 ./protocol/
//
// Seeds: the f.Add calls below and testdata/fuzz/<Name>/ (inputs that once
// failed, kept as regression cases). docs/fuzzing.md records the runs.

func FuzzUnmarshalCiphertext(f *testing.F) {
	params, ck := testParams(f)
	ct, _ := ck.Encrypt([]float64{1, 2}, 1)
	b, _ := ct.MarshalBinary()
	f.Add(b)
	f.Add(b[:100])
	f.Add([]byte{1})
	rule := CiphertextRule{Degree: 1, MinLevel: 0, MaxLevel: 2, MaxLogScaleDelta: 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		ct, err := UnmarshalCiphertext(params, data, rule)
		if err == nil && (ct.Level() > 2 || ct.Degree() != 1 || ct.Value[0].N() != params.N()) {
			t.Fatalf("accepted a ciphertext outside the rule: level %d degree %d", ct.Level(), ct.Degree())
		}
		if err != nil && Code(err) != codes.InvalidArgument {
			t.Fatalf("code %v, want InvalidArgument: %v", Code(err), err)
		}
	})
}

func FuzzParseEvaluationKeys(f *testing.F) {
	params, ck := testParams(f)
	req := he.NewKeyRequest(params)
	req.AddRotations(1, 1)
	ek, _ := ck.GenEvaluationKeys(req, he.KeyOptions{Compressed: true, AtUsedLevels: true})
	b, _ := ek.MarshalBinary(params)
	f.Add(b)
	f.Add(b[:len(b)/3])
	f.Fuzz(func(t *testing.T, data []byte) {
		ek, err := ParseEvaluationKeys(params, data, 1<<24)
		if err == nil {
			if err := ek.Validate(params); err != nil {
				t.Fatal(err)
			}
		} else if Code(err) != codes.InvalidArgument {
			t.Fatalf("code %v, want InvalidArgument: %v", Code(err), err)
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	params, ck := testParams(f)
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	pb, _ := pk.MarshalBinary()
	f.Add(pb)
	f.Add(pb[:64])
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		pk, err := ParsePublicKey(params, data)
		if err != nil {
			if Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v, want InvalidArgument: %v", Code(err), err)
			}
			return
		}
		if pk.LevelQ() != params.MaxLevelQ() || pk.LevelP() != params.MaxLevelP() {
			t.Fatalf("accepted a public key at levels %d/%d", pk.LevelQ(), pk.LevelP())
		}
	})
}

// FuzzPresetFromProto: a Preset message (in SessionHeader, and in
// ListModels on the client) decoded from bytes, converted and compared.
func FuzzPresetFromProto(f *testing.F) {
	for _, p := range []he.Preset{he.InsecureTest, he.N14, he.N15} {
		b, _ := proto.Marshal(PresetToProto(p))
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Preset
		if proto.Unmarshal(data, &m) != nil {
			return
		}
		p, err := PresetFromProto(&m)
		if err == nil {
			if err := p.Check(); err != nil {
				t.Fatalf("accepted a preset that fails Check: %v", err)
			}
		} else if Code(err) != codes.InvalidArgument {
			t.Fatalf("code %v: %v", Code(err), err)
		}
		if err := CheckPresetAgreement(&m, he.InsecureTest); err == nil {
			back := PresetToProto(he.InsecureTest)
			if !proto.Equal(&m, back) && !samePreset(&m, back) {
				t.Fatalf("preset %v accepted as %v", &m, back)
			}
		}
	})
}

// samePreset compares the fields CheckPresetAgreement reads (unknown
// protobuf fields may differ).
func samePreset(a, b *Preset) bool {
	return a.Name == b.Name && a.LogN == b.LogN && a.LogDefaultScale == b.LogDefaultScale &&
		a.Secret == b.Secret && a.SecurityBits == b.SecurityBits &&
		proto.Equal(&Preset{LogQ: a.LogQ, LogP: a.LogP}, &Preset{LogQ: b.LogQ, LogP: b.LogP})
}

// refreshFixture is one real refresh round at the test preset: the server's
// request (as the client receives it) and the client's answer.
func refreshFixture(t testing.TB) (ckks.Parameters, *he.RefreshRequest, *RefreshRequest, *RefreshAnswer) {
	t.Helper()
	params, ck := testParams(t)
	pk := rlwe.NewKeyGenerator(params).GenPublicKeyNew(ck.SecretKey)
	rr := he.NewRefreshResponder(params, ck.SecretKey)
	var req *he.RefreshRequest
	var ans *RefreshAnswer
	mr, err := he.NewMaskedRefresher(params, pk, func(ctx context.Context, r *he.RefreshRequest) (*he.RefreshResponse, error) {
		req = r
		resp, err := rr.Respond(ctx, r)
		if err != nil {
			return nil, err
		}
		ans, err = RefreshAnswerToProto(1, resp)
		return resp, err
	}, he.DefaultMaskOptions())
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := ck.Encrypt([]float64{0.5, -0.25}, 2)
	if _, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, he.RefreshOptions{Level: -1}); err != nil {
		t.Fatal(err)
	}
	m, err := RefreshRequestToProto(1, req)
	if err != nil {
		t.Fatal(err)
	}
	return params, req, m, ans
}

// FuzzRefreshRequestFromProto: the client decodes a refresh round sent by
// the server (a hostile server must not crash the client).
func FuzzRefreshRequestFromProto(f *testing.F) {
	params, _, m, _ := refreshFixture(f)
	b, _ := proto.Marshal(m)
	f.Add(b)
	withMap := proto.Clone(m).(*RefreshRequest)
	withMap.Items[0].HasMap = true
	withMap.Items[0].Map = make([]int32, params.MaxSlots())
	b, _ = proto.Marshal(withMap)
	f.Add(b)
	for _, sc := range []string{`{}`, `{"Value":"1e9999999999","Mod":"0"}`, `{"Value":"-1","Mod":"0"}`, `{"Value":"Inf","Mod":"0"}`, `null`, `{"Value":"1099511627776","Mod":"x"}`} {
		bad := proto.Clone(m).(*RefreshRequest)
		bad.Items[0].Scale = sc
		b, _ = proto.Marshal(bad)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m RefreshRequest
		if proto.Unmarshal(data, &m) != nil {
			return
		}
		req, err := RefreshRequestFromProto(params, &m, 8)
		if err != nil {
			if Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", Code(err), err)
			}
			return
		}
		for i, it := range req.Items {
			if it.Ct.Degree() != 1 || it.Level < 0 || it.Level > params.MaxLevel() {
				t.Fatalf("item %d accepted: degree %d, target level %d", i, it.Ct.Degree(), it.Level)
			}
			if l := it.Scale.Log2(); math.IsNaN(l) || math.IsInf(l, 0) || it.Scale.Mod != nil {
				t.Fatalf("item %d accepted with scale %v", i, it.Scale.Value.String())
			}
			if it.Map != nil && len(it.Map.Src) != it.Ct.Slots() {
				t.Fatalf("item %d accepted with a map of %d entries for %d slots", i, len(it.Map.Src), it.Ct.Slots())
			}
		}
	})
}

// FuzzRefreshAnswerFromProto: the server decodes a client's answer to a
// refresh round it sent.
func FuzzRefreshAnswerFromProto(f *testing.F) {
	params, req, _, ans := refreshFixture(f)
	b, _ := proto.Marshal(ans)
	f.Add(b)
	short := proto.Clone(ans).(*RefreshAnswer)
	short.SeededCiphertexts[0] = short.SeededCiphertexts[0][:he.SeedSize+40]
	b, _ = proto.Marshal(short)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var m RefreshAnswer
		if proto.Unmarshal(data, &m) != nil {
			return
		}
		resp, err := RefreshAnswerFromProto(params, &m, req, 1)
		if err != nil {
			if Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", Code(err), err)
			}
			return
		}
		for i, c := range resp.Cts {
			if c.C0.Degree() != 0 || c.C0.Level() != req.Items[i].Level || !c.C0.Scale.Equal(req.Items[i].Scale) {
				t.Fatalf("item %d accepted at degree %d level %d", i, c.C0.Degree(), c.C0.Level())
			}
		}
	})
}

// FuzzMessages: every top-level message of the service, decoded from the
// same bytes as the gRPC codec would, re-encodes to something that decodes
// equal (the generated code and the protobuf runtime, on hostile input).
func FuzzMessages(f *testing.F) {
	seeds := []proto.Message{
		&ListModelsRequest{ProtocolVersion: Version},
		&CreateSessionRequest{Msg: &CreateSessionRequest_Header{Header: &SessionHeader{ProtocolVersion: Version, Model: "m", Preset: PresetToProto(he.InsecureTest), EvaluationKeyBytes: 1 << 20, PublicKeyBytes: 1 << 16}}},
		&CreateSessionRequest{Msg: &CreateSessionRequest_Chunk{Chunk: &KeyChunk{Kind: KeyKind_KEY_KIND_EVALUATION, Offset: 4096, Data: []byte("abc")}}},
		&GenerateRequest{Msg: &GenerateRequest_Start{Start: &Start{SessionId: "00ff", PromptTokens: 3, PromptCiphertexts: 3, MaxNewTokens: 4}}},
		&GenerateRequest{Msg: &GenerateRequest_RefreshAnswer{RefreshAnswer: &RefreshAnswer{Round: 2, SeededCiphertexts: [][]byte{{1, 2}, {3}}}}},
		&GenerateRequest{Msg: &GenerateRequest_Abort{Abort: &Abort{Code: 3, Message: "x"}}},
		&GenerateResponse{Msg: &GenerateResponse_Refresh{Refresh: &RefreshRequest{Round: 1, Items: []*RefreshItem{{Ciphertext: []byte{1}, Level: 2, Scale: "{}", Map: []int32{-1, 0, 1}, HasMap: true}}}}},
		&ListModelsResponse{ProtocolVersion: Version, Models: []*ModelInfo{{Name: "m", Preset: PresetToProto(he.InsecureTest), Keys: &KeyRequest{GaloisElements: []uint64{5, 25}}}}, Limits: DefaultCaps().Proto(0)},
		&CloseSessionRequest{SessionId: "ab"},
	}
	for i, m := range seeds {
		b, _ := proto.Marshal(m)
		f.Add(uint8(i), b)
	}
	news := []func() proto.Message{
		func() proto.Message { return new(ListModelsRequest) },
		func() proto.Message { return new(ListModelsResponse) },
		func() proto.Message { return new(CreateSessionRequest) },
		func() proto.Message { return new(CreateSessionResponse) },
		func() proto.Message { return new(GenerateRequest) },
		func() proto.Message { return new(GenerateResponse) },
		func() proto.Message { return new(CloseSessionRequest) },
		func() proto.Message { return new(CloseSessionResponse) },
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		m := news[int(kind)%len(news)]()
		if proto.Unmarshal(data, m) != nil {
			return
		}
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("%T decoded but does not re-encode: %v", m, err)
		}
		back := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(b, back); err != nil {
			t.Fatalf("%T: re-encoding does not decode: %v", m, err)
		}
		if !proto.Equal(m, back) {
			t.Fatalf("%T changed in a round trip", m)
		}
	})
}
