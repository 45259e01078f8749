package compute

import "math"

// SoftmaxKL computes per-row KL divergence of softmax(logits) from target;
// see Backend. The last pass reads each logit just before writing its
// gradient, so dlogits may alias logits; sums are float64.
func (c *CPU) SoftmaxKL(loss, dlogits, logits, target *Tensor, gradScale float32) {
	n, cols := logits.Rows(), logits.Cols()
	MustLen("SoftmaxKL", "loss", loss, n)
	MustMatrix("SoftmaxKL", "target", target, n, cols)
	MustMatrix("SoftmaxKL", "dlogits", dlogits, n, cols)
	ls, xs, ts, gs := F32s(loss), F32s(logits), F32s(target), F32s(dlogits)
	scale := float64(gradScale)
	c.parallelFor(n, rowsFor(grainCostly, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x, t, g := xs[i*cols:(i+1)*cols], ts[i*cols:(i+1)*cols], gs[i*cols:(i+1)*cols]
			m := float64(rowMax(x))
			lse := m + math.Log(expInto(nil, x, m))
			tsum := sum64(t)
			var l float64
			for j, v := range x {
				logq := float64(v) - lse
				tj := float64(t[j])
				if tj > 0 {
					// Zero targets contribute nothing: torch.kl_div takes
					// 0*log 0 as 0.
					l += tj * (math.Log(tj) - logq)
				}
				g[j] = float32((exp64(logq)*tsum - tj) * scale)
			}
			ls[i] = float32(l)
		}
	})
}
