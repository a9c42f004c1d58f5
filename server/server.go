package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/entropi-ai/entropi/engine"
	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
)

// Config configures a Server.
type Config struct {
	// Caps bound sessions, key memory, messages and tokens (zero value:
	// protocol.DefaultCaps).
	Caps pb.Caps
	// IdleTimeout drops a session that has not been used for this long
	// (zero: 10 minutes). A running generation keeps its session alive.
	IdleTimeout time.Duration
	// MaxSessionAge bounds the total time a session lives, busy or not
	// (zero: 24 hours): past it the session is dropped, a running
	// generation ends with DeadlineExceeded, and its keys are freed.
	MaxSessionAge time.Duration
	// AllowInsecure serves models with "insecure-…" presets (tests only).
	AllowInsecure bool
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Server is the Entropi gRPC service. It holds models and sessions; a
// session holds a client's public evaluation keys and public key, and
// during a generation the model session with its encrypted KV cache.
type Server struct {
	pb.UnimplementedEntropiServer

	cfg    Config
	log    *slog.Logger
	models map[string]*loaded
	names  []string

	mu       sync.Mutex
	sessions map[string]*session
	pending  int   // sessions being uploaded
	keyBytes int64 // key memory of all sessions (and reservations)

	stop    chan struct{}
	once    sync.Once
	closing atomic.Bool // the grace period is over: generations are being cut
}

type loaded struct {
	m      Model
	info   ModelInfo
	params ckks.Parameters
	proto  *pb.ModelInfo
	// btp are the bootstrapping parameters (bootstrap mode only).
	btp *bootstrapping.Parameters
}

// bootstrap reports whether the model runs in bootstrap mode.
func (l *loaded) bootstrap() bool { return l.btp != nil }

// refreshFor is the refresh callback a model session gets: f, or none in
// bootstrap mode (the model bootstraps; no client rounds).
func (l *loaded) refreshFor(f RefreshFunc) RefreshFunc {
	if l.bootstrap() {
		return nil
	}
	return f
}

// refreshProto is the wire form of a refresh mode.
func refreshProto(m engine.RefreshMode) pb.RefreshMode {
	if m == engine.RefreshBootstrap {
		return pb.RefreshMode_REFRESH_MODE_BOOTSTRAP
	}
	return pb.RefreshMode_REFRESH_MODE_INTERACTIVE
}

type session struct {
	id       string
	model    *loaded
	keys     *Keys
	keyBytes int64
	setup    pb.Traffic

	created time.Time

	mu       sync.Mutex
	lastUsed time.Time
	expired  bool // dropped for its age (MaxSessionAge)
	busy     bool
	cancel   context.CancelFunc // of the running generation
	active   ModelSession       // the running generation's model session (its encrypted KV cache)
}

// New checks the models and builds the server. A model whose preset is
// insecure is refused unless cfg.AllowInsecure is set.
func New(cfg Config, models ...Model) (*Server, error) {
	if cfg.Caps == (pb.Caps{}) {
		cfg.Caps = pb.DefaultCaps()
	}
	if err := cfg.Caps.Check(); err != nil {
		return nil, err
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.MaxSessionAge <= 0 {
		cfg.MaxSessionAge = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(models) == 0 {
		return nil, errors.New("server: no models")
	}
	s := &Server{cfg: cfg, log: cfg.Logger, models: map[string]*loaded{}, sessions: map[string]*session{}, stop: make(chan struct{})}
	for _, m := range models {
		info := m.Info()
		if _, dup := s.models[info.Name]; dup || info.Name == "" {
			return nil, fmt.Errorf("server: model name %q empty or duplicate", info.Name)
		}
		params, err := info.Preset.Parameters(cfg.AllowInsecure)
		if err != nil {
			return nil, fmt.Errorf("server: model %q: %w", info.Name, err)
		}
		if err := info.Config.Validate(); err != nil {
			return nil, fmt.Errorf("server: model %q: %w", info.Name, err)
		}
		if info.InputLevel < 0 || info.InputLevel > params.MaxLevel() {
			return nil, fmt.Errorf("server: model %q: input level %d out of range", info.Name, info.InputLevel)
		}
		mode, err := engine.ParseRefreshMode(string(info.Refresh))
		if err != nil {
			return nil, fmt.Errorf("server: model %q: %w", info.Name, err)
		}
		l := &loaded{m: m, info: info, params: params}
		if mode == engine.RefreshBootstrap {
			btp, err := he.BootstrapParameters(info.Preset, cfg.AllowInsecure)
			if err != nil {
				return nil, fmt.Errorf("server: model %q: refresh mode bootstrap needs a bootstrapping preset: %w", info.Name, err)
			}
			l.btp = &btp
		}
		l.proto = &pb.ModelInfo{
			Name: info.Name, Preset: pb.PresetToProto(info.Preset), Vocab: int32(info.Config.Vocab),
			Context: int32(info.Config.Context), SpecJson: info.Spec,
			Embedding: pb.Embedding_EMBEDDING_SERVER,
			Keys:      &pb.KeyRequest{GaloisElements: info.GaloisElements, Relinearize: info.Relinearize, PublicKey: true},
			Refresh:   refreshProto(mode),
		}
		if info.ClientSideEmbedding {
			l.proto.Embedding = pb.Embedding_EMBEDDING_CLIENT
		}
		cj, err := json.Marshal(info.Config)
		if err != nil {
			return nil, err
		}
		l.proto.ConfigJson = string(cj)
		if info.Tokenizer != nil {
			if l.proto.TokenizerJson, err = json.Marshal(info.Tokenizer); err != nil {
				return nil, fmt.Errorf("server: model %q: tokenizer: %w", info.Name, err)
			}
		}
		s.models[info.Name] = l
		s.names = append(s.names, info.Name)
		s.log.Info("model loaded", "model", info.Name, "preset", info.Preset.Name, "security_bits", info.Preset.SecurityBits,
			"vocab", info.Config.Vocab, "context", info.Config.Context, "dim", info.Config.Dim, "layers", info.Config.Layers,
			"galois_keys", len(info.GaloisElements), "client_side_embedding", info.ClientSideEmbedding, "refresh", string(mode))
	}
	sort.Strings(s.names)
	go s.janitor()
	return s, nil
}

// ServerOptions are the gRPC options the service needs (message sizes).
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.Caps.MaxMessageBytes),
		grpc.MaxSendMsgSize(s.cfg.Caps.MaxMessageBytes),
	}
}

