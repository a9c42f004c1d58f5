package he

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// INSECURE test presets only.

func TestKeySetExactGaloisElements(t *testing.T) {
	tc := newTestCtx(t)
	planner := NewPlanner(tc.params)
	mv, err := planner.PreRotated(randMat(rand.New(rand.NewPCG(1, 1)), 128, 128), 128, -1)
	require.NoError(t, err)
	att, err := NewAttention(tc.params, 64, 4)
	require.NoError(t, err)
	req := NewKeyRequest(tc.params)
	req.Add(tc.params.MaxLevel(), mv, att)

	// expected: the union of both rotation lists, reduced mod slots
	slots := tc.params.MaxSlots()
	var want []int
	for _, k := range append(mv.Rotations(), att.Rotations()...) {
		want = append(want, mod(k, slots))
	}
	slices.Sort(want)
	want = slices.Compact(want)
	require.Equal(t, want, req.RotationList())

	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{})
	require.NoError(t, err)
	wantG := tc.params.GaloisElements(want)
	slices.Sort(wantG)
	require.Equal(t, wantG, keys.GaloisElements())
	require.Nil(t, keys.Set.RelinearizationKey, "no relinearization key unless requested")

	// drop one needed key: evaluation fails with a clear error
	missing := tc.params.GaloisElement(mv.Rotations()[0])
	delete(keys.Set.GaloisKeys, missing)
	e, err := NewEvaluator(tc.params, keys, nil)
	require.NoError(t, err)
	lay, _ := NewPreRotated(128, slots)
	ct, err := tc.ck.Encrypt(lay.Encode(make([]float64, 128)), -1)
	require.NoError(t, err)
	_, err = e.EvaluateOne(mv, ct)
	require.ErrorContains(t, err, "missing rotation key")
	require.ErrorContains(t, err, "KeyRequest")

	// no relinearization key: ct×ct fails clearly
	_, err = e.MulRelin(ct, ct)
	require.ErrorContains(t, err, "missing relinearization key")
}

func TestKeySerializationRoundTrip(t *testing.T) {
	tc := newTestCtx(t)
	planner := NewPlanner(tc.params)
	r := rand.New(rand.NewPCG(2, 2))
	d := 64
	w := randMat(r, d, d)
	mv, err := planner.Replicated(w, d, d, -1)
	require.NoError(t, err)
	req := NewKeyRequest(tc.params)
	req.Add(tc.params.MaxLevel(), mv)
	req.AddRelin(tc.params.MaxLevel())

	sizes := map[bool]int{}
	for _, compressed := range []bool{false, true} {
		keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{Compressed: compressed})
		require.NoError(t, err)
		require.Equal(t, compressed, keys.Compressed())
		data, err := keys.MarshalBinary(tc.params)
		require.NoError(t, err)
		require.Equal(t, keys.BinarySize(), len(data))
		sizes[compressed] = len(data)
		t.Logf("compressed=%v: %d keys, %d bytes", compressed, len(keys.GaloisElements()), len(data))

		got, err := UnmarshalEvaluationKeys(tc.params, data, 0)
		require.NoError(t, err)
		require.Equal(t, keys.GaloisElements(), got.GaloisElements())
		require.Equal(t, compressed, got.Compressed())

		// the received (and, if seeded, expanded) keys evaluate correctly
		e, err := NewEvaluator(tc.params, got, nil)
		require.NoError(t, err)
		require.False(t, got.Compressed())
		x := randVec(r, d)
		lay := Replicated{D: d, Period: d, Slots: tc.params.MaxSlots()}
		ct, err := tc.ck.Encrypt(lay.Encode(x), -1)
		require.NoError(t, err)
		out, err := e.EvaluateOne(mv, ct)
		require.NoError(t, err)
		requireClose(t, tc.decrypt(t, out), lay.Encode(matVec(w, x)), "matvec with received keys")
		sq, err := e.MulRelin(ct, ct)
		require.NoError(t, err)
		want := lay.Encode(x)
		for i := range want {
			want[i] *= want[i]
		}
		requireClose(t, tc.decrypt(t, sq), want, "ct×ct with received relinearization key")

		// size limit
		_, err = UnmarshalEvaluationKeys(tc.params, data, len(data)-1)
		require.ErrorContains(t, err, "exceed the limit")
		// corrupted header / truncated body
		bad := slices.Clone(data)
		bad[0] ^= 0xff
		_, err = UnmarshalEvaluationKeys(tc.params, bad, 0)
		require.ErrorContains(t, err, "bad header")
		for _, cut := range []int{41, 100, len(data) / 3, len(data) / 2, len(data) - 1} {
			_, err = UnmarshalEvaluationKeys(tc.params, data[:cut], 0)
			require.Error(t, err, "truncated at %d", cut)
		}
		_, err = UnmarshalEvaluationKeys(tc.params, append(slices.Clone(data), 0), 0)
		require.ErrorContains(t, err, "trailing bytes")
	}
	require.Less(t, float64(sizes[true]), 0.55*float64(sizes[false]), "seeded keys about halve the bytes")

	// keys made for other parameters are refused with ErrKeyParams
	other, err := InsecureN13.Parameters(true)
	require.NoError(t, err)
	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{Compressed: true})
	require.NoError(t, err)
	data, err := keys.MarshalBinary(tc.params)
	require.NoError(t, err)
	_, err = UnmarshalEvaluationKeys(other, data, 0)
	require.ErrorIs(t, err, ErrKeyParams)
	require.ErrorContains(t, err, "generate the keys with the session's preset")
}

