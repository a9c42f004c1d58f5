package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"github.com/tuneinsight/lattigo/v6/circuits/ckks/bootstrapping"
	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"github.com/tuneinsight/lattigo/v6/schemes/ckks"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/entropi-ai/entropi/he"
	"github.com/entropi-ai/entropi/model"
	pb "github.com/entropi-ai/entropi/protocol"
)

// Crypto is the client side of a model's encrypted decoder: it holds the
// secret key (which never leaves it). The real one is the engine's client
// (the default); tests plug in others through Options.NewCrypto.
type Crypto interface {
	// Keys generates the session's public keys: the evaluation keys the
	// model requests and the public key.
	Keys() (*he.EvaluationKeys, *rlwe.PublicKey, error)
	// EncryptToken encrypts a token for a position.
	EncryptToken(token, pos int) (*rlwe.Ciphertext, error)
	// AnswerRefresh answers a masked-refresh round with fresh encryptions.
	AnswerRefresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error)
	// DecryptLogits decrypts the logits (length vocab).
	DecryptLogits(ct *rlwe.Ciphertext) ([]float64, error)
}

// BootstrapCrypto is a Crypto that can serve a model in bootstrap mode
// (ModelInfo.Bootstrap): it also generates the bootstrapping keys, which
// the session uploads after the public key. The engine's client (the
// default) is one.
type BootstrapCrypto interface {
	Crypto
	// BootstrapKeys generates the bootstrapping evaluation keys for the
	// model's bootstrapping parameters (he.BootstrapParameters of its
	// preset) from the same secret key.
	BootstrapKeys() (*bootstrapping.EvaluationKeys, error)
}

// Options configure Dial. The zero value dials without TLS and refuses
// insecure presets.
type Options struct {
	// TLS, when set, is used for the connection (nil: plaintext, for
	// loopback and tests).
	TLS *tls.Config
	// AllowInsecurePresets accepts models whose CKKS preset is below 128
	// bits (tests only).
	AllowInsecurePresets bool
	// NewCrypto builds the client side of a model (nil: the engine's).
	NewCrypto func(info *ModelInfo, allowInsecure bool) (Crypto, error)
	// DialOptions are added to the gRPC dial options.
	DialOptions []grpc.DialOption
}

// ModelInfo is what a server says about a model it serves.
type ModelInfo struct {
	Name   string
	Config model.Config
	Preset he.Preset
	// ClientSideEmbedding: the client looks up embeddings itself.
	ClientSideEmbedding bool
	// Tokenizer is nil when the server has none for the model.
	Tokenizer *model.Tokenizer
	// Spec is the engine's public contract (JSON).
	Spec []byte
	// Bootstrap: the server bootstraps (refresh mode bootstrap): the
	// session uploads bootstrapping keys and no refresh round is answered.
	Bootstrap bool
	proto     *pb.ModelInfo
}

// Client is a connection to an entropi server.
type Client struct {
	conn   *grpc.ClientConn
	rpc    pb.EntropiClient
	opts   Options
	models []*ModelInfo
	limits *pb.Limits
	setup  *pb.Meter // ListModels traffic
}

// Dial connects to addr and fetches the model list (protocol version
// check included).
func Dial(ctx context.Context, addr string, opts *Options) (*Client, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.NewCrypto == nil {
		o.NewCrypto = defaultCrypto
	}
	creds := insecure.NewCredentials()
	if o.TLS != nil {
		creds = credentials.NewTLS(o.TLS)
	}
	max := pb.DefaultCaps().MaxMessageBytes
	dopts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(max), grpc.MaxCallSendMsgSize(max)),
	}, o.DialOptions...)
	conn, err := grpc.NewClient(addr, dopts...)
	if err != nil {
		return nil, fmt.Errorf("entropi: dial %s: %w", addr, err)
	}
	c := &Client{conn: conn, rpc: pb.NewEntropiClient(conn), opts: o, setup: pb.NewMeter()}
	req := &pb.ListModelsRequest{ProtocolVersion: pb.Version}
	c.setup.Count(pb.PhaseSetup, pb.Up, req)
	resp, err := c.rpc.ListModels(ctx, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("entropi: list models at %s: %w", addr, err)
	}
	c.setup.Count(pb.PhaseSetup, pb.Down, resp)
	if resp.ProtocolVersion != pb.Version {
		conn.Close()
		return nil, fmt.Errorf("entropi: server speaks protocol %d, this client %d", resp.ProtocolVersion, pb.Version)
	}
	c.limits = resp.Limits
	for _, m := range resp.Models {
		mi, err := modelInfo(m)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("entropi: model %q: %w", m.Name, err)
		}
		c.models = append(c.models, mi)
	}
	return c, nil
}