// Serve runs the service on lis until ctx is done, then stops gracefully:
// new RPCs are refused, running ones get grace to finish, then are cut.
func (s *Server) Serve(ctx context.Context, lis net.Listener, grace time.Duration, opts ...grpc.ServerOption) error {
	g := grpc.NewServer(append(s.ServerOptions(), opts...)...)
	pb.RegisterEntropiServer(g, s)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	s.log.Info("serving", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		s.Close()
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "grace", grace.String(), "sessions", s.Sessions())
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.log.Warn("grace period over: cancelling running generations")
		// Cancel the generations first, so that a handler in the model
		// ends its stream with Unavailable "the server is shutting down";
		// then cut what is left (handlers waiting on a client).
		s.closing.Store(true)
		s.Close()
		select {
		case <-done:
		case <-time.After(time.Second):
			g.Stop()
			<-done
		}
	}
	s.Close()
	return nil
}

// Close drops every session and stops the idle-session janitor.
func (s *Server) Close() {
	s.once.Do(func() { close(s.stop) })
	s.mu.Lock()
	ids := make([]string, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.drop(id, "server closing")
	}
}

// Sessions is the number of live sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// KeyBytes is the key memory held by all sessions.
func (s *Server) KeyBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keyBytes
}

func (s *Server) janitor() {
	period := min(s.cfg.IdleTimeout/4, s.cfg.MaxSessionAge/4, time.Second)
	t := time.NewTicker(max(period, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			var idle, old []string
			s.mu.Lock()
			for id, ss := range s.sessions {
				ss.mu.Lock()
				switch {
				case now.Sub(ss.created) > s.cfg.MaxSessionAge:
					ss.expired = true
					old = append(old, id)
				case !ss.busy && now.Sub(ss.lastUsed) > s.cfg.IdleTimeout:
					idle = append(idle, id)
				}
				ss.mu.Unlock()
			}
			s.mu.Unlock()
			for _, id := range idle {
				s.drop(id, "idle timeout")
			}
			for _, id := range old {
				s.drop(id, "session age limit")
			}
		}
	}
}

