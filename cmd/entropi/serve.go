package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
)

func init() {
	commands["serve"] = command{"serve encrypted inference over gRPC for the checkpoints in a directory", runServe}
}

func runServe(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serveMain(ctx, args, os.Stderr, nil)
}

// serveMain runs the server until ctx is done. ready, if non-nil, receives
// the listening address (tests).
func serveMain(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `usage: entropi serve --models DIR [flags]

Serves every checkpoint (*.safetensors) in DIR, named after its file, over
gRPC (service entropi.v1.Entropi, protocol/entropi.proto). Clients encrypt;
the server computes on ciphertexts with the public evaluation keys each
client uploads, and never holds a secret key. Ctrl-C stops gracefully.

flags:
`)
		fl.PrintDefaults()
	}
	caps := pb.DefaultCaps()
	dir := fl.String("models", "models", "directory of checkpoints (*.safetensors)")
	var only stringList
	fl.Var(&only, "model", "serve only this checkpoint of --models, by name without .safetensors (repeatable; default: all). The shipped baseline needs n15-128 under --preset auto (its GELU does not fit n14-128's levels), which takes more than 24 GB: serve it with --preset n14-128 (reduced GELU) or leave it out")
	addr := fl.String("addr", "127.0.0.1:7300", "listen address")
	certFile := fl.String("tls-cert", "", "TLS certificate (PEM); with --tls-key enables TLS")
	keyFile := fl.String("tls-key", "", "TLS private key (PEM)")
	presetName := fl.String("preset", "auto", "CKKS preset: auto (n14-128 if the model's approximations fit its levels, else n15-128) | n14-128 | n15-128 | n16-boot-128 (bootstrapping, with --refresh bootstrap) (insecure-… presets need --allow-insecure-presets)")
	allowInsecure := fl.Bool("allow-insecure-presets", false, "serve insecure test presets (NO SECURITY: tests only)")
	clientEmb := fl.Bool("client-side-embedding", false, "let clients look up embeddings (faster; reveals the embedding table)")
	maxSessions := fl.Int("max-sessions", caps.MaxSessions, "concurrent sessions")
	maxKeyBytes := fl.Int64("max-key-bytes", caps.MaxKeyBytes, "key memory of all sessions together (bytes; also the per-session limit)")
	maxTokens := fl.Int("max-tokens", caps.MaxNewTokens, "tokens one generation may produce")
	maxMsg := fl.Int("max-message-bytes", caps.MaxMessageBytes, "largest gRPC message")
	idle := fl.Duration("session-idle-timeout", 10*time.Minute, "drop sessions idle this long")
	maxAge := fl.Duration("session-max-age", 24*time.Hour, "drop sessions this old, busy or not (a running generation ends with DeadlineExceeded)")
	grace := fl.Duration("grace", 30*time.Second, "on shutdown, time running generations get to finish")
	workers := fl.Int("workers", 0, "goroutines per session (0: all CPUs)")
	refresh := fl.String("refresh", "interactive", "refresh mode: interactive (client-aided refresh rounds) | bootstrap (the server bootstraps, clients upload bootstrapping keys once and answer no rounds; needs --preset n16-boot-128, or insecure-boot-deep with --allow-insecure-presets for tests)")
	logJSON := fl.Bool("log-json", false, "JSON logs")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		fl.Usage()
		return fmt.Errorf("unexpected arguments %v", fl.Args())
	}
	if *maxAge <= 0 {
		return fmt.Errorf("--session-max-age %v: want a positive duration", *maxAge)
	}
	if (*certFile == "") != (*keyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logJSON {
		h = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(h)
	var preset he.Preset // zero: auto
	if *presetName != "auto" {
		var err error
		if preset, err = he.PresetByName(*presetName); err != nil {
			return err
		}
	}
	if preset.Insecure() && preset.Name != "" && !*allowInsecure {
		return fmt.Errorf("preset %s is insecure (test use only): pass --allow-insecure-presets to serve it anyway", preset.Name)
	}
	if preset.Insecure() && preset.Name != "" {
		log.Warn("SERVING AN INSECURE PRESET: no security, tests only", "preset", preset.Name)
	}
	mode, err := engine.ParseRefreshMode(*refresh)
	if err != nil {
		return fmt.Errorf("--refresh: %w", err)
	}
	if err := server.CheckRefreshPreset(mode, preset); err != nil {
		return fmt.Errorf("--refresh %s: %w", mode, err)
	}
	caps.MaxSessions, caps.MaxKeyBytes, caps.MaxNewTokens, caps.MaxMessageBytes = *maxSessions, *maxKeyBytes, *maxTokens, *maxMsg
	if caps.MaxChunkBytes > caps.MaxMessageBytes-1024 {
		caps.MaxChunkBytes = caps.MaxMessageBytes / 2
	}
	t0 := time.Now()
	load := server.LoadOptions{Preset: preset, AllowInsecure: *allowInsecure,
		ClientSideEmbedding: *clientEmb, Workers: *workers, Logger: log, Refresh: mode}
	var models []server.Model
	if len(only) == 0 {
		if models, err = server.LoadModels(*dir, load); err != nil {
			return err
		}
	}
	for _, name := range only {
		f := filepath.Join(*dir, name+".safetensors")
		ck, err := model.Load(f)
		if err != nil {
			return fmt.Errorf("--model %s: %w (the names are the files of --models %s without .safetensors)", name, err, *dir)
		}
		m, err := server.CheckpointModel(name, ck, load)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		models = append(models, m)
	}
	log.Info("engines built", "models", len(models), "seconds", time.Since(t0).Seconds())
	srv, err := server.New(server.Config{Caps: caps, IdleTimeout: *idle, MaxSessionAge: *maxAge, AllowInsecure: *allowInsecure, Logger: log}, models...)
	if err != nil {
		return err
	}
	log.Info("limits", "max_sessions", caps.MaxSessions, "max_key_bytes", caps.MaxKeyBytes, "max_tokens", caps.MaxNewTokens,
		"max_message_bytes", caps.MaxMessageBytes, "session_idle_timeout", idle.String(), "session_max_age", maxAge.String())
	var opts []grpc.ServerOption
	if *certFile != "" {
		creds, err := credentials.NewServerTLSFromFile(*certFile, *keyFile)
		if err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		opts = append(opts, grpc.Creds(creds))
	} else if host, _, err := net.SplitHostPort(*addr); err == nil && !isLoopback(host) {
		log.Warn("serving without TLS on a non-loopback address: ciphertexts are protected, but metadata and integrity are not", "addr", *addr)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if ready != nil {
		ready <- lis.Addr().String()
	}
	return srv.Serve(ctx, lis, *grace, opts...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
