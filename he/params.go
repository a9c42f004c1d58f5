package he

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/ring"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
)

// Secret distributions a preset may use.
const (
	SecretTernary  = "ternary"      // uniform ternary {-1,0,1}, P(0)=1/3: the HE-standard tables apply
	SecretSparse   = "ternary-h192" // sparse ternary, Hamming weight 192 (bootstrapping): below the tables' assumptions
	insecurePrefix = "insecure-"
)

// Preset is a named CKKS parameter set, written as explicit literals so that a
// client and a server can agree on it by name or by its JSON form.
type Preset struct {
	Name            string `json:"name"`
	LogN            int    `json:"log_n"`
	LogQ            []int  `json:"log_q"`
	LogP            []int  `json:"log_p"`
	LogDefaultScale int    `json:"log_default_scale"`
	Secret          string `json:"secret"`
	// SecurityBits is the security the preset claims (128, 192, 256), or 0 for
	// an insecure test preset. Check verifies the claim.
	SecurityBits int    `json:"security_bits"`
	Note         string `json:"note,omitempty"`
}

// heStandardLogQP is the largest log2(QP) for a uniform ternary secret at the
// given security level, from the HomomorphicEncryption.org standard (2018,
// Table 1, classical attacks). N=2^16 is the published extrapolation.
var heStandardLogQP = map[int]map[int]int{
	128: {10: 27, 11: 54, 12: 109, 13: 218, 14: 438, 15: 881, 16: 1772},
	192: {10: 19, 11: 37, 12: 75, 13: 152, 14: 305, 15: 611, 16: 1228},
	256: {10: 14, 11: 29, 12: 58, 13: 118, 14: 237, 15: 476, 16: 956},
}

// MaxLogQPForSecurity returns the HE-standard bound on log2(QP) for a ring
// degree 2^logN at the given security level, or 0 if the table has no entry.
func MaxLogQPForSecurity(logN, bits int) int { return heStandardLogQP[bits][logN] }

// LogQP is the total modulus size of the preset in bits.
func (p Preset) LogQP() int {
	s := 0
	for _, v := range p.LogQ {
		s += v
	}
	for _, v := range p.LogP {
		s += v
	}
	return s
}

// EstimatedSecurity returns the highest HE-standard level (128, 192, 256)
// whose log2(QP) bound the preset meets, or 0 if it meets none. Sparse
// secrets are outside the tables: for them the estimate is Lattigo's own
// (the bootstrapping presets are designed for 128 bits at h=192) provided the
// ternary bound also holds.
func (p Preset) EstimatedSecurity() int {
	best := 0
	for _, bits := range []int{128, 192, 256} {
		if b := MaxLogQPForSecurity(p.LogN, bits); b > 0 && p.LogQP() <= b {
			best = bits
		}
	}
	if p.Secret == SecretSparse && best > 128 {
		best = 128
	}
	return best
}

// Insecure reports whether the preset is a test-only parameter set.
func (p Preset) Insecure() bool { return p.SecurityBits < 128 }

// Check validates the preset: shape of the moduli, naming, and the security
// claim against the HE-standard table. A preset claiming 128 bits or more that
// fails the table is an error; a preset below 128 bits must be named
// "insecure-…" and claim 0.
func (p Preset) Check() error {
	if p.LogN < 10 || p.LogN > 17 {
		return fmt.Errorf("preset %q: log_n %d out of range [10, 17]", p.Name, p.LogN)
	}
	if len(p.LogQ) < 2 || len(p.LogP) < 1 {
		return fmt.Errorf("preset %q: need at least two Q primes and one P prime", p.Name)
	}
	if p.LogDefaultScale < 20 || p.LogDefaultScale > 60 {
		return fmt.Errorf("preset %q: log_default_scale %d out of range [20, 60]", p.Name, p.LogDefaultScale)
	}
	if p.Secret != SecretTernary && p.Secret != SecretSparse {
		return fmt.Errorf("preset %q: unknown secret distribution %q", p.Name, p.Secret)
	}
	est := p.EstimatedSecurity()
	named := strings.HasPrefix(p.Name, insecurePrefix)
	switch {
	case p.SecurityBits == 0:
		if !named {
			return fmt.Errorf("preset %q claims no security but is not named %q…", p.Name, insecurePrefix)
		}
	case named:
		return fmt.Errorf("preset %q is named insecure but claims %d bits", p.Name, p.SecurityBits)
	case p.SecurityBits != 128 && p.SecurityBits != 192 && p.SecurityBits != 256:
		return fmt.Errorf("preset %q: security_bits must be 0, 128, 192 or 256, got %d", p.Name, p.SecurityBits)
	case est < p.SecurityBits:
		return fmt.Errorf("preset %q claims %d-bit security but log2(QP)=%d exceeds the HE-standard bound %d for N=2^%d",
			p.Name, p.SecurityBits, p.LogQP(), MaxLogQPForSecurity(p.LogN, p.SecurityBits), p.LogN)
	}
	return nil
}

// ErrInsecure is wrapped by Parameters when an insecure preset is built
// without the explicit test flag.
var ErrInsecure = fmt.Errorf("insecure parameter set (test use only)")

