package train

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entropi-ai/entropi/model"
)

// The training corpus is the Go standard library source of the installed Go
// toolchain ($GOROOT/src, BSD licence). Selection rules (CorpusRules, part of
// the corpus hash):
//
//   - every regular *.go file under $GOROOT/src, including _test.go files
//     (idiomatic Go) and cmd/ (the toolchain);
//   - excluded: anything under a testdata/ directory (deliberately malformed
//     or unusual inputs, golden files), anything under a vendor/ directory
//     (third-party golang.org/x code), and generated files (a line matching
//     `^// Code generated .* DO NOT EDIT\.$`: Unicode and syscall tables,
//     fiat-crypto output... 20 MB of literals that would skew the BPE merges
//     toward hex constants).
//
// Files are read in byte-sorted path order (paths relative to $GOROOT/src,
// slash-separated) and concatenated, each ending in '\n'. A file goes to the
// held-out split when the first 8 bytes of SHA-256("entropi-heldout:" + path),
// read big-endian, modulo 10000 fall below HeldOutBasisPoints (500 = 5%): the
// split depends on the path only, so it is stable across Go versions.
//
// The corpus hash is SHA-256 over CorpusRules, then, per file in sorted
// order, path, NUL, decimal length, NUL, contents. It pins the exact bytes;
// the Go version (from $GOROOT/VERSION) is recorded beside it.
//
// Vocabulary choice: V = 1024 (the `entropi train` default). Byte-level BPE
// (model.TrainBPE, pre-tokenizer code-v1) trained on the whole train split of
// go1.26.8 (42.9 MB, 4877 files; held-out 2.13 MB, 272 files), measured with
// `entropi train --vocab V` (log line "corpus: encoded ..."):
//
//	V      train bytes/token   held-out bytes/token   held-out tokens/byte
//	512    1.700               1.748                  0.572
//	1024   2.070               2.139                  0.468
//	2048   2.391               2.499                  0.400
//	4096   2.662               2.786                  0.359
//
// HE cost: the LM head (d×V) and the one-hot embedding (V×d) are each V/d
// d×d matrix-vector products per token, beside 5 d×d products per
// entropy-guided block (QKV 3, Wo 1, fused FFN 1). At d=256 and 4 layers a
// token costs 20 + 2V/256 products: 24 / 28 / 36 / 52 for V = 512 / 1024 /
// 2048 / 4096, i.e. 13.7 / 13.1 / 14.4 / 18.7 products per byte of held-out
// Go. V=1024 minimizes the linear HE work per byte. Per-token nonlinear work
// (a softmax per layer, refreshes) favours larger V; 2048 overtakes 1024
// only when it exceeds ≈19.5 d×d products per token, while the design
// notes' measurements put one softmax (exp + reciprocal polynomials) near one
// 256×256 product, ≈4–8 for four layers. V=1024 also keeps the logits in one
// ciphertext at every ring size we use and the tied embedding at 262k of the
// model's 1.6M parameters.
const CorpusRules = "entropi-go-stdlib-v1: *.go under $GOROOT/src; no testdata/, no vendor/, no generated files; sorted paths; '\\n'-terminated"

// DefaultHeldOutBasisPoints is the held-out share in 1/10000 (5%).
const DefaultHeldOutBasisPoints = 500

var generatedRE = regexp.MustCompile(`(?m)^// Code generated .* DO NOT EDIT\.$`)

// CorpusFile is one selected source file.
type CorpusFile struct {
	Path    string `json:"path"` // relative to the root, slash-separated
	Bytes   int    `json:"bytes"`
	HeldOut bool   `json:"held_out"`
}

// Corpus is the selected source text, split by file.
type Corpus struct {
	Root      string       `json:"root"`
	GoVersion string       `json:"go_version"`
	Hash      string       `json:"sha256"`
	Files     []CorpusFile `json:"-"`
	Train     []byte       `json:"-"`
	HeldOut   []byte       `json:"-"`
	// Statistics.
	TrainFiles, HeldOutFiles int
	Skipped                  map[string]int `json:"skipped"` // reason → files
}

// GoRoot returns the GOROOT of the installed Go toolchain: `go env GOROOT`
// when the go command is on PATH, else $GOROOT, else the GOROOT this binary
// was built with.
func GoRoot() (string, error) {
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		if s := strings.TrimSpace(string(out)); s != "" {
			return s, nil
		}
	}
	if s := os.Getenv("GOROOT"); s != "" {
		return s, nil
	}
	if s := runtime.GOROOT(); s != "" { // deprecated, but a last resort without a go command
		return s, nil
	}
	return "", errors.New("cannot find GOROOT: no go command on PATH and GOROOT unset")
}

