package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Charts, drawn with gonum/plot in Liberation Sans at 144 dpi.

const chartDPI = 144

var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

// palette: Tableau 10 (distinct on screen and in grey scale order).
var palette = []color.RGBA{
	{0x4e, 0x79, 0xa7, 0xff}, {0xf2, 0x8e, 0x2b, 0xff}, {0xe1, 0x57, 0x59, 0xff}, {0x76, 0xb7, 0xb2, 0xff},
	{0x59, 0xa1, 0x4f, 0xff}, {0xed, 0xc9, 0x48, 0xff}, {0xb0, 0x7a, 0xa1, 0xff}, {0xff, 0x9d, 0xa7, 0xff},
	{0x9c, 0x75, 0x5f, 0xff}, {0xba, 0xb0, 0xac, 0xff},
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(sans, 14)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text, p.Y.Label.Text = x, y
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(sans, 12)
		a.Tick.Label.Font = font.From(sans, 10.5)
	}
	p.Legend.TextStyle.Font = font.From(sans, 10.5)
	p.Y.Min = 0
	g := plotter.NewGrid()
	g.Vertical.Color = nil // horizontal lines only: vertical ones would cross the bars
	g.Horizontal.Color = color.Gray{Y: 0xd0}
	p.Add(g)
	return p
}

func textStyleOf(size vg.Length) text.Style {
	return text.Style{Color: color.Black, Font: font.From(sans, size), Handler: plot.DefaultTextHandler}
}

// runLabels names each run by the model and, on a second line, whichever
// of preset, mode and context vary between the runs.
func runLabels(runs []Run) []string {
	vary := func(f func(*Run) string) bool {
		for i := range runs {
			if f(&runs[i]) != f(&runs[0]) {
				return true
			}
		}
		return false
	}
	preset := func(r *Run) string { return r.Preset }
	mode := func(r *Run) string { return r.Mode }
	ctx := func(r *Run) string { return fmt.Sprintf("ctx %d", r.Context) }
	var parts []func(*Run) string
	for _, f := range []func(*Run) string{preset, mode, ctx} {
		if vary(f) {
			parts = append(parts, f)
		}
	}
	out := make([]string, len(runs))
	for i := range runs {
		var ps []string
		for _, f := range parts {
			ps = append(ps, f(&runs[i]))
		}
		out[i] = runs[i].Model
		if len(ps) > 0 {
			out[i] += "\n" + strings.Join(ps, " · ")
		}
	}
	return out
}

// commonLabel describes what all runs share (preset, mode, context), for
// an axis label; "" when nothing is common.
func commonLabel(runs []Run) string {
	if len(runs) == 0 {
		return ""
	}
	var ps []string
	same := func(f func(*Run) string) {
		for i := range runs {
			if f(&runs[i]) != f(&runs[0]) {
				return
			}
		}
		ps = append(ps, f(&runs[0]))
	}
	same(func(r *Run) string { return r.Preset })
	same(func(r *Run) string { return r.Mode + " refresh" })
	same(func(r *Run) string { return fmt.Sprintf("context %d", r.Context) })
	return strings.Join(ps, " · ")
}

// configLabel names a run's configuration in a chart.
func configLabel(r *Run) string {
	return fmt.Sprintf("%s · %s · ctx %d", r.Preset, r.Mode, r.Context)
}

// grouped returns the distinct configurations (x groups) and models
// (series) of the runs, in first-seen order.
func grouped(runs []Run) (configs, models []string, at map[[2]string]*Run) {
	at = map[[2]string]*Run{}
	seenC, seenM := map[string]bool{}, map[string]bool{}
	for i := range runs {
		r := &runs[i]
		c := configLabel(r)
		if !seenC[c] {
			seenC[c] = true
			configs = append(configs, c)
		}
		if !seenM[r.Model] {
			seenM[r.Model] = true
			models = append(models, r.Model)
		}
		at[[2]string{c, r.Model}] = r
	}
	return
}

// barLabels puts a formatted value above each bar.
func barLabels(vals plotter.Values, offset vg.Length, format func(float64) string) (*plotter.Labels, error) {
	xys := make(plotter.XYs, len(vals))
	labels := make([]string, len(vals))
	for i, v := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		labels[i] = ""
		if v > 0 {
			labels[i] = format(v)
		}
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i] = textStyleOf(9)
		l.TextStyle[i].XAlign = draw.XCenter
		l.Offset = vg.Point{X: offset}
	}
	return l, nil
}