func modelInfo(m *pb.ModelInfo) (*ModelInfo, error) {
	p, err := pb.PresetFromProto(m.Preset)
	if err != nil {
		return nil, err
	}
	mi := &ModelInfo{Name: m.Name, Preset: p, ClientSideEmbedding: m.Embedding == pb.Embedding_EMBEDDING_CLIENT, Spec: m.SpecJson, proto: m}
	switch m.Refresh {
	case pb.RefreshMode_REFRESH_MODE_UNSPECIFIED, pb.RefreshMode_REFRESH_MODE_INTERACTIVE:
	case pb.RefreshMode_REFRESH_MODE_BOOTSTRAP:
		mi.Bootstrap = true
	default:
		return nil, fmt.Errorf("unknown refresh mode %v", m.Refresh)
	}
	if err := json.Unmarshal([]byte(m.ConfigJson), &mi.Config); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := mi.Config.Validate(); err != nil {
		return nil, err
	}
	if len(m.TokenizerJson) > 0 {
		mi.Tokenizer = new(model.Tokenizer)
		if err := json.Unmarshal(m.TokenizerJson, mi.Tokenizer); err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	}
	return mi, nil
}

// Models lists the models the server serves.
func (c *Client) Models() []*ModelInfo { return c.models }

// Model finds a model by name ("" : the only one, if there is one).
func (c *Client) Model(name string) (*ModelInfo, error) {
	if name == "" && len(c.models) == 1 {
		return c.models[0], nil
	}
	var names []string
	for _, m := range c.models {
		if m.Name == name {
			return m, nil
		}
		names = append(names, m.Name)
	}
	return nil, fmt.Errorf("entropi: the server has no model %q (it serves %v)", name, names)
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Session is a session on the server: this client's keys are uploaded
// there (public keys only); the secret key stays in Crypto.
type Session struct {
	c        *Client
	Model    *ModelInfo
	id       string
	crypto   Crypto
	params   ckks.Parameters
	meter    *pb.Meter
	setupSec float64
	maxNew   int
}

// NewSession generates keys locally for a model and uploads the public
// ones (evaluation keys and public key, and in bootstrap mode the
// bootstrapping keys) in chunks. name "" picks the only model.
func (c *Client) NewSession(ctx context.Context, name string) (*Session, error) {
	t0 := time.Now()
	mi, err := c.Model(name)
	if err != nil {
		return nil, err
	}
	if mi.Preset.Insecure() && !c.opts.AllowInsecurePresets {
		return nil, fmt.Errorf("entropi: model %q requires the insecure preset %q (no security); refusing (set AllowInsecurePresets for tests)", mi.Name, mi.Preset.Name)
	}
	params, err := mi.Preset.Parameters(c.opts.AllowInsecurePresets)
	if err != nil {
		return nil, fmt.Errorf("entropi: %w", err)
	}
	cr, err := c.opts.NewCrypto(mi, c.opts.AllowInsecurePresets)
	if err != nil {
		return nil, fmt.Errorf("entropi: %w", err)
	}
	ek, pk, err := cr.Keys()
	if err != nil {
		return nil, fmt.Errorf("entropi: keys: %w", err)
	}
	evk, err := ek.MarshalBinary(params)
	if err != nil {
		return nil, err
	}
	pkb, err := pk.MarshalBinary()
	if err != nil {
		return nil, err
	}
	var bkb []byte
	refresh := pb.RefreshMode_REFRESH_MODE_INTERACTIVE
	if mi.Bootstrap {
		refresh = pb.RefreshMode_REFRESH_MODE_BOOTSTRAP
		bc, ok := cr.(BootstrapCrypto)
		if !ok {
			return nil, fmt.Errorf("entropi: model %q runs in bootstrap mode, and this client's Crypto (%T) cannot generate bootstrapping keys", mi.Name, cr)
		}
		btp, err := he.BootstrapParameters(mi.Preset, c.opts.AllowInsecurePresets)
		if err != nil {
			return nil, fmt.Errorf("entropi: model %q: bootstrap mode: %w", mi.Name, err)
		}
		bk, err := bc.BootstrapKeys()
		if err != nil {
			return nil, fmt.Errorf("entropi: bootstrapping keys: %w", err)
		}
		if bkb, err = pb.MarshalBootstrapKeys(btp, bk); err != nil {
			return nil, fmt.Errorf("entropi: %w", err)
		}
	}
	meter := pb.NewMeter()
	meter.Merge(c.setup.Snapshot())
	stream, err := c.rpc.CreateSession(ctx)
	if err != nil {
		return nil, fmt.Errorf("entropi: create session: %w", err)
	}
	send := func(m *pb.CreateSessionRequest) error {
		meter.Count(pb.PhaseSetup, pb.Up, m)
		return stream.Send(m)
	}
	hdr := &pb.SessionHeader{ProtocolVersion: pb.Version, Model: mi.Name, Preset: pb.PresetToProto(mi.Preset),
		EvaluationKeyBytes: uint64(len(evk)), PublicKeyBytes: uint64(len(pkb)), Refresh: refresh, BootstrapKeyBytes: uint64(len(bkb))}
	err = send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Header{Header: hdr}})
	chunk := int(c.limits.GetMaxChunkBytes())
	if chunk <= 0 {
		chunk = pb.DefaultCaps().MaxChunkBytes
	}
	for _, blob := range []struct {
		kind pb.KeyKind
		b    []byte
	}{{pb.KeyKind_KEY_KIND_EVALUATION, evk}, {pb.KeyKind_KEY_KIND_PUBLIC, pkb}, {pb.KeyKind_KEY_KIND_BOOTSTRAP, bkb}} {
		for off := 0; off < len(blob.b) && err == nil; off += chunk {
			end := min(off+chunk, len(blob.b))
			err = send(&pb.CreateSessionRequest{Msg: &pb.CreateSessionRequest_Chunk{Chunk: &pb.KeyChunk{Kind: blob.kind, Offset: uint64(off), Data: blob.b[off:end]}}})
		}
	}
	// A send error means the server ended the stream: its status comes
	// with CloseAndRecv.
	resp, rerr := stream.CloseAndRecv()
	if rerr != nil {
		return nil, fmt.Errorf("entropi: create session: %w", rerr)
	}
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("entropi: create session: %w", err)
	}
	meter.Count(pb.PhaseSetup, pb.Down, resp)
	return &Session{c: c, Model: mi, id: resp.SessionId, crypto: cr, params: params, meter: meter,
		setupSec: time.Since(t0).Seconds(), maxNew: int(resp.MaxNewTokens)}, nil
}

