package model

import (
	"uniter/internal/compute"
)

// Buf is a reusable activation buffer: it grows to the largest shape asked
// for and is viewed at the current one, so steady-state training allocates
// nothing. Heads outside this package keep their activations in Bufs too.
type Buf struct{ t *compute.Tensor }

// Get returns the buffer viewed as shape, reallocating when it is too small
// or of another type (the old contents are then lost).
func (s *Buf) Get(be compute.Backend, dt compute.DType, shape ...int) *compute.Tensor {
	if s.t == nil || s.t.Data.Len() < compute.Numel(shape) || s.t.DType != dt {
		s.t = be.Alloc(dt, shape...)
		return s.t
	}
	return s.t.View(shape...)
}

// F32 is Get for float32 tensors.
func (s *Buf) F32(be compute.Backend, shape ...int) *compute.Tensor {
	return s.Get(be, compute.F32, shape...)
}

// Dropout is one dropout site. Its mask is a pure function of the run's step
// seed and the site number, so the backward regenerates it. It is off in
// evaluation mode.
type Dropout struct {
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
	// gradStage, when set, hears each stage of GradStages finish.
	gradStage func(stage int)
}

func (r *runState) stageDone(stage int) {
	if r.gradStage != nil {
		r.gradStage(stage)
	}
}

func (r *runState) newDropout() Dropout {
	r.nextSite++
	return Dropout{run: r, site: r.nextSite}
}

// Seed is the site's mask seed for the current forward (attention-probability
// dropout inside a fused attention op takes it).
func (d Dropout) Seed() uint64 { return d.seed() }

// AttnP is the attention-probability dropout of the model config, 0 in
// evaluation mode.
func (d Dropout) AttnP() float32 { return d.p(d.run.attnP) }

func (d Dropout) seed() uint64 {
	return d.run.stepSeed ^ (d.site * 0xD1B54A32D192ED03)
}

func (d Dropout) p(p float32) float32 {
	if !d.run.train {
		return 0
	}
	return p
}

// Fwd applies hidden dropout (hidden_dropout_prob) to x in place.
func (d Dropout) Fwd(be compute.Backend, x *compute.Tensor) {
	if p := d.p(d.run.hiddenP); p > 0 {
		be.DropoutFwd(x, x, p, d.seed())
	}
}

// Bwd is the backward of Fwd on the gradient dx, in place.
func (d Dropout) Bwd(be compute.Backend, dx *compute.Tensor) {
	if p := d.p(d.run.hiddenP); p > 0 {
		be.DropoutBwd(dx, dx, p, d.seed())
	}
}

// Linear is y = x W^T + b with W [out, in] as PyTorch stores it.
type Linear struct {
	W, B    *Param
	in, out int
}

// NewLinear registers name.weight (N(0, initializer_range)) and name.bias
// (0) in ps.
func NewLinear(ps *ParamSet, name string, in, out int) *Linear {
	return &Linear{W: ps.Add(name+".weight", InitNormal, out, in), B: ps.Add(name+".bias", InitZeros, out), in: in, out: out}
}

// Fwd sets y [M, out] = x [M, in] W^T + b.
func (l *Linear) Fwd(be compute.Backend, y, x *compute.Tensor) {
	be.Gemm(false, true, 1, x, l.W.W, 0, y)
	be.AddBias(y, l.B.W)
}

// Bwd accumulates the parameter gradients and, when dx is not nil, sets
// dx = dy W (beta 0) or adds to it (beta 1).
func (l *Linear) Bwd(be compute.Backend, dx, dy, x *compute.Tensor, beta float32) {
	be.Gemm(true, false, 1, dy, x, 1, l.W.G)
	be.SumRows(l.B.G, dy, 1)
	if dx != nil {
		be.Gemm(false, false, 1, dy, l.W.W, beta, dx)
	}
}

// LayerNorm (eps 1e-12, fp32 statistics) keeps the statistics of its last
// forward for the backward.
type LayerNorm struct {
	G, B       *Param
	mean, rstd Buf
	x          *compute.Tensor
}

// NewLayerNorm registers name.weight and name.bias (the official checkpoints
// may spell them gamma and beta; the loader renames).
func NewLayerNorm(ps *ParamSet, name string, n int) *LayerNorm {
	return &LayerNorm{G: ps.Add(name+".weight", InitOnes, n), B: ps.Add(name+".bias", InitZeros, n)}
}

// Fwd normalises each row of x into out.
func (l *LayerNorm) Fwd(be compute.Backend, out, x *compute.Tensor) {
	l.x = x
	m := x.Rows()
	be.LayerNormFwd(out, l.mean.F32(be, m), l.rstd.F32(be, m), x, l.G.W, l.B.W, LayerNormEps)
}

// Bwd sets dx from dout and accumulates the parameter gradients; it needs the
// last Fwd's input to be unchanged.
func (l *LayerNorm) Bwd(be compute.Backend, dx, dout *compute.Tensor) {
	m := l.x.Rows()
	be.LayerNormBwd(dx, l.G.G, l.B.G, dout, l.x, l.mean.F32(be, m), l.rstd.F32(be, m), l.G.W)
}

// MLP is LN(gelu(Linear(x))): the transform of the MLM, MRFR and MRC heads
// and the first three modules of the VQA/VE head.
type MLP struct {
	dense             *Linear
	ln                *LayerNorm
	pre, act, y, dact Buf
	x                 *compute.Tensor
}

// NewMLP registers dense (Linear(in, out)) and ln (LayerNorm(out)).
func NewMLP(ps *ParamSet, dense, ln string, h, out int) *MLP {
	return &MLP{dense: NewLinear(ps, dense, h, out), ln: NewLayerNorm(ps, ln, out)}
}

// Fwd runs the transform on x [n, in] and returns its output [n, out]
// (owned by m until the next Fwd).
func (m *MLP) Fwd(be compute.Backend, x *compute.Tensor) *compute.Tensor {
	m.x = x
	n := x.Rows()
	pre := m.pre.F32(be, n, m.dense.out)
	m.dense.Fwd(be, pre, x)
	act := m.act.F32(be, n, m.dense.out)
	be.GeluFwd(act, pre)
	y := m.y.F32(be, n, m.dense.out)
	m.ln.Fwd(be, y, act)
	return y
}

// Bwd sets dx (overwrite) and accumulates the parameter gradients.
func (m *MLP) Bwd(be compute.Backend, dx, dy *compute.Tensor) {
	n := m.x.Rows()
	dact := m.dact.F32(be, n, m.dense.out)
	m.ln.Bwd(be, dact, dy)
	be.GeluBwd(dact, m.pre.F32(be, n, m.dense.out), dact)
	m.dense.Bwd(be, dx, dact, m.x, 0)
}

// Output is the transform's output of the last forward.
func (m *MLP) Output() *compute.Tensor { return m.y.t.View(m.x.Rows(), m.dense.out) }
