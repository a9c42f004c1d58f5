package he

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// bootRoundTrip generates keys for a bootstrapping preset, bootstraps a
// ciphertext at level 0 and checks values, level and scale.
func bootRoundTrip(t *testing.T, p Preset, allowInsecure bool, maxErr float64) {
	t0 := time.Now()
	btp, err := BootstrapParameters(p, allowInsecure)
	require.NoError(t, err)
	params := btp.ResidualParameters
	sk := rlwe.NewKeyGenerator(params).GenSecretKeyNew()
	keys, err := GenBootstrappingKeys(btp, sk)
	require.NoError(t, err)
	b, err := NewBootstrapper(btp, keys)
	require.NoError(t, err)
	tKeys := time.Since(t0)

	ecd := ckks.NewEncoder(params)
	enc := rlwe.NewEncryptor(params, sk)
	dec := rlwe.NewDecryptor(params, sk)
	v := uniformIn(params.MaxSlots(), -1, 1, rand.New(rand.NewPCG(11, 12)))
	pt := ckks.NewPlaintext(params, 0)
	require.NoError(t, ecd.Encode(v, pt))
	ct, err := enc.EncryptNew(pt)
	require.NoError(t, err)
	require.Equal(t, 0, ct.Level())

	t1 := time.Now()
	out, err := b.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1})
	require.NoError(t, err)
	tBoot := time.Since(t1)
	require.Equal(t, params.MaxLevel(), out[0].Level())
	require.True(t, out[0].Scale.Equal(params.DefaultScale()))
	got := make([]float64, params.MaxSlots())
	require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
	e := maxAbsDiff(got, v)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%s: N=2^%d, bootstrapping log2(QP)=%.0f, %d slots: keys %.1fs (%.2f GiB serialized), bootstrap %.2fs, output level %d, max error 2^%.1f, Go heap sys %.2f GiB, peak RSS %s",
		p.Name, params.LogN(), btp.BootstrappingParameters.LogQP(), params.MaxSlots(), tKeys.Seconds(), float64(keys.BinarySize())/(1<<30),
		tBoot.Seconds(), out[0].Level(), math.Log2(e), float64(ms.Sys)/(1<<30), peakRSS())
	require.Less(t, e, maxErr)

	// The input is untouched; a requested lower level; slot maps and a
	// level-0 input at a non-default scale are refused.
	got2 := make([]float64, params.MaxSlots())
	require.NoError(t, ecd.Decode(dec.DecryptNew(ct), got2))
	require.Less(t, maxAbsDiff(got2, v), 0x1p-20, "input modified")
	out, err = b.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: 1})
	require.NoError(t, err)
	require.Equal(t, 1, out[0].Level())
	require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
	require.Less(t, maxAbsDiff(got, v), maxErr)
	odd := ct.CopyNew()
	odd.Scale = odd.Scale.Mul(rlwe.NewScale(1.5))
	_, err = b.Refresh(context.Background(), []*rlwe.Ciphertext{odd}, RefreshOptions{Level: -1})
	require.ErrorContains(t, err, "level ≥ 1")
	// ...and that advice holds: a level-1 input with a drifted scale.
	pt2 := ckks.NewPlaintext(params, 2)
	require.NoError(t, ecd.Encode(v, pt2))
	ct2, err := enc.EncryptNew(pt2)
	require.NoError(t, err)
	ev := ckks.NewEvaluator(params, nil)
	wpt := ckks.NewPlaintext(params, 2) // at the default scale: the product's scale drifts after rescale
	w := make([]float64, params.MaxSlots())
	for i := range w {
		w[i] = 0.999
	}
	require.NoError(t, ecd.Encode(w, wpt))
	require.NoError(t, ev.Mul(ct2, wpt, ct2))
	require.NoError(t, ev.Rescale(ct2, ct2))
	require.Equal(t, 1, ct2.Level())
	require.False(t, ct2.Scale.Equal(params.DefaultScale()))
	out, err = b.Refresh(context.Background(), []*rlwe.Ciphertext{ct2}, RefreshOptions{Level: -1})
	require.NoError(t, err)
	require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
	for i := range v {
		require.InDelta(t, 0.999*v[i], got[i], maxErr)
	}
	_, err = b.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Maps: []*SlotMap{ReplicateMap(params.MaxSlots(), 4, 0)}})
	require.ErrorContains(t, err, "slot maps")
}

