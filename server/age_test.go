package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/entropi-ai/entropi/client"
	pb "github.com/entropi-ai/entropi/protocol"
	"github.com/entropi-ai/entropi/server"
)

// MaxSessionAge bounds a session's total time: a session in steady use
// (never idle) is dropped once it is older, and a generation running at
// that moment ends with DeadlineExceeded; the keys are freed either way.
func TestSessionAgeLimit(t *testing.T) {
	const age = time.Second
	t.Run("in use", func(t *testing.T) {
		h := start(t, server.Config{IdleTimeout: time.Minute, MaxSessionAge: age}, fakeModel(t))
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		var gens int
		for time.Since(t0) < 30*time.Second {
			_, err = s.Generate(context.Background(), []int{1}, 1, client.GenerateOptions{}, nil)
			if err != nil {
				break
			}
			gens++
		}
		el := time.Since(t0)
		t.Logf("%d generations in %v, then: %v", gens, el.Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("a session in steady use outlived its age limit by 30 s")
		}
		if c := pbCode(err); c != codes.NotFound && c != codes.DeadlineExceeded {
			t.Fatalf("after the age limit: %v", err)
		}
		if el < age {
			t.Fatalf("the session ended after %v, before its age limit %v", el, age)
		}
		noSessions(t, h.srv)
	})
	t.Run("mid-generation", func(t *testing.T) {
		m := newHookModel(t)
		m.holdPrefill.Store(true)
		h := start(t, server.Config{IdleTimeout: time.Minute, MaxSessionAge: age}, m)
		c := dialFake(t, h.addr)
		s, err := c.NewSession(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		errc := generateAsync(context.Background(), s, []int{1, 2}, 2)
		waitSignal(t, m.prefill, "prefill")
		err = waitErr(t, errc)
		wantStatus(t, err, codes.DeadlineExceeded, "session age limit")
		noSessions(t, h.srv)
		settle(t, requestFrames, -1)
	})
}

// pbCode is the status code of err or of the error it wraps (the client
// wraps statuses with context).
func pbCode(err error) codes.Code {
	if c := pb.Code(err); c != codes.Unknown {
		return c
	}
	return pb.Code(errors.Unwrap(err))
}
