package model

import (
	"bytes"
	"image"
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
	const title = "Attention entropy: entropy-guided test model"
	var buf bytes.Buffer
	if err := r.WriteHeatmapPNG(&buf, title); err != nil {
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
	lay := r.heatmapLayout(title)
	b := img.Bounds()
	if wantW, wantH := int(lay.w.Dots(heatmapDPI)+0.5), int(lay.h.Dots(heatmapDPI)+0.5); b.Dx() != wantW || b.Dy() != wantH {
		t.Fatalf("image %v, want %d×%d (layout %v×%v pt at %d dpi)", b.Size(), wantW, wantH, lay.w, lay.h, heatmapDPI)
	}
	// Every cell's colour (viridis of E/M) appears in the image.
	has := colours(img)
	for l, row := range r.E {
		for h, v := range row {
			c := viridis(v / r.M)
			if !has[[3]uint32{uint32(c.R), uint32(c.G), uint32(c.B)}] {
				t.Errorf("cell (%d, %d): colour %v of entropy %.3f not drawn", l, h, c, v)
			}
		}
	}
	// Not blank: the cells and the colour bar cover a good part of the
	// image, and there is text (near-black pixels) in the title band.
	white, dark, titleDark := 0, 0, 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			switch {
			case cr>>8 > 250 && cg>>8 > 250 && cb>>8 > 250:
				white++
			case cr>>8 < 60 && cg>>8 < 60 && cb>>8 < 60:
				dark++
				if y-b.Min.Y < b.Dy()/10 {
					titleDark++
				}
			}
		}
	}
	if n := b.Dx() * b.Dy(); white > 9*n/10 || dark == 0 || titleDark == 0 || len(has) < 50 {
		t.Errorf("image looks blank: %d of %d pixels white, %d near-black (%d in the title band), %d colours", white, n, dark, titleDark, len(has))
	}
	t.Logf("%v×%v px\n%v", b.Dx(), b.Dy(), r)
}

// TestHeatmapLayout: the image grows with the grid, and degenerate reports
// (no heads, M = 0) render.
func TestHeatmapLayout(t *testing.T) {
	grid := func(layers, heads int) *EntropyReport {
		r := &EntropyReport{E: make([][]float64, layers), M: 2}
		for l := range r.E {
			r.E[l] = make([]float64, heads)
			for h := range r.E[l] {
				r.E[l][h] = float64(l*heads+h) / float64(layers*heads) * 2
			}
		}
		return r
	}
	small, wide, tall := grid(4, 4).heatmapLayout("t"), grid(4, 16).heatmapLayout("t"), grid(16, 4).heatmapLayout("t")
	if !(wide.w > small.w && wide.h == small.h) {
		t.Errorf("more heads: %v×%v, 4×4: %v×%v", wide.w, wide.h, small.w, small.h)
	}
	if !(tall.h > small.h && tall.w == small.w) {
		t.Errorf("more layers: %v×%v, 4×4: %v×%v", tall.w, tall.h, small.w, small.h)
	}
	for name, r := range map[string]*EntropyReport{"empty": {}, "zero": grid(2, 3).zeroed()} {
		img := r.Heatmap(name)
		if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
			t.Errorf("%s report: image %v", name, b)
		}
	}
}

func (r *EntropyReport) zeroed() *EntropyReport {
	for _, row := range r.E {
		clear(row)
	}
	r.M = 0
	return r
}

func colours(img image.Image) map[[3]uint32]bool {
	b := img.Bounds()
	has := map[[3]uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			has[[3]uint32{cr >> 8, cg >> 8, cb >> 8}] = true
		}
	}
	return has
}