func TestKeysAtUsedLevelsAreSmaller(t *testing.T) {
	tc := newTestCtx(t)
	req := NewKeyRequest(tc.params)
	req.AddRotations(2, 1, 2, 4)
	req.AddRotations(tc.params.MaxLevel(), 8)
	full, err := tc.ck.GenEvaluationKeys(req, KeyOptions{})
	require.NoError(t, err)
	low, err := tc.ck.GenEvaluationKeys(req, KeyOptions{AtUsedLevels: true})
	require.NoError(t, err)
	fs, ls := full.Sizes(), low.Sizes()
	t.Logf("full: %s; at used levels: %s", fs.Description, ls.Description)
	require.Less(t, ls.Total, fs.Total)
	require.Equal(t, 2, ls.MinLevelQ)
	require.Equal(t, tc.params.MaxLevel(), ls.MaxLevelQ)
	// and they round-trip
	data, err := low.MarshalBinary(tc.params)
	require.NoError(t, err)
	got, err := UnmarshalEvaluationKeys(tc.params, data, 0)
	require.NoError(t, err)
	gl, _ := got.KeyLevels()
	require.Equal(t, 2, gl[tc.params.GaloisElement(1)])
}

// The guard itself: a lone 8- or 4-byte peek is a count, refused when it
// exceeds the bytes left after it (Lattigo would allocate that many
// elements first); coefficient slices, peeked whole, pass; an exhausted
// buffer is EOF.
func TestGuardedReaderRefusesCounts(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		data []byte
		peek int
		ok   bool
	}{
		{"uint64 count = bytes left", le.AppendUint64(nil, 3), 8, false},
		{"uint64 count 2^36", append(le.AppendUint64(nil, 1<<36), make([]byte, 64)...), 8, false},
		{"uint64 count 2^63", append(le.AppendUint64(nil, 1<<63), make([]byte, 64)...), 8, false},
		{"uint64 count fits", append(le.AppendUint64(nil, 64), make([]byte, 64)...), 8, true},
		{"uint32 count 2^32-1", append(le.AppendUint32(nil, 1<<32-1), make([]byte, 64)...), 4, false},
		{"uint32 count fits", append(le.AppendUint32(nil, 64), make([]byte, 64)...), 4, true},
		{"coefficient slice", le.AppendUint64(le.AppendUint64(nil, 1<<62), 1<<62), 16, true},
	} {
		b, err := NewGuardedReader(tc.data).Peek(tc.peek)
		if tc.ok {
			require.NoError(t, err, tc.name)
			require.Len(t, b, tc.peek, tc.name)
		} else {
			require.ErrorIs(t, err, ErrLengthPrefix, tc.name)
		}
	}
	_, err := NewGuardedReader(nil).Peek(8)
	require.Error(t, err)
}

