package he

import (
	"context"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

func maxAbsDiff(a, b []float64) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(a[i]-b[i]))
	}
	return m
}

func newMasked(t testing.TB, k *rfKit, tr RefreshTransport) *MaskedRefresher {
	t.Helper()
	if tr == nil {
		tr = NewRefreshResponder(k.params, k.sk).Transport()
	}
	mr, err := NewMaskedRefresher(k.params, k.pk(), tr, DefaultMaskOptions())
	require.NoError(t, err)
	return mr
}

// TestMaskedRefreshRoundTrip (insecure-test preset): values are preserved
// within the stated error (2^-20 absolute for |v| ≤ 100 at scale 2^40; the
// refresh adds one fresh-encryption noise), the level is raised as asked, the
// scale is the default, and the inputs are untouched.
func TestMaskedRefreshRoundTrip(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	mr := newMasked(t, k, nil)
	rng := rand.New(rand.NewPCG(5, 6))
	var cts []*rlwe.Ciphertext
	var vals [][]float64
	for _, lvl := range []int{3, 7} {
		v := uniformIn(k.params.MaxSlots(), -100, 100, rng)
		cts = append(cts, k.encrypt(t, v, lvl))
		vals = append(vals, v)
	}
	for _, target := range []int{k.params.MaxLevel(), 9} {
		out, err := mr.Refresh(context.Background(), cts, RefreshOptions{Level: target})
		require.NoError(t, err)
		require.Len(t, out, len(cts))
		for i, ct := range out {
			require.Equal(t, target, ct.Level())
			require.True(t, ct.Scale.Equal(k.params.DefaultScale()))
			before := maxAbsDiff(k.decrypt(t, cts[i]), vals[i])
			after := maxAbsDiff(k.decrypt(t, ct), vals[i])
			t.Logf("level %d → %d: max error before 2^%.1f, after 2^%.1f", cts[i].Level(), ct.Level(), math.Log2(before), math.Log2(after))
			require.Less(t, after, 0x1p-20)
		}
	}
	// Negative Level means the maximum level.
	out, err := mr.Refresh(context.Background(), cts[:1], RefreshOptions{Level: -1})
	require.NoError(t, err)
	require.Equal(t, k.params.MaxLevel(), out[0].Level())
	require.Equal(t, 3, cts[0].Level(), "input modified")
}

// TestMaskedRefreshMaskBound checks the numbers behind the hiding claim on a
// real masked ciphertext: R ≥ 2^(λ+logN)·B (so N·B/(2R+1) < 2^-(λ+1)), the
// message+noise really is within B, |m+e+r| stays below Q/4 at the masking
// level (exact decryption), and that level is the lowest that fits.
func TestMaskedRefreshMaskBound(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	mr := newMasked(t, k, nil)
	opts := DefaultMaskOptions()
	// Values at the bound V (worst case for B), after a multiplication so
	// that the noise is computation noise, not fresh noise.
	v := uniformIn(k.params.MaxSlots(), -opts.ValueBound, opts.ValueBound, rand.New(rand.NewPCG(7, 8)))
	ct := k.encrypt(t, v, 6)
	require.NoError(t, k.eval.Mul(ct, 0.999, ct)) // ×0.999 at scale q, then rescale: a real rescale's noise
	require.NoError(t, k.eval.Rescale(ct, ct))
	require.InDelta(t, 40, math.Log2(ct.Scale.Float64()), 0.01)

	masked, p, r, err := mr.mask(ct)
	require.NoError(t, err)
	logN := k.params.LogN()

	// R ≥ 2^(λ+logN)·B ⇒ N·B/(2R+1) < 2^-(λ+1).
	lhs := new(big.Int).Lsh(p.B, uint(opts.Lambda+logN))
	require.True(t, p.R.Cmp(lhs) >= 0)
	sd := new(big.Float).Quo(new(big.Float).SetInt(new(big.Int).Mul(p.B, big.NewInt(int64(k.params.N())))),
		new(big.Float).SetInt(new(big.Int).Add(new(big.Int).Lsh(p.R, 1), big.NewInt(1))))
	sdf, _ := sd.Float64()
	require.Less(t, math.Log2(sdf), -float64(opts.Lambda))

	// Q at the masking level ≥ 4(R+B), and not at the level below.
	qAt := func(l int) *big.Int {
		q := big.NewInt(1)
		for _, qi := range k.params.Q()[:l+1] {
			q.Mul(q, new(big.Int).SetUint64(qi))
		}
		return q
	}
	need := new(big.Int).Lsh(new(big.Int).Add(p.R, p.B), 2)
	require.True(t, qAt(p.Level).Cmp(need) >= 0)
	if p.Level > 0 {
		require.True(t, qAt(p.Level-1).Cmp(need) < 0, "masking level is not the lowest that fits")
	}
	require.Equal(t, p.Level, masked.Level())
	dropped := ct.CopyNew()
	dropped.Resize(1, p.Level)
	require.False(t, masked.Value[1].Equal(&dropped.Value[1]), "c1 must be re-randomized")

	// What the client decrypts: c = m + e + r exactly; a = c − r within B.
	pt := k.dec.DecryptNew(masked)
	rq := k.params.RingQ().AtLevel(pt.Level())
	rq.INTT(pt.Value, pt.Value)
	c := make([]*big.Int, k.params.N())
	for i := range c {
		c[i] = new(big.Int)
	}
	rq.PolyToBigintCentered(pt.Value, 1, c)
	maxA, maxC := new(big.Int), new(big.Int)
	for i := range c {
		a := new(big.Int).Sub(c[i], r[i])
		if a.CmpAbs(maxA) > 0 {
			maxA.Abs(a)
		}
		if c[i].CmpAbs(maxC) > 0 {
			maxC.Abs(c[i])
		}
	}
	require.True(t, maxA.Cmp(p.B) <= 0, "‖m+e‖∞ = %v exceeds B = %v", maxA, p.B)
	require.True(t, maxC.Cmp(new(big.Int).Add(p.R, p.B)) <= 0)
	ma, _ := new(big.Float).SetInt(maxA).Float64()
	t.Logf("N=2^%d λ=%d V=%g: log2 B=%.1f (measured ‖m+e‖∞ = 2^%.1f = %.2f·S·V), log2 R=%d, mask level %d (log2 Q=%.0f), SD bound 2^%.1f",
		logN, opts.Lambda, opts.ValueBound, math.Log2(bf(p.B)), math.Log2(ma), ma/(ct.Scale.Float64()*opts.ValueBound), p.R.BitLen(), p.Level, p.LogQ, math.Log2(sdf))
}