// drop removes a session, cancels its generation and frees its keys.
func (s *Server) drop(id, why string) bool {
	s.mu.Lock()
	ss, ok := s.sessions[id]
	if ok {
		delete(s.sessions, id)
		s.keyBytes -= ss.keyBytes
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	ss.mu.Lock()
	if ss.cancel != nil {
		ss.cancel()
	}
	ss.keys = nil
	ss.mu.Unlock()
	s.log.Info("session closed", "session", id, "model", ss.model.info.Name, "reason", why, "key_bytes", ss.keyBytes)
	return true
}

// ------------------------------------------------------------- ListModels

// ListModels implements the service.
func (s *Server) ListModels(ctx context.Context, req *pb.ListModelsRequest) (*pb.ListModelsResponse, error) {
	if v := req.GetProtocolVersion(); v != pb.Version {
		return nil, pb.Errorf(codes.FailedPrecondition, "protocol version %d, the server speaks %d", v, pb.Version)
	}
	resp := &pb.ListModelsResponse{ProtocolVersion: pb.Version, Limits: s.cfg.Caps.Proto(s.cfg.IdleTimeout)}
	for _, n := range s.names {
		resp.Models = append(resp.Models, s.models[n].proto)
	}
	return resp, nil
}

// ---------------------------------------------------------- CreateSession

// CreateSession implements the service: header, then key chunks.
func (s *Server) CreateSession(stream pb.Entropi_CreateSessionServer) (err error) {
	t0 := time.Now()
	meter := pb.NewMeter()
	first, err := recvTimeout(stream.Recv, s.cfg.IdleTimeout)
	if err != nil {
		return recvErr(err, "session header")
	}
	meter.Count(pb.PhaseSetup, pb.Up, first)
	h := first.GetHeader()
	if h == nil {
		return pb.Errorf(codes.InvalidArgument, "the first message of CreateSession must be the session header")
	}
	if h.ProtocolVersion != pb.Version {
		return pb.Errorf(codes.FailedPrecondition, "protocol version %d, the server speaks %d", h.ProtocolVersion, pb.Version)
	}
	l, ok := s.models[h.Model]
	if !ok {
		return pb.Errorf(codes.NotFound, "unknown model %q (served: %v)", h.Model, s.names)
	}
	if h.Preset != nil && h.Preset.SecurityBits == 0 && !s.cfg.AllowInsecure {
		return pb.Errorf(codes.PermissionDenied, "insecure preset %q refused: this server was not started with --allow-insecure-presets", h.Preset.Name)
	}
	if err := pb.CheckPresetAgreement(h.Preset, l.info.Preset); err != nil {
		return err
	}
	if want := l.proto.Refresh; h.Refresh != want && !(h.Refresh == pb.RefreshMode_REFRESH_MODE_UNSPECIFIED && want == pb.RefreshMode_REFRESH_MODE_INTERACTIVE) {
		return pb.Errorf(codes.FailedPrecondition, "refresh mode disagreement: the client expects %v, model %q runs %v", h.Refresh, l.info.Name, want)
	}
	caps := s.cfg.Caps
	pkWant := uint64(pb.PublicKeyBytes(l.params))
	switch {
	case h.EvaluationKeyBytes == 0:
		return pb.Errorf(codes.InvalidArgument, "declared evaluation-key size is 0")
	case h.PublicKeyBytes != pkWant:
		return pb.Errorf(codes.InvalidArgument, "declared public-key size %d, a public key for preset %s takes exactly %d bytes", h.PublicKeyBytes, l.info.Preset.Name, pkWant)
	case l.bootstrap() && h.BootstrapKeyBytes == 0:
		return pb.Errorf(codes.InvalidArgument, "model %q runs in bootstrap mode: the session needs bootstrapping keys (declared bootstrapping-key size is 0)", l.info.Name)
	case !l.bootstrap() && h.BootstrapKeyBytes != 0:
		return pb.Errorf(codes.InvalidArgument, "model %q runs in interactive mode: no bootstrapping keys (%d bytes declared)", l.info.Name, h.BootstrapKeyBytes)
	case h.EvaluationKeyBytes > uint64(caps.MaxKeyBytes) || h.BootstrapKeyBytes > uint64(caps.MaxKeyBytes) ||
		h.EvaluationKeyBytes+h.PublicKeyBytes+h.BootstrapKeyBytes > uint64(caps.MaxKeyBytes):
		return pb.Errorf(codes.InvalidArgument, "declared keys of %d bytes (evaluation %d, public %d, bootstrapping %d) exceed the per-session limit of %d bytes",
			h.EvaluationKeyBytes+h.PublicKeyBytes+h.BootstrapKeyBytes, h.EvaluationKeyBytes, h.PublicKeyBytes, h.BootstrapKeyBytes, caps.MaxKeyBytes)
	}
	declared := int64(h.EvaluationKeyBytes + h.PublicKeyBytes + h.BootstrapKeyBytes)
	// Reserve a session slot and the declared key memory.
	s.mu.Lock()
	if len(s.sessions)+s.pending >= caps.MaxSessions {
		s.mu.Unlock()
		return pb.Errorf(codes.ResourceExhausted, "session limit reached (%d sessions)", caps.MaxSessions)
	}
	if s.keyBytes+declared > caps.MaxKeyBytes {
		held := s.keyBytes
		s.mu.Unlock()
		return pb.Errorf(codes.ResourceExhausted, "key memory limit: %d bytes held by sessions, %d more requested, limit %d", held, declared, caps.MaxKeyBytes)
	}
	s.pending++
	s.keyBytes += declared
	reserved := declared
	pending := true // the slot and reservation are still ours to release
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if pending {
			s.pending--
			s.keyBytes -= reserved
		}
		s.mu.Unlock()
	}()

	// The buffers grow with the bytes that arrive, not with the declared
	// sizes: a header alone (declaring up to the cap) costs nothing.
	var evk, pkb, bkb []byte
	for {
		m, err := recvTimeout(stream.Recv, s.cfg.IdleTimeout)
		if err == io.EOF {
			break
		}
		if err != nil {
			return recvErr(err, "key chunk")
		}
		meter.Count(pb.PhaseSetup, pb.Up, m)
		c := m.GetChunk()
		if c == nil {
			return pb.Errorf(codes.InvalidArgument, "a second session header; only key chunks may follow the header")
		}
		if len(c.Data) > caps.MaxChunkBytes {
			return pb.Errorf(codes.InvalidArgument, "key chunk of %d bytes exceeds the chunk limit of %d bytes", len(c.Data), caps.MaxChunkBytes)
		}
		if len(c.Data) == 0 {
			return pb.Errorf(codes.InvalidArgument, "empty key chunk")
		}
		var buf *[]byte
		var total uint64
		switch c.Kind {
		case pb.KeyKind_KEY_KIND_EVALUATION:
			if len(pkb) > 0 {
				return pb.Errorf(codes.InvalidArgument, "evaluation-key chunk after the public key started")
			}
			buf, total = &evk, h.EvaluationKeyBytes
		case pb.KeyKind_KEY_KIND_PUBLIC:
			if uint64(len(evk)) != h.EvaluationKeyBytes {
				return pb.Errorf(codes.InvalidArgument, "public-key chunk before the evaluation keys are complete (%d of %d bytes)", len(evk), h.EvaluationKeyBytes)
			}
			if len(bkb) > 0 {
				return pb.Errorf(codes.InvalidArgument, "public-key chunk after the bootstrapping keys started")
			}
			buf, total = &pkb, h.PublicKeyBytes
		case pb.KeyKind_KEY_KIND_BOOTSTRAP:
			if !l.bootstrap() {
				return pb.Errorf(codes.InvalidArgument, "bootstrapping-key chunk for model %q, which runs in interactive mode", l.info.Name)
			}
			if uint64(len(pkb)) != h.PublicKeyBytes {
				return pb.Errorf(codes.InvalidArgument, "bootstrapping-key chunk before the public key is complete (%d of %d bytes)", len(pkb), h.PublicKeyBytes)
			}
			buf, total = &bkb, h.BootstrapKeyBytes
		default:
			return pb.Errorf(codes.InvalidArgument, "key chunk of unknown kind %v", c.Kind)
		}
		if c.Offset != uint64(len(*buf)) {
			return pb.Errorf(codes.InvalidArgument, "%v chunk at offset %d, expected %d (chunks must be contiguous and in order)", c.Kind, c.Offset, len(*buf))
		}
		if c.Offset+uint64(len(c.Data)) > total {
			return pb.Errorf(codes.InvalidArgument, "%v chunk ends at %d, past the declared %d bytes", c.Kind, c.Offset+uint64(len(c.Data)), total)
		}
		*buf = appendChunk(*buf, c.Data, total)
		// Bootstrapping keys for other parameters are refused as soon as
		// their header is in, not after the rest (hundreds of MB) arrived.
		if c.Kind == pb.KeyKind_KEY_KIND_BOOTSTRAP && len(bkb) >= pb.BootstrapKeyHeaderBytes && int(c.Offset) < pb.BootstrapKeyHeaderBytes {
			if err := pb.CheckBootstrapKeyHeader(*l.btp, bkb[:pb.BootstrapKeyHeaderBytes]); err != nil {
				return err
			}
		}
	}
	if uint64(len(evk)) != h.EvaluationKeyBytes || uint64(len(pkb)) != h.PublicKeyBytes || uint64(len(bkb)) != h.BootstrapKeyBytes {
		return pb.Errorf(codes.InvalidArgument, "upload ended early: %d of %d evaluation-key bytes, %d of %d public-key bytes, %d of %d bootstrapping-key bytes",
			len(evk), h.EvaluationKeyBytes, len(pkb), h.PublicKeyBytes, len(bkb), h.BootstrapKeyBytes)
	}
	ek, err := pb.ParseEvaluationKeys(l.params, evk, caps.MaxKeyBytes)
	if err != nil {
		return err
	}
	evk = nil
	if err := pb.CheckKeyRequest(ek, l.proto.Keys); err != nil {
		return err
	}
	pk, err := pb.ParsePublicKey(l.params, pkb)
	if err != nil {
		return err
	}
	pkb = nil
	// Bootstrapping keys: size, header, every length prefix and the
	// structure of every key are checked (protocol.ParseBootstrapKeys)
	// before and while Lattigo parses them; they arrive expanded.
	var boot *bootstrapping.EvaluationKeys
	var bootBytes int64
	if l.bootstrap() {
		if boot, err = pb.ParseBootstrapKeys(*l.btp, bkb, caps.MaxKeyBytes); err != nil {
			return err
		}
		bkb = nil
		bootBytes = int64(boot.BinarySize())
	}
	// Seeded keys are expanded once here; the memory charged is what the
	// session holds. Their expanded size is known before expanding: refuse
	// keys whose expansion would not fit before allocating it.
	if want := expandedBytes(ek) + int64(pk.BinarySize()) + bootBytes; want > caps.MaxKeyBytes || s.wouldExceed(reserved, want) {
		return pb.Errorf(codes.ResourceExhausted, "expanded keys of %d bytes would exceed the key memory limit of %d bytes (%d held by other sessions)",
			want, caps.MaxKeyBytes, s.KeyBytes()-reserved)
	}
	if err := ek.Expand(l.params); err != nil {
		return pb.Errorf(codes.InvalidArgument, "evaluation keys: %v", err)
	}
	keys := &Keys{Evaluation: ek, Public: pk, Bootstrap: boot}
	if err := checkPublicOnly(keys); err != nil {
		return pb.Errorf(codes.Internal, "%v", err)
	}
	// The model checks that its plan runs with these keys (in bootstrap
	// mode it gets no refresh callback: it bootstraps).
	check := l.refreshFor(func(context.Context, *he.RefreshRequest) (*he.RefreshResponse, error) {
		return nil, errors.New("key check only")
	})
	if _, err := l.m.NewSession(keys, check); err != nil {
		return pb.Errorf(codes.InvalidArgument, "keys rejected by the model: %v", err)
	}
	held := int64(ek.BinarySize()+pk.BinarySize()) + bootBytes

	id, err := newID()
	if err != nil {
		return pb.Errorf(codes.Internal, "session id: %v", err)
	}
	resp := &pb.CreateSessionResponse{SessionId: id, KeyBytes: uint64(held), IdleTimeoutMs: s.cfg.IdleTimeout.Milliseconds(), MaxNewTokens: uint32(caps.MaxNewTokens)}
	meter.Count(pb.PhaseSetup, pb.Down, resp)
	ss := &session{id: id, model: l, keys: keys, keyBytes: held, created: time.Now(), lastUsed: time.Now(), setup: meter.Snapshot()}
	s.mu.Lock()
	if s.keyBytes-reserved+held > caps.MaxKeyBytes {
		s.mu.Unlock()
		return pb.Errorf(codes.ResourceExhausted, "expanded keys of %d bytes exceed the key memory limit of %d bytes", held, caps.MaxKeyBytes)
	}
	// The reservation becomes the session, in one step: released later
	// (after the response is sent), it was counted twice in between, so
	// that concurrent uploads were refused for memory and slots that
	// were not taken (and the accounted total passed the cap).
	s.sessions[id] = ss
	s.keyBytes += held - reserved
	s.pending--
	pending = false
	s.mu.Unlock()
	if err := stream.SendAndClose(resp); err != nil {
		s.drop(id, "client gone during session creation")
		return err
	}
	tr := meter.Snapshot()
	s.log.Info("session created", "session", id, "model", l.info.Name, "preset", l.info.Preset.Name,
		"upload_bytes", tr.Bytes(pb.PhaseSetup, pb.Up), "key_bytes_held", held, "bootstrap_key_bytes", bootBytes, "galois_keys", len(ek.GaloisElements()),
		"seconds", time.Since(t0).Seconds())
	return nil
}

