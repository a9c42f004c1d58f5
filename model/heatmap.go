package model

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	vgdraw "gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The heatmap is drawn with gonum/plot: a plot whose data are one filled
// polygon and one value label per (layer, head), with a colour bar and a
// caption drawn beside and below it on the same vgimg canvas.

// heatmapDPI is the resolution of the heatmap image: 2 pixels per point.
const heatmapDPI = 144

// Heatmap draws the head entropies: one cell per (layer, head), layer 0 at
// the top, colour = entropy on a viridis scale from 0 to M (the largest head
// entropy), each cell labelled with its value; a colour bar titled
// "entropy (nats)" with ticks at the paper's bucket edges 0, M/4, M/2, 3M/4,
// M; and a caption with the bucket shares and the collapse/overload counts.
func (r *EntropyReport) Heatmap(title string) image.Image {
	lay := r.heatmapLayout(title)
	c := vgimg.NewWith(vgimg.UseWH(lay.w, lay.h), vgimg.UseDPI(heatmapDPI), vgimg.UseBackgroundColor(color.White))
	dc := vgdraw.New(c)

	// Title, centred at the top.
	ts := textStyle(titleSize)
	ts.XAlign, ts.YAlign = vgdraw.XCenter, vgdraw.YTop
	dc.FillText(ts, vg.Point{X: lay.w / 2, Y: lay.h - heatMargin}, title)

	// The plot: its draw area is chosen so that its data area is the grid.
	p := lay.plot
	area := vgdraw.Crop(dc, lay.left, 0, 0, 0)
	area.Min.Y = lay.gridY - lay.padB
	area.Max.Y = lay.gridY + lay.gridH + lay.padT
	area.Max.X = area.Min.X + lay.padL + lay.gridW + lay.padR
	p.Draw(area)
	if len(r.E) == 0 || len(r.E[0]) == 0 {
		st := textStyle(tickSize)
		st.XAlign, st.YAlign = vgdraw.XCenter, vgdraw.YCenter
		dc.FillText(st, vg.Point{X: area.Min.X + lay.padL + lay.gridW/2, Y: lay.gridY + lay.gridH/2}, "no heads")
	}

	// Colour bar right of the grid, as tall as it.
	x0 := lay.left + lay.padL + lay.gridW + lay.padR + barGap
	r.drawColourBar(dc, lay, x0)

	// Caption: a left-aligned block, centred in the image.
	cs := textStyle(captionSize)
	cs.XAlign, cs.YAlign = vgdraw.XLeft, vgdraw.YTop
	y := lay.gridY - lay.padB - captionGap
	for _, line := range lay.caption {
		dc.FillText(cs, vg.Point{X: (lay.w - lay.capW) / 2, Y: y}, line)
		y -= cs.Height(line) * 1.25
	}
	return c.Image()
}

// Sizes in points (1/72 inch).
const (
	heatMargin  = vg.Length(12)
	titleSize   = vg.Length(15)
	axisSize    = vg.Length(12) // axis labels and the colour bar's title
	tickSize    = vg.Length(11) // tick labels
	valueSize   = vg.Length(10) // cell values
	captionSize = vg.Length(11)
	titleGap    = vg.Length(10) // title to plot
	captionGap  = vg.Length(10) // plot to caption
	barGap      = vg.Length(16) // grid to colour bar
	barWidth    = vg.Length(16)
	barTick     = vg.Length(4)
	minGridH    = vg.Length(130) // the colour bar's five ticks and title fit
)

// heatmapLayout is the geometry of one heatmap, in points.
type heatmapLayout struct {
	w, h                   vg.Length // the whole image
	plot                   *plot.Plot
	cellW, cellH           vg.Length
	gridW, gridH           vg.Length
	gridY                  vg.Length // bottom of the grid
	left                   vg.Length // left edge of the plot's draw area
	padL, padR, padB, padT vg.Length // the plot's axes and padding around its data area
	barTicks               []float64
	barBlock               vg.Length // colour bar, its ticks, tick labels and title
	caption                []string
	capW                   vg.Length // the widest caption line
}

// textStyle is black Liberation Sans of a size, aligned at its bottom left.
func textStyle(size vg.Length) text.Style {
	return text.Style{
		Color:   color.Black,
		Font:    font.From(sansFont, size),
		XAlign:  vgdraw.XLeft,
		YAlign:  vgdraw.YBottom,
		Handler: plot.DefaultTextHandler,
	}
}