// groupedBars draws one bar per model in each configuration group.
func groupedBars(runs []Run, title, ylabel string, value func(*Run) float64, format func(float64) string, note string) (*plot.Plot, error) {
	configs, models, at := grouped(runs)
	p := newPlot(title, note, ylabel)
	w := vg.Points(math.Min(60, 240/float64(max(1, len(models)))))
	ymax := 0.0
	for j, m := range models {
		vals := make(plotter.Values, len(configs))
		for i, c := range configs {
			if r := at[[2]string{c, m}]; r != nil {
				vals[i] = value(r)
				ymax = math.Max(ymax, vals[i])
			}
		}
		bc, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, err
		}
		bc.Color = palette[j%len(palette)]
		bc.LineStyle.Width = 0
		off := w * vg.Length(float64(j)-float64(len(models)-1)/2)
		bc.Offset = off
		p.Add(bc)
		p.Legend.Add(m, bc)
		l, err := barLabels(vals, off, format)
		if err != nil {
			return nil, err
		}
		p.Add(l)
	}
	p.NominalX(configs...)
	p.X.Min, p.X.Max = -0.7, float64(len(configs)-1)+0.7
	p.Y.Max = ymax * 1.25
	if ymax == 0 {
		p.Y.Max = 1
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), vg.Points(-4)
	return p, nil
}

// LatencyChart: median latency per decode token, by configuration and model.
func LatencyChart(r *Results) (*plot.Plot, error) {
	return groupedBars(r.Runs, "Latency per decode token (loopback, median)"+randomTag(r), "seconds per token",
		func(x *Run) float64 { return x.Decode.MedianSeconds }, func(v float64) string { return FormatSeconds(v) }, "preset · refresh mode · context")
}

// CommunicationChart: bytes per decode token (up + down), by configuration
// and model.
func CommunicationChart(r *Results) (*plot.Plot, error) {
	p, err := groupedBars(r.Runs, "Communication per decode token (up + down)"+randomTag(r), "MiB per token",
		func(x *Run) float64 { return float64(x.Decode.BytesUp+x.Decode.BytesDown) / (1 << 20) },
		func(v float64) string { return fmt.Sprintf("%.1f MiB", v) }, "preset · refresh mode · context")
	return p, err
}

