package compute

import "math"

// blockReduce sums f over fixed blocks of x in parallel and adds the block
// results in order, so the result does not depend on the thread count.
func (c *CPU) blockReduce(x []float32, f func([]float32) float64) float64 {
	blocks := (len(x) + sumBlockSize - 1) / sumBlockSize
	part := make([]float64, blocks)
	c.parallelFor(blocks, max(1, grainMemory/sumBlockSize), func(lo, hi int) {
		for b := lo; b < hi; b++ {
			part[b] = f(x[b*sumBlockSize : min((b+1)*sumBlockSize, len(x))])
		}
	})
	var s float64
	for _, p := range part {
		s += p
	}
	return s
}

// SumSq returns sum(x^2) in float64.
func (c *CPU) SumSq(x *Tensor) float64 {
	return c.blockReduce(F32s(x), func(b []float32) float64 {
		if s, ok := sumSqVector(b); ok {
			return s
		}
		return sumSqDev64(b, 0)
	})
}

// Sum returns sum(x) in float64.
func (c *CPU) Sum(x *Tensor) float64 {
	return c.blockReduce(F32s(x), sum64)
}

// AllFinite reports whether no element is NaN or ±Inf.
func (c *CPU) AllFinite(x *Tensor) bool {
	const expMask = 0x7f800000 // an all-ones exponent is Inf or NaN
	return c.blockReduce(F32s(x), func(b []float32) float64 {
		for _, v := range b {
			if math.Float32bits(v)&expMask == expMask {
				return 1
			}
		}
		return 0
	}) == 0
}

// AdamW performs one AdamW step on p; see Backend. Each element is updated
// in float64 and stored back as float32; the AVX2 loop, where there is
// one, takes all but a tail of fewer than four elements of each chunk.
func (c *CPU) AdamW(p, g, m, v *Tensor, gradScale, lr, b1, b2, eps, wd float32, step int) {
	n := p.Len()
	MustLen("AdamW", "g", g, n)
	MustLen("AdamW", "m", m, n)
	MustLen("AdamW", "v", v, n)
	ps, gs, ms, vs := F32s(p), F32s(g), F32s(m), F32s(v)
	beta1, beta2 := float64(b1), float64(b2)
	bc1 := 1 - math.Pow(beta1, float64(step))
	bc2 := 1 - math.Pow(beta2, float64(step))
	stepSize := float64(lr) * math.Sqrt(bc2) / bc1
	eps64, decay, scale := float64(eps), float64(lr)*float64(wd), float64(gradScale)
	c1, c2 := 1-beta1, 1-beta2
	k := [8]float64{scale, beta1, c1, beta2, c2, stepSize, eps64, decay}
	// A square root and a division per element make even a small
	// parameter worth splitting.
	c.parallelFor(n, grainCostly, func(lo, hi int) {
		ps, gs, ms, vs := ps[lo:hi], gs[lo:hi], ms[lo:hi], vs[lo:hi]
		for i := adamwVector(ps, gs, ms, vs, &k); i < len(ps); i++ {
			gi := float64(gs[i]) * scale
			mi := beta1*float64(ms[i]) + c1*gi
			vi := beta2*float64(vs[i]) + c2*gi*gi
			ms[i], vs[i] = float32(mi), float32(vi)
			pi := float64(ps[i]) - stepSize*mi/(math.Sqrt(vi)+eps64)
			ps[i] = float32(pi - decay*pi)
		}
	})
}

// Argmax sets idx[i] to the column of row i's largest value, the lowest on
// ties; a NaN ends the scan because torch.max ranks NaN above every number.
func (c *CPU) Argmax(idx, x *Tensor) {
	n, cols := ArgmaxShape(idx, x)
	is, xs := I32s(idx), F32s(x)
	c.parallelFor(n, rowsFor(grainCheap, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := xs[i*cols : (i+1)*cols]
			best := 0
			for j, v := range row {
				if v != v {
					best = j
					break
				}
				if v > row[best] {
					best = j
				}
			}
			is[i] = int32(best)
		}
	})
}
