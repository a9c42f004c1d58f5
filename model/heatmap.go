package model

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"strings"
)

// The heatmap is drawn with the standard library and a built-in 5×7 bitmap
// font: gonum/plot is not a dependency in go.mod (see the package README).

// Heatmap draws the head entropies: one cell per (layer, head), layer 0 at
// the top, colour = entropy on a viridis scale from 0 to M (the largest head
// entropy, so the colour bar's ticks are the paper's bucket edges M/4, M/2,
// 3M/4), each cell labelled with its value.
func (r *EntropyReport) Heatmap(title string) image.Image {
	const (
		s      = 2     // font scale
		adv    = 6 * s // glyph advance
		gh     = 9 * s // line height (7 rows and 2 of descender)
		cellW  = 60
		barW   = 24
		tickLn = 6
	)
	layers := len(r.E)
	cellH := max(34, (10*gh+layers-1)/max(layers, 1)) // room for the colour bar's five ticks
	heads := 0
	if layers > 0 {
		heads = len(r.E[0])
	}
	tickLabel := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	left := 16 + gh + 12 + adv*len(fmt.Sprint(max(layers-1, 0))) + 10
	top := 20 + gh + 14 + gh + 12
	gridW, gridH := heads*cellW, layers*cellH
	barX := left + gridW + 36
	barLabel := "entropy (nats)"
	footer := fmt.Sprintf("buckets of m = %.2f: [0,m/4) %.0f%%  [m/4,m/2) %.0f%%  [m/2,3m/4) %.0f%%  [3m/4,m] %.0f%%",
		r.M, 100*r.Buckets[0], 100*r.Buckets[1], 100*r.Buckets[2], 100*r.Buckets[3])
	width := max(barX+barW+tickLn+4+adv*len(tickLabel(r.M))+20, barX+adv*len(barLabel)+20, 20+adv*len(footer)+20, 20+adv*len(title)+20)
	height := top + gridH + 12 + gh + 12 + gh + 18 + gh + 16

	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fill(img, img.Bounds(), color.White)
	black := color.RGBA{0, 0, 0, 255}

	drawText(img, 20, 16, strings.ToLower(title), s, black)
	drawText(img, barX, top-gh-10, barLabel, s, black)

	scale := func(v float64) float64 {
		if r.M <= 0 {
			return 0
		}
		return math.Min(math.Max(v/r.M, 0), 1)
	}
	for l, row := range r.E {
		for h, v := range row {
			x0, y0 := left+h*cellW, top+l*cellH
			t := scale(v)
			fill(img, image.Rect(x0, y0, x0+cellW, y0+cellH), viridis(t))
			txt := fmt.Sprintf("%.2f", v)
			ink := color.RGBA{255, 255, 255, 255}
			if t > 0.6 {
				ink = black
			}
			drawText(img, x0+(cellW-adv*len(txt)+s)/2, y0+(cellH-7*s)/2, txt, s, ink)
		}
	}
	// Axes: layer ticks left, head ticks below, labels.
	for l := 0; l < layers; l++ {
		lab := fmt.Sprint(l)
		drawText(img, left-8-adv*len(lab), top+l*cellH+(cellH-7*s)/2, lab, s, black)
	}
	for h := 0; h < heads; h++ {
		lab := fmt.Sprint(h)
		drawText(img, left+h*cellW+(cellW-adv*len(lab))/2, top+gridH+10, lab, s, black)
	}
	drawText(img, left+(gridW-adv*len("head"))/2, top+gridH+10+gh+12, "head", s, black)
	drawTextUp(img, 16, top+(gridH+adv*len("layer"))/2, "layer", s, black)
	outline(img, image.Rect(left-1, top-1, left+gridW+1, top+gridH+1), black)

	// Colour bar with ticks at the bucket edges.
	for y := 0; y < gridH; y++ {
		fill(img, image.Rect(barX, top+y, barX+barW, top+y+1), viridis(1-float64(y)/float64(max(gridH-1, 1))))
	}
	outline(img, image.Rect(barX-1, top-1, barX+barW+1, top+gridH+1), black)
	for k := 0; k <= 4; k++ {
		y := top + gridH - 1 - int(math.Round(float64(k)/4*float64(gridH-1)))
		fill(img, image.Rect(barX+barW, y, barX+barW+tickLn, y+1), black)
		drawText(img, barX+barW+tickLn+4, y-7*s/2, tickLabel(r.M*float64(k)/4), s, black)
	}
	drawText(img, 20, height-16-gh, footer, s, black)
	return img
}

// WriteHeatmapPNG writes the heatmap as PNG.
func (r *EntropyReport) WriteHeatmapPNG(w io.Writer, title string) error {
	return png.Encode(w, r.Heatmap(title))
}