// pk returns the client's public key (generated once per kit).
func (k *rfKit) pk() *rlwe.PublicKey {
	if k.pubKey == nil {
		k.pubKey = rlwe.NewKeyGenerator(k.params).GenPublicKeyNew(k.sk)
	}
	return k.pubKey
}

func bf(x *big.Int) float64 { f, _ := new(big.Float).SetInt(x).Float64(); return f }

func TestMaskedRefreshTooLowLevel(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	mr := newMasked(t, k, nil)
	ml, err := mr.MaskLevel(rlwe.Scale{})
	require.NoError(t, err)
	require.Greater(t, ml, 0)
	ct := k.encrypt(t, []float64{1, 2, 3}, ml-1)
	_, err = mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1})
	require.Error(t, err)
	require.ErrorContains(t, err, "needs the ciphertext at level ≥")
	// The bound options are checked.
	_, err = NewMaskedRefresher(k.params, k.pk(), mr.transport, MaskOptions{Lambda: 30, ValueBound: 1, LogNoiseBound: 20})
	require.ErrorContains(t, err, "below the minimum 40")
	_, err = NewMaskedRefresher(k.params, nil, mr.transport, DefaultMaskOptions())
	require.ErrorContains(t, err, "public key")
	// A value bound too large for any level is an error that says so.
	huge, err := NewMaskedRefresher(k.params, k.pk(), mr.transport, MaskOptions{Lambda: 40, ValueBound: 1e300, LogNoiseBound: 20})
	require.NoError(t, err)
	_, err = huge.MaskLevel(rlwe.Scale{})
	require.ErrorContains(t, err, "no level of these parameters holds the mask")
}