// goVersion reads the first line of $GOROOT/VERSION ("go1.26.8").
func goVersion(goroot string) string {
	b, err := os.ReadFile(filepath.Join(goroot, "VERSION"))
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

// heldOut reports whether a path belongs to the held-out split.
func heldOut(path string, basisPoints int) bool {
	h := sha256.Sum256([]byte("entropi-heldout:" + path))
	return binary.BigEndian.Uint64(h[:8])%10000 < uint64(basisPoints)
}

// LoadGoCorpus reads the standard-library corpus from goroot (empty: GoRoot())
// with the given held-out share in basis points (0: the default 5%).
func LoadGoCorpus(goroot string, heldOutBasisPoints int) (*Corpus, error) {
	if goroot == "" {
		var err error
		if goroot, err = GoRoot(); err != nil {
			return nil, err
		}
	}
	if heldOutBasisPoints == 0 {
		heldOutBasisPoints = DefaultHeldOutBasisPoints
	}
	if heldOutBasisPoints < 0 || heldOutBasisPoints >= 10000 {
		return nil, fmt.Errorf("held-out share %d basis points out of range [1, 9999]", heldOutBasisPoints)
	}
	return loadCorpus(filepath.Join(goroot, "src"), goVersion(goroot), heldOutBasisPoints)
}

func loadCorpus(root, version string, heldOutBP int) (*Corpus, error) {
	c := &Corpus{Root: root, GoVersion: version, Skipped: map[string]int{}}
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "testdata", "vendor":
				if p != root {
					c.Skipped[d.Name()+"/"]++
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasSuffix(d.Name(), ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		paths = append(paths, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("corpus: walking %s: %w", root, err)
	}
	sort.Strings(paths)
	h := sha256.New()
	h.Write([]byte(CorpusRules))
	var train, held bytes.Buffer
	for _, rel := range paths {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			return nil, fmt.Errorf("corpus: %w", err)
		}
		if generatedRE.Match(b) {
			c.Skipped["generated"]++
			continue
		}
		if len(b) == 0 || b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		h.Write([]byte(rel))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(len(b))))
		h.Write([]byte{0})
		h.Write(b)
		f := CorpusFile{Path: rel, Bytes: len(b), HeldOut: heldOut(rel, heldOutBP)}
		if f.HeldOut {
			held.Write(b)
			c.HeldOutFiles++
		} else {
			train.Write(b)
			c.TrainFiles++
		}
		c.Files = append(c.Files, f)
	}
	if c.TrainFiles == 0 || c.HeldOutFiles == 0 {
		return nil, fmt.Errorf("corpus: %s gave %d train and %d held-out files; need both", root, c.TrainFiles, c.HeldOutFiles)
	}
	c.Hash = hex.EncodeToString(h.Sum(nil))
	c.Train, c.HeldOut = train.Bytes(), held.Bytes()
	return c, nil
}