// SaveHeatmapPNG writes the heatmap to a PNG file.
func (r *EntropyReport) SaveHeatmapPNG(path, title string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := r.WriteHeatmapPNG(f, title); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// viridis maps t ∈ [0, 1] to matplotlib's viridis colour map (9 stops,
// linear in between): dark purple (low entropy) to yellow (high).
func viridis(t float64) color.RGBA {
	stops := [...][3]float64{{68, 1, 84}, {71, 44, 122}, {59, 81, 139}, {44, 113, 142}, {33, 144, 141},
		{39, 173, 129}, {92, 200, 99}, {170, 220, 50}, {253, 231, 37}}
	t = math.Min(math.Max(t, 0), 1) * float64(len(stops)-1)
	i := min(int(t), len(stops)-2)
	f := t - float64(i)
	var c [3]uint8
	for k := range c {
		c[k] = uint8(math.Round(stops[i][k] + f*(stops[i+1][k]-stops[i][k])))
	}
	return color.RGBA{c[0], c[1], c[2], 255}
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.Set(x, y, c)
		}
	}
}

func outline(img *image.RGBA, r image.Rectangle, c color.Color) {
	fill(img, image.Rect(r.Min.X, r.Min.Y, r.Max.X, r.Min.Y+1), c)
	fill(img, image.Rect(r.Min.X, r.Max.Y-1, r.Max.X, r.Max.Y), c)
	fill(img, image.Rect(r.Min.X, r.Min.Y, r.Min.X+1, r.Max.Y), c)
	fill(img, image.Rect(r.Max.X-1, r.Min.Y, r.Max.X, r.Max.Y), c)
}

// drawText draws s with its top-left corner at (x, y), each font pixel a
// scale×scale square.
func drawText(img *image.RGBA, x, y int, s string, scale int, c color.Color) {
	for i, ch := range []rune(s) {
		g, dy := glyph(ch), 0
		if descends[ch] {
			dy = 2
		}
		for row := 0; row < 7; row++ {
			for col := 0; col < 5; col++ {
				if g[row][col] == '#' {
					px, py := x+(6*i+col)*scale, y+(row+dy)*scale
					fill(img, image.Rect(px, py, px+scale, py+scale), c)
				}
			}
		}
	}
}

// drawTextUp draws s rotated a quarter turn counter-clockwise (reading
// bottom to top), starting at the bottom-left corner (x, y).
func drawTextUp(img *image.RGBA, x, y int, s string, scale int, c color.Color) {
	for i, ch := range []rune(s) {
		g, dy := glyph(ch), 0
		if descends[ch] {
			dy = 2
		}
		for row := 0; row < 7; row++ {
			for col := 0; col < 5; col++ {
				if g[row][col] == '#' {
					px, py := x+(row+dy)*scale, y-(6*i+col+1)*scale
					fill(img, image.Rect(px, py, px+scale, py+scale), c)
				}
			}
		}
	}
}

// descends lists the glyphs drawn two rows lower (below the baseline).
var descends = map[rune]bool{'g': true, 'p': true, 'q': true, 'y': true}

func glyph(r rune) [7]string {
	if g, ok := font5x7[r]; ok {
		return g
	}
	return font5x7['?']
}

// font5x7 covers digits, lower-case letters and the punctuation the plots use.
var font5x7 = map[rune][7]string{
	' ': {".....", ".....", ".....", ".....", ".....", ".....", "....."},
	'0': {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."},
	'1': {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'2': {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"},
	'3': {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."},
	'4': {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."},
	'5': {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."},
	'6': {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."},
	'7': {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."},
	'8': {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."},
	'9': {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."},
	'a': {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"},
	'b': {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."},
	'c': {".....", ".....", ".###.", "#....", "#....", "#...#", ".###."},
	'd': {"....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"},
	'e': {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."},
	'f': {"..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."},
	'g': {".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."}, // descender
	'h': {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"},
	'i': {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."},
	'j': {"...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."},
	'k': {"#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."},
	'l': {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'm': {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"},
	'n': {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"},
	'o': {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."},
	'p': {"####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."}, // descender
	'q': {".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"}, // descender
	'r': {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."},
	's': {".....", ".....", ".###.", "#....", ".###.", "....#", "####."},
	't': {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."},
	'u': {".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"},
	'v': {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."},
	'w': {".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."},
	'x': {".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"},
	'y': {"#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."}, // descender
	'z': {".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"},
	'.': {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."},
	',': {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."},
	':': {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."},
	'-': {".....", ".....", ".....", "#####", ".....", ".....", "....."},
	'+': {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."},
	'=': {".....", ".....", "#####", ".....", "#####", ".....", "....."},
	'_': {".....", ".....", ".....", ".....", ".....", ".....", "#####"},
	'/': {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."},
	'%': {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"},
	'(': {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."},
	')': {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."},
	'[': {".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."},
	']': {".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."},
	'?': {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."},
}
