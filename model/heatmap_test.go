package model

import (
	"bytes"
	"image/png"
	"os"
	"testing"
)

func TestHeatmap(t *testing.T) {
	w := testModels(t)["entropy-guided"]
	st, err := AttentionEntropy(w, chunks(randomTokens(6, w.Config.Vocab, 4*w.Config.Context), w.Config.Context), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := st.Report()
	var buf bytes.Buffer
	if err := r.WriteHeatmapPNG(&buf, "attention entropy: entropy-guided test model"); err != nil {
		t.Fatal(err)
	}
	if out := os.Getenv("ENTROPI_HEATMAP_OUT"); out != "" { // for looking at it
		if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	// Every cell's colour (viridis of E/M) appears in the image.
	b := img.Bounds()
	has := map[[3]uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			has[[3]uint32{cr >> 8, cg >> 8, cb >> 8}] = true
		}
	}
	for l, row := range r.E {
		for h, v := range row {
			c := viridis(v / r.M)
			if !has[[3]uint32{uint32(c.R), uint32(c.G), uint32(c.B)}] {
				t.Errorf("cell (%d, %d): colour %v of entropy %.3f not drawn", l, h, c, v)
			}
		}
	}
	t.Logf("\n%v", r)
}
