package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/entropi-ai/entropi/protocol"
)

// The service commands on 127.0.0.1 with the insecure test preset and tiny
// random models (a few seconds of encrypted decoding each).

func TestServeAndGenerate(t *testing.T) {
	ck, _ := testCheckpoint(t)
	dir := ck[:strings.LastIndex(ck, "/")]
	name := strings.TrimSuffix(ck[strings.LastIndex(ck, "/")+1:], ".safetensors")
	// A broken checkpoint next to it: --model serves only the one named.
	if err := os.WriteFile(filepath.Join(dir, "broken.safetensors"), []byte("not a checkpoint"), 0o644); err != nil {
		t.Fatal(err)
	}
	var errb0 bytes.Buffer
	if err := serveMain(context.Background(), []string{"--models", dir, "--preset", "insecure-test", "--allow-insecure-presets", "--model", "nope"}, &errb0, nil); err == nil || !strings.Contains(err.Error(), "--model nope") {
		t.Fatalf("serve --model nope: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	served := make(chan error, 1)
	var slog bytes.Buffer
	go func() {
		served <- serveMain(ctx, []string{"--models", dir, "--model", name, "--addr", "127.0.0.1:0", "--preset", "insecure-test",
			"--allow-insecure-presets", "--max-sessions", "2", "--session-idle-timeout", "1m", "--session-max-age", "2h"}, &slog, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-served:
		t.Fatalf("serve: %v\n%s", err, slog.String())
	case <-time.After(60 * time.Second):
		t.Fatal("server not ready")
	}
	var out, errb bytes.Buffer
	if err := generateMain(ctx, []string{"--server", addr, "--prompt", "func", "--n", "2", "--allow-insecure-presets"}, &out, &errb); err != nil {
		t.Fatalf("generate: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "func") {
		t.Errorf("generate output %q", out.String())
	}
	for _, want := range []string{"setup", "prefill", "decode", "refresh_request", "keys"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("generate summary lacks %q:\n%s", want, errb.String())
		}
	}
	// The server holds the flags' session times: its answer for an unknown
	// session names them.
	if msg := unknownSessionError(t, ctx, addr); !strings.Contains(msg, "1m0s idle") || !strings.Contains(msg, "session age limit of 2h0m0s") {
		t.Errorf("server's session times are not the flags' (1m, 2h): %s", msg)
	}
	// Without the flag the client refuses the insecure preset.
	errb.Reset()
	if err := generateMain(ctx, []string{"--server", addr, "--prompt", "func", "--n", "1"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "insecure") {
		t.Errorf("client accepted an insecure preset: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	for _, want := range []string{"model loaded", "session_idle_timeout=1m0s", "session_max_age=2h0m0s", "session created", "generation ended", "shutting down"} {
		if !strings.Contains(slog.String(), want) {
			t.Errorf("server log lacks %q:\n%s", want, slog.String())
		}
	}
}

// unknownSessionError opens Generate on a session that does not exist and
// returns the server's error message.
func unknownSessionError(t *testing.T, ctx context.Context, addr string) string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pb.NewEntropiClient(conn).Generate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: &pb.Start{SessionId: "no-such-session"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if err == nil {
		t.Fatal("Generate on an unknown session succeeded")
	}
	return err.Error()
}

// --session-max-age must be positive (checked before any model loads).
func TestServeRefusesNonPositiveSessionMaxAge(t *testing.T) {
	for _, args := range [][]string{
		{"--session-max-age", "0s"},
		{"--session-max-age", "-1h"},
	} {
		var errb bytes.Buffer
		err := serveMain(context.Background(), append([]string{"--models", t.TempDir()}, args...), &errb, nil)
		if err == nil || !strings.Contains(err.Error(), args[0]) || !strings.Contains(err.Error(), "positive") {
			t.Errorf("serve %v: %v", args, err)
		}
	}
}

func TestServeRefusesInsecurePreset(t *testing.T) {
	ck, _ := testCheckpoint(t)
	dir := ck[:strings.LastIndex(ck, "/")]
	var errb bytes.Buffer
	err := serveMain(context.Background(), []string{"--models", dir, "--preset", "insecure-test"}, &errb, nil)
	if err == nil || !strings.Contains(err.Error(), "--allow-insecure-presets") {
		t.Fatalf("serve accepted an insecure preset without the flag: %v", err)
	}
	err = serveMain(context.Background(), []string{"--models", t.TempDir(), "--preset", "insecure-test", "--allow-insecure-presets"}, &errb, nil)
	if err == nil || !strings.Contains(err.Error(), "no checkpoints") {
		t.Fatalf("serve on an empty directory: %v", err)
	}
}

// --refresh: bootstrap mode needs an explicit bootstrapping preset, and
// unknown modes are refused, before any model loads (insecure presets:
// tests only).
func TestServeRefreshFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--refresh", "sometimes"}, "unknown refresh mode"},
		{[]string{"--refresh", "bootstrap"}, "explicit bootstrapping preset"},
		{[]string{"--refresh", "bootstrap", "--preset", "insecure-test", "--allow-insecure-presets"}, "insecure-test is not one"},
		{[]string{"--refresh", "bootstrap", "--preset", "n14-128"}, "n14-128 is not one"},
		// A bootstrapping preset passes the check (then no checkpoints).
		{[]string{"--refresh", "bootstrap", "--preset", "insecure-boot-deep", "--allow-insecure-presets"}, "no checkpoints"},
	} {
		var errb bytes.Buffer
		err := serveMain(context.Background(), append([]string{"--models", t.TempDir()}, c.args...), &errb, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %v: %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

func TestDemoJSON(t *testing.T) {
	var out, errb bytes.Buffer
	err := demoMain(context.Background(), []string{"--random", "--random-vocab", "32", "--random-context", "8", "--random-dim", "16",
		"--random-layers", "1", "--random-heads", "2", "--preset", "insecure-test", "--allow-insecure-presets",
		"--prompt", "ab", "--n", "2", "--json"}, &out, &errb)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, errb.String())
	}
	var rep struct {
		Model  string `json:"model"`
		Preset struct {
			Name         string `json:"name"`
			LogN         int    `json:"logN"`
			SecurityBits *int   `json:"security_bits"`
		} `json:"preset"`
		PromptTokens     int    `json:"prompt_tokens"`
		Tokens           []int  `json:"tokens"`
		Text             string `json:"text"`
		MatchesPlaintext *bool  `json:"matches_plaintext"`
		Bytes            struct{ Setup, Up, Down uint64 }
		Seconds          struct {
			Setup, Prefill float64
			PerToken       float64 `json:"per_token"`
		}
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if rep.Preset.Name != "insecure-test" || rep.Preset.LogN != 12 || rep.Preset.SecurityBits == nil || rep.PromptTokens != 2 ||
		len(rep.Tokens) != 2 || rep.MatchesPlaintext == nil || rep.Text == "" {
		t.Fatalf("report %+v", rep)
	}
	if rep.Bytes.Setup == 0 || rep.Bytes.Up == 0 || rep.Bytes.Down == 0 || rep.Seconds.Prefill <= 0 || rep.Seconds.PerToken <= 0 {
		t.Fatalf("report numbers %+v", rep)
	}
	t.Logf("%s", out.String())
}

func TestDemoWithoutModel(t *testing.T) {
	var out, errb bytes.Buffer
	// Without a shipped model the demo says how to train one and runs on a
	// small random-weights model instead of failing.
	err := demoMain(context.Background(), []string{"--preset", "insecure-test", "--allow-insecure-presets", "--n", "2"}, &out, &errb)
	if err != nil || !strings.Contains(out.String(), "entropi train") || !strings.Contains(out.String(), "SMALL RANDOM-WEIGHTS") {
		t.Fatalf("demo without a shipped model: %v\n%s", err, out.String())
	}
	if err := demoMain(context.Background(), []string{"--preset", "insecure-test"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "insecure") {
		t.Fatalf("demo accepted an insecure preset without the flag: %v", err)
	}
}
