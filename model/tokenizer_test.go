package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/quick"
)

// tokCorpus is a small Go-like training text (fixed, so tests are
// reproducible whatever else lives in the package).
var tokCorpus = []byte(strings.Repeat(`package main

import (
	"fmt"
	"strings"
)

// Greeter says hello.
type Greeter struct {
	Name  string
	Count int
}

func (g *Greeter) Greet(w io.Writer) error {
	for i := 0; i < g.Count; i++ {
		if _, err := fmt.Fprintf(w, "hello, %s! (%d)\n", g.Name, i); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	g := &Greeter{Name: "wörld", Count: 3}
	if err := g.Greet(os.Stdout); err != nil {
		panic(err)
	}
	s := strings.Repeat("=", 80) // héllo ünïcode 世界
	_ = s
}
`, 3))

func tokTrainSmall(t testing.TB, vocab int) *Tokenizer {
	t.Helper()
	tk, err := TrainBPE(tokCorpus, vocab)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func tokChunks(b []byte) []string {
	var out []string
	forEachChunk(b, func(c []byte) { out = append(out, string(c)) })
	return out
}

func TestPretokenizer(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"func main() {\n\treturn x := 42\n}", []string{"func", " main", "()", " {", "\n\t", "return", " x", " :=", " 42", "\n", "}"}},
		{"a  b", []string{"a", " ", " b"}},
		{"a \n b", []string{"a", " \n", " b"}},
		{"utf8 héllo\xff\xfe 0x1F", []string{"utf8", " héllo\xff\xfe", " 0", "x1F"}},
		{"  ", []string{"  "}},
		{" ", []string{" "}},
		{"x\t y", []string{"x", "\t", " y"}},
		{"", nil},
	}
	for _, c := range cases {
		if got := tokChunks([]byte(c.in)); !slices.Equal(got, c.want) {
			t.Errorf("tokChunks(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	long := bytes.Repeat([]byte("a"), 3*MaxTokenBytes+5)
	got := tokChunks(long)
	if len(got) != 4 || len(got[0]) != MaxTokenBytes || len(got[3]) != 5 {
		t.Errorf("a run of %d bytes gave chunks of lengths %d", len(long), len(got))
	}
}

func TestTrainBPEHandWorked(t *testing.T) {
	// One chunk "aaabdaaabac": pair counts aa:4 ab:2 others 1 → merge (a,a);
	// then (a,b) and (256,a) tie at 2 → the smaller pair (a,b); then
	// (256,257) appears twice.
	tk, err := TrainBPE([]byte("aaabdaaabac"), 259)
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]int32{{'a', 'a'}, {'a', 'b'}, {256, 257}}
	if !slices.Equal(tk.merges, want) {
		t.Fatalf("merges %v, want %v", tk.merges, want)
	}
	if got := tk.Encode([]byte("aaabdaaabac")); !slices.Equal(got, []int{258, 'd', 258, 'a', 'c'}) {
		t.Errorf("encode = %v", got)
	}
	if string(tk.Token(258)) != "aaab" {
		t.Errorf("token 258 = %q", tk.Token(258))
	}
}

func TestTrainBPEVocabAndDeterminism(t *testing.T) {
	a := tokTrainSmall(t, 400)
	b := tokTrainSmall(t, 400)
	if a.VocabSize() != 400 || a.NumMerges() != 144 || a.EndOfText() != -1 {
		t.Fatalf("vocab %d merges %d eot %d", a.VocabSize(), a.NumMerges(), a.EndOfText())
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Fatal("training twice on the same data gave different tokenizers")
	}
	// Merges never cross a chunk boundary: every token lies inside one chunk
	// of the corpus, so it never contains a newline followed by a letter.
	for id := 256; id < a.VocabSize(); id++ {
		tok := a.Token(id)
		if i := bytes.IndexByte(tok, '\n'); i >= 0 && i+1 < len(tok) && byteClass[tok[i+1]] != clsSpace {
			t.Errorf("token %d %q crosses a chunk boundary", id, tok)
		}
	}
	ids := a.Encode(tokCorpus)
	if r := float64(len(tokCorpus)) / float64(len(ids)); r < 2 {
		t.Errorf("only %.2f bytes/token on the training text", r)
	}
	// Asking for more merges than the data has pairs stops early.
	small, err := TrainBPE([]byte("ab ab"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if small.VocabSize() != 258 { // "ab", " ab"
		t.Errorf("tiny corpus vocab %d, want 258", small.VocabSize())
	}
}

func TestTrainBPEEndOfText(t *testing.T) {
	tk, err := TrainBPEWith(tokCorpus, 300, BPEOptions{EndOfText: true})
	if err != nil {
		t.Fatal(err)
	}
	if tk.VocabSize() != 300 || tk.EndOfText() != 299 || tk.NumMerges() != 43 {
		t.Fatalf("vocab %d eot %d merges %d", tk.VocabSize(), tk.EndOfText(), tk.NumMerges())
	}
	if ids := tk.Encode([]byte(EndOfTextText)); slices.Contains(ids, 299) {
		t.Error("the literal end-of-text text encoded as the special token")
	}
	out, err := tk.Decode([]int{'a', 299, 'b'})
	if err != nil || string(out) != "a"+EndOfTextText+"b" {
		t.Errorf("decode with eot = %q, %v", out, err)
	}
	if string(tk.Token(299)) != EndOfTextText {
		t.Errorf("Token(eot) = %q", tk.Token(299))
	}
	var back Tokenizer
	j, _ := json.Marshal(tk)
	if err := json.Unmarshal(j, &back); err != nil || back.EndOfText() != 299 || back.VocabSize() != 300 {
		t.Fatalf("JSON round trip: %v eot %d vocab %d", err, back.EndOfText(), back.VocabSize())
	}
}

func TestTrainBPERejects(t *testing.T) {
	for _, v := range []int{0, 255, MaxVocab + 1} {
		if _, err := TrainBPE(tokCorpus, v); err == nil {
			t.Errorf("vocab %d accepted", v)
		}
	}
	if _, err := TrainBPEWith(tokCorpus, 256, BPEOptions{EndOfText: true}); err == nil {
		t.Error("vocab 256 with end-of-text accepted")
	}
	if tk, err := TrainBPE(nil, 300); err != nil || tk.VocabSize() != 256 {
		t.Errorf("empty corpus: %v, vocab %d", err, tk.VocabSize())
	}
}

func TestTokenizerRoundTripRandomBytes(t *testing.T) {
	tk := tokTrainSmall(t, 512)
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab _\n\t(){}:=0123456789\xff\xc3\xa9é")
	for n := 0; n < 300; n++ {
		b := make([]byte, rng.IntN(400))
		for i := range b {
			if n%2 == 0 {
				b[i] = byte(rng.Uint32())
			} else {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		ids := tk.Encode(b)
		out, err := tk.Decode(ids)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("round trip of %q gave %q, %v", b, out, err)
		}
	}
	// Source text (with invalid UTF-8 spliced in) and long runs.
	for _, s := range [][]byte{tokCorpus, append(slices.Clone(tokCorpus[:100]), 0xff, 0xfe, 0x80), bytes.Repeat([]byte(" "), 1000), {}} {
		out, err := tk.Decode(tk.Encode(s))
		if err != nil || !bytes.Equal(out, s) {
			t.Fatalf("round trip failed for %d bytes: %v", len(s), err)
		}
	}
}

func TestTokenizerRoundTripProperty(t *testing.T) {
	tk := tokTrainSmall(t, 400)
	prop := func(b []byte) bool {
		out, err := tk.Decode(tk.Encode(b))
		return err == nil && bytes.Equal(out, b)
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 500}); err != nil {
		t.Error(err)
	}
}

func TestTokenizerEncodeMatchesTraining(t *testing.T) {
	// Encoding the training text must give exactly the segmentation
	// training arrived at, i.e. using every merge at least once when the
	// vocabulary is small.
	tk := tokTrainSmall(t, 300)
	ids := tk.Encode(tokCorpus)
	used := map[int]bool{}
	for _, id := range ids {
		used[id] = true
	}
	// The last merge learned is frequent enough to survive in the output.
	last := tk.VocabSize() - 1
	if !used[last] {
		t.Errorf("last merge %d (%q) never used when encoding its training text", last, tk.Token(last))
	}
}

func TestTokenizerDecodeRejects(t *testing.T) {
	tk := tokTrainSmall(t, 300)
	for _, ids := range [][]int{{300}, {-1}, {1, 2, 1 << 40}} {
		if _, err := tk.Decode(ids); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("Decode(%v): %v", ids, err)
		}
	}
	if tk.Token(300) != nil || tk.Token(-1) != nil {
		t.Error("Token out of range is not nil")
	}
	tok := tk.Token(299)
	tok[0] ^= 0xff
	if bytes.Equal(tok, tk.Token(299)) {
		t.Error("Token returns the internal slice")
	}
}

func TestTokenizerJSONRoundTrip(t *testing.T) {
	tk := tokTrainSmall(t, 450)
	j, err := json.Marshal(tk)
	if err != nil {
		t.Fatal(err)
	}
	var back Tokenizer
	if err := json.Unmarshal(j, &back); err != nil {
		t.Fatal(err)
	}
	j2, _ := json.Marshal(&back)
	if !bytes.Equal(j, j2) {
		t.Fatal("JSON changed after a round trip")
	}
	if !slices.Equal(tk.Encode(tokCorpus), back.Encode(tokCorpus)) {
		t.Fatal("reloaded tokenizer encodes differently")
	}
}

func TestTokenizerJSONRejects(t *testing.T) {
	chain := `[[97,97]`
	for i := 0; i < 8; i++ { // lengths 2, 4, 8, ... 512 bytes
		chain += `,[` + tokItoa(256+i) + `,` + tokItoa(256+i) + `]`
	}
	chain += `]`
	cases := []struct{ json, want string }{
		{`{"type":"bpe","version":1,"pretokenizer":"code-v1","merges":[]}`, "type"},
		{`{"type":"byte-bpe","version":2,"pretokenizer":"code-v1","merges":[]}`, "newer than this entropi understands"},
		{`{"type":"byte-bpe","version":0,"pretokenizer":"code-v1","merges":[]}`, "unknown version"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"gpt2","merges":[]}`, "pre-tokenizer"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[[97,256]]}`, "not an earlier token"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[[-1,97]]}`, "not an earlier token"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[[97,98],[97,98]]}`, "repeats the pair"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":` + chain + `}`, "more than the pre-tokenizer"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[],"end_of_text":300}`, "must be the last id"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[],"end_of_text":-5}`, "negative"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[],"extra":1}`, "unknown field"},
		{`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[[1,2,3]]}`, "malformed"},
		{`[]`, "malformed"},
	}
	for _, c := range cases {
		var tk Tokenizer
		err := json.Unmarshal([]byte(c.json), &tk)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.json, err, c.want)
		}
	}
}

func tokItoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// FuzzTokenizerJSON: loading never panics; what loads encodes any input
// losslessly and marshals back to JSON that loads to the same tokenizer.
func FuzzTokenizerJSON(f *testing.F) {
	tk, _ := TrainBPEWith(tokCorpus, 300, BPEOptions{EndOfText: true})
	j, _ := json.Marshal(tk)
	f.Add(j)
	f.Add([]byte(`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[[97,97],[256,256]]}`))
	f.Add([]byte(`{"type":"byte-bpe","version":1,"pretokenizer":"code-v1","merges":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var tk Tokenizer
		if err := json.Unmarshal(data, &tk); err != nil {
			return
		}
		in := append([]byte("func x() { return 0x1F } \xff\xfe aaaa"), data...)
		out, err := tk.Decode(tk.Encode(in))
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("round trip broken: %v", err)
		}
		j, err := json.Marshal(&tk)
		if err != nil {
			t.Fatal(err)
		}
		var back Tokenizer
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatalf("re-marshalled tokenizer does not load: %v", err)
		}
		if back.VocabSize() != tk.VocabSize() || back.EndOfText() != tk.EndOfText() {
			t.Fatal("tokenizer changed in a JSON round trip")
		}
	})
}

// FuzzTokenizerRoundTrip: Decode(Encode(b)) == b for every byte string.
func FuzzTokenizerRoundTrip(f *testing.F) {
	tk, err := TrainBPE(tokCorpus, 400)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("func main() {\n\treturn\n}"))
	f.Add([]byte("\xff\xfe\x00 \t\n héllo 世界"))
	f.Add(bytes.Repeat([]byte("ab"), 100))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids := tk.Encode(b)
		for _, id := range ids {
			if id < 0 || id >= tk.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		out, err := tk.Decode(ids)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("round trip of %q gave %q, %v", b, out, err)
		}
	})
}

// goSource concatenates the .go files under dir (testdata skipped).
func tokGoSource(tb testing.TB, dir string, limit int) []byte {
	var data []byte
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || len(data) >= limit {
			return filepath.SkipDir
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			b, err := os.ReadFile(p)
			if err == nil {
				data = append(data, b...)
			}
		}
		return nil
	})
	if len(data) == 0 {
		tb.Skipf("no Go source under %s", dir)
	}
	return data
}

// BenchmarkTrainBPE trains on $GOROOT/src/net/http and reports bytes/token
// on the same text and on $GOROOT/src/encoding (held out).
//
//	go test -run '^$' -bench TrainBPE -benchtime 1x ./model/
func BenchmarkTrainBPE(b *testing.B) {
	train := tokGoSource(b, filepath.Join(runtime.GOROOT(), "src", "net", "http"), 1<<30)
	held := tokGoSource(b, filepath.Join(runtime.GOROOT(), "src", "encoding"), 1<<30)
	for _, v := range []int{512, 1024, 2048} {
		b.Run(tokItoa(v), func(b *testing.B) {
			var tk *Tokenizer
			for b.Loop() {
				tk, _ = TrainBPE(train, v)
			}
			b.ReportMetric(float64(len(train))/float64(len(tk.Encode(train))), "bytes/token")
			b.ReportMetric(float64(len(held))/float64(len(tk.Encode(held))), "heldout-bytes/token")
			b.SetBytes(int64(len(train)))
		})
	}
}

// BenchmarkEncode measures encoding throughput (warm chunk cache).
func BenchmarkEncode(b *testing.B) {
	data := tokGoSource(b, filepath.Join(runtime.GOROOT(), "src", "net", "http"), 1<<30)
	tk, _ := TrainBPE(data, 1024)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		tk.Encode(data)
	}
}

func TestTokenizerConcurrentAndCacheEviction(t *testing.T) {
	tk := tokTrainSmall(t, 400)
	tk.cacheMax = 1000
	// More distinct chunks than the cache holds.
	var big bytes.Buffer
	for i := 0; i < 3000; i++ {
		big.WriteString(" w")
		big.WriteString(tokItoa(i * 7919))
	}
	inputs := [][]byte{tokCorpus, big.Bytes(), []byte("\xff\xfe abc"), tokCorpus[:500]}
	want := make([][]int, len(inputs))
	fresh := tokTrainSmall(t, 400) // empty cache: the reference segmentation
	for i, in := range inputs {
		want[i] = fresh.Encode(in)
	}
	done := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			for k := 0; k < 2; k++ {
				for i := range inputs {
					if got := tk.Encode(inputs[(i+g)%len(inputs)]); !slices.Equal(got, want[(i+g)%len(inputs)]) {
						done <- fmt.Errorf("goroutine %d: encoding differs", g)
						return
					}
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	tk.mu.RLock()
	n := len(tk.cache)
	tk.mu.RUnlock()
	if n > tk.cacheMax || n == 0 {
		t.Errorf("cache holds %d chunks, limit %d", n, tk.cacheMax)
	}
}
