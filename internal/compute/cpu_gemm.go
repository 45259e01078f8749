package compute

// Gemm computes c = alpha*op(a)*op(b) + beta*c through OpenBLAS.
func (c *CPU) Gemm(transA, transB bool, alpha float32, a, b *Tensor, beta float32, cm *Tensor) {
	m, n, k := GemmDims(transA, transB, a, b, cm)
	cs := F32s(cm)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		// BLAS would read a[0] and b[0], which do not exist; the product is
		// empty so only the beta term remains.
		if beta == 0 {
			clear(cs)
		} else {
			c.Scale(cm, beta)
		}
		return
	}
	// The OpenBLAS thread count is process-wide; setting it per call keeps
	// backends with different thread counts from running on each other's.
	setBLASThreads(c.threads)
	sgemm(transA, transB, m, n, k, alpha, F32s(a), a.Cols(), F32s(b), b.Cols(), beta, cs, n)
}

// AddBias adds bias [N] to every row of x [M,N] in place.
func (c *CPU) AddBias(x, bias *Tensor) {
	n := x.Cols()
	MustLen("AddBias", "bias", bias, n)
	xs, bs := F32s(x), F32s(bias)
	c.parallelFor(x.Rows(), rowsFor(grainCheap, n), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := xs[i*n : (i+1)*n]
			for j, b := range bs {
				row[j] += b
			}
		}
	})
}

// SumRows sets dst[j] = beta*dst[j] + sum_i x[i,j], summing in float64.
func (c *CPU) SumRows(dst, x *Tensor, beta float32) {
	m, n := x.Rows(), x.Cols()
	MustLen("SumRows", "dst", dst, n)
	ds, xs := F32s(dst), F32s(x)
	// Columns are split between workers so that each column's sum has a
	// single owner and a fixed order.
	c.parallelFor(n, rowsFor(grainCheap, m), func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for i := range m {
			row := xs[i*n+lo : i*n+hi]
			for j, v := range row {
				acc[j] += float64(v)
			}
		}
		for j, s := range acc {
			if beta != 0 {
				// beta 0 overwrites without reading, as in BLAS, so stale
				// NaNs in dst do not survive.
				s += float64(beta) * float64(ds[lo+j])
			}
			ds[lo+j] = float32(s)
		}
	})
}

// rowsFor converts a grain in elements to a grain in rows of width cols.
func rowsFor(grain, cols int) int {
	return max(1, grain/max(cols, 1))
}
