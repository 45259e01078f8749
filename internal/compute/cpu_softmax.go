package compute

import "fmt"

// SoftmaxRows sets each row of out to the softmax of x over the row's valid
// prefix and 0 beyond it; see Backend. The sum is float64 after
// subtracting the prefix's maximum; out may alias x.
func (c *CPU) SoftmaxRows(out, x, lens *Tensor) {
	b, s := SoftmaxRowsShape(out, x, lens)
	outs, xs, ls := F32s(out), F32s(x), I32s(lens)
	for i, l := range ls {
		if l < 0 || int(l) > s {
			panic(fmt.Sprintf("compute: SoftmaxRows: lens[%d] = %d outside [0, %d]", i, l, s))
		}
	}
	c.parallelFor(b, rowsFor(grainCostly, s), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			n := int(ls[i])
			o := outs[i*s : (i+1)*s]
			if n > 0 {
				row := xs[i*s : i*s+n]
				inv := 1 / expInto(o, row, float64(rowMax(row)))
				for j, e := range o[:n] {
					o[j] = float32(float64(e) * inv)
				}
			}
			clear(o[n:])
		}
	})
}

// SoftmaxRowsBwd sets dx = y*(dy - <dy, y>) per row with a float64 dot
// product, which is complete before any element is written, so dx may
// alias dy.
func (c *CPU) SoftmaxRowsBwd(dx, y, dy *Tensor) {
	b, s := SoftmaxRowsBwdShape(dx, y, dy)
	dxs, ys, dys := F32s(dx), F32s(y), F32s(dy)
	c.parallelFor(b, rowsFor(grainCheap, s), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			yr, dyr, dxr := ys[i*s:(i+1)*s], dys[i*s:(i+1)*s], dxs[i*s:(i+1)*s]
			var dot float64
			for j, v := range yr {
				dot += float64(v) * float64(dyr[j])
			}
			for j, v := range yr {
				dxr[j] = float32(float64(v) * (float64(dyr[j]) - dot))
			}
		}
	})
}
