package report

import (
	"fmt"
	"image/color"
	"io"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Colors of the timeline.
var (
	colorRenew    = color.RGBA{R: 0x4c, G: 0x78, B: 0xa8, A: 0xff} // renew
	colorOut      = color.RGBA{R: 0xf5, G: 0x85, B: 0x18, A: 0xff} // manifests out of the folder
	colorBack     = color.RGBA{R: 0xee, G: 0xca, B: 0x3b, A: 0xff} // manifests back, waiting for the pods
	colorKubelet  = color.RGBA{R: 0x54, G: 0xa2, B: 0x4b, A: 0xff} // kubelet
	colorOther    = color.RGBA{R: 0xba, G: 0xb0, B: 0xac, A: 0xff} // other steps
	colorRestart  = color.RGBA{R: 0xe4, G: 0x57, B: 0x56, A: 0xff} // a process replaced
	colorNotReady = color.RGBA{A: 0xff}                            // local kube-apiserver not ready
	colorSuccess  = color.RGBA{R: 0x1f, G: 0x4e, B: 0x79, A: 0xff}
	colorFail     = color.RGBA{R: 0xc0, G: 0x1c, B: 0x28, A: 0xff}
)

func phaseColor(name string) color.Color {
	switch name {
	case "renew":
		return colorRenew
	case "manifests out":
		return colorOut
	case "manifests back":
		return colorBack
	case "kubelet":
		return colorKubelet
	}
	return colorOther
}

// rects draws horizontal bars on a plot whose Y axis is nominal (one row
// per node).
type rects struct {
	bars []bar
}

type bar struct {
	x0, x1, y0, y1 float64
	c              color.Color
}

func (r *rects) add(x0, x1 float64, row int, lo, hi float64, c color.Color) {
	if x1-x0 < 0.15 {
		x1 = x0 + 0.15 // visible at this scale
	}
	r.bars = append(r.bars, bar{x0, x1, float64(row) + lo, float64(row) + hi, c})
}

func (r *rects) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	for _, b := range r.bars {
		pts := []vg.Point{
			{X: trX(b.x0), Y: trY(b.y0)}, {X: trX(b.x1), Y: trY(b.y0)},
			{X: trX(b.x1), Y: trY(b.y1)}, {X: trX(b.x0), Y: trY(b.y1)},
		}
		c.FillPolygon(b.c, c.ClipPolygonXY(pts))
	}
}

// TimelineMethods are the methods drawn, in order.
var TimelineMethods = []string{Manual, Plugin, PluginRestartAll}

// WriteTimeline draws, for each method of the run on one time axis (seconds
// since the method's start), a row per node with its phases (the manual
// procedure's steps or the plugin's actions), the processes the node's
// sampler saw replaced, and the periods its kube-apiserver was not ready;
// under it, the share of the load client's requests (by start, per second)
// that succeeded.
func WriteTimeline(w io.Writer, run *Run) error {
	return writeTimeline(w, run, func(w, h vg.Length) vg.CanvasWriterTo { return vgsvg.New(w, h) })
}

// WriteTimelinePNG draws the same picture as a PNG, for a look without an
// SVG viewer.
func WriteTimelinePNG(w io.Writer, run *Run) error {
	return writeTimeline(w, run, func(w, h vg.Length) vg.CanvasWriterTo { return vgimg.PngCanvas{Canvas: vgimg.New(w, h)} })
}

