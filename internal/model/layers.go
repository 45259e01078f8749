package model

import (
	"uniter/internal/compute"
)

// slot is a reusable activation buffer: it grows to the largest shape asked
// for and is viewed at the current one, so steady-state training allocates
// nothing.
type slot struct{ t *compute.Tensor }

func (s *slot) get(be compute.Backend, dt compute.DType, shape ...int) *compute.Tensor {
	if s.t == nil || s.t.Data.Len() < compute.Numel(shape) || s.t.DType != dt {
		s.t = be.Alloc(dt, shape...)
		return s.t
	}
	return s.t.View(shape...)
}

func (s *slot) f32(be compute.Backend, shape ...int) *compute.Tensor {
	return s.get(be, compute.F32, shape...)
}

// dropout is one dropout site. Its mask is a pure function of the run's step
// seed and the site number, so the backward regenerates it.
type dropout struct {
	run  *runState
	site uint64
}

// runState is shared by every module of a model: train/eval mode and the
// seed of the current forward.
type runState struct {
	train    bool
	stepSeed uint64
	hiddenP  float32
	attnP    float32
	nextSite uint64
}

func (r *runState) newDropout() dropout {
	r.nextSite++
	return dropout{run: r, site: r.nextSite}
}

func (d dropout) seed() uint64 {
	return d.run.stepSeed ^ (d.site * 0xD1B54A32D192ED03)
}

func (d dropout) p(p float32) float32 {
	if !d.run.train {
		return 0
	}
	return p
}

func (d dropout) fwd(be compute.Backend, x *compute.Tensor) {
	if p := d.p(d.run.hiddenP); p > 0 {
		be.DropoutFwd(x, x, p, d.seed())
	}
}

func (d dropout) bwd(be compute.Backend, dx *compute.Tensor) {
	if p := d.p(d.run.hiddenP); p > 0 {
		be.DropoutBwd(dx, dx, p, d.seed())
	}
}

// linear is y = x W^T + b with W [out, in] as PyTorch stores it.
type linear struct {
	W, B    *Param
	in, out int
}

func newLinear(ps *ParamSet, name string, in, out int) *linear {
	return &linear{W: ps.add(name+".weight", initNormal, out, in), B: ps.add(name+".bias", initZeros, out), in: in, out: out}
}

func (l *linear) fwd(be compute.Backend, y, x *compute.Tensor) {
	be.Gemm(false, true, 1, x, l.W.W, 0, y)
	be.AddBias(y, l.B.W)
}

// bwd accumulates the parameter gradients and, when dx is not nil, sets
// dx = dy W (beta 0) or adds to it (beta 1).
func (l *linear) bwd(be compute.Backend, dx, dy, x *compute.Tensor, beta float32) {
	be.Gemm(true, false, 1, dy, x, 1, l.W.G)
	be.SumRows(l.B.G, dy, 1)
	if dx != nil {
		be.Gemm(false, false, 1, dy, l.W.W, beta, dx)
	}
}

// layerNorm keeps the statistics of its last forward for the backward.
type layerNorm struct {
	G, B       *Param
	mean, rstd slot
	x          *compute.Tensor
}

// newLayerNorm registers name.weight and name.bias (the official checkpoints
// may spell them gamma and beta; the loader renames).
func newLayerNorm(ps *ParamSet, name string, n int) *layerNorm {
	return &layerNorm{G: ps.add(name+".weight", initOnes, n), B: ps.add(name+".bias", initZeros, n)}
}

func (l *layerNorm) fwd(be compute.Backend, out, x *compute.Tensor) {
	l.x = x
	m := x.Rows()
	be.LayerNormFwd(out, l.mean.f32(be, m), l.rstd.f32(be, m), x, l.G.W, l.B.W, LayerNormEps)
}

func (l *layerNorm) bwd(be compute.Backend, dx, dout *compute.Tensor) {
	m := l.x.Rows()
	be.LayerNormBwd(dx, l.G.G, l.B.G, dout, l.x, l.mean.f32(be, m), l.rstd.f32(be, m), l.G.W)
}

// mlpHead is the shared transform of the MLM, MRFR and MRC heads:
// LN(gelu(Linear(h))).
type mlpHead struct {
	dense             *linear
	ln                *layerNorm
	pre, act, y, dact slot
	x                 *compute.Tensor
}

func newMLPHead(ps *ParamSet, dense, ln string, h, out int) *mlpHead {
	return &mlpHead{dense: newLinear(ps, dense, h, out), ln: newLayerNorm(ps, ln, out)}
}

func (m *mlpHead) fwd(be compute.Backend, x *compute.Tensor) *compute.Tensor {
	m.x = x
	n := x.Rows()
	pre := m.pre.f32(be, n, m.dense.out)
	m.dense.fwd(be, pre, x)
	act := m.act.f32(be, n, m.dense.out)
	be.GeluFwd(act, pre)
	y := m.y.f32(be, n, m.dense.out)
	m.ln.fwd(be, y, act)
	return y
}

// bwd sets dx (overwrite) and accumulates the parameter gradients.
func (m *mlpHead) bwd(be compute.Backend, dx, dy *compute.Tensor) {
	n := m.x.Rows()
	dact := m.dact.f32(be, n, m.dense.out)
	m.ln.bwd(be, dact, dy)
	be.GeluBwd(dact, m.pre.f32(be, n, m.dense.out), dact)
	m.dense.bwd(be, dx, dact, m.x, 0)
}

// ln2 is the transform's output of the last forward.
func (m *mlpHead) ln2() *compute.Tensor { return m.y.t.View(m.x.Rows(), m.dense.out) }