func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range splitLines(string(b)) {
		if len(line) > 6 && line[:6] == "VmHWM:" {
			return line[6:]
		}
	}
	return "?"
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range s {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// TestBootstrapInsecure (insecure-boot-test, N=2^12): the bootstrapping
// refresher in the default run.
func TestBootstrapInsecure(t *testing.T) {
	bootRoundTrip(t, InsecureBootTest, true, 0x1p-15)
}

// TestBootstrapN16 is the 128-bit N=2^16 bootstrapping (Lattigo
// N16QP1546H192H32): ~17 GB of memory and tens of seconds, so it only runs
// with ENTROPI_TEST_BOOTSTRAP=1.
func TestBootstrapN16(t *testing.T) {
	if os.Getenv("ENTROPI_TEST_BOOTSTRAP") != "1" {
		t.Skip("N=2^16 bootstrapping needs ~17 GB of memory and minutes: set ENTROPI_TEST_BOOTSTRAP=1 to run it")
	}
	bootRoundTrip(t, N16Boot, false, 0x1p-15)
}

func TestBootstrapParametersChecks(t *testing.T) {
	_, err := BootstrapParameters(InsecureBootTest, false)
	require.ErrorIs(t, err, ErrInsecure)
	_, err = BootstrapParameters(N14, false)
	require.ErrorContains(t, err, "sparse secret")
	btp, err := BootstrapParameters(N16Boot, false)
	require.NoError(t, err)
	require.LessOrEqual(t, btp.BootstrappingParameters.LogQP(), float64(MaxLogQPForSecurity(16, 128)))
	t.Logf("n16-boot-128: bootstrapping log2(QP) = %.1f (bound 1772), residual levels %d", btp.BootstrappingParameters.LogQP(), btp.ResidualParameters.MaxLevel())
}

// TestBootstrapBound (insecure-boot-test): values in [-700, 700] bootstrap
// correctly with a value bound of 1024 (free scale-down by metadata and
// scale-up in SlotsToCoeffs; the absolute error grows by the bound), a
// bound is refused at level 0, and the same values without the bound come
// out far less accurate (Lattigo's sine approximation of the modular
// reduction is only accurate near 0).
func TestBootstrapBound(t *testing.T) {
	btp, err := BootstrapParameters(InsecureBootTest, true)
	require.NoError(t, err)
	params := btp.ResidualParameters
	sk := rlwe.NewKeyGenerator(params).GenSecretKeyNew()
	keys, err := GenBootstrappingKeys(btp, sk)
	require.NoError(t, err)
	_, err = NewBootstrapperBound(btp, keys, 0.5)
	require.Error(t, err)
	b, err := NewBootstrapperBound(btp, keys, 1024)
	require.NoError(t, err)
	require.Equal(t, 1024.0, b.Bound())
	ecd := ckks.NewEncoder(params)
	enc := rlwe.NewEncryptor(params, sk)
	dec := rlwe.NewDecryptor(params, sk)
	v := uniformIn(params.MaxSlots(), -700, 700, rand.New(rand.NewPCG(3, 4)))
	pt := ckks.NewPlaintext(params, 1)
	require.NoError(t, ecd.Encode(v, pt))
	ct, err := enc.EncryptNew(pt)
	require.NoError(t, err)
	out, err := b.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1})
	require.NoError(t, err)
	require.Equal(t, params.MaxLevel(), out[0].Level())
	require.True(t, out[0].Scale.Equal(params.DefaultScale()))
	got := make([]float64, params.MaxSlots())
	require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
	e := maxAbsDiff(got, v)
	t.Logf("bound 1024, values in [-700, 700]: max abs error 2^%.1f", math.Log2(e))
	require.Less(t, e, 1024*0x1p-15)
	require.NoError(t, ecd.Decode(dec.DecryptNew(ct), got))
	require.Less(t, maxAbsDiff(got, v), 0x1p-10, "input modified")

	// The same values through a bootstrapper built for [-1, 1], with the
	// bound given per call (integer scale-up after the bootstrap).
	unit, err := NewBootstrapper(btp, keys)
	require.NoError(t, err)
	out, err = unit.RefreshBound(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1}, 1024)
	require.NoError(t, err)
	require.True(t, out[0].Scale.Equal(params.DefaultScale()))
	require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
	eCall := maxAbsDiff(got, v)
	t.Logf("bound 1024 per call on a unit bootstrapper: max abs error 2^%.1f", math.Log2(eCall))
	require.Less(t, eCall, 1024*0x1p-15)
	_, err = b.RefreshBound(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1}, 1536)
	require.ErrorContains(t, err, "integer multiple")

	at0 := ct.CopyNew()
	at0.Resize(1, 0)
	_, err = b.Refresh(context.Background(), []*rlwe.Ciphertext{at0}, RefreshOptions{Level: -1})
	require.ErrorContains(t, err, "level ≥ 1")

	plain, err := NewBootstrapper(btp, keys)
	require.NoError(t, err)
	out, err = plain.Refresh(context.Background(), []*rlwe.Ciphertext{ct}, RefreshOptions{Level: -1})
	if err == nil {
		require.NoError(t, ecd.Decode(dec.DecryptNew(out[0]), got))
		e1 := maxAbsDiff(got, v)
		t.Logf("same values without the bound: max abs error 2^%.1f", math.Log2(e1))
		require.Greater(t, e1, 64*e, "the bound should buy accuracy on values of magnitude 700")
	}
}
