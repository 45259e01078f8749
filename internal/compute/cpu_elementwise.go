package compute

import (
	"math"

	"github.com/x448/float16"
)

// Add sets dst = a + b; dst may alias a or b.
func (c *CPU) Add(dst, a, b *Tensor) {
	n := dst.Len()
	MustLen("Add", "a", a, n)
	MustLen("Add", "b", b, n)
	d, as, bs := F32s(dst), F32s(a), F32s(b)
	c.parallelFor(n, grainMemory, func(lo, hi int) {
		if addVector(d[lo:hi], as[lo:hi], bs[lo:hi]) {
			return
		}
		for i := lo; i < hi; i++ {
			d[i] = as[i] + bs[i]
		}
	})
}

// Axpy sets y += alpha*x.
func (c *CPU) Axpy(alpha float32, x, y *Tensor) {
	MustLen("Axpy", "x", x, y.Len())
	xs, ys := F32s(x), F32s(y)
	c.parallelFor(len(ys), grainMemory, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			ys[i] += alpha * xs[i]
		}
	})
}

// Scale sets x *= alpha.
func (c *CPU) Scale(x *Tensor, alpha float32) {
	xs := F32s(x)
	c.parallelFor(len(xs), grainMemory, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			xs[i] *= alpha
		}
	})
}

// pointwise checks that every input has out's length and runs body over
// chunks of [0, out.Len()) in parallel.
func (c *CPU) pointwise(op string, grain int, out *Tensor, in []*Tensor, body func(lo, hi int)) {
	for _, t := range in {
		MustLen(op, "input", t, out.Len())
	}
	c.parallelFor(out.Len(), grain, body)
}

// GeluFwd sets out = x*Phi(x), evaluated in float64 and rounded once.
func (c *CPU) GeluFwd(out, x *Tensor) {
	o, xs := F32s(out), F32s(x)
	c.pointwise("GeluFwd", grainCostly, out, []*Tensor{x}, func(lo, hi int) {
		gelu(o[lo:hi], xs[lo:hi], nil)
	})
}

// GeluBwd sets dx = dout*(Phi(x) + x*phi(x)); dx may alias dout.
func (c *CPU) GeluBwd(dx, x, dout *Tensor) {
	d, xs, g := F32s(dx), F32s(x), F32s(dout)
	c.pointwise("GeluBwd", grainCostly, dx, []*Tensor{x, dout}, func(lo, hi int) {
		gelu(d[lo:hi], xs[lo:hi], g[lo:hi])
	})
}

// TanhFwd sets out = tanh(x).
func (c *CPU) TanhFwd(out, x *Tensor) {
	o, xs := F32s(out), F32s(x)
	c.pointwise("TanhFwd", grainCostly, out, []*Tensor{x}, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o[i] = float32(math.Tanh(float64(xs[i])))
		}
	})
}

// TanhBwd sets dx = dout*(1-y^2); dx may alias dout.
func (c *CPU) TanhBwd(dx, y, dout *Tensor) {
	d, ys, g := F32s(dx), F32s(y), F32s(dout)
	c.pointwise("TanhBwd", grainCheap, dx, []*Tensor{y, dout}, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			yy := float64(ys[i])
			d[i] = float32(float64(g[i]) * (1 - yy*yy))
		}
	})
}

// ReluFwd sets out = max(x, 0).
func (c *CPU) ReluFwd(out, x *Tensor) {
	o, xs := F32s(out), F32s(x)
	c.pointwise("ReluFwd", grainMemory, out, []*Tensor{x}, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o[i] = max(xs[i], 0)
		}
	})
}

// ReluBwd sets dx = dout where y > 0, else 0; dx may alias dout.
func (c *CPU) ReluBwd(dx, y, dout *Tensor) {
	d, ys, g := F32s(dx), F32s(y), F32s(dout)
	c.pointwise("ReluBwd", grainMemory, dx, []*Tensor{y, dout}, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if ys[i] > 0 {
				d[i] = g[i]
			} else {
				d[i] = 0
			}
		}
	})
}

// dropoutScale is the survivors' rescaling, computed in float32 as PyTorch
// does (1/(1-p) as a float tensor scalar).
func dropoutScale(p float32) float32 { return 1 / (1 - p) }

// dropout sets out[i] = x[i]*scale where DropoutKeep(seed, i, p), else
// x[i]*0.
func (c *CPU) dropout(op string, out, x *Tensor, p float32, seed uint64) {
	if p <= 0 {
		if out != x {
			c.Copy(out, x)
		}
		return
	}
	MustLen(op, "input", x, out.Len())
	o, xs := F32s(out), F32s(x)
	scale := dropoutScale(p)
	c.parallelFor(len(o), grainCheap, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o[i] = xs[i] * keepScale(seed, i, p, scale)
		}
	})
}

// DropoutFwd sets out = x*keep/(1-p); out may alias x.
func (c *CPU) DropoutFwd(out, x *Tensor, p float32, seed uint64) {
	c.dropout("DropoutFwd", out, x, p, seed)
}

// DropoutBwd sets dx = dout*keep/(1-p) with the forward's mask; dx may alias
// dout.
func (c *CPU) DropoutBwd(dx, dout *Tensor, p float32, seed uint64) {
	c.dropout("DropoutBwd", dx, dout, p, seed)
}

// RoundFP16 rounds every element to the nearest float16 (ties to even);
// values beyond the float16 range become ±Inf.
func (c *CPU) RoundFP16(x *Tensor) {
	xs := F32s(x)
	c.parallelFor(len(xs), grainCheap, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			xs[i] = float16.Fromfloat32(xs[i]).Float32()
		}
	})
}
