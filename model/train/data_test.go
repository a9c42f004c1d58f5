package train

import (
	"reflect"
	"testing"
)

func seqStream(n int) []int32 {
	s := make([]int32, n)
	for i := range s {
		s[i] = int32(i)
	}
	return s
}

func TestLoaderDeterministicWindows(t *testing.T) {
	tokens := seqStream(1000)
	a, _ := NewLoader(tokens, 16, 7)
	b, _ := NewLoader(tokens, 16, 7)
	c, _ := NewLoader(tokens, 16, 8)
	ia, ta := a.Next(8)
	ib, tb := b.Next(8)
	ic, _ := c.Next(8)
	if !reflect.DeepEqual(ia, ib) || !reflect.DeepEqual(ta, tb) {
		t.Fatal("same seed, different windows")
	}
	if reflect.DeepEqual(ia, ic) {
		t.Fatal("different seeds, same windows")
	}
	for k := range ia {
		if len(ia[k]) != 16 || len(ta[k]) != 16 {
			t.Fatalf("window lengths %d, %d", len(ia[k]), len(ta[k]))
		}
		for i := range ia[k] {
			// contiguous run of the stream, targets shifted by one
			if ia[k][i] != ia[k][0]+i || ta[k][i] != ia[k][i]+1 {
				t.Fatalf("window %d not contiguous: %v / %v", k, ia[k], ta[k])
			}
		}
		if ta[k][15] > 999 {
			t.Fatalf("window past the end: %v", ta[k])
		}
	}
	if a.Drawn() != 8 {
		t.Errorf("Drawn = %d", a.Drawn())
	}
}

func TestLoaderStateRestore(t *testing.T) {
	tokens := seqStream(500)
	a, _ := NewLoader(tokens, 8, 3)
	a.Next(5)
	st, err := a.State()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := a.Next(4)
	b, _ := NewLoader(tokens, 8, 99)
	if err := b.SetState(st); err != nil {
		t.Fatal(err)
	}
	got, _ := b.Next(4)
	if !reflect.DeepEqual(got, want) || b.Drawn() != a.Drawn() {
		t.Fatalf("restored loader diverged: %v vs %v", got, want)
	}
	if b.SetState(st[:3]) == nil {
		t.Error("short state accepted")
	}
}

func TestLoaderRejectsShortStream(t *testing.T) {
	if _, err := NewLoader(seqStream(16), 16, 1); err == nil {
		t.Error("stream of T tokens accepted (needs T+1)")
	}
	if _, err := NewLoader(seqStream(17), 16, 1); err != nil {
		t.Error(err)
	}
}

func TestEvalWindows(t *testing.T) {
	tokens := seqStream(1001)
	in, tg, err := EvalWindows(tokens, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(in) != 100 {
		t.Fatalf("%d windows, want all 100", len(in))
	}
	for k := range in {
		if in[k][0] != 10*k || tg[k][9] != 10*k+10 {
			t.Fatalf("window %d = %v → %v", k, in[k], tg[k])
		}
	}
	in2, _, _ := EvalWindows(tokens, 10, 7)
	if len(in2) != 7 {
		t.Fatalf("%d windows, want 7", len(in2))
	}
	seen := map[int]bool{}
	for k, w := range in2 {
		if w[0]%10 != 0 || seen[w[0]] {
			t.Fatalf("window %d starts at %d", k, w[0])
		}
		seen[w[0]] = true
		if k > 0 && w[0] <= in2[k-1][0] {
			t.Fatalf("windows not in stream order")
		}
	}
	if _, _, err := EvalWindows(seqStream(10), 10, 5); err == nil {
		t.Error("too-short held-out stream accepted")
	}
}
