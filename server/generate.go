package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tuneinsight/lattigo/v6/core/rlwe"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/entropi-ai/entropi/he"
	pb "github.com/entropi-ai/entropi/protocol"
)

// gen is one Generate stream.
type gen struct {
	s      *Server
	ss     *session
	stream pb.Entropi_GenerateServer
	ctx    context.Context // the generation's: cancelled when its session is dropped
	meter  *pb.Meter
	phase  pb.Phase

	rmu      sync.Mutex // refresh rounds are serialized on the stream
	round    uint64
	protoErr error // the first protocol error seen inside a refresh round
	silent   bool  // the client stopped sending (idle timeout)
}

func (g *gen) send(m *pb.GenerateResponse) error {
	g.meter.Count(g.phase, pb.Down, m)
	return g.stream.Send(m)
}

func (g *gen) recv(what string) (*pb.GenerateRequest, error) {
	m, err := recvTimeout(g.stream.Recv, g.s.cfg.IdleTimeout)
	if err != nil {
		if errors.Is(err, errSilent) {
			g.silent = true
			return nil, pb.Errorf(codes.DeadlineExceeded, "waiting for %s: no message from the client for %v", what, g.s.cfg.IdleTimeout)
		}
		if err == io.EOF {
			return nil, pb.Errorf(codes.InvalidArgument, "stream closed by the client while the server waited for %s", what)
		}
		if g.stream.Context().Err() != nil {
			return nil, status.FromContextError(g.stream.Context().Err()).Err()
		}
		return nil, err
	}
	g.meter.Count(g.phase, pb.Up, m)
	if a := m.GetAbort(); a != nil {
		return nil, pb.Errorf(codes.Aborted, "client aborted: %s (code %d)", a.Message, a.Code)
	}
	return m, nil
}

// refresh is the model session's RefreshFunc: one round over the stream.
func (g *gen) refresh(ctx context.Context, req *he.RefreshRequest) (*he.RefreshResponse, error) {
	g.rmu.Lock()
	defer g.rmu.Unlock()
	if g.protoErr != nil {
		return nil, g.protoErr
	}
	fail := func(err error) (*he.RefreshResponse, error) {
		g.protoErr = err
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return fail(status.FromContextError(err).Err())
	}
	g.round++
	m, err := pb.RefreshRequestToProto(g.round, req)
	if err != nil {
		return fail(pb.Errorf(codes.Internal, "encoding refresh round: %v", err))
	}
	out := &pb.GenerateResponse{Msg: &pb.GenerateResponse_Refresh{Refresh: m}}
	if n := proto.Size(out); n > g.s.cfg.Caps.MaxMessageBytes {
		return fail(pb.Errorf(codes.Internal, "refresh round of %d bytes exceeds the message limit %d", n, g.s.cfg.Caps.MaxMessageBytes))
	}
	if err := g.send(out); err != nil {
		return fail(err)
	}
	in, err := g.recv(fmt.Sprintf("refresh answer %d", g.round))
	if err != nil {
		return fail(err)
	}
	a := in.GetRefreshAnswer()
	if a == nil {
		return fail(pb.Errorf(codes.InvalidArgument, "expected the answer to refresh round %d, got %s", g.round, msgName(in)))
	}
	resp, err := pb.RefreshAnswerFromProto(g.ss.model.params, a, req, g.round)
	if err != nil {
		return fail(err)
	}
	return resp, nil
}

func msgName(m *pb.GenerateRequest) string {
	if m.Msg == nil {
		return "an empty message"
	}
	return fmt.Sprintf("%T", m.Msg)
}

// engineErr turns an error from the model into a status: the context's if
// the client went away, Unavailable if the server cut the generation at
// shutdown, DeadlineExceeded if the session reached its age limit, Aborted
// if the session was dropped under the generation
// (closed by the client from another call), the protocol error behind it if a refresh round failed,
// Internal otherwise.
func (g *gen) engineErr(err error, what string) error {
	if cerr := g.stream.Context().Err(); cerr != nil {
		return status.FromContextError(cerr).Err()
	}
	if g.ctx != nil && g.ctx.Err() != nil && g.s.closing.Load() {
		return pb.Errorf(codes.Unavailable, "%s: the server is shutting down (grace period over)", what)
	}
	if g.ctx != nil && g.ctx.Err() != nil {
		g.ss.mu.Lock()
		expired := g.ss.expired
		g.ss.mu.Unlock()
		if expired {
			return pb.Errorf(codes.DeadlineExceeded, "%s: session %s reached the server's session age limit of %v", what, g.ss.id, g.s.cfg.MaxSessionAge)
		}
		return pb.Errorf(codes.Aborted, "%s: session %s was closed during the generation", what, g.ss.id)
	}
	g.rmu.Lock()
	perr := g.protoErr
	g.rmu.Unlock()
	if perr != nil {
		return perr
	}
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		return st.GRPCStatus().Err()
	}
	return pb.Errorf(codes.Internal, "%s: %v", what, err)
}

