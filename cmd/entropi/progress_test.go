package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBarShowsCountRateAndEnds(t *testing.T) {
	var buf bytes.Buffer
	b := makeBar(&buf, "eval", 40, "tokens", true)
	for i := 1; i <= 40; i++ {
		b.set(i, 40)
	}
	b.finish()
	out := buf.String()
	for _, want := range []string{"eval", "100%", "(40/40, ", "tokens/s)", "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar output lacks %q: %q", want, out)
		}
	}
}

func TestBarFollowsTotalAndStopsOnFailure(t *testing.T) {
	defer func(d time.Duration) { barThrottle = d }(barThrottle)
	barThrottle = 0 // draw every update
	var buf bytes.Buffer
	b := makeBar(&buf, "entropy", 10, "windows", true)
	b.set(3, 20) // the model's total wins over the estimate
	b.finish()
	out := buf.String()
	if !strings.Contains(out, "(3/20, ") || strings.Contains(out, "100%") || !strings.HasSuffix(out, "\n") {
		t.Errorf("incomplete bar: %q", out)
	}
}

func TestBarSilentOffTerminal(t *testing.T) {
	for _, quiet := range []bool{false, true} {
		var buf bytes.Buffer
		b := newBar(&buf, "eval", 5, "tokens", quiet) // a buffer is not a terminal
		for i := 1; i <= 5; i++ {
			b.set(i, 5)
		}
		b.finish()
		if buf.Len() != 0 {
			t.Errorf("quiet=%v: wrote %q off a terminal", quiet, buf.String())
		}
	}
}