// ID is the server's session id.
func (s *Session) ID() string { return s.id }

// Close drops the session (and its keys) on the server.
func (s *Session) Close() error {
	_, err := s.c.rpc.CloseSession(context.Background(), &pb.CloseSessionRequest{SessionId: s.id})
	if err != nil {
		return fmt.Errorf("entropi: close session: %w", err)
	}
	return nil
}

// GenerateOptions choose how tokens are drawn from the decrypted logits.
type GenerateOptions struct {
	// Sample: temperature 0 (the zero value) is greedy.
	Sample model.SampleOptions
	// Seed seeds the sampler.
	Seed uint64
	// Stop, if non-nil, ends generation after a token for which it
	// returns true (e.g. end of text); that token is still reported.
	Stop func(token int) bool
	// KeepLogits keeps each token's decrypted logits in Token.Logits.
	KeepLogits bool
}

// Token is one generated token as the client saw it.
type Token struct {
	ID  int
	Pos int // position the token will occupy
	// Latency is the time from sending the previous token (or the prompt)
	// to this token being sampled: encryption, upload, server work and
	// refresh rounds, download, decryption.
	Latency time.Duration
	// BytesUp and BytesDown are the bytes of this step (refresh rounds
	// included); for the first token, the prefill's.
	BytesUp, BytesDown uint64
	Logits             []float64
}