// Parameters checks the preset and builds the Lattigo parameters. An insecure
// preset is refused unless allowInsecure is set (tests, or a server started
// with its explicit test flag).
func (p Preset) Parameters(allowInsecure bool) (ckks.Parameters, error) {
	if err := p.Check(); err != nil {
		return ckks.Parameters{}, err
	}
	if p.Insecure() && !allowInsecure {
		return ckks.Parameters{}, fmt.Errorf("preset %q: %w; pass the explicit insecure/test flag to use it", p.Name, ErrInsecure)
	}
	lit := ckks.ParametersLiteral{
		LogN:            p.LogN,
		LogQ:            append([]int(nil), p.LogQ...),
		LogP:            append([]int(nil), p.LogP...),
		LogDefaultScale: p.LogDefaultScale,
		Xs:              rlwe.DefaultXs,
		Xe:              rlwe.DefaultXe,
	}
	if p.Secret == SecretSparse {
		lit.Xs = ring.Ternary{H: 192}
	}
	params, err := ckks.NewParametersFromLiteral(lit)
	if err != nil {
		return ckks.Parameters{}, fmt.Errorf("preset %q: %w", p.Name, err)
	}
	return params, nil
}

// MaxLevel is the highest ciphertext level of the preset.
func (p Preset) MaxLevel() int { return len(p.LogQ) - 1 }

// Slots is the number of complex slots (N/2).
func (p Preset) Slots() int { return 1 << (p.LogN - 1) }

// The presets. Levels are "usable multiplicative depth": len(LogQ)-1.
var (
	// InsecureTest is for unit tests only: N=2^12 with 12 levels is far above
	// the 109-bit log2(QP) bound for 128-bit security at that degree.
	InsecureTest = Preset{
		Name: "insecure-test", LogN: 12,
		LogQ: []int{55, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{61, 61}, LogDefaultScale: 40, Secret: SecretTernary,
		SecurityBits: 0, Note: "unit tests only: about 2^-25 precision, no security",
	}
	// InsecureN13 is a wider test preset (4096 slots) for end-to-end tests
	// of the decoder at realistic packing, still insecure.
	InsecureN13 = Preset{
		Name: "insecure-n13", LogN: 13,
		LogQ: []int{55, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{61, 61}, LogDefaultScale: 40, Secret: SecretTernary,
		SecurityBits: 0, Note: "integration tests only: log2(QP)=577 > 218",
	}
	// N14 is 128-bit secure at N=2^14: 7 levels of 40 bits.
	N14 = Preset{
		Name: "n14-128", LogN: 14,
		LogQ: []int{55, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{50, 50}, LogDefaultScale: 40, Secret: SecretTernary,
		SecurityBits: 128, Note: "8192 slots, 7 levels; refreshes often",
	}
	// N15 is 128-bit secure at N=2^15: 17 levels of 40 bits.
	N15 = Preset{
		Name: "n15-128", LogN: 15,
		LogQ: []int{55, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{61, 61}, LogDefaultScale: 40, Secret: SecretTernary,
		SecurityBits: 128, Note: "16384 slots, 17 levels; about one refresh per block",
	}
)

// Presets lists the named presets in a stable order.
func Presets() []Preset {
	return []Preset{InsecureTest, InsecureN13, N14, N15, InsecureBootTest, InsecureBootDeep, N16Boot}
}

// PresetByName finds a preset by name.
func PresetByName(name string) (Preset, error) {
	var names []string
	for _, p := range Presets() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Preset{}, fmt.Errorf("unknown preset %q (known: %s)", name, strings.Join(names, ", "))
}

// MarshalJSON/UnmarshalJSON round-trip the literal; UnmarshalJSON does not
// check it, Parameters does.
func (p Preset) String() string {
	b, _ := json.Marshal(p)
	return string(b)
}

// Bootstrapping presets: the residual (user-visible) parameters of a
// bootstrappable set; BootstrapParameters in bootstrap.go adds Lattigo's
// bootstrapping moduli and checks the security of the whole set.
var (
	// N16Boot is the residual part of Lattigo's N16QP1546H192H32: N=2^16,
	// 9 levels of 40 bits after bootstrapping, sparse secret h=192. With
	// the bootstrapping moduli log2(QP) = 1546 ≤ 1772 (the ternary-table
	// bound); the HE-standard tables do not cover sparse secrets, so the
	// 128-bit claim for h=192 is Lattigo's (Bossuat et al., eprint
	// 2022/024), not ours.
	N16Boot = Preset{
		Name: "n16-boot-128", LogN: 16,
		LogQ: []int{60, 40, 40, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{61, 61, 61, 61, 61}, LogDefaultScale: 40, Secret: SecretSparse,
		SecurityBits: 128, Note: "bootstrapping (Lattigo N16QP1546H192H32): 32768 slots, 9 levels; ~22 s and ~17 GB per bootstrap",
	}
	// InsecureBootTest is a small bootstrappable set for unit tests
	// (N=2^12, as in Lattigo's own short tests): no security.
	InsecureBootTest = Preset{
		Name: "insecure-boot-test", LogN: 12,
		LogQ: []int{60, 40, 40, 40},
		LogP: []int{61, 61}, LogDefaultScale: 40, Secret: SecretSparse,
		SecurityBits: 0, Note: "bootstrapping unit tests only: N=2^12, no security",
	}
	// InsecureBootDeep is n16-boot-128's residual modulus chain (9 levels
	// of 40 bits above a 60-bit q0) at N=2^12: NO SECURITY (log2(QP) far
	// above the bound at N=2^12; tests and loopback benchmarks only). Its
	// plans have exactly the levels of n16-boot-128 (bootstraps per token
	// included), at 1/16 of the ring degree. InsecureBootTest (3 levels)
	// cannot hold a model's polynomials (exp alone has depth ≥ 4).
	InsecureBootDeep = Preset{
		Name: "insecure-boot-deep", LogN: 12,
		LogQ: []int{60, 40, 40, 40, 40, 40, 40, 40, 40, 40},
		LogP: []int{61, 61}, LogDefaultScale: 40, Secret: SecretSparse,
		SecurityBits: 0, Note: "bootstrap tests only: N=2^12 with n16-boot-128's 9 residual levels, no security",
	}
)
