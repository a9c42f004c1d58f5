package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// bar is the commands' progress display (github.com/schollz/progressbar/v3):
// one line on stderr, redrawn in place, showing the description, the
// percentage, count/total, the rate and the time left. It is invisible when
// its writer is not a terminal (logs and pipes get no control characters)
// or when the command was asked to be quiet.
type bar struct {
	pb *progressbar.ProgressBar // nil when invisible
}

// barThrottle is the shortest interval between redraws.
var barThrottle = 100 * time.Millisecond

// newBar starts a progress bar of total steps of unit (plural, e.g.
// "tokens") on w.
func newBar(w io.Writer, desc string, total int, unit string, quiet bool) *bar {
	return makeBar(w, desc, total, unit, !quiet && isTerminal(w))
}

func makeBar(w io.Writer, desc string, total int, unit string, visible bool) *bar {
	if !visible {
		return &bar{}
	}
	pb := progressbar.NewOptions(max(total, 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(barThrottle),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetTheme(progressbar.Theme{Saucer: "=", SaucerHead: ">", SaucerPadding: " ", BarStart: "[", BarEnd: "]"}),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		progressbar.OptionSetRenderBlankState(true),
	)
	return &bar{pb: pb}
}

// set records done of total steps; its signature is the model package's
// progress callback.
func (b *bar) set(done, total int) {
	if b.pb == nil {
		return
	}
	if total = max(total, 1); int64(total) != b.pb.GetMax64() {
		b.pb.ChangeMax(total)
	}
	_ = b.pb.Set(min(done, total)) // display only: an error is not the command's
}

// finish ends the line. A bar that reached its total already shows its
// final state (count, rate, elapsed time); an incomplete one (the command
// failed) stops where it was.
func (b *bar) finish() {
	if b.pb != nil && !b.pb.IsFinished() {
		_ = b.pb.Exit()
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
