package server_test

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	"github.com/entropi-ai/entropi/server"
)

// tinyRandomModel is the served tests' model: a tiny random entropy-guided
// decoder (vocab 32, context 8, d 16, 1 layer, 2 heads) calibrated on
// random tokens.
func tinyRandomModel(t *testing.T) (*model.Weights, *approx.Set) {
	t.Helper()
	w, err := model.NewRandom(model.EntropyGuided(32, 8, 16, 1, 2), 3)
	if err != nil {
		t.Fatal(err)
	}
	set, err := server.CalibrateRandom(w, 1)
	if err != nil {
		t.Fatal(err)
	}
	return w, set
}

// serveTiny serves eng as model "tiny" on loopback and opens a session to
// it with the default (engine) client; the client closes with the test.
func serveTiny(t *testing.T, eng *engine.Engine) (*harness, *client.Session) {
	t.Helper()
	m, err := server.EngineModel("tiny", eng, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, server.Config{}, m)
	c, err := client.Dial(context.Background(), h.addr, &client.Options{AllowInsecurePresets: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.NewSession(context.Background(), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	return h, sess
}

// TestEngineEndToEnd runs the real encrypted decoder (a tiny random
// entropy-guided model, insecure test preset) behind the service over
// loopback gRPC, with the default (engine) client: the greedy tokens equal
// the plaintext model's (with the same polynomial approximations), the
// decrypted logits are close to the plaintext logits, and at no point does
// the server hold a secret key.
func TestEngineEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("encrypted decoder: about 10 s")
	}
	w, set := tinyRandomModel(t)
	cfg := w.Config
	eng, err := engine.New(w, set, engine.Options{Preset: he.InsecureTest, AllowInsecure: true, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	h, sess := serveTiny(t, eng)
	if p := findSecretKey(reflect.ValueOf(h.srv)); p != "" {
		t.Fatalf("server holds a secret key after session creation at %s", p)
	}
	// The walk is not vacuous: it finds the key inside an engine client
	// behind an interface.
	ec, err := engine.NewClient(eng.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := findSecretKey(reflect.ValueOf(&struct{ X any }{ec})); p == "" {
		t.Fatal("findSecretKey misses the secret key of an engine client")
	}

	// Plaintext reference with the same approximations.
	ab, err := model.NewApprox(cfg, set)
	if err != nil {
		t.Fatal(err)
	}
	ref := model.NewSession(w, ab)
	prompt := []int{3, 17, 5}
	const n = 3
	l, err := ref.Prefill(prompt)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := l.Dims()
	plain := [][]float64{append([]float64(nil), l.RawRowView(r-1)...)}

	var checked bool
	res, err := sess.Generate(context.Background(), prompt, n, client.GenerateOptions{KeepLogits: true}, func(tk client.Token) error {
		if !checked { // mid-generation: the model session and its KV cache are live
			checked = true
			if p := findSecretKey(reflect.ValueOf(h.srv)); p != "" {
				return fmt.Errorf("server holds a secret key during generation at %s", p)
			}
		}
		i := len(plain) - 1
		maxErr, spread := 0.0, 0.0
		lo, hi := math.Inf(1), math.Inf(-1)
		for j, v := range plain[i] {
			maxErr = math.Max(maxErr, math.Abs(v-tk.Logits[j]))
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		spread = hi - lo
		t.Logf("token %d at %d: %v, %d B up, %d B down; logit error %.2g (spread %.3g)", tk.ID, tk.Pos, tk.Latency, tk.BytesUp, tk.BytesDown, maxErr, spread)
		if maxErr > 1e-2*spread+1e-2 {
			return fmt.Errorf("decrypted logits off by %g (spread %g)", maxErr, spread)
		}
		if want := argmax(plain[i]); tk.ID != want {
			return fmt.Errorf("encrypted greedy token %d, plaintext %d", tk.ID, want)
		}
		next, err := ref.Step(tk.ID)
		if err != nil {
			return err
		}
		plain = append(plain, append([]float64(nil), next...))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tokens) != n {
		t.Fatalf("%d tokens", len(res.Tokens))
	}
	// The exact (unapproximated) plaintext model, for the record.
	exact := model.NewSession(w, nil)
	smp, _ := model.NewSampler(model.SampleOptions{}, 0)
	ex, err := model.Generate(exact, prompt, n, smp, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := res.Stats
	t.Logf("encrypted %v, exact plaintext %v; setup %d B up, prefill %d/%d B, decode %d/%d B (up/down), prefill %.2fs, decode %.2fs",
		res.Tokens, ex, st.Setup.BytesUp, st.Prefill.BytesUp, st.Prefill.BytesDown, st.Decode.BytesUp, st.Decode.BytesDown, st.Prefill.Seconds, st.Decode.Seconds)
	if len(st.EngineStats) == 0 || !strings.Contains(string(st.EngineStats), "tokens") {
		t.Errorf("no engine stats: %s", st.EngineStats)
	}
	if p := findSecretKey(reflect.ValueOf(h.srv)); p != "" {
		t.Fatalf("server holds a secret key at %s", p)
	}
	sess.Close()
}

var secretKeyType = reflect.TypeOf(rlwe.SecretKey{})

// findSecretKey walks everything reachable from v (pointers, interfaces,
// maps, slices, unexported fields included) and returns the path to an
// rlwe.SecretKey, or "".
func findSecretKey(v reflect.Value) string {
	seen := map[[2]uintptr]bool{}
	var walk func(v reflect.Value, path string, depth int) string
	walk = func(v reflect.Value, path string, depth int) string {
		if !v.IsValid() || depth > 64 {
			return ""
		}
		if v.Type() == secretKeyType {
			return path
		}
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() {
				return ""
			}
			if v.Type().Elem() == secretKeyType {
				return path
			}
			k := [2]uintptr{v.Pointer(), reflect.ValueOf(v.Type()).Pointer()}
			if seen[k] {
				return ""
			}
			seen[k] = true
			return walk(v.Elem(), path, depth+1)
		case reflect.Interface:
			if v.IsNil() {
				return ""
			}
			return walk(v.Elem(), path+"("+v.Elem().Type().String()+")", depth+1)
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				if p := walk(v.Field(i), path+"."+v.Type().Field(i).Name, depth+1); p != "" {
					return p
				}
			}
		case reflect.Slice, reflect.Array:
			if !mayHold(v.Type().Elem()) {
				return ""
			}
			for i := 0; i < v.Len(); i++ {
				if p := walk(v.Index(i), fmt.Sprintf("%s[%d]", path, i), depth+1); p != "" {
					return p
				}
			}
		case reflect.Map:
			if !mayHold(v.Type().Elem()) && !mayHold(v.Type().Key()) {
				return ""
			}
			it := v.MapRange()
			for it.Next() {
				if p := walk(it.Value(), fmt.Sprintf("%s[%v]", path, it.Key()), depth+1); p != "" {
					return p
				}
			}
		}
		return ""
	}
	return walk(v, "Server", 0)
}

// mayHold: can a value of type t reach a secret key? (Prunes the big
// slices of coefficients and weights.)
func mayHold(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return false
	case reflect.Slice, reflect.Array:
		return mayHold(t.Elem())
	}
	return true
}

// TestServerCannotNameASecretKey checks the server package's source: no
// identifier there names a secret key or anything that makes or holds one
// (key generators, client key sets, engine clients, refresh responders).
func TestServerCannotNameASecretKey(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := map[string]bool{"SecretKey": true, "GenSecretKeyNew": true, "GenKeyPairNew": true, "KeyGenerator": true,
		"NewKeyGenerator": true, "ClientKeys": true, "NewClientKeys": true, "NewClient": true, "Client": true,
		"RefreshResponder": true, "NewRefreshResponder": true, "Decryptor": true, "NewDecryptor": true}
	fset := token.NewFileSet()
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		n++
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(nd ast.Node) bool {
			if id, ok := nd.(*ast.Ident); ok && forbidden[id.Name] {
				t.Errorf("%s: server code names %s", fset.Position(id.Pos()), id.Name)
			}
			return true
		})
	}
	if n < 3 {
		t.Fatalf("checked only %d files", n)
	}
	// And by type: nothing reachable from the Server's static type is a
	// secret key (interfaces are followed at run time by findSecretKey).
	if p := staticPath(reflect.TypeOf(server.Server{}), map[reflect.Type]bool{}, "Server"); p != "" {
		t.Fatalf("server type can hold a secret key at %s", p)
	}
}

func staticPath(t reflect.Type, seen map[reflect.Type]bool, path string) string {
	if t == secretKeyType {
		return path
	}
	if seen[t] {
		return ""
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Chan:
		return staticPath(t.Elem(), seen, path+"*")
	case reflect.Map:
		if p := staticPath(t.Key(), seen, path+"[key]"); p != "" {
			return p
		}
		return staticPath(t.Elem(), seen, path+"[]")
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if p := staticPath(t.Field(i).Type, seen, path+"."+t.Field(i).Name); p != "" {
				return p
			}
		}
	}
	return ""
}

// The zero preset picks n14-128 when the approximations fit its levels
// between refreshes, or fit them after a refit that only splits Newton
// chains (same error); n15-128 otherwise.
func TestAutoPreset(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 128-bit engine")
	}
	cfg := model.EntropyGuided(32, 8, 16, 1, 2)
	w, _ := model.NewRandom(cfg, 3)
	set, err := server.CalibrateRandom(w, 1)
	if err != nil {
		t.Fatal(err)
	}
	e, used, notes, err := server.NewEngine(w, set, server.LoadOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := e.Spec().Preset.Name
	_, err14 := engine.New(w, set, engine.Options{Preset: he.N14, Workers: 1})
	fit, _, ferr := engine.FitToPreset(set, he.N14, false, cfg.Context)
	newtonOnly := ferr == nil && fit.Exp.Poly.Degree() == set.Exp.Poly.Degree()
	switch {
	case err14 == nil && (got != he.N14.Name || used != set || len(notes) != 0):
		t.Fatalf("picked %s (notes %v) although n14-128 fits as calibrated", got, notes)
	case err14 != nil && newtonOnly && (got != he.N14.Name || used == set || len(notes) == 0):
		t.Fatalf("picked %s (notes %v) although a Newton-only refit fits n14-128", got, notes)
	case err14 != nil && !newtonOnly && got != he.N15.Name:
		t.Fatalf("picked %s; n14-128 fails with %v and needs a lower exp degree", got, err14)
	}
	if used != set {
		// The refit keeps the reciprocal's error.
		_, before := set.Recip.MaxError()
		_, after := used.Recip.MaxError()
		if after > before {
			t.Fatalf("auto refit raised the reciprocal's error %.3g → %.3g", before, after)
		}
	}
	t.Logf("picked %s (n14-128 as calibrated: %v; notes %v)", got, err14, notes)
	if err14 != nil {
		// An explicit n14-128 refits the approximations to its levels.
		e, used, notes, err := server.NewEngine(w, set, server.LoadOptions{Preset: he.N14, Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		if e.Spec().Preset.Name != he.N14.Name || used == set || len(notes) == 0 {
			t.Fatalf("explicit n14-128: preset %s, notes %v", e.Spec().Preset.Name, notes)
		}
		t.Logf("refitted for n14-128: %v", notes)
	}
}