// PhaseStats are the bytes and seconds of one phase, as the client saw it.
type PhaseStats struct {
	BytesUp, BytesDown uint64
	Seconds            float64
}

// Stats are a generation's numbers: per phase, the traffic table (client
// view), and the server's own count and timings from its Done message.
type Stats struct {
	Setup, Prefill, Decode PhaseStats
	Tokens                 int
	Traffic                pb.Traffic // client's count, by phase and kind
	ServerTraffic          pb.Traffic // the server's count
	ServerPrefillSeconds   float64
	ServerDecodeSeconds    float64
	EngineStats            json.RawMessage
}

// Result is a finished generation.
type Result struct {
	Tokens []int
	Stats  Stats
}

// Generate runs one generation: encrypts the prompt, streams it, answers
// refresh rounds, decrypts each logits ciphertext, samples and sends the
// next token encrypted, up to n tokens (fewer if the context fills or Stop
// says so). emit, if non-nil, receives each token as it is sampled; an
// error from it ends generation (sent to the server as Abort).
func (s *Session) Generate(ctx context.Context, prompt []int, n int, opt GenerateOptions, emit func(Token) error) (*Result, error) {
	cfg := s.Model.Config
	switch {
	case len(prompt) == 0:
		return nil, errors.New("entropi: empty prompt")
	case len(prompt) > cfg.Context:
		return nil, fmt.Errorf("entropi: prompt of %d tokens exceeds the context of %d", len(prompt), cfg.Context)
	case n < 1:
		return nil, fmt.Errorf("entropi: n = %d, want at least 1", n)
	}
	for i, t := range prompt {
		if t < 0 || t >= cfg.Vocab {
			return nil, fmt.Errorf("entropi: prompt token %d = %d outside the vocabulary [0, %d)", i, t, cfg.Vocab)
		}
	}
	// As model.Generate: at most Context − len(prompt) + 1 tokens.
	n = min(n, cfg.Context-len(prompt)+1)
	if s.maxNew > 0 {
		n = min(n, s.maxNew)
	}
	smp, err := model.NewSampler(opt.Sample, opt.Seed)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.c.rpc.Generate(ctx)
	if err != nil {
		return nil, fmt.Errorf("entropi: generate: %w", err)
	}
	g := &clientGen{s: s, stream: stream, meter: pb.NewMeter(), phase: pb.PhasePrefill}
	res, err := g.run(ctx, prompt, n, smp, opt, emit)
	if err != nil {
		return res, err
	}
	return res, nil
}

// Tokens is Generate as a Go iterator: it yields each token as it is
// sampled; breaking out of the loop ends the generation.
func (s *Session) Tokens(ctx context.Context, prompt []int, n int, opt GenerateOptions) iter.Seq2[Token, error] {
	return func(yield func(Token, error) bool) {
		stopped := errors.New("stopped")
		_, err := s.Generate(ctx, prompt, n, opt, func(t Token) error {
			if !yield(t, nil) {
				return stopped
			}
			return nil
		})
		if err != nil && !errors.Is(err, stopped) {
			yield(Token{}, err)
		}
	}
}

type clientGen struct {
	s      *Session
	stream pb.Entropi_GenerateClient
	meter  *pb.Meter
	phase  pb.Phase
}