// ContextChart: median latency per decode token against the context, one
// line per model, preset and mode.
func ContextChart(r *Results) (*plot.Plot, error) {
	p := newPlot("Latency per decode token vs context"+randomTag(r), "context (positions attended)", "seconds per token")
	type key struct{ model, preset, mode string }
	series := map[key]plotter.XYs{}
	var keys []key
	for i := range r.Runs {
		x := &r.Runs[i]
		k := key{x.Model, x.Preset, x.Mode}
		if _, ok := series[k]; !ok {
			keys = append(keys, k)
		}
		series[k] = append(series[k], plotter.XY{X: float64(x.Context), Y: x.Decode.MedianSeconds})
	}
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for i, k := range keys {
		xy := series[k]
		sort.Slice(xy, func(a, b int) bool { return xy[a].X < xy[b].X })
		l, s, err := plotter.NewLinePoints(xy)
		if err != nil {
			return nil, err
		}
		c := palette[i%len(palette)]
		l.Color, l.Width = c, vg.Points(2)
		s.Color, s.Radius, s.Shape = c, vg.Points(3.5), draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add(fmt.Sprintf("%s · %s · %s", k.model, k.preset, k.mode), l, s)
		for _, pt := range xy {
			xmin, xmax, ymax = math.Min(xmin, pt.X), math.Max(xmax, pt.X), math.Max(ymax, pt.Y)
		}
	}
	if len(keys) > 0 {
		pad := math.Max(4, (xmax-xmin)*0.08)
		p.X.Min, p.X.Max = math.Max(0, xmin-pad), xmax+pad
		p.Y.Max = ymax * 1.35
	}
	var ticks []plot.Tick
	seen := map[float64]bool{}
	for i := range r.Runs {
		c := float64(r.Runs[i].Context)
		if !seen[c] {
			seen[c] = true
			ticks = append(ticks, plot.Tick{Value: c, Label: fmt.Sprint(r.Runs[i].Context)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), vg.Points(-4)
	return p, nil
}

// BreakdownChart: where a decode token's time goes, one stacked bar per
// run, the legend to the right.
func BreakdownChart(r *Results) (*plot.Plot, error) {
	p := newPlot("Where the time of a decode token goes"+randomTag(r), commonLabel(r.Runs), "seconds per token (mean)")
	names := runLabels(r.Runs)
	w := vg.Points(math.Min(70, 420/float64(max(1, len(r.Runs)))))
	var below *plotter.BarChart
	type entry struct {
		name string
		bc   *plotter.BarChart
	}
	var entries []entry
	ymax := 0.0
	tot := make([]float64, len(r.Runs))
	for j, c := range Categories {
		vals := make(plotter.Values, len(r.Runs))
		any := false
		for i := range r.Runs {
			vals[i] = r.Runs[i].Decode.Breakdown[c]
			tot[i] += vals[i]
			any = any || vals[i] > 0
		}
		bc, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, err
		}
		bc.Color = palette[j%len(palette)]
		bc.LineStyle.Width = 0
		if below != nil {
			bc.StackOn(below)
		}
		below = bc
		p.Add(bc)
		if any {
			entries = append(entries, entry{c, bc})
		}
	}
	for i := len(entries) - 1; i >= 0; i-- {
		p.Legend.Add(entries[i].name, entries[i].bc)
	}
	for _, t := range tot {
		ymax = math.Max(ymax, t)
	}
	l, err := barLabels(tot, 0, func(v float64) string { return FormatSeconds(v) })
	if err != nil {
		return nil, err
	}
	p.Add(l)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(names)-1)+0.6
	p.Y.Max = ymax * 1.12
	if ymax == 0 {
		p.Y.Max = 1
	}
	return p, nil
}

func randomTag(r *Results) string {
	if r.Random {
		return " — RANDOM weights"
	}
	return ""
}

// Chart sizes (points).
var (
	chartW = vg.Points(640)
	chartH = vg.Points(400)
)

// WritePNG draws a plot as PNG; legendRight draws its legend in a column
// to the right of the plot instead of inside it.
func WritePNG(w io.Writer, p *plot.Plot, width, height vg.Length, legendRight bool) error {
	c := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(chartDPI), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(c)
	if legendRight {
		// Measure the legend: the widest entry plus its thumbnail.
		lw := vg.Length(0)
		for _, e := range legendEntries(p) {
			lw = max(lw, p.Legend.TextStyle.Width(e))
		}
		lw += p.Legend.ThumbnailWidth + vg.Points(24)
		leg := p.Legend
		p.Legend = plot.NewLegend() // drawn beside the plot, not in it
		plotArea := draw.Crop(dc, 0, -lw, 0, 0)
		p.Draw(plotArea)
		p.Legend = leg
		legArea := draw.Crop(dc, width-lw, 0, vg.Points(40), -vg.Points(40))
		leg.Top, leg.Left = true, true
		leg.Draw(legArea)
	} else {
		p.Draw(dc)
	}
	_, err := vgimg.PngCanvas{Canvas: c}.WriteTo(w)
	return err
}

// legendEntries are the legend's texts (the plot keeps them private, so
// they are recovered from the categories actually drawn).
func legendEntries(p *plot.Plot) []string {
	return append([]string(nil), Categories...)
}

// Chart is one PNG of the results.
type Chart struct {
	File  string
	Title string
}

// WriteCharts writes every chart into dir and returns the files written.
func (r *Results) WriteCharts(dir string) ([]Chart, error) {
	type spec struct {
		file        string
		make        func(*Results) (*plot.Plot, error)
		w, h        vg.Length
		legendRight bool
	}
	n := vg.Length(len(r.Runs))
	specs := []spec{
		{"latency_per_token.png", LatencyChart, chartW, chartH, false},
		{"communication_per_token.png", CommunicationChart, chartW, chartH, false},
		{"latency_vs_context.png", ContextChart, chartW, chartH, false},
		{"breakdown.png", BreakdownChart, max(chartW+vg.Points(140), vg.Points(260)+n*vg.Points(150)), vg.Points(460), true},
	}
	var out []Chart
	for _, s := range specs {
		p, err := s.make(r)
		if err != nil {
			return out, fmt.Errorf("bench: %s: %w", s.file, err)
		}
		path := filepath.Join(dir, s.file)
		f, err := os.Create(path)
		if err != nil {
			return out, err
		}
		err = WritePNG(f, p, s.w, s.h, s.legendRight)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return out, fmt.Errorf("bench: %s: %w", s.file, err)
		}
		out = append(out, Chart{File: path, Title: p.Title.Text})
	}
	return out, nil
}