// appendChunk appends data to buf, growing it at most to twice what has
// arrived and never past total (the declared size, already checked against
// the caps), so memory follows the bytes received.
func appendChunk(buf, data []byte, total uint64) []byte {
	if need := len(buf) + len(data); need > cap(buf) {
		nb := make([]byte, len(buf), min(uint64(max(2*cap(buf), need)), max(total, uint64(need))))
		copy(nb, buf)
		buf = nb
	}
	return append(buf, data...)
}

// expandedBytes is ek.BinarySize() after ek.Expand: each seeded key drops
// its seed and gains a second polynomial per gadget entry, shaped as the
// first.
func expandedBytes(ek *he.EvaluationKeys) int64 {
	n := int64(ek.BinarySize())
	add := func(k *rlwe.EvaluationKey) {
		if k == nil || !k.IsCompressed() {
			return
		}
		if k.Seed != nil {
			n -= int64(len(*k.Seed))
		}
		for i := range k.Value {
			for j := range k.Value[i] {
				if len(k.Value[i][j]) > 0 {
					n += int64(k.Value[i][j][0].BinarySize())
				}
			}
		}
	}
	if rlk := ek.Set.RelinearizationKey; rlk != nil {
		add(&rlk.EvaluationKey)
	}
	for _, gk := range ek.Set.GaloisKeys {
		if gk != nil {
			add(&gk.EvaluationKey)
		}
	}
	return n
}

