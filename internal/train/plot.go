package train

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"uniter/internal/atomicfile"
	"uniter/internal/data"
)

// WritePlots draws the curves of a run's metrics into dir: loss.png (one
// panel per task key: training loss per step, validation loss as points;
// MRC-kl validation on the training loss's per-element scale),
// lr.png and loss_scale.png (one line per task key).
func WritePlots(dir string, recs []Record) error {
	train := map[string]plotter.XYs{}
	val := map[string]plotter.XYs{}
	scale := map[string]plotter.XYs{}
	var lr plotter.XYs
	var keys []string
	for _, r := range recs {
		key, step := r.String("task"), float64(r.Step())
		loss, ok := r.Float("loss")
		if !ok {
			continue
		}
		if r.String("split") != "" {
			// Validation reports MRC-kl per region (summed over classes),
			// training per element: draw both per element.
			if strings.HasPrefix(key, data.TaskMRCKL+"_") {
				loss /= data.LabelDim
			}
			val[key] = append(val[key], plotter.XY{X: step, Y: loss})
			continue
		}
		if _, seen := train[key]; !seen {
			keys = append(keys, key)
		}
		train[key] = append(train[key], plotter.XY{X: step, Y: loss})
		if v, ok := r.Float("lr"); ok {
			lr = append(lr, plotter.XY{X: step, Y: v})
		}
		if v, ok := r.Float("loss_scale"); ok {
			scale[key] = append(scale[key], plotter.XY{X: step, Y: v})
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)

	panels := make([][]*plot.Plot, len(keys))
	for i, k := range keys {
		p := plot.New()
		p.Title.Text = k
		p.X.Label.Text = "step"
		p.Y.Label.Text = "loss"
		if err := plotutil.AddLines(p, "train", train[k]); err != nil {
			return fmt.Errorf("plot %s: %w", k, err)
		}
		if len(val[k]) > 0 {
			l, pts, err := plotter.NewLinePoints(val[k])
			if err != nil {
				return fmt.Errorf("plot %s: %w", k, err)
			}
			l.Color, pts.Color = plotutil.Color(1), plotutil.Color(1)
			p.Add(l, pts)
			p.Legend.Add("val", l, pts)
		}
		panels[i] = []*plot.Plot{p}
	}
	if err := savePanels(filepath.Join(dir, "loss.png"), panels); err != nil {
		return err
	}

	p := plot.New()
	p.Title.Text = "learning rate"
	p.X.Label.Text = "step"
	if err := plotutil.AddLines(p, "lr", lr); err != nil {
		return fmt.Errorf("plot lr: %w", err)
	}
	if err := savePlot(filepath.Join(dir, "lr.png"), p); err != nil {
		return err
	}

	p = plot.New()
	p.Title.Text = "loss scale"
	p.X.Label.Text = "step"
	var args []any
	for _, k := range keys {
		args = append(args, k, scale[k])
	}
	if err := plotutil.AddLines(p, args...); err != nil {
		return fmt.Errorf("plot loss scale: %w", err)
	}
	return savePlot(filepath.Join(dir, "loss_scale.png"), p)
}

func savePlot(path string, p *plot.Plot) error {
	return savePanels(path, [][]*plot.Plot{{p}})
}

// savePanels draws a column of plots into one PNG, written atomically.
func savePanels(path string, panels [][]*plot.Plot) error {
	w, h := 16*vg.Centimeter, 6*vg.Centimeter
	img := vgimg.New(w, h*vg.Length(len(panels)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadY: vg.Millimeter * 2, PadTop: vg.Millimeter,
		PadBottom: vg.Millimeter, PadLeft: vg.Millimeter, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(panels, tiles, dc)
	for i := range panels {
		panels[i][0].Draw(canvases[i][0])
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, buf.Bytes()); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
