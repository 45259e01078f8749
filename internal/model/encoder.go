package model

import (
	"fmt"
	"math"

	"uniter/internal/compute"
)

// encoderLayer is one post-LN BERT layer:
// h = LN(x + drop(dense(attn(x)))); out = LN(h + drop(dense(gelu(dense(h))))).
type encoderLayer struct {
	q, k, v, attnOut, inter, out *Linear
	ln1, ln2                     *LayerNorm
	drop1, drop2, dropAttn       Dropout
	heads                        int

	// saved for the backward
	x                                                 *compute.Tensor
	qb, kb, vb, ctx, lse, h1in, h1, pre, act, h2in, y Buf
}

func newEncoderLayer(ps *ParamSet, run *runState, c Config, i int) *encoderLayer {
	p := fmt.Sprintf("uniter.encoder.layer.%d.", i)
	h, in := c.HiddenSize, c.IntermediateSize
	return &encoderLayer{
		q:        NewLinear(ps, p+"attention.self.query", h, h),
		k:        NewLinear(ps, p+"attention.self.key", h, h),
		v:        NewLinear(ps, p+"attention.self.value", h, h),
		attnOut:  NewLinear(ps, p+"attention.output.dense", h, h),
		ln1:      NewLayerNorm(ps, p+"attention.output.LayerNorm", h),
		inter:    NewLinear(ps, p+"intermediate.dense", h, in),
		out:      NewLinear(ps, p+"output.dense", in, h),
		ln2:      NewLayerNorm(ps, p+"output.LayerNorm", h),
		drop1:    run.newDropout(),
		drop2:    run.newDropout(),
		dropAttn: run.newDropout(),
		heads:    c.NumAttentionHeads,
	}
}

func (l *encoderLayer) scale() float32 {
	return float32(1 / math.Sqrt(float64(l.q.out/l.heads)))
}

// fwd runs the layer on x [B*S, H] with per-example valid lengths lens [B]
// and returns the output buffer (owned by the layer).
func (l *encoderLayer) Fwd(be compute.Backend, x, lens *compute.Tensor) *compute.Tensor {
	l.x = x
	m, h := x.Rows(), l.q.out
	b := lens.Len()
	q, k, v := l.qb.F32(be, m, h), l.kb.F32(be, m, h), l.vb.F32(be, m, h)
	l.q.Fwd(be, q, x)
	l.k.Fwd(be, k, x)
	l.v.Fwd(be, v, x)
	ctx := l.ctx.F32(be, m, h)
	be.AttentionFwd(ctx, l.lse.F32(be, b, l.heads, m/b), q, k, v, lens, l.heads, l.scale(), l.dropAttn.p(l.dropAttn.run.attnP), l.dropAttn.seed())

	h1in := l.h1in.F32(be, m, h)
	l.attnOut.Fwd(be, h1in, ctx)
	l.drop1.Fwd(be, h1in)
	be.Add(h1in, h1in, x)
	h1 := l.h1.F32(be, m, h)
	l.ln1.Fwd(be, h1, h1in)

	pre, act := l.pre.F32(be, m, l.inter.out), l.act.F32(be, m, l.inter.out)
	l.inter.Fwd(be, pre, h1)
	be.GeluFwd(act, pre)
	h2in := l.h2in.F32(be, m, h)
	l.out.Fwd(be, h2in, act)
	l.drop2.Fwd(be, h2in)
	be.Add(h2in, h2in, h1)
	y := l.y.F32(be, m, h)
	l.ln2.Fwd(be, y, h2in)
	return y
}

// layerGrads is backward scratch shared by all layers of an encoder (only one
// layer's backward runs at a time).
type layerGrads struct {
	dh2in, dh1, dh1in, dact, dctx, dq, dk, dv Buf
}

// bwd sets dx from dy (both [B*S, H]) and accumulates parameter gradients.
func (l *encoderLayer) Bwd(be compute.Backend, g *layerGrads, dx, dy, lens *compute.Tensor) {
	m, h := l.x.Rows(), l.q.out
	// second sub-layer
	dh2in := g.dh2in.F32(be, m, h)
	l.ln2.Bwd(be, dh2in, dy)
	dh1 := g.dh1.F32(be, m, h)
	be.Copy(dh1, dh2in) // residual path
	l.drop2.Bwd(be, dh2in)
	dact := g.dact.F32(be, m, l.inter.out)
	l.out.Bwd(be, dact, dh2in, l.act.F32(be, m, l.inter.out), 0)
	be.GeluBwd(dact, l.pre.F32(be, m, l.inter.out), dact)
	l.inter.Bwd(be, dh1, dact, l.h1.F32(be, m, h), 1)

	// first sub-layer
	dh1in := g.dh1in.F32(be, m, h)
	l.ln1.Bwd(be, dh1in, dh1)
	be.Copy(dx, dh1in) // residual path
	l.drop1.Bwd(be, dh1in)
	dctx := g.dctx.F32(be, m, h)
	l.attnOut.Bwd(be, dctx, dh1in, l.ctx.F32(be, m, h), 0)
	dq, dk, dv := g.dq.F32(be, m, h), g.dk.F32(be, m, h), g.dv.F32(be, m, h)
	b := lens.Len()
	be.AttentionBwd(dq, dk, dv, dctx, l.ctx.F32(be, m, h), l.lse.F32(be, b, l.heads, m/b),
		l.qb.F32(be, m, h), l.kb.F32(be, m, h), l.vb.F32(be, m, h), lens, l.heads, l.scale(),
		l.dropAttn.p(l.dropAttn.run.attnP), l.dropAttn.seed())
	l.q.Bwd(be, dx, dq, l.x, 1)
	l.k.Bwd(be, dx, dk, l.x, 1)
	l.v.Bwd(be, dx, dv, l.x, 1)
}

// encoder is the stack of layers; heads read the last layer's output.
type encoder struct {
	layers []*encoderLayer
	grads  layerGrads
	dbuf   [2]Buf
	run    *runState
}

func newEncoder(ps *ParamSet, run *runState, c Config) *encoder {
	e := &encoder{run: run}
	for i := 0; i < c.NumHiddenLayers; i++ {
		e.layers = append(e.layers, newEncoderLayer(ps, run, c, i))
	}
	return e
}

func (e *encoder) Fwd(be compute.Backend, x, lens *compute.Tensor) *compute.Tensor {
	for _, l := range e.layers {
		x = l.Fwd(be, x, lens)
	}
	return x
}

// bwd propagates dy through every layer and returns the gradient of the
// encoder input (a buffer owned by the encoder).
func (e *encoder) Bwd(be compute.Backend, dy, lens *compute.Tensor) *compute.Tensor {
	for i := len(e.layers) - 1; i >= 0; i-- {
		dx := e.dbuf[i%2].F32(be, dy.Shape...)
		e.layers[i].Bwd(be, &e.grads, dx, dy, lens)
		e.run.stageDone(stagePooler + len(e.layers) - i)
		dy = dx
	}
	return dy
}

// output returns layer i's output from the last forward.
func (e *encoder) output(i int) *compute.Tensor {
	l := e.layers[i]
	return l.y.t.View(l.x.Shape...)
}