func (g *clientGen) send(m *pb.GenerateRequest) error {
	g.meter.Count(g.phase, pb.Up, m)
	if err := g.stream.Send(m); err != nil {
		if err == io.EOF { // the server ended the stream: get its status
			_, rerr := g.stream.Recv()
			if rerr != nil && rerr != io.EOF {
				return rerr
			}
		}
		return err
	}
	return nil
}

func (g *clientGen) recv() (*pb.GenerateResponse, error) {
	m, err := g.stream.Recv()
	if err != nil {
		if err == io.EOF {
			return nil, errors.New("entropi: the server closed the stream early")
		}
		return nil, err
	}
	g.meter.Count(g.phase, pb.Down, m)
	return m, nil
}

func (g *clientGen) abort(code codes.Code, err error) error {
	_ = g.stream.Send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Abort{Abort: &pb.Abort{Code: int32(code), Message: err.Error()}}})
	_ = g.stream.CloseSend()
	// Wait for the server to end the stream (it answers the abort with its
	// status) before the caller's context is cancelled: a stream cancelled
	// under the server reads as a client that went away, and the server
	// drops the session, which an abort (e.g. breaking out of Tokens) must
	// keep.
	for {
		if _, rerr := g.stream.Recv(); rerr != nil {
			break
		}
	}
	return err
}

// awaitLogits answers refresh rounds until the logits arrive.
func (g *clientGen) awaitLogits(ctx context.Context, pos int) (*rlwe.Ciphertext, error) {
	params := g.s.params
	for {
		m, err := g.recv()
		if err != nil {
			return nil, err
		}
		switch x := m.Msg.(type) {
		case *pb.GenerateResponse_Refresh:
			if g.s.Model.Bootstrap {
				return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: the server sent refresh round %d, but model %q runs in bootstrap mode (no client rounds)", x.Refresh.GetRound(), g.s.Model.Name))
			}
			req, err := pb.RefreshRequestFromProto(params, x.Refresh, 1024)
			if err != nil {
				return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: server sent an invalid refresh round: %w", err))
			}
			resp, err := g.s.crypto.AnswerRefresh(ctx, req)
			if err != nil {
				return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: refresh round %d: %w", x.Refresh.Round, err))
			}
			a, err := pb.RefreshAnswerToProto(x.Refresh.Round, resp)
			if err != nil {
				return nil, g.abort(codes.Internal, err)
			}
			if err := g.send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_RefreshAnswer{RefreshAnswer: a}}); err != nil {
				return nil, err
			}
		case *pb.GenerateResponse_Logits:
			if int(x.Logits.Position) != pos {
				return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: logits for position %d, expected %d", x.Logits.Position, pos))
			}
			ct, err := pb.UnmarshalCiphertext(params, x.Logits.Ciphertext, pb.AnyLevelRule(params))
			if err != nil {
				return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: logits: %w", err))
			}
			return ct, nil
		default:
			return nil, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: unexpected %T from the server", m.Msg))
		}
	}
}