// TestMaskedRefreshRejectsBadResponses: every malformed or wrong-parameter
// response is rejected before use.
func TestMaskedRefreshRejectsBadResponses(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	honest := NewRefreshResponder(k.params, k.sk)
	other := newRFKit(t, InsecureN13)
	otherResp := NewRefreshResponder(other.params, other.sk)
	ct := k.encrypt(t, []float64{1, 2, 3}, 5)

	tamper := map[string]func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error){
		"count": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			return &RefreshResponse{}, nil
		},
		"level": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			req.Items[0].Level--
			return honest.Respond(ctx, req)
		},
		"scale": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			req.Items[0].Scale = req.Items[0].Scale.Mul(rlwe.NewScale(2))
			return honest.Respond(ctx, req)
		},
		"degree": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			r, err := honest.Respond(ctx, req)
			if err == nil {
				r.Cts[0].C0 = rlwe.NewCiphertext(k.params, 1, req.Items[0].Level)
				r.Cts[0].C0.Scale = req.Items[0].Scale
			}
			return r, err
		},
		"params": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			// A well-formed encryption under other parameters (N=2^13).
			pt := ckks.NewPlaintext(other.params, req.Items[0].Level)
			pt.Scale = req.Items[0].Scale
			if err := other.ecd.Encode([]float64{1}, pt); err != nil {
				return nil, err
			}
			sc, err := encryptSeeded(other.params, other.sk, pt)
			_ = otherResp
			return &RefreshResponse{Cts: []*SeededCiphertext{sc}}, err
		},
		"unreduced": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			r, err := honest.Respond(ctx, req)
			if err == nil {
				r.Cts[0].C0.Value[0].Coeffs[0][0] = k.params.Q()[0]
			}
			return r, err
		},
		"nil": func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
			return &RefreshResponse{Cts: []*SeededCiphertext{nil}}, nil
		},
	}
	for name, tr := range tamper {
		t.Run(name, func(t *testing.T) {
			mr := newMasked(t, k, tr)
			_, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: 10})
			require.Error(t, err)
			t.Log(err)
		})
	}
	// And the client rejects malformed requests.
	_, err := honest.Respond(context.Background(), &RefreshRequest{Items: []RefreshItem{{Ct: ct, Level: 99, Scale: k.params.DefaultScale()}}})
	require.ErrorContains(t, err, "target level 99")
	_, err = honest.Respond(context.Background(), &RefreshRequest{Items: []RefreshItem{{Ct: ct, Level: 3, Scale: k.params.DefaultScale(), Map: &SlotMap{Src: []int32{0}}}}})
	require.ErrorContains(t, err, "slot map")
}

// TestMaskedRefreshSlotMap: a refresh that also changes the layout (first d
// slots replicated, pre-rotated), and one that changes the scale.
func TestMaskedRefreshSlotMap(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	mr := newMasked(t, k, nil)
	slots := k.params.MaxSlots()
	v := uniformIn(slots, -50, 50, rand.New(rand.NewPCG(9, 10)))
	ct := k.encrypt(t, v, 4)
	in := make([]complex128, slots)
	for i, x := range v {
		in[i] = complex(x, 0)
	}
	maps := []*SlotMap{ReplicateMap(slots, 16, 0), ReplicateMap(slots, 16, 5)}
	out, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct, ct}, RefreshOptions{Level: 11, Maps: maps})
	require.NoError(t, err)
	for j, m := range maps {
		want := m.Apply(in)
		got := k.decrypt(t, out[j])
		var e float64
		for i := range want {
			e = math.Max(e, math.Abs(got[i]-real(want[i])))
		}
		t.Logf("map %d: max error 2^%.1f", j, math.Log2(e))
		require.Less(t, e, 0x1p-20)
		require.Equal(t, 11, out[j].Level())
	}
	require.InDelta(t, v[5], k.decrypt(t, out[1])[0], 1e-6) // pre-rotated: slot 0 holds v[5]

	// Scale change without a map (big-float identity path).
	s := rlwe.NewScale(math.Exp2(45))
	out, err = mr.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: 8, Scale: s})
	require.NoError(t, err)
	require.True(t, out[0].Scale.Equal(s))
	require.Less(t, maxAbsDiff(k.decrypt(t, out[0]), v), 0x1p-20)
}

// The seeded response survives serialization (what the network carries) and
// is half the size of a full ciphertext at the same level.
func TestSeededCiphertextWire(t *testing.T) {
	k := newRFKit(t, InsecureTest)
	honest := NewRefreshResponder(k.params, k.sk)
	var up, full int
	tr := func(ctx context.Context, req *RefreshRequest) (*RefreshResponse, error) {
		r, err := honest.Respond(ctx, req)
		if err != nil {
			return nil, err
		}
		out := &RefreshResponse{}
		for _, sc := range r.Cts {
			b, err := sc.MarshalBinary()
			if err != nil {
				return nil, err
			}
			require.Equal(t, sc.BinarySize(), len(b))
			up += len(b)
			full += rlwe.NewCiphertext(k.params, 1, sc.C0.Level()).BinarySize()
			var back SeededCiphertext
			if err := back.UnmarshalBinary(b); err != nil {
				return nil, err
			}
			out.Cts = append(out.Cts, &back)
		}
		return out, nil
	}
	mr := newMasked(t, k, tr)
	v := uniformIn(k.params.MaxSlots(), -1, 1, rand.New(rand.NewPCG(19, 20)))
	out, err := mr.Refresh(context.Background(), []*rlwe.Ciphertext{k.encrypt(t, v, 4)}, RefreshOptions{Level: -1})
	require.NoError(t, err)
	require.Less(t, maxAbsDiff(k.decrypt(t, out[0]), v), 0x1p-20)
	t.Logf("seeded response %d bytes, full ciphertext %d bytes", up, full)
	require.Less(t, float64(up), 0.51*float64(full))
	var bad SeededCiphertext
	require.Error(t, bad.UnmarshalBinary([]byte{1, 2, 3}))
}