// sansFont is Liberation Sans, which gonum/plot registers.
var sansFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// heatmapLayout builds the plot and measures everything.
func (r *EntropyReport) heatmapLayout(title string) *heatmapLayout {
	layers := len(r.E)
	heads := 0
	if layers > 0 {
		heads = len(r.E[0])
	}
	lay := &heatmapLayout{}
	// Cells: wide enough for "0.00" and a tick label, smaller for wide
	// grids so that the image stays under ~1000 points wide.
	lay.cellW = vg.Length(math.Max(36, math.Min(64, 800/float64(max(heads, 1)))))
	lay.cellH = vg.Length(math.Max(24, math.Min(40, 560/float64(max(layers, 1)))))
	lay.cellH = max(lay.cellH, minGridH/vg.Length(max(layers, 1))) // room for the colour bar
	lay.gridW = lay.cellW * vg.Length(max(heads, 1))
	lay.gridH = lay.cellH * vg.Length(max(layers, 1))

	p := plot.New()
	p.BackgroundColor = color.White
	for _, ax := range []*plot.Axis{&p.X, &p.Y} {
		ax.Label.TextStyle = textStyle(axisSize)
		ax.Label.TextStyle.XAlign, ax.Label.TextStyle.YAlign = vgdraw.XCenter, vgdraw.YBottom
		ax.Label.Padding = 4
		ax.Tick.Label = textStyle(tickSize)
		ax.Padding = 0
		ax.Tick.Length = 5
	}
	p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = vgdraw.XCenter, vgdraw.YTop
	p.Y.Tick.Label.XAlign, p.Y.Tick.Label.YAlign = vgdraw.XRight, vgdraw.YCenter
	p.X.Label.Text, p.Y.Label.Text = "head", "layer"
	p.Y.Scale = plot.InvertedScale{Normalizer: plot.LinearScale{}} // layer 0 at the top
	p.X.Tick.Marker, p.Y.Tick.Marker = integerTicks(heads), integerTicks(layers)

	if layers > 0 && heads > 0 {
		var labels plotter.XYLabels
		var styles []text.Style
		for l, row := range r.E {
			for h, v := range row {
				x, y := float64(h), float64(l)
				cell, err := plotter.NewPolygon(plotter.XYs{{X: x - 0.5, Y: y - 0.5}, {X: x + 0.5, Y: y - 0.5}, {X: x + 0.5, Y: y + 0.5}, {X: x - 0.5, Y: y + 0.5}})
				if err != nil {
					panic(err) // four finite points cannot fail
				}
				fillC := viridis(r.scale(v))
				cell.Color = fillC
				cell.LineStyle = vgdraw.LineStyle{Color: color.White, Width: 0.75}
				p.Add(cell)
				labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: y})
				labels.Labels = append(labels.Labels, fmt.Sprintf("%.2f", v))
				st := textStyle(valueSize)
				st.XAlign, st.YAlign = vgdraw.XCenter, vgdraw.YCenter
				st.Color = inkOn(fillC)
				styles = append(styles, st)
			}
		}
		lab, err := plotter.NewLabels(labels)
		if err != nil {
			panic(err) // as many labels as points by construction
		}
		lab.TextStyle = styles
		p.Add(lab)
	}
	p.X.Min, p.X.Max = -0.5, float64(max(heads, 1))-0.5
	p.Y.Min, p.Y.Max = -0.5, float64(max(layers, 1))-0.5
	lay.plot = p

	// The plot's axes around its data area: measured on a large canvas
	// (they depend on the text only).
	const big = 10000
	probe := vgdraw.Canvas{Rectangle: vg.Rectangle{Max: vg.Point{X: big, Y: big}}}
	da := p.DataCanvas(probe)
	lay.padL, lay.padR = da.Min.X, big-da.Max.X
	lay.padB, lay.padT = da.Min.Y, big-da.Max.Y

	// Colour bar: bar, ticks, the widest tick label, and the rotated title.
	lay.barTicks = []float64{0}
	if r.M > 0 {
		lay.barTicks = []float64{0, r.M / 4, r.M / 2, 3 * r.M / 4, r.M}
	}
	tl := textStyle(tickSize)
	var tickW vg.Length
	for _, v := range lay.barTicks {
		tickW = max(tickW, tl.Width(fmt.Sprintf("%.2f", v)))
	}
	ax := textStyle(axisSize)
	lay.barBlock = barWidth + barTick + 3 + tickW + 8 + ax.Height("entropy (nats)")

	lay.caption = []string{
		fmt.Sprintf("Heads per bucket of M = %.2f nats (the largest head entropy):", r.M),
		fmt.Sprintf("[0, M/4) %.0f%%     [M/4, M/2) %.0f%%     [M/2, 3M/4) %.0f%%     [3M/4, M] %.0f%%",
			100*r.Buckets[0], 100*r.Buckets[1], 100*r.Buckets[2], 100*r.Buckets[3]),
		fmt.Sprintf("Uniform causal attention: %.2f nats.", r.Uniform),
		fmt.Sprintf("Collapsed heads (E < %.2f × uniform): %d.   Overloaded heads (E ≥ %.2f × uniform): %d.",
			CollapseLevel, len(r.Collapsed), OverloadLevel, len(r.Overloaded)),
	}

	ts, cs := textStyle(titleSize), textStyle(captionSize)
	plotW := lay.padL + lay.gridW + lay.padR + barGap + lay.barBlock
	lay.w = plotW
	lay.w = max(lay.w, ts.Width(title))
	var capH vg.Length
	for i, line := range lay.caption {
		lay.capW = max(lay.capW, cs.Width(line))
		if i > 0 {
			capH += cs.Height(line) * 0.25
		}
		capH += cs.Height(line)
	}
	lay.w = vg.Length(math.Ceil(float64(max(lay.w, lay.capW) + 2*heatMargin)))
	lay.left = (lay.w - plotW) / 2 // centre the plot and its colour bar
	lay.gridY = heatMargin + capH + captionGap + lay.padB
	lay.h = vg.Length(math.Ceil(float64(lay.gridY + lay.gridH + lay.padT + titleGap + ts.Height(title) + heatMargin)))
	return lay
}