// wouldExceed reports whether replacing a reservation by want bytes would
// take the key memory of all sessions past the cap.
func (s *Server) wouldExceed(reserved, want int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keyBytes-reserved+want > s.cfg.Caps.MaxKeyBytes
}

// checkPublicOnly verifies, by type, that a key set holds only public
// material: a relinearization key, Galois keys and a public key, and in
// bootstrap mode Lattigo's bootstrapping evaluation keys (evaluation keys
// and a key set of the same kinds, under the bootstrapping parameters).
func checkPublicOnly(k *Keys) error {
	if k.Evaluation == nil || k.Evaluation.Set == nil || k.Public == nil {
		return errors.New("incomplete key set")
	}
	if b := k.Bootstrap; b != nil {
		var _ *rlwe.EvaluationKey = b.EvkDenseToSparse // every field is an *rlwe.EvaluationKey or the key set below
		if b.MemEvaluationKeySet == nil {
			return errors.New("bootstrapping keys without their key set")
		}
		for g, gk := range b.GaloisKeys {
			if gk == nil || gk.GaloisElement != g {
				return fmt.Errorf("bootstrapping Galois key %d malformed", g)
			}
		}
	}
	var _ *rlwe.MemEvaluationKeySet = k.Evaluation.Set // holds *RelinearizationKey and map[uint64]*GaloisKey only
	for g, gk := range k.Evaluation.Set.GaloisKeys {
		if gk == nil || gk.GaloisElement != g {
			return fmt.Errorf("Galois key %d malformed", g)
		}
	}
	return nil
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// errSilent is returned when a client sends nothing for an idle timeout.
var errSilent = errors.New("client silent")

// recvTimeout receives one message, or fails with DeadlineExceeded when the
// client sends nothing for d: a silent client must not hold a session (and
// its reserved key memory, or its KV cache) forever. The receiving
// goroutine ends when the handler returns (gRPC then cancels the stream).
func recvTimeout[T any](recv func() (T, error), d time.Duration) (T, error) {
	type result struct {
		m   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := recv()
		ch <- result{m, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-t.C:
		var zero T
		return zero, fmt.Errorf("no message from the client for %v: %w", d, errSilent)
	}
}

// recvErr maps a receive error to a status.
func recvErr(err error, what string) error {
	if err == io.EOF {
		return pb.Errorf(codes.InvalidArgument, "stream ended before the %s", what)
	}
	if errors.Is(err, errSilent) {
		return pb.Errorf(codes.DeadlineExceeded, "waiting for the %s: no message from the client for the idle timeout", what)
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return pb.Errorf(codes.Canceled, "receiving the %s: %v", what, err)
}

// ----------------------------------------------------------- CloseSession

// CloseSession implements the service.
func (s *Server) CloseSession(ctx context.Context, req *pb.CloseSessionRequest) (*pb.CloseSessionResponse, error) {
	if !s.drop(req.GetSessionId(), "closed by the client") {
		return nil, pb.Errorf(codes.NotFound, "no session %q", req.GetSessionId())
	}
	return &pb.CloseSessionResponse{}, nil
}
