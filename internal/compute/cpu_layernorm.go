package compute

import "math"

// LayerNormFwd normalises each row of x [M,N]: out = (x-mean)*rstd*gamma +
// beta with biased variance. Statistics use two float64 passes (mean, then
// squared deviations) so that rows with a large mean lose no precision;
// mean and rstd are saved as float32. The AVX2 loops, where there are
// some, compute the same values.
func (c *CPU) LayerNormFwd(out, mean, rstd, x, gamma, beta *Tensor, eps float32) {
	m, n := LayerNormFwdShape(out, mean, rstd, x, gamma, beta)
	outs, ms, rs, xs, gs, bs := F32s(out), F32s(mean), F32s(rstd), F32s(x), F32s(gamma), F32s(beta)
	c.parallelFor(m, rowsFor(grainCheap, n), func(lo, hi int) {
		if layerNormFwdVector(outs[lo*n:hi*n], ms[lo:hi], rs[lo:hi], xs[lo*n:hi*n], gs, bs, hi-lo, n, eps) {
			return
		}
		for i := lo; i < hi; i++ {
			row := xs[i*n : (i+1)*n]
			mu := sum64(row) / float64(n)
			r := 1 / math.Sqrt(sumSqDev64(row, mu)/float64(n)+float64(eps))
			ms[i], rs[i] = float32(mu), float32(r)
			o := outs[i*n : (i+1)*n]
			for j, v := range row {
				o[j] = float32((float64(v)-mu)*r*float64(gs[j]) + float64(bs[j]))
			}
		}
	})
}

// LayerNormBwd sets dx = rstd*(g - mean(g) - xhat*mean(g*xhat)) with
// g = gamma*dout, and accumulates dgamma += sum(dout*xhat), dbeta +=
// sum(dout) over rows.
func (c *CPU) LayerNormBwd(dx, dgamma, dbeta, dout, x, mean, rstd, gamma *Tensor) {
	m, n := LayerNormBwdShape(dx, dgamma, dbeta, dout, x, mean, rstd, gamma)
	dxs, dgs, dbs, dos, xs, ms, rs, gs := F32s(dx), F32s(dgamma), F32s(dbeta), F32s(dout), F32s(x), F32s(mean), F32s(rstd), F32s(gamma)
	// The parameter gradients are reduced over rows, so they are computed
	// in a column-parallel pass before dx (which may alias dout) is written:
	// each column has one owner and a fixed summation order.
	c.parallelFor(n, rowsFor(grainCheap, m), func(lo, hi int) {
		acc := make([]float64, 2*(hi-lo))
		dg, db := acc[:hi-lo], acc[hi-lo:]
		if !layerNormParamGradsVector(acc, dos, xs, ms, rs, m, n, lo) {
			for i := range m {
				mu, r := float64(ms[i]), float64(rs[i])
				xr, gr := xs[i*n+lo:i*n+hi], dos[i*n+lo:i*n+hi]
				for j, g := range gr {
					dg[j] += float64(g) * (float64(xr[j]) - mu) * r
					db[j] += float64(g)
				}
			}
		}
		for j := range dg {
			dgs[lo+j] = float32(float64(dgs[lo+j]) + dg[j])
			dbs[lo+j] = float32(float64(dbs[lo+j]) + db[j])
		}
	})
	c.parallelFor(m, rowsFor(grainCheap, n), func(lo, hi int) {
		if layerNormDxVector(dxs[lo*n:hi*n], dos[lo*n:hi*n], xs[lo*n:hi*n], ms[lo:hi], rs[lo:hi], gs, hi-lo, n) {
			return
		}
		for i := lo; i < hi; i++ {
			mu, r := float64(ms[i]), float64(rs[i])
			xr, gr, d := xs[i*n:(i+1)*n], dos[i*n:(i+1)*n], dxs[i*n:(i+1)*n]
			var sg, sgx float64
			for j, g := range gr {
				gg := float64(gs[j]) * float64(g)
				sg += gg
				sgx += gg * (float64(xr[j]) - mu) * r
			}
			sg /= float64(n)
			sgx /= float64(n)
			for j, g := range gr {
				xhat := (float64(xr[j]) - mu) * r
				d[j] = float32(r * (float64(gs[j])*float64(g) - sg - xhat*sgx))
			}
		}
	})
}