// Generate implements the service.
func (s *Server) Generate(stream pb.Entropi_GenerateServer) (err error) {
	g := &gen{s: s, stream: stream, meter: pb.NewMeter(), phase: pb.PhasePrefill}
	first, err := g.recv("Start")
	if err != nil {
		return err
	}
	st := first.GetStart()
	if st == nil {
		return pb.Errorf(codes.InvalidArgument, "the first message of Generate must be Start, got %s", msgName(first))
	}
	s.mu.Lock()
	ss := s.sessions[st.SessionId]
	s.mu.Unlock()
	if ss == nil {
		return pb.Errorf(codes.NotFound, "no session %q (closed, dropped after %v idle or at the session age limit of %v, or never created)", st.SessionId, s.cfg.IdleTimeout, s.cfg.MaxSessionAge)
	}
	g.ss = ss
	l := ss.model
	cfg := l.info.Config
	caps := s.cfg.Caps
	switch {
	case st.PromptTokens == 0:
		return pb.Errorf(codes.InvalidArgument, "empty prompt")
	case int(st.PromptTokens) > cfg.Context:
		return pb.Errorf(codes.OutOfRange, "prompt of %d tokens exceeds the context of %d", st.PromptTokens, cfg.Context)
	case st.PromptCiphertexts != st.PromptTokens:
		return pb.Errorf(codes.InvalidArgument, "%d prompt ciphertexts for %d tokens: the model takes one ciphertext per token", st.PromptCiphertexts, st.PromptTokens)
	case st.MaxNewTokens == 0:
		return pb.Errorf(codes.InvalidArgument, "max_new_tokens is 0")
	case int(st.MaxNewTokens) > caps.MaxNewTokens:
		return pb.Errorf(codes.OutOfRange, "max_new_tokens %d exceeds the server's limit of %d", st.MaxNewTokens, caps.MaxNewTokens)
	case int(st.PromptTokens)+int(st.MaxNewTokens)-1 > cfg.Context:
		return pb.Errorf(codes.OutOfRange, "context overflow: %d prompt tokens + %d new tokens need %d positions, the context is %d",
			st.PromptTokens, st.MaxNewTokens, int(st.PromptTokens)+int(st.MaxNewTokens)-1, cfg.Context)
	}

	// Claim the session.
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	g.ctx = ctx
	ss.mu.Lock()
	if ss.busy {
		ss.mu.Unlock()
		return pb.Errorf(codes.FailedPrecondition, "session %s is busy with another generation (one at a time)", ss.id)
	}
	if ss.keys == nil {
		ss.mu.Unlock()
		return pb.Errorf(codes.NotFound, "session %s was closed", ss.id)
	}
	ss.busy, ss.cancel = true, cancel
	keys := ss.keys
	ss.mu.Unlock()
	t0 := time.Now()
	log := s.log.With("session", ss.id, "model", l.info.Name)
	defer func() {
		ss.mu.Lock()
		ss.busy, ss.cancel, ss.active, ss.lastUsed = false, nil, nil, time.Now()
		ss.mu.Unlock()
		if stream.Context().Err() != nil {
			// The client went away: nobody will use this session again.
			s.drop(ss.id, "client disconnected during generation")
		} else if g.silent {
			s.drop(ss.id, "client silent during generation")
		}
		tr := g.meter.Snapshot()
		log.Info("generation ended", "status", status.Code(err).String(), "error", errString(err),
			"prefill_up", tr.Bytes(pb.PhasePrefill, pb.Up), "prefill_down", tr.Bytes(pb.PhasePrefill, pb.Down),
			"decode_up", tr.Bytes(pb.PhaseDecode, pb.Up), "decode_down", tr.Bytes(pb.PhaseDecode, pb.Down),
			"refresh_rounds", g.round, "seconds", time.Since(t0).Seconds())
	}()

	msess, err := l.m.NewSession(keys, l.refreshFor(g.refresh))
	if err != nil {
		return pb.Errorf(codes.Internal, "model session: %v", err)
	}
	ss.mu.Lock()
	ss.active = msess
	ss.mu.Unlock()
	if err := g.send(&pb.GenerateResponse{Msg: &pb.GenerateResponse_Started{Started: &pb.Started{Position: 0, MaxNewTokens: st.MaxNewTokens}}}); err != nil {
		return err
	}
	rule := pb.FreshRule(l.params, l.info.InputLevel)
	cts := make([]*rlwe.Ciphertext, st.PromptCiphertexts)
	for i := range cts {
		m, err := g.recv(fmt.Sprintf("prompt ciphertext %d", i))
		if err != nil {
			return err
		}
		p := m.GetPrompt()
		if p == nil {
			return pb.Errorf(codes.InvalidArgument, "expected prompt ciphertext %d of %d, got %s", i, len(cts), msgName(m))
		}
		if p.Index != uint32(i) {
			return pb.Errorf(codes.InvalidArgument, "prompt ciphertext %d arrived as index %d (in order, from 0)", i, p.Index)
		}
		if cts[i], err = pb.UnmarshalCiphertext(l.params, p.Ciphertext, rule); err != nil {
			return pb.Wrap(err, "prompt ciphertext %d", i)
		}
	}
	tp := time.Now()
	logits, err := msess.Prefill(ctx, cts)
	if err != nil {
		return g.engineErr(err, "prefill")
	}
	prefillSec := time.Since(tp).Seconds()
	if err := g.sendLogits(int(st.PromptTokens), logits); err != nil {
		return err
	}
	g.phase = pb.PhaseDecode
	var decodeSec float64
	produced := 1 // the client samples a token from each logits
	pos := int(st.PromptTokens)
	for {
		m, err := g.recv("the next token or End")
		if err != nil {
			return err
		}
		if m.GetEnd() != nil {
			break
		}
		nt := m.GetNextToken()
		if nt == nil {
			return pb.Errorf(codes.InvalidArgument, "expected the next token or End, got %s", msgName(m))
		}
		switch {
		case produced >= int(st.MaxNewTokens):
			return pb.Errorf(codes.OutOfRange, "max_new_tokens %d reached: send End", st.MaxNewTokens)
		case pos >= cfg.Context:
			return pb.Errorf(codes.OutOfRange, "context window of %d tokens is full", cfg.Context)
		case int(nt.Position) != pos:
			return pb.Errorf(codes.InvalidArgument, "next token for position %d, the session is at position %d", nt.Position, pos)
		}
		ct, err := pb.UnmarshalCiphertext(l.params, nt.Ciphertext, rule)
		if err != nil {
			return pb.Wrap(err, "token at position %d", pos)
		}
		td := time.Now()
		logits, err := msess.Decode(ctx, ct)
		if err != nil {
			return g.engineErr(err, fmt.Sprintf("decode at position %d", pos))
		}
		decodeSec += time.Since(td).Seconds()
		pos++
		produced++
		if err := g.sendLogits(pos, logits); err != nil {
			return err
		}
	}
	done := &pb.Done{Tokens: uint32(produced), PrefillSeconds: prefillSec, DecodeSeconds: decodeSec}
	if r, ok := msess.(StatsReporter); ok {
		if b, err := r.StatsJSON(); err == nil {
			done.EngineStatsJson = b
		}
	}
	// The Done message counts itself: its traffic table is taken before it
	// is sent, so it includes every other message of the stream.
	done.Traffic = g.meter.Snapshot().Proto()
	return g.send(&pb.GenerateResponse{Msg: &pb.GenerateResponse_Done{Done: done}})
}

func (g *gen) sendLogits(pos int, ct *rlwe.Ciphertext) error {
	b, err := pb.MarshalCiphertext(ct)
	if err != nil {
		return pb.Errorf(codes.Internal, "encoding logits: %v", err)
	}
	return g.send(&pb.GenerateResponse{Msg: &pb.GenerateResponse_Logits{Logits: &pb.Logits{Position: uint32(pos), Ciphertext: b}}})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