func writeTimeline(w io.Writer, run *Run, newCanvas func(w, h vg.Length) vg.CanvasWriterTo) error {
	var methods []*Method
	for _, k := range TimelineMethods {
		for i := range run.Methods {
			if run.Methods[i].Key == k {
				methods = append(methods, &run.Methods[i])
			}
		}
	}
	if len(methods) == 0 {
		return fmt.Errorf("run %s has no method to draw", run.Cluster.Key)
	}
	const pre = 10.0
	span := 0.0
	for _, m := range methods {
		span = math.Max(span, math.Max(m.ReadyAt, m.End)-m.Start)
	}
	xmax := math.Ceil((span+10)/10) * 10

	var names, labels []string
	for _, n := range run.Cluster.Nodes {
		names = append(names, n.Name)
		labels = append(labels, shortNode(n.Name))
	}
	var grid [][]*plot.Plot
	for _, m := range methods {
		rows := plot.New()
		rows.Title.Text = fmt.Sprintf("%s: %s", m.Title, m.Command)
		rows.Title.TextStyle.Font.Size = vg.Points(10)
		rows.NominalY(reverse(labels)...)
		rows.X.Tick.Label.Color = color.Transparent // the rate plot under it has them
		rows.X.Min, rows.X.Max = -pre, xmax
		rows.Y.Min, rows.Y.Max = -0.6, float64(len(names))-0.4
		rows.Add(plotter.NewGrid())
		r := &rects{}
		for _, p := range Phases(m) {
			row := rowOf(names, p.Node)
			if row < 0 {
				continue
			}
			r.add(p.From-m.Start, p.To-m.Start, row, -0.32, 0.32, phaseColor(p.Name))
		}
		end := math.Max(m.ReadyAt, m.End) + 5
		for i := range run.Nodes {
			n := &run.Nodes[i]
			row := rowOf(names, n.Name)
			if row < 0 {
				continue
			}
			for _, c := range Components {
				for _, rs := range PIDChanges(n, c, m.Start-pre, end) {
					r.add(rs.From-m.Start, rs.To-m.Start, row, 0.06, 0.3, colorRestart)
				}
			}
			if n.ControlPlane {
				for _, iv := range n.Intervals("readyz", m.Start-pre, end, func(v string) bool { return v != "200" }) {
					r.add(iv.From-m.Start, iv.To-m.Start, row, -0.3, -0.16, colorNotReady)
				}
			}
		}
		rows.Add(r)

		rate := plot.New()
		rate.X.Min, rate.X.Max = -pre, xmax
		rate.Y.Min, rate.Y.Max = 0, 105
		rate.Y.Label.Text = "API ok %"
		rate.X.Label.Text = "seconds since the start of the method"
		rate.Add(plotter.NewGrid())
		ok, failed := successSeries(run.Requests, m.Start-pre, m.Start+xmax, m.Start)
		line, err := plotter.NewLine(ok)
		if err != nil {
			return err
		}
		line.Color = colorSuccess
		line.Width = vg.Points(1.2)
		rate.Add(line)
		if len(failed) > 0 {
			sc, err := plotter.NewScatter(failed)
			if err != nil {
				return err
			}
			sc.Color = colorFail
			sc.Shape = draw.CrossGlyph{}
			sc.Radius = vg.Points(2.5)
			rate.Add(sc)
		}
		grid = append(grid, []*plot.Plot{rows}, []*plot.Plot{rate})
	}

	const width = 900
	rowHeight := vg.Length(38*len(names) + 60)
	rateHeight := vg.Length(110)
	legend := vg.Length(34)
	height := legend
	for i := range grid {
		if i%2 == 0 {
			height += rowHeight
		} else {
			height += rateHeight
		}
	}
	canvas := newCanvas(vg.Points(width), height)
	dc := draw.New(canvas)
	drawLegend(dc, legend)
	// plot.Align lines up the plots' data areas, so every panel has the
	// same time axis; tiles have equal heights, so align in pairs of equal
	// tiles stacked by hand.
	top := dc.Max.Y - legend
	for i := 0; i < len(grid); i += 2 {
		sub := draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{
			Min: vg.Point{X: dc.Min.X + vg.Points(6), Y: top - rowHeight - rateHeight},
			Max: vg.Point{X: dc.Max.X, Y: top},
		}}
		top -= rowHeight + rateHeight
		plots := [][]*plot.Plot{grid[i], grid[i+1]}
		yRows := sub.Min.Y + rateHeight
		tiles := [][]draw.Canvas{
			{{Canvas: sub.Canvas, Rectangle: vg.Rectangle{Min: vg.Point{X: sub.Min.X, Y: yRows}, Max: sub.Max}}},
			{{Canvas: sub.Canvas, Rectangle: vg.Rectangle{Min: sub.Min, Max: vg.Point{X: sub.Max.X, Y: yRows}}}},
		}
		alignLeft(plots, tiles)
		for r := range plots {
			plots[r][0].Draw(tiles[r][0])
		}
	}
	_, err := canvas.WriteTo(w)
	return err
}

// alignLeft gives every plot the same data-area left edge (the widest Y
// axis among them), as plot.Align does for a grid of equal tiles.
func alignLeft(plots [][]*plot.Plot, tiles [][]draw.Canvas) {
	var widest vg.Length
	for r := range plots {
		c := plots[r][0].DataCanvas(tiles[r][0])
		widest = max(widest, c.Min.X-tiles[r][0].Min.X)
	}
	for r := range plots {
		c := plots[r][0].DataCanvas(tiles[r][0])
		tiles[r][0].Min.X += widest - (c.Min.X - tiles[r][0].Min.X)
	}
}

func drawLegend(dc draw.Canvas, h vg.Length) {
	items := []struct {
		label string
		c     color.Color
		thin  bool
	}{
		{"renew", colorRenew, false},
		{"manifests out (manual)", colorOut, false},
		{"manifests back, pods restarting (manual)", colorBack, false},
		{"kubelet certificates (plugin)", colorKubelet, false},
		{"process replaced (node sampler)", colorRestart, true},
		{"local kube-apiserver /readyz not 200", colorNotReady, true},
	}
	font := plot.DefaultFont
	font.Size = vg.Points(8)
	style := draw.TextStyle{Color: color.Black, Font: font, Handler: plot.DefaultTextHandler}
	x := dc.Min.X + vg.Points(8)
	y := dc.Max.Y - h/2
	for _, it := range items {
		bh := vg.Points(8)
		if it.thin {
			bh = vg.Points(4)
		}
		dc.FillPolygon(it.c, []vg.Point{{X: x, Y: y - bh/2}, {X: x + 14, Y: y - bh/2}, {X: x + 14, Y: y + bh/2}, {X: x, Y: y + bh/2}})
		dc.FillText(style, vg.Point{X: x + 18, Y: y - vg.Points(3)}, it.label)
		x += 18 + style.Width(it.label) + 14
	}
}

// successSeries bins the requests started in [from, to) by second: the
// share that succeeded (%), and a point at the bottom for each second with
// a failure; x is relative to zero.
func successSeries(reqs []Request, from, to, zero float64) (ok, failed plotter.XYs) {
	n := int(math.Ceil(to - from))
	if n <= 0 {
		return nil, nil
	}
	total := make([]int, n)
	good := make([]int, n)
	for _, r := range reqs {
		if r.Start < from || r.Start >= to {
			continue
		}
		i := int(r.Start - from)
		total[i]++
		if r.OK() {
			good[i]++
		}
	}
	for i := range total {
		if total[i] == 0 {
			continue
		}
		x := from + float64(i) + 0.5 - zero
		ok = append(ok, plotter.XY{X: x, Y: 100 * float64(good[i]) / float64(total[i])})
		if good[i] < total[i] {
			failed = append(failed, plotter.XY{X: x, Y: 2})
		}
	}
	return ok, failed
}

func rowOf(names []string, node string) int {
	for i, n := range reverse(names) {
		if n == node {
			return i
		}
	}
	return -1
}

func reverse(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
