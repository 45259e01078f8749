package compute

import "math"

// Gather sets out[i,:] = src[idx[i],:].
func (c *CPU) Gather(out, src, idx *Tensor) {
	d := src.Cols()
	MustMatrix("Gather", "out", out, idx.Len(), d)
	outs, ss, is := F32s(out), F32s(src), I32s(idx)
	c.parallelFor(len(is), rowsFor(grainMemory, d), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			r := int(is[i])
			copy(outs[i*d:(i+1)*d], ss[r*d:(r+1)*d])
		}
	})
}

// ScatterAdd sets dst[idx[i],:] += src[i,:]. Workers own column ranges, so
// repeated indices never race and every element sums in index order.
func (c *CPU) ScatterAdd(dst, src, idx *Tensor) {
	d := dst.Cols()
	MustMatrix("ScatterAdd", "src", src, idx.Len(), d)
	ds, ss, is := F32s(dst), F32s(src), I32s(idx)
	c.parallelFor(d, rowsFor(grainMemory, len(is)), func(lo, hi int) {
		if scatterAddVector(ds, ss, is, d, lo, hi-lo) {
			return
		}
		for i, r := range is {
			drow := ds[int(r)*d+lo : int(r)*d+hi]
			for j, v := range ss[i*d+lo : i*d+hi] {
				drow[j] += v
			}
		}
	})
}

// SoftmaxXent computes per-row cross-entropy; see Backend. The log-sum-exp
// is accumulated in float64 after subtracting the row maximum. dlogits may
// be nil when only the loss is wanted (evaluation).
func (c *CPU) SoftmaxXent(loss, dlogits, logits, labels *Tensor, ignore int32, gradScale float32) {
	n, cols := logits.Rows(), logits.Cols()
	MustLen("SoftmaxXent", "loss", loss, n)
	MustLen("SoftmaxXent", "labels", labels, n)
	var gs []float32
	if dlogits != nil {
		MustMatrix("SoftmaxXent", "dlogits", dlogits, n, cols)
		gs = F32s(dlogits)
	}
	ls, xs, ys := F32s(loss), F32s(logits), I32s(labels)
	c.parallelFor(n, rowsFor(grainCostly, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			y := ys[i]
			if y == ignore {
				ls[i] = 0
				if gs != nil {
					clear(gs[i*cols : (i+1)*cols])
				}
				continue
			}
			row := xs[i*cols : (i+1)*cols]
			m := float64(rowMax(row))
			// The other classes' exponentials are summed apart from the
			// label's: the loss log1p(rest/e_y) and the label's gradient
			// -rest/sum then avoid the cancellation of lse - x_y and p_y - 1
			// on confident rows. They are parked in dlogits (which may alias
			// the logits: each element is read before it is overwritten)
			// so that they are computed once.
			xy := float64(row[y])
			var g, below, above []float32
			if gs != nil {
				g = gs[i*cols : (i+1)*cols]
				below, above = g[:y], g[y+1:]
			}
			rest := expInto(below, row[:y], m) + expInto(above, row[y+1:], m)
			ey := exp64(xy - m)
			sum := ey + rest
			if ey > 0 {
				ls[i] = float32(math.Log1p(rest / ey))
			} else {
				ls[i] = float32(m + math.Log(sum) - xy)
			}
			if g == nil {
				continue
			}
			f := float64(gradScale) / sum
			for j, e := range g {
				g[j] = float32(float64(e) * f)
			}
			g[y] = float32(-rest * f)
		}
	})
}

// BCEWithLogits computes per-row summed binary cross-entropy with logits;
// see Backend. Each element is evaluated in float64 from e = exp(-|x|),
// which serves both the loss's log1p term and the sigmoid without
// overflow; its logit is read just before its gradient is written, so
// dlogits may alias logits.
func (c *CPU) BCEWithLogits(loss, dlogits, logits, targets *Tensor, gradScale float32) {
	n, cols := RowLossShape("BCEWithLogits", loss, dlogits, logits, targets)
	var gs []float32
	if dlogits != nil {
		gs = F32s(dlogits)
	}
	ls, xs, ts := F32s(loss), F32s(logits), F32s(targets)
	scale := float64(gradScale)
	c.parallelFor(n, rowsFor(grainCostly, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var l float64
			for j := i * cols; j < (i+1)*cols; j++ {
				x, t := float64(xs[j]), float64(ts[j])
				e := exp64(-math.Abs(x))
				l += max(x, 0) - x*t + math.Log1p(e)
				if gs == nil {
					continue
				}
				sig := 1 / (1 + e)
				if x < 0 {
					sig = e / (1 + e)
				}
				gs[j] = float32((sig - t) * scale)
			}
			ls[i] = float32(l)
		}
	})
}
