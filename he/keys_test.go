package he

import (
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
