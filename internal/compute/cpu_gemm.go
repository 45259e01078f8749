package compute

// Products are split into blocks of C, one per worker, each computed by
// single-threaded OpenBLAS.
const (
	// gemmGrain is the least work, in multiply-adds, worth a block of its
	// own: some 20 µs, far above the cost of handing a block to a worker.
	gemmGrain = 1 << 20
	// gemmAlign keeps block boundaries on multiples of OpenBLAS's register
	// tiles, so that only the matrix edge takes the kernels' remainder path.
	gemmAlign = 16
)

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
	as, bs := F32s(a), F32s(b)
	lda, ldb := a.Cols(), b.Cols()
	// The blocks' boundaries depend on nothing but the shapes and the
	// thread count, so a given thread count reproduces its results
	// exactly; every block computes its elements over the whole of k.
	pm, pn := gemmGrid(m, n, min(c.threads, max(1, m*n*k/gemmGrain)))
	bm, bn := alignUp((m+pm-1)/pm, gemmAlign), alignUp((n+pn-1)/pn, gemmAlign)
	gn := (n + bn - 1) / bn
	blocks := (m + bm - 1) / bm * gn
	c.parallelFor(blocks, 1, func(first, last int) {
		for blk := first; blk < last; blk++ {
			i0, j0 := blk/gn*bm, blk%gn*bn
			i1, j1 := min(i0+bm, m), min(j0+bn, n)
			// Rows i0.. of op(a) and columns j0.. of op(b): offsets along
			// the rows of a stored as is, along its columns if stored
			// transposed, and the other way round for b.
			aoff, boff := i0*lda, j0
			if transA {
				aoff = i0
			}
			if transB {
				boff = j0 * ldb
			}
			sgemm(transA, transB, i1-i0, j1-j0, k, alpha, as[aoff:], lda, bs[boff:], ldb, beta, cs[i0*n+j0:], n)
		}
	})
}

// gemmGrid splits an [m, n] product into pm x pn = parts blocks, or fewer
// when the matrix is too small, choosing the grid that repacks the least:
// OpenBLAS packs both operands per call, so each of the pn block columns
// repacks all m rows of op(a) and each of the pm block rows all n columns
// of op(b).
func gemmGrid(m, n, parts int) (pm, pn int) {
	rows, cols := (m+gemmAlign-1)/gemmAlign, (n+gemmAlign-1)/gemmAlign
	for ; parts > 1; parts-- {
		best := -1
		for r := 1; r <= parts; r++ {
			c := parts / r
			if r*c != parts || r > rows || c > cols {
				continue
			}
			if cost := c*m + r*n; best < 0 || cost < best {
				best, pm, pn = cost, r, c
			}
		}
		if best >= 0 {
			return pm, pn
		}
	}
	return 1, 1
}

// alignUp rounds n up to a multiple of a.
func alignUp(n, a int) int { return (n + a - 1) / a * a }

// AddBias adds bias [N] to every row of x [M,N] in place.
func (c *CPU) AddBias(x, bias *Tensor) {
	n := x.Cols()
	MustLen("AddBias", "bias", bias, n)
	xs, bs := F32s(x), F32s(bias)
	c.parallelFor(x.Rows(), rowsFor(grainCheap, n), func(lo, hi int) {
		if addBiasVector(xs[lo*n:hi*n], bs, hi-lo, n) {
			return
		}
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
		if !sumColsVector(acc, xs, m, n, lo) {
			for i := range m {
				row := xs[i*n+lo : i*n+hi]
				for j, v := range row {
					acc[j] += float64(v)
				}
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