// A key set whose counts are forged is refused before Lattigo allocates.
// Without the guard each of these inputs is fatal, by Lattigo v6.2's code
// (structs.Vector/Matrix.ReadFrom: make([]T, count) before reading;
// structs.Map.ReadFrom: make(Map, count)): the coefficient count 2^36 asks
// for 512 GiB (the fuzzer's crash, testdata/fuzz/FuzzUnmarshalEvaluationKeys),
// the map count 2^32-1 for about a terabyte of hash table. They are not run
// against an unguarded reader here: they would kill the machine's tests.
func TestUnmarshalEvaluationKeysForgedCounts(t *testing.T) {
	tc := newTestCtx(t)
	req := NewKeyRequest(tc.params)
	req.AddRotations(1, 1)
	keys, err := tc.ck.GenEvaluationKeys(req, KeyOptions{AtUsedLevels: true})
	require.NoError(t, err)
	data, err := keys.MarshalBinary(tc.params)
	require.NoError(t, err)
	_, err = UnmarshalEvaluationKeys(tc.params, data, 0)
	require.NoError(t, err)

	// Lattigo's layout of a key set with one Galois key and no relinearization
	// key; checked here so that the offsets below mean what they say.
	le := binary.LittleEndian
	h := len(keySetMagic) + 32
	body := data[h:]
	g := tc.params.GaloisElement(1)
	require.Equal(t, []byte{0, 1}, body[:2], "no relin key, Galois keys present")
	require.EqualValues(t, 1, le.Uint32(body[2:]), "Galois map count")
	require.Equal(t, g, le.Uint64(body[6:]), "map key")
	require.Equal(t, g, le.Uint64(body[14:]), "Galois element")
	require.EqualValues(t, 2, le.Uint64(body[54:]), "VectorQP count")
	require.EqualValues(t, 2, le.Uint64(body[62:]), "Q moduli count (key at level 1)")
	require.EqualValues(t, tc.params.N(), le.Uint64(body[70:]), "coefficient count")

	forge := func(off int, put func([]byte)) []byte {
		b := slices.Clone(data)
		put(b[h+off:])
		return b
	}
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"Galois map count 2^32-1", forge(2, func(b []byte) { le.PutUint32(b, 1<<32-1) })},
		{"gadget rows 2^40", forge(38, func(b []byte) { le.PutUint64(b, 1<<40) })},
		{"VectorQP count 2^50", forge(54, func(b []byte) { le.PutUint64(b, 1<<50) })},
		{"Q moduli count 2^62", forge(62, func(b []byte) { le.PutUint64(b, 1<<62) })},
		{"coefficient count 2^36", forge(70, func(b []byte) { le.PutUint64(b, 1<<36) })},
		{"coefficient count = bytes left", forge(70, func(b []byte) { le.PutUint64(b, uint64(len(body)-78+1)) })},
	} {
		_, err := UnmarshalEvaluationKeys(tc.params, c.data, 0)
		require.ErrorIs(t, err, ErrLengthPrefix, c.name)
		require.ErrorContains(t, err, "evaluation keys: malformed or truncated encoding", c.name)
	}

	// Every offset up to the first coefficient and a little beyond, with
	// counts that would be fatal: an error or a key set that validates.
	for off := 0; off+8 <= len(body) && off < 128; off++ {
		for _, v := range []uint64{1 << 36, 1<<63 | 5, 1<<32 - 1} {
			b := forge(off, func(b []byte) { le.PutUint64(b, v) })
			if got, err := UnmarshalEvaluationKeys(tc.params, b, 0); err == nil {
				require.NoError(t, got.Validate(tc.params), "offset %d", off)
			}
		}
	}
}

// SeededCiphertext.UnmarshalBinary reads through the same guard: a forged
// count is an error (unguarded, 2^36 coefficients are a fatal 512 GiB
// allocation in structs.Vector.ReadFrom), as are truncation and trailing
// bytes.
func TestSeededCiphertextUnmarshalForgedCounts(t *testing.T) {
	tc := newTestCtx(t)
	ct, err := tc.ck.Encrypt([]float64{1, 2, 3}, 2)
	require.NoError(t, err)
	sc := &SeededCiphertext{Seed: [SeedSize]byte{7}, C0: ct}
	data, err := sc.MarshalBinary()
	require.NoError(t, err)
	var back SeededCiphertext
	require.NoError(t, back.UnmarshalBinary(data))
	require.True(t, back.C0.Equal(ct))
	require.Equal(t, sc.Seed, back.Seed)

	le := binary.LittleEndian
	v := SeedSize + 1 + ct.MetaData.BinarySize() // start of the polynomial vector
	require.EqualValues(t, 2, le.Uint64(data[v:]), "polynomial count")
	require.EqualValues(t, 3, le.Uint64(data[v+8:]), "moduli count")
	require.EqualValues(t, tc.params.N(), le.Uint64(data[v+16:]), "coefficient count")
	for _, c := range []struct {
		off int
		val uint64
	}{{v, 1 << 40}, {v + 8, 1 << 62}, {v + 16, 1 << 36}} {
		b := slices.Clone(data)
		le.PutUint64(b[c.off:], c.val)
		var s SeededCiphertext
		require.ErrorIs(t, s.UnmarshalBinary(b), ErrLengthPrefix, "count %d at %d", c.val, c.off)
		require.Nil(t, s.C0)
	}
	for _, cut := range []int{SeedSize, SeedSize + 1, v + 4, v + 20, len(data) - 1} {
		var s SeededCiphertext
		require.Error(t, s.UnmarshalBinary(data[:cut]), "truncated at %d", cut)
	}
	var s SeededCiphertext
	require.ErrorContains(t, s.UnmarshalBinary(append(slices.Clone(data), 0)), "trailing bytes")
}
