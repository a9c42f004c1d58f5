package he

import (
	"testing"

	"github.com/stretchr/testify/require"
	"gonum.org/v1/gonum/mat"
)

// The replication-aware product's key fact: in the PreRotated layout, for
// every row i the slots {j·d + i + b : j < r', b < m} (r' = d/m distinct
// replicas, slot index mod Slots) hold every vector index exactly once,
// including rows whose window wraps into the next replica (i+b ≥ d) and
// the last replica wrapping around the slot vector.
func TestPreRotatedCoversEveryColumnOnce(t *testing.T) {
	for _, c := range []struct{ d, slots int }{{256, 8192}, {256, 16384}, {128, 2048}, {16, 2048}, {64, 64}, {8, 32}} {
		lay, err := NewPreRotated(c.d, c.slots)
		require.NoError(t, err)
		replicas := c.d / lay.M
		require.LessOrEqual(t, replicas*c.d, c.slots)
		for i := 0; i < c.d; i++ {
			seen := make([]int, c.d)
			for j := 0; j < replicas; j++ {
				for b := 0; b < lay.M; b++ {
					seen[lay.Index(j*c.d+i+b)]++
				}
			}
			for col, n := range seen {
				require.Equalf(t, 1, n, "d=%d slots=%d row %d column %d", c.d, c.slots, i, col)
			}
		}
	}
	lay, _ := NewPreRotated(256, 8192)
	require.Equal(t, 8, lay.M)
	x := make([]float64, 256)
	for i := range x {
		x[i] = float64(i)
	}
	v := lay.Encode(x)
	require.Equal(t, x, lay.Decode(v))
	require.Equal(t, 8.0, v[256]) // replica 1 starts at x[m]
	_, err := NewPreRotated(100, 8192)
	require.Error(t, err)
}

func TestLayouts(t *testing.T) {
	rep, err := NewReplicated(40, 256)
	require.NoError(t, err)
	require.Equal(t, 64, rep.Period)
	x := make([]float64, 40)
	for i := range x {
		x[i] = float64(i + 1)
	}
	v := rep.Encode(x)
	require.Equal(t, 1.0, v[64])
	require.Equal(t, 0.0, v[40])
	require.Equal(t, x, rep.Decode(v))

	tm := TokenMajor{D: 3, T: 2, Slots: 8}
	require.NoError(t, tm.Check())
	toks := [][]float64{{1, 2, 3}, {4, 5, 6}}
	require.Equal(t, []float64{1, 2, 3, 4, 5, 6, 0, 0}, tm.Encode(toks))
	require.Equal(t, toks, tm.Decode(tm.Encode(toks)))
	require.Equal(t, []float64{0, 0, 0, 1, 1, 1, 0, 0}, tm.TokenMask(1))
	require.Error(t, TokenMajor{D: 3, T: 3, Slots: 8}.Check())

	hs := Heads{D: 8, Heads: 2}
	require.Equal(t, [][]float64{{0, 1, 2, 3}, {4, 5, 6, 7}}, hs.Split([]float64{0, 1, 2, 3, 4, 5, 6, 7}))
	require.Equal(t, 5, hs.Index(1, 1))

	kv, err := NewKVLayout(48, 3, 1024) // dk = 16, period 64
	require.NoError(t, err)
	require.Equal(t, 16, kv.TokensPerCt())
	c, s := kv.Locate(17)
	require.Equal(t, 1, c)
	require.Equal(t, 64, s)
	m := kv.ScoreMask()
	require.Equal(t, 1.0, m[64+32])
	require.Equal(t, 0.0, m[64+33])
	sc := [][]float64{{1, 2, 3}, {4, 5, 6}}
	require.Equal(t, sc, kv.DecodeScores(kv.EncodeScores(sc, 0), 0, 2))
	_, err = NewKVLayout(48, 4, 1024) // dk = 12: not a power of two
	require.Error(t, err)
}

func TestCounters(t *testing.T) {
	var nilc *Counters
	nilc.Add(OpRotate, 1, 5) // nil sink
	require.Equal(t, int64(0), nilc.Count(OpRotate))
	c := &Counters{}
	c.Add(OpRotate, 3, 30)
	c.Add(OpRelin, 1, 0)
	s0 := c.Snapshot()
	c.Add(OpMulPtCt, 2, 10)
	require.Equal(t, int64(4), c.KeySwitches())
	d := c.Snapshot().Sub(s0)
	require.Equal(t, int64(2), d.Get(OpMulPtCt))
	require.Equal(t, int64(0), d.Get(OpRotate))
	require.Contains(t, c.String(), "rotate=3")
	c.Reset()
	require.Equal(t, int64(0), c.Count(OpRotate))
}

func TestRowsFromDenseAndTranspose(t *testing.T) {
	m := mat.NewDense(2, 3, []float64{1, 2, 3, 4, 5, 6})
	w := RowsFromDense(m)
	require.Equal(t, Rows{{1, 2, 3}, {4, 5, 6}}, w)
	require.Equal(t, Rows{{1, 4}, {2, 5}, {3, 6}}, TransposeRows(w))
}
