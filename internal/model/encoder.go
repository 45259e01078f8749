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
	x    *compute.Tensor
	acts layerActs
}

// layerActs are a layer's activations. Training keeps one set per layer
// for the backward; an inference forward (fwdPooled) shares one set between
// all layers, so that the encoder's memory is one layer's, not twelve.
type layerActs struct {
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

// Fwd runs the layer on x [B*S, H] with per-example valid lengths lens [B]
// and returns the output buffer (owned by the layer), keeping what the
// backward needs.
func (l *encoderLayer) Fwd(be compute.Backend, x, lens *compute.Tensor) *compute.Tensor {
	l.x = x
	return l.fwd(be, &l.acts, &l.acts.y, x, lens)
}

func (l *encoderLayer) fwd(be compute.Backend, a *layerActs, yb *Buf, x, lens *compute.Tensor) *compute.Tensor {
	m, h := x.Rows(), l.q.out
	b := lens.Len()
	q, k, v := a.qb.F32(be, m, h), a.kb.F32(be, m, h), a.vb.F32(be, m, h)
	l.q.Fwd(be, q, x)
	l.k.Fwd(be, k, x)
	l.v.Fwd(be, v, x)
	ctx := a.ctx.F32(be, m, h)
	be.AttentionFwd(ctx, a.lse.F32(be, b, l.heads, m/b), q, k, v, lens, l.heads, l.scale(), l.dropAttn.p(l.dropAttn.run.attnP), l.dropAttn.seed())
	return l.rest(be, a, yb, ctx, x)
}

// rest is the layer after the attention: the output projection with the
// residual x, then the feed-forward block, on as many rows as ctx has.
func (l *encoderLayer) rest(be compute.Backend, a *layerActs, yb *Buf, ctx, x *compute.Tensor) *compute.Tensor {
	m, h := x.Rows(), l.q.out
	h1in := a.h1in.F32(be, m, h)
	l.attnOut.Fwd(be, h1in, ctx)
	l.drop1.Fwd(be, h1in)
	be.Add(h1in, h1in, x)
	h1 := a.h1.F32(be, m, h)
	l.ln1.Fwd(be, h1, h1in)

	pre, act := a.pre.F32(be, m, l.inter.out), a.act.F32(be, m, l.inter.out)
	l.inter.Fwd(be, pre, h1)
	be.GeluFwd(act, pre)
	h2in := a.h2in.F32(be, m, h)
	l.out.Fwd(be, h2in, act)
	l.drop2.Fwd(be, h2in)
	be.Add(h2in, h2in, h1)
	y := yb.F32(be, m, h)
	l.ln2.Fwd(be, y, h2in)
	return y
}

// fwdFirst runs the layer for one position per sequence, rows first [B] of
// x [B*S, H]: the keys and values of every position, the query and all
// that follows the attention at those rows only. It returns [B, H], equal
// to rows first of the full layer's output: the pooler reads nothing else
// of the last layer, whose cost this cuts to about a sixth.
func (l *encoderLayer) fwdFirst(be compute.Backend, a *layerActs, f *firstActs, x, lens2, first *compute.Tensor) *compute.Tensor {
	m, h := x.Rows(), l.q.out
	b := first.Len()
	k, v := a.kb.F32(be, m, h), a.vb.F32(be, m, h)
	l.k.Fwd(be, k, x)
	l.v.Fwd(be, v, x)
	xf, qf := f.x.F32(be, b, h), f.q.F32(be, b, h)
	be.Gather(xf, x, first)
	l.q.Fwd(be, qf, xf)
	// The attention reads the query rows of each sequence's valid prefix,
	// here of length 1: the other rows of q are never read.
	q := a.qb.F32(be, m, h)
	be.Zero(q)
	be.ScatterAdd(q, qf, first)
	ctx := a.ctx.F32(be, m, h)
	be.AttentionFwd(ctx, a.lse.F32(be, b, l.heads, m/b), q, k, v, lens2, l.heads, l.scale(), 0, 0)
	cf := f.ctx.F32(be, b, h)
	be.Gather(cf, ctx, first)
	return l.rest(be, a, &a.y, cf, xf)
}

// firstActs are fwdFirst's rows at the first positions.
type firstActs struct{ x, q, ctx Buf }

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
	l.out.Bwd(be, dact, dh2in, l.acts.act.F32(be, m, l.inter.out), 0)
	be.GeluBwd(dact, l.acts.pre.F32(be, m, l.inter.out), dact)
	l.inter.Bwd(be, dh1, dact, l.acts.h1.F32(be, m, h), 1)

	// first sub-layer
	dh1in := g.dh1in.F32(be, m, h)
	l.ln1.Bwd(be, dh1in, dh1)
	be.Copy(dx, dh1in) // residual path
	l.drop1.Bwd(be, dh1in)
	dctx := g.dctx.F32(be, m, h)
	l.attnOut.Bwd(be, dctx, dh1in, l.acts.ctx.F32(be, m, h), 0)
	dq, dk, dv := g.dq.F32(be, m, h), g.dk.F32(be, m, h), g.dv.F32(be, m, h)
	b := lens.Len()
	be.AttentionBwd(dq, dk, dv, dctx, l.acts.ctx.F32(be, m, h), l.acts.lse.F32(be, b, l.heads, m/b),
		l.acts.qb.F32(be, m, h), l.acts.kb.F32(be, m, h), l.acts.vb.F32(be, m, h), lens, l.heads, l.scale(),
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

	// inference-only activations, shared by every layer (fwdPooled)
	infer      layerActs
	inferY     [2]Buf
	inferFirst firstActs
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

// fwdPooled runs the encoder in evaluation mode for what the pooler reads:
// it returns the last layer's output at rows first [B] of x [B*S, H], as
// [B, H]. lens are the sequences' valid lengths [B] and lens2 [2, B] the
// same with a query length of 1 (row 0 all ones, row 1 lens). The layers
// share one set of activations, so this forward cannot be backpropagated;
// it also overwrites the layer norms' saved statistics, so no earlier
// forward can be either.
func (e *encoder) fwdPooled(be compute.Backend, x, lens, lens2, first *compute.Tensor) *compute.Tensor {
	last := len(e.layers) - 1
	for i, l := range e.layers[:last] {
		// Layer i reads x from one buffer and writes the other.
		x = l.fwd(be, &e.infer, &e.inferY[i%2], x, lens)
	}
	return e.layers[last].fwdFirst(be, &e.infer, &e.inferFirst, x, lens2, first)
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
	return l.acts.y.t.View(l.x.Shape...)
}
