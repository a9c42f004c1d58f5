package server_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/approx"
	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

// bootCalibrate calibrates the tiny model with widened ranges: every
// bootstrap divides by a bound taken from these ranges, so a random model
// must stay inside them.
func bootCalibrate(t *testing.T, w *model.Weights) *approx.Set {
	t.Helper()
	set, err := servertest.CalibrateWide(w)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestBootstrapEndToEnd serves a tiny random entropy-guided model (vocab
// 32, context 8, d 16, 1 layer) in bootstrap mode at insecure-boot-deep
// (N=2^12, NO SECURITY: tests only) over loopback gRPC with the default
// (engine) client: the client uploads bootstrapping keys with the session
// and answers no refresh round; the greedy tokens (a 1-token prompt's
// prefill + one decode token) equal the approximation backend's. Before
// generating, malformed, oversize, missing and mismatched
// bootstrapping-key uploads are refused with a clear error, and the live
// session survives them with its key memory (truncations and other
// malformations: protocol's TestParseBootstrapKeys).
func TestBootstrapEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("bootstrapped decoder: about a minute")
	}
	w, err := model.NewRandom(model.EntropyGuided(32, 8, 16, 1, 2), 3)
	if err != nil {
		t.Fatal(err)
	}
	set := bootCalibrate(t, w)
	t0 := time.Now()
	eng, fit, notes, err := server.NewEngine(w, set, server.LoadOptions{Preset: he.InsecureBootDeep, AllowInsecure: true, Workers: 2, Refresh: engine.RefreshBootstrap})
	if err != nil {
		t.Fatal(err)
	}
	if eng.Mode() != engine.RefreshBootstrap {
		t.Fatalf("engine mode %q", eng.Mode())
	}
	t.Logf("engine built in %v (refits %v): %d bootstraps per decode token planned", time.Since(t0).Round(time.Millisecond), notes, eng.Plan().RefreshCts)
	m, err := server.EngineModel("tiny-boot", eng, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Info().Refresh != engine.RefreshBootstrap {
		t.Fatalf("model info refresh %q", m.Info().Refresh)
	}
	h := start(t, server.Config{}, m)
	c, err := client.Dial(context.Background(), h.addr, &client.Options{AllowInsecurePresets: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mi, err := c.Model("tiny-boot")
	if err != nil {
		t.Fatal(err)
	}
	if !mi.Bootstrap {
		t.Fatal("the model list does not announce bootstrap mode")
	}
	t1 := time.Now()
	sess, err := c.NewSession(context.Background(), "tiny-boot")
	if err != nil {
		t.Fatal(err)
	}
	held := h.srv.KeyBytes()
	t.Logf("session: keygen + upload + server checks %v, %d key bytes held", time.Since(t1).Round(time.Millisecond), held)

	// The raw uploads below use another client's keys for this model.
	ec, err := engine.NewClient(eng.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ec.Keys()
	if err != nil {
		t.Fatal(err)
	}
	params := eng.Params()
	evk, err := keys.Evaluation.MarshalBinary(params)
	if err != nil {
		t.Fatal(err)
	}
	pkb, err := keys.Public.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	btp, err := he.BootstrapParameters(he.InsecureBootDeep, true)
	if err != nil {
		t.Fatal(err)
	}
	bkb, err := pb.MarshalBootstrapKeys(btp, keys.Bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(bkb)) >= held {
		t.Fatalf("held key bytes %d do not count the %d bytes of bootstrapping keys", held, len(bkb))
	}
	rpc := raw(t, h.addr)
	const chunk = 4 << 20
	chunks := func(boot []byte) []*pb.KeyChunk {
		out := keyChunks(evk, pkb, chunk)
		for off := 0; off < len(boot); off += chunk {
			out = append(out, &pb.KeyChunk{Kind: pb.KeyKind_KEY_KIND_BOOTSTRAP, Offset: uint64(off), Data: boot[off:min(off+chunk, len(boot))]})
		}
		return out
	}
	hdr := func(boot []byte) *pb.SessionHeader {
		hd := header("tiny-boot", he.InsecureBootDeep, evk, pkb)
		hd.Refresh, hd.BootstrapKeyBytes = pb.RefreshMode_REFRESH_MODE_BOOTSTRAP, uint64(len(boot))
		return hd
	}
	intact := func(t *testing.T) {
		t.Helper()
		if n := h.srv.Sessions(); n != 1 {
			t.Fatalf("%d sessions after a refused upload, want 1", n)
		}
		if kb := h.srv.KeyBytes(); kb != held {
			t.Fatalf("key memory %d after a refused upload, want %d", kb, held)
		}
	}
	t.Run("forged count", func(t *testing.T) {
		// The gadget row count of the first key (after the 40-byte
		// header, four absent-key flags, a present-key flag and the
		// base-2 decomposition) set to 2^40: refused before Lattigo
		// allocates from it.
		bad := append([]byte(nil), bkb...)
		binary.LittleEndian.PutUint64(bad[8+32+5+8:], 1<<40)
		_, err := upload(rpc, hdr(bad), chunks(bad)...)
		wantStatus(t, err, codes.InvalidArgument, "bootstrapping keys")
		intact(t)
	})
	t.Run("oversize", func(t *testing.T) {
		hd := hdr(bkb)
		hd.BootstrapKeyBytes = uint64(pb.DefaultCaps().MaxKeyBytes)
		_, err := upload(rpc, hd)
		wantStatus(t, err, codes.InvalidArgument, "exceed the per-session limit")
		intact(t)
	})
	t.Run("missing", func(t *testing.T) {
		_, err := upload(rpc, hdr(nil), keyChunks(evk, pkb, chunk)...)
		wantStatus(t, err, codes.InvalidArgument, "needs bootstrapping keys")
		intact(t)
	})
	t.Run("interactive client", func(t *testing.T) {
		hd := hdr(bkb)
		hd.Refresh = pb.RefreshMode_REFRESH_MODE_UNSPECIFIED
		_, err := upload(rpc, hd)
		wantStatus(t, err, codes.FailedPrecondition, "refresh mode disagreement")
		intact(t)
	})
	t.Run("foreign parameters", func(t *testing.T) {
		other, err := he.BootstrapParameters(he.InsecureBootTest, true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := pb.MarshalBootstrapKeys(other, keys.Bootstrap)
		if err != nil {
			t.Fatal(err)
		}
		_, err = upload(rpc, hdr(b), chunks(b)...)
		// Refused at the header, before the rest is uploaded.
		wantStatus(t, err, codes.InvalidArgument, "other bootstrapping parameters")
		intact(t)
	})
	keys, bkb = nil, nil

	// The session still generates: prefill (a 1-token prompt) + 1 decode
	// token, greedy, against the approximation backend's greedy tokens.
	cfg := w.Config
	ab, err := model.NewApprox(cfg, fit)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int{3}
	const n = 2
	smp, _ := model.NewSampler(model.SampleOptions{}, 0)
	want, err := model.Generate(model.NewSession(w, ab), prompt, n, smp, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sess.Generate(context.Background(), prompt, n, client.GenerateOptions{}, func(tk client.Token) error {
		t.Logf("token %d at %d: %v, %d B up, %d B down", tk.ID, tk.Pos, tk.Latency.Round(time.Millisecond), tk.BytesUp, tk.BytesDown)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !equalInts(res.Tokens, want) {
		t.Fatalf("bootstrapped greedy tokens %v, approximation backend %v", res.Tokens, want)
	}
	st := res.Stats
	for _, tr := range []pb.Traffic{st.Traffic, st.ServerTraffic} {
		if up, down := tr.Kind("", pb.KindRefreshRequest); up+down != 0 {
			t.Fatalf("refresh requests in bootstrap mode: %d B", up+down)
		}
		if up, down := tr.Kind("", pb.KindRefreshAnswer); up+down != 0 {
			t.Fatalf("refresh answers in bootstrap mode: %d B", up+down)
		}
	}
	var es engine.Stats
	if err := json.Unmarshal(st.EngineStats, &es); err != nil {
		t.Fatal(err)
	}
	boots := 0
	for _, tk := range es.Tokens {
		if tk.Phase == "decode" {
			boots += tk.RefreshCts
		}
	}
	if boots == 0 {
		t.Fatal("the decode token was not bootstrapped (engine stats)")
	}
	t.Logf("bootstrap mode: tokens %v = approximation backend; 0 refresh rounds; %d bootstraps in the decode token; prefill %.1fs, decode %.1fs; keys up %d B",
		res.Tokens, boots, st.Prefill.Seconds, st.Decode.Seconds, st.Setup.BytesUp)
	sess.Close()
}

// TestBootstrapNeedsBootstrapPreset: bootstrap mode at a preset without the
// sparse secret, or with the auto preset, is refused with a clear error,
// by NewEngine and by server.New (insecure test presets).
func TestBootstrapNeedsBootstrapPreset(t *testing.T) {
	w, set := tinyRandomModel(t)
	_, _, _, err := server.NewEngine(w, set, server.LoadOptions{Preset: he.InsecureTest, AllowInsecure: true, Refresh: engine.RefreshBootstrap})
	if err == nil || !strings.Contains(err.Error(), "needs a bootstrapping preset") || !strings.Contains(err.Error(), "insecure-test is not one") {
		t.Fatalf("bootstrap mode at insecure-test: %v", err)
	}
	_, _, _, err = server.NewEngine(w, set, server.LoadOptions{AllowInsecure: true, Refresh: engine.RefreshBootstrap})
	if err == nil || !strings.Contains(err.Error(), "explicit bootstrapping preset") {
		t.Fatalf("bootstrap mode with the auto preset: %v", err)
	}
	_, _, _, err = server.NewEngine(w, set, server.LoadOptions{Preset: he.InsecureTest, AllowInsecure: true, Refresh: "sometimes"})
	if err == nil || !strings.Contains(err.Error(), "unknown refresh mode") {
		t.Fatalf("unknown refresh mode: %v", err)
	}
	// A model that claims bootstrap mode at a non-bootstrapping preset.
	_, err = server.New(server.Config{AllowInsecure: true, Logger: quietLogger()}, bootClaim{fakeModel(t)})
	if err == nil || !strings.Contains(err.Error(), "needs a bootstrapping preset") {
		t.Fatalf("server.New: %v", err)
	}
}

// bootClaim is the fake model claiming bootstrap mode.
type bootClaim struct{ *servertest.Model }

func (b bootClaim) Info() server.ModelInfo {
	i := b.Model.Info()
	i.Refresh = engine.RefreshBootstrap
	return i
}