// Summary is a one-paragraph description for logs and checkpoint metadata.
func (c *Corpus) Summary() string {
	var sk []string
	for k, v := range c.Skipped {
		sk = append(sk, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(sk)
	return fmt.Sprintf("Go %s stdlib (%s): %d files, train %d files / %d bytes, held-out %d files / %d bytes; skipped %s; sha256 %s",
		c.GoVersion, c.Root, len(c.Files), c.TrainFiles, len(c.Train), c.HeldOutFiles, len(c.HeldOut), strings.Join(sk, ", "), c.Hash)
}

// TokenizerSample returns the text the tokenizer is trained on: whole train
// files, taken in a fixed pseudo-random order (by SHA-256 of the path) until
// maxBytes (≤ 0: the whole train split, in path order). The order is a
// function of the paths only, so the sample is deterministic.
func (c *Corpus) TokenizerSample(maxBytes int) []byte {
	if maxBytes <= 0 || maxBytes >= len(c.Train) {
		return c.Train
	}
	type kf struct {
		key string
		f   CorpusFile
		off int
	}
	var files []kf
	off := 0
	for _, f := range c.Files {
		if f.HeldOut {
			continue
		}
		k := sha256.Sum256([]byte("entropi-bpe-sample:" + f.Path))
		files = append(files, kf{string(k[:]), f, off})
		off += f.Bytes
	}
	sort.Slice(files, func(i, j int) bool { return files[i].key < files[j].key })
	out := make([]byte, 0, maxBytes)
	for _, x := range files {
		if len(out) > 0 && len(out)+x.f.Bytes > maxBytes {
			continue
		}
		out = append(out, c.Train[x.off:x.off+x.f.Bytes]...)
	}
	return out
}

// Encoded is a corpus tokenized for training.
type Encoded struct {
	Tokenizer    *model.Tokenizer
	Train        []int32
	HeldOut      []int32
	TrainBytes   int
	HeldOutBytes int
	Dir          string // cache directory ("" when not cached)
	Cached       bool   // loaded from the cache
	Info         EncodedInfo
}

// EncodedInfo is the cache's metadata file.
type EncodedInfo struct {
	CorpusHash     string  `json:"corpus_sha256"`
	GoVersion      string  `json:"go_version"`
	Rules          string  `json:"rules"`
	Vocab          int     `json:"vocab"`
	SampleBytes    int     `json:"tokenizer_sample_bytes"`
	TrainBytes     int     `json:"train_bytes"`
	HeldOutBytes   int     `json:"held_out_bytes"`
	TrainTokens    int     `json:"train_tokens"`
	HeldOutTokens  int     `json:"held_out_tokens"`
	TrainBPT       float64 `json:"train_bytes_per_token"`
	HeldOutBPT     float64 `json:"held_out_bytes_per_token"`
	TokenizerTrain string  `json:"tokenizer_train_time"`
	EncodeTime     string  `json:"encode_time"`
}

// DefaultCacheDir is $XDG_CACHE_HOME/entropi/corpus (os.UserCacheDir), or a
// directory under the system temp dir when there is no user cache dir.
func DefaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "entropi", "corpus")
	}
	return filepath.Join(os.TempDir(), "entropi-corpus")
}

// EncodeFiles tokenizes the selected files of the corpus (held-out or train)
// file by file and concatenates the ids: the stream is the same whatever the
// number of goroutines (workers ≤ 0: GOMAXPROCS).
func (c *Corpus) EncodeFiles(tok *model.Tokenizer, heldOut bool, workers int) ([]int32, error) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	src := c.Train
	var spans [][2]int
	off := 0
	for _, f := range c.Files {
		if f.HeldOut != heldOut {
			continue
		}
		spans = append(spans, [2]int{off, off + f.Bytes})
		off += f.Bytes
	}
	if heldOut {
		src = c.HeldOut
	}
	if off != len(src) {
		return nil, fmt.Errorf("corpus: file sizes sum to %d bytes, split holds %d", off, len(src))
	}
	parts := make([][]int, len(spans))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				parts[i] = tok.Encode(src[spans[i][0]:spans[i][1]])
			}
		}()
	}
	for i := range spans {
		next <- i
	}
	close(next)
	wg.Wait()
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]int32, 0, n)
	for _, p := range parts {
		for _, id := range p {
			out = append(out, int32(id))
		}
	}
	return out, nil
}