// drawColourBar draws the viridis scale from 0 (bottom) to M (top) beside
// the grid, starting at x0, with ticks at the bucket edges.
func (r *EntropyReport) drawColourBar(dc vgdraw.Canvas, lay *heatmapLayout, x0 vg.Length) {
	y0, y1 := lay.gridY, lay.gridY+lay.gridH
	const strips = 200
	dy := (y1 - y0) / strips
	for i := 0; i < strips; i++ {
		lo := y0 + vg.Length(i)*dy
		hi := min(lo+dy+0.5, y1) // overlap hides anti-aliasing seams
		dc.FillPolygon(viridis((float64(i)+0.5)/strips), []vg.Point{{X: x0, Y: lo}, {X: x0 + barWidth, Y: lo}, {X: x0 + barWidth, Y: hi}, {X: x0, Y: hi}})
	}
	black := vgdraw.LineStyle{Color: color.Black, Width: 0.75}
	dc.StrokeLines(black, []vg.Point{{X: x0, Y: y0}, {X: x0 + barWidth, Y: y0}, {X: x0 + barWidth, Y: y1}, {X: x0, Y: y1}, {X: x0, Y: y0}})
	tl := textStyle(tickSize)
	tl.XAlign, tl.YAlign = vgdraw.XLeft, vgdraw.YCenter
	var tickW vg.Length
	for _, v := range lay.barTicks {
		y := y0 + (y1-y0)*vg.Length(r.scale(v))
		dc.StrokeLine2(black, x0+barWidth, y, x0+barWidth+barTick, y)
		s := fmt.Sprintf("%.2f", v)
		dc.FillText(tl, vg.Point{X: x0 + barWidth + barTick + 3, Y: y}, s)
		tickW = max(tickW, tl.Width(s))
	}
	at := textStyle(axisSize)
	at.XAlign, at.YAlign = vgdraw.XCenter, vgdraw.YTop
	at.Rotation = math.Pi / 2 // reads bottom to top
	dc.FillText(at, vg.Point{X: x0 + barWidth + barTick + 3 + tickW + 8, Y: (y0 + y1) / 2}, "entropy (nats)")
}

// scale maps an entropy to [0, 1] on the colour scale (0 to M).
func (r *EntropyReport) scale(v float64) float64 {
	if r.M <= 0 {
		return 0
	}
	return math.Min(math.Max(v/r.M, 0), 1)
}

// integerTicks labels 0 … n-1.
func integerTicks(n int) plot.ConstantTicks {
	ts := make(plot.ConstantTicks, n)
	for i := range ts {
		ts[i] = plot.Tick{Value: float64(i), Label: fmt.Sprint(i)}
	}
	return ts
}

// inkOn is black on light colours and white on dark ones.
func inkOn(c color.RGBA) color.Color {
	if 0.2126*float64(c.R)+0.7152*float64(c.G)+0.0722*float64(c.B) > 140 {
		return color.Black
	}
	return color.White
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
