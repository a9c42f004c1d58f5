package he

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPresetsCheck(t *testing.T) {
	for _, p := range Presets() {
		require.NoError(t, p.Check(), p.Name)
		if !p.Insecure() {
			require.LessOrEqual(t, p.LogQP(), MaxLogQPForSecurity(p.LogN, 128), p.Name)
			require.GreaterOrEqual(t, p.EstimatedSecurity(), p.SecurityBits, p.Name)
		}
	}
}

func TestSecurityCheckCannotBeBypassed(t *testing.T) {
	// A preset that claims 128 bits with too large a modulus must fail.
	bad := N14
	bad.Name = "n14-too-big"
	bad.LogQ = append(append([]int(nil), N14.LogQ...), 40)
	_, err := bad.Parameters(true)
	require.Error(t, err, "a 128-bit claim over the HE-standard bound must not build, even with allowInsecure")
	require.Contains(t, err.Error(), "exceeds the HE-standard bound")

	// An insecure preset must carry the insecure- name...
	unnamed := InsecureTest
	unnamed.Name = "fast"
	require.Error(t, unnamed.Check())
	// ...and is refused without the explicit flag.
	_, err = InsecureTest.Parameters(false)
	require.True(t, errors.Is(err, ErrInsecure), "got %v", err)
	_, err = InsecureTest.Parameters(true)
	require.NoError(t, err)
}

func TestPresetJSONRoundTrip(t *testing.T) {
	for _, p := range Presets() {
		b, err := json.Marshal(p)
		require.NoError(t, err)
		var q Preset
		require.NoError(t, json.Unmarshal(b, &q))
		require.Equal(t, p, q)
	}
	_, err := PresetByName("nope")
	require.ErrorContains(t, err, "unknown preset")
}

// TestInsecureBootDeep: the insecure deep bootstrapping preset (NO
// SECURITY, tests only) has n16-boot-128's residual levels and scale, is
// refused without the insecure flag, and builds bootstrapping parameters
// with it.
func TestInsecureBootDeep(t *testing.T) {
	p, err := PresetByName("insecure-boot-deep")
	require.NoError(t, err)
	require.Equal(t, InsecureBootDeep, p)
	require.True(t, p.Insecure())
	require.Equal(t, N16Boot.LogQ, p.LogQ)
	require.Equal(t, N16Boot.Secret, p.Secret)
	require.Equal(t, N16Boot.MaxLevel(), p.MaxLevel())
	_, err = p.Parameters(false)
	require.ErrorIs(t, err, ErrInsecure)
	_, err = BootstrapParameters(p, false)
	require.ErrorIs(t, err, ErrInsecure)
	btp, err := BootstrapParameters(p, true)
	require.NoError(t, err)
	require.Equal(t, p.MaxLevel(), btp.ResidualParameters.MaxLevel())
	require.Equal(t, p.LogN, btp.BootstrappingParameters.LogN())
}