// Prepare trains the BPE tokenizer of the given vocabulary size on
// TokenizerSample(sampleBytes) and encodes both splits, or loads all three
// from cacheDir ("" : no cache) when an earlier run with the same corpus hash,
// vocabulary and sample size stored them. Progress lines go to log (may be
// nil).
func Prepare(c *Corpus, vocab, sampleBytes int, cacheDir string, log io.Writer) (*Encoded, error) {
	if log == nil {
		log = io.Discard
	}
	if vocab > 1<<16 {
		return nil, fmt.Errorf("corpus: vocabulary %d does not fit the uint16 token cache", vocab)
	}
	e := &Encoded{TrainBytes: len(c.Train), HeldOutBytes: len(c.HeldOut)}
	if cacheDir != "" {
		e.Dir = filepath.Join(cacheDir, fmt.Sprintf("%s-v%d-s%d", c.Hash[:16], vocab, sampleBytes))
		if err := e.load(c, vocab, sampleBytes); err == nil {
			e.Cached = true
			fmt.Fprintf(log, "corpus: loaded tokenizer and %d+%d tokens from %s\n", len(e.Train), len(e.HeldOut), e.Dir)
			return e, nil
		}
	}
	sample := c.TokenizerSample(sampleBytes)
	t0 := time.Now()
	tok, err := model.TrainBPE(sample, vocab)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() != vocab {
		return nil, fmt.Errorf("corpus: tokenizer stopped at %d ids, asked for %d", tok.VocabSize(), vocab)
	}
	tTrain := time.Since(t0)
	fmt.Fprintf(log, "corpus: trained BPE V=%d on %d bytes in %v\n", vocab, len(sample), tTrain.Round(time.Millisecond))
	t0 = time.Now()
	e.Tokenizer = tok
	if e.Train, err = c.EncodeFiles(tok, false, 0); err != nil {
		return nil, err
	}
	if e.HeldOut, err = c.EncodeFiles(tok, true, 0); err != nil {
		return nil, err
	}
	tEnc := time.Since(t0)
	e.Info = EncodedInfo{
		CorpusHash: c.Hash, GoVersion: c.GoVersion, Rules: CorpusRules, Vocab: vocab, SampleBytes: sampleBytes,
		TrainBytes: len(c.Train), HeldOutBytes: len(c.HeldOut), TrainTokens: len(e.Train), HeldOutTokens: len(e.HeldOut),
		TrainBPT:       float64(len(c.Train)) / float64(len(e.Train)),
		HeldOutBPT:     float64(len(c.HeldOut)) / float64(len(e.HeldOut)),
		TokenizerTrain: tTrain.Round(time.Millisecond).String(), EncodeTime: tEnc.Round(time.Millisecond).String(),
	}
	fmt.Fprintf(log, "corpus: encoded %d train tokens (%.3f bytes/token), %d held-out tokens (%.3f bytes/token) in %v\n",
		len(e.Train), e.Info.TrainBPT, len(e.HeldOut), e.Info.HeldOutBPT, tEnc.Round(time.Millisecond))
	if e.Dir != "" {
		if err := e.save(); err != nil {
			return nil, fmt.Errorf("corpus: writing cache: %w", err)
		}
		fmt.Fprintf(log, "corpus: cached in %s\n", e.Dir)
	}
	return e, nil
}

func (e *Encoded) save() error {
	if err := os.MkdirAll(e.Dir, 0o755); err != nil {
		return err
	}
	tj, err := json.Marshal(e.Tokenizer)
	if err != nil {
		return err
	}
	ij, err := json.MarshalIndent(e.Info, "", "  ")
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{"tokenizer.json", tj},
		{"train.u16", tokensToBytes(e.Train)},
		{"heldout.u16", tokensToBytes(e.HeldOut)},
		{"info.json", ij}, // last: its presence marks a complete cache
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(e.Dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

func (e *Encoded) load(c *Corpus, vocab, sampleBytes int) error {
	ib, err := os.ReadFile(filepath.Join(e.Dir, "info.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(ib, &e.Info); err != nil {
		return err
	}
	if e.Info.CorpusHash != c.Hash || e.Info.Vocab != vocab || e.Info.SampleBytes != sampleBytes {
		return errors.New("cache metadata does not match")
	}
	tb, err := os.ReadFile(filepath.Join(e.Dir, "tokenizer.json"))
	if err != nil {
		return err
	}
	e.Tokenizer = new(model.Tokenizer)
	if err := json.Unmarshal(tb, e.Tokenizer); err != nil {
		return err
	}
	if e.Tokenizer.VocabSize() != vocab {
		return errors.New("cached tokenizer has the wrong vocabulary")
	}
	for _, s := range []struct {
		name string
		dst  *[]int32
		n    int
	}{{"train.u16", &e.Train, e.Info.TrainTokens}, {"heldout.u16", &e.HeldOut, e.Info.HeldOutTokens}} {
		b, err := os.ReadFile(filepath.Join(e.Dir, s.name))
		if err != nil {
			return err
		}
		if len(b) != 2*s.n {
			return fmt.Errorf("%s holds %d bytes, want %d", s.name, len(b), 2*s.n)
		}
		*s.dst = bytesToTokens(b)
		for _, id := range *s.dst {
			if int(id) >= vocab {
				return fmt.Errorf("%s holds id %d ≥ vocabulary %d", s.name, id, vocab)
			}
		}
	}
	return nil
}

func tokensToBytes(t []int32) []byte {
	b := make([]byte, 2*len(t))
	for i, id := range t {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(id))
	}
	return b
}

func bytesToTokens(b []byte) []int32 {
	t := make([]int32, len(b)/2)
	for i := range t {
		t[i] = int32(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return t
}

// writeFileAtomic writes via a temporary file in the same directory and a
// rename, so readers never see a partial file.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), path)
}
