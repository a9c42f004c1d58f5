package he

import "testing"

// FuzzUnmarshalEvaluationKeys: UnmarshalEvaluationKeys faces bytes from the
// network (protocol.ParseEvaluationKeys is the server's twin, fuzzed
// there): an error or a valid key set, never a panic or an allocation from
// a forged length.
//
//	go test -run '^$' -fuzz '^FuzzUnmarshalEvaluationKeys$' -fuzztime 60s -parallel 1 ./he/
func FuzzUnmarshalEvaluationKeys(f *testing.F) {
	params, err := InsecureTest.Parameters(true)
	if err != nil {
		f.Fatal(err)
	}
	ck := NewClientKeys(params)
	for _, compressed := range []bool{true, false} {
		req := NewKeyRequest(params)
		req.AddRotations(1, 1)
		req.AddRelin(1)
		ek, err := ck.GenEvaluationKeys(req, KeyOptions{Compressed: compressed, AtUsedLevels: true})
		if err != nil {
			f.Fatal(err)
		}
		b, err := ek.MarshalBinary(params)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add(append(append([]byte(nil), keySetMagic...), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		ek, err := UnmarshalEvaluationKeys(params, data, 1<<24)
		if err != nil {
			return
		}
		if err := ek.Validate(params); err != nil {
			t.Fatalf("accepted keys that fail Validate: %v", err)
		}
	})
}