func (g *clientGen) run(ctx context.Context, prompt []int, n int, smp *model.Sampler, opt GenerateOptions, emit func(Token) error) (*Result, error) {
	s := g.s
	res := &Result{}
	finish := func() {
		tr := g.meter.Snapshot()
		setup := s.meter.Snapshot()
		all := pb.NewMeter()
		all.Merge(setup)
		all.Merge(tr)
		res.Stats.Traffic = all.Snapshot()
		res.Stats.Setup = PhaseStats{BytesUp: setup.Bytes(pb.PhaseSetup, pb.Up), BytesDown: setup.Bytes(pb.PhaseSetup, pb.Down), Seconds: s.setupSec}
		res.Stats.Prefill.BytesUp, res.Stats.Prefill.BytesDown = tr.Bytes(pb.PhasePrefill, pb.Up), tr.Bytes(pb.PhasePrefill, pb.Down)
		res.Stats.Decode.BytesUp, res.Stats.Decode.BytesDown = tr.Bytes(pb.PhaseDecode, pb.Up), tr.Bytes(pb.PhaseDecode, pb.Down)
		res.Stats.Tokens = len(res.Tokens)
	}
	defer finish()

	t0 := time.Now()
	start := &pb.Start{SessionId: s.id, PromptTokens: uint32(len(prompt)), PromptCiphertexts: uint32(len(prompt)), MaxNewTokens: uint32(n)}
	if err := g.send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Start{Start: start}}); err != nil {
		return res, err
	}
	m, err := g.recv()
	if err != nil {
		return res, err
	}
	if m.GetStarted() == nil {
		return res, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: expected Started, got %T", m.Msg))
	}
	// Encrypt and stream the prompt token by token.
	for i, t := range prompt {
		ct, err := s.crypto.EncryptToken(t, i)
		if err != nil {
			return res, g.abort(codes.Internal, fmt.Errorf("entropi: encrypt prompt token %d: %w", i, err))
		}
		b, err := pb.MarshalCiphertext(ct)
		if err != nil {
			return res, g.abort(codes.Internal, err)
		}
		if err := g.send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_Prompt{Prompt: &pb.PromptCiphertext{Index: uint32(i), Ciphertext: b}}}); err != nil {
			return res, err
		}
	}
	pos := len(prompt)
	stepStart := t0
	prev := pb.Traffic(nil)
	for {
		ct, err := g.awaitLogits(ctx, pos)
		if err != nil {
			return res, err
		}
		logits, err := s.crypto.DecryptLogits(ct)
		if err != nil {
			return res, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: decrypt logits: %w", err))
		}
		tok, err := smp.Sample(logits)
		if err != nil {
			return res, g.abort(codes.InvalidArgument, fmt.Errorf("entropi: sample: %w", err))
		}
		now := time.Now()
		cur := g.meter.Snapshot()
		tk := Token{ID: tok, Pos: pos, Latency: now.Sub(stepStart),
			BytesUp: cur.Bytes("", pb.Up) - prev.Bytes("", pb.Up), BytesDown: cur.Bytes("", pb.Down) - prev.Bytes("", pb.Down)}
		if opt.KeepLogits {
			tk.Logits = logits
		}
		if len(res.Tokens) == 0 {
			res.Stats.Prefill.Seconds = now.Sub(t0).Seconds()
		} else {
			res.Stats.Decode.Seconds += now.Sub(stepStart).Seconds()
		}
		res.Tokens = append(res.Tokens, tok)
		if emit != nil {
			if err := emit(tk); err != nil {
				return res, g.abort(codes.Canceled, err)
			}
		}
		if len(res.Tokens) >= n || (opt.Stop != nil && opt.Stop(tok)) {
			break
		}
		g.phase = pb.PhaseDecode
		prev = cur
		stepStart = time.Now()
		ct, err = s.crypto.EncryptToken(tok, pos)
		if err != nil {
			return res, g.abort(codes.Internal, fmt.Errorf("entropi: encrypt token: %w", err))
		}
		b, err := pb.MarshalCiphertext(ct)
		if err != nil {
			return res, g.abort(codes.Internal, err)
		}
		if err := g.send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_NextToken{NextToken: &pb.TokenCiphertext{Position: uint32(pos), Ciphertext: b}}}); err != nil {
			return res, err
		}
		pos++
	}
	g.phase = pb.PhaseDecode
	if err := g.send(&pb.GenerateRequest{Msg: &pb.GenerateRequest_End{End: &pb.End{}}}); err != nil {
		return res, err
	}
	m, err = g.recv()
	if err != nil {
		return res, err
	}
	done := m.GetDone()
	if done == nil {
		return res, fmt.Errorf("entropi: expected Done, got %T", m.Msg)
	}
	res.Stats.ServerTraffic = pb.TrafficFromProto(done.Traffic)
	res.Stats.ServerPrefillSeconds = done.PrefillSeconds
	res.Stats.ServerDecodeSeconds = done.DecodeSeconds
	res.Stats.EngineStats = done.EngineStatsJson
	_ = g.stream.CloseSend()
	if _, err := g.stream.Recv(); err != io.EOF && err != nil {
		return res, err
	}
	return res, nil
}
