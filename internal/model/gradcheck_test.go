package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"uniter/internal/compute"
)

// fdCase is one module under a finite-difference check: fwd runs the
// module and returns its outputs; bwd takes the output gradients and must
// accumulate into the params' G (and into inputs' grads, when checked).
type fdCase struct {
	params []*Param
	inputs []fdInput
	fwd    func() []*compute.Tensor
	bwd    func(dout []*compute.Tensor)
}

// fdInput is a float input whose gradient the backward produces.
type fdInput struct {
	name string
	x    *compute.Tensor
	grad func() *compute.Tensor
}

// checkFD compares analytic gradients with central differences of
// L = sum_k <out_k, R_k> in float64, on sampled coordinates of every
// parameter and input.
func checkFD(t *testing.T, be compute.Backend, c fdCase) {
	t.Helper()
	r := rand.New(rand.NewPCG(11, 13))
	outs := c.fwd()
	rs := make([][]float32, len(outs))
	douts := make([]*compute.Tensor, len(outs))
	for k, o := range outs {
		rs[k] = make([]float32, o.Len())
		for i := range rs[k] {
			rs[k][i] = float32(r.NormFloat64())
		}
		douts[k] = be.FromF32(rs[k], o.Shape...)
	}
	loss := func() float64 {
		l := 0.0
		for k, o := range c.fwd() {
			for i, v := range be.ToF32(o) {
				l += float64(v) * float64(rs[k][i])
			}
		}
		return l
	}
	for _, p := range c.params {
		be.Zero(p.G)
	}
	c.fwd()
	c.bwd(douts)

	type target struct {
		name string
		x    *compute.Tensor
		g    []float32
	}
	var targets []target
	for _, p := range c.params {
		targets = append(targets, target{p.Name, p.W, be.ToF32(p.G)})
	}
	for _, in := range c.inputs {
		targets = append(targets, target{in.name, in.x, be.ToF32(in.grad())})
	}
	const eps = 1e-2
	for _, tg := range targets {
		host := be.ToF32(tg.x)
		for s := 0; s < 6; s++ {
			i := r.IntN(len(host))
			orig := host[i]
			host[i] = orig + eps
			be.Copy(tg.x, be.FromF32(host, tg.x.Shape...))
			lp := loss()
			host[i] = orig - eps
			be.Copy(tg.x, be.FromF32(host, tg.x.Shape...))
			lm := loss()
			host[i] = orig
			be.Copy(tg.x, be.FromF32(host, tg.x.Shape...))
			num := (lp - lm) / (2 * eps)
			ana := float64(tg.g[i])
			if err := math.Abs(num - ana); err > 2e-2*math.Max(1, math.Abs(num)) {
				t.Errorf("%s[%d]: analytic %.6g, numeric %.6g", tg.name, i, ana, num)
			}
		}
	}
}

// fdConfig is small enough for finite differences over a whole model.
func fdConfig() Config {
	return Config{VocabSize: 40, HiddenSize: 16, NumHiddenLayers: 2, NumAttentionHeads: 2,
		IntermediateSize: 24, HiddenAct: "gelu", HiddenDropoutProb: 0.1, AttentionProbsDropoutProb: 0.1,
		MaxPositionEmbeddings: 16, TypeVocabSize: 2, InitializerRange: 0.2, ImgDim: 12, ImgLabelDim: 9}
}

// fdInputBatch is a batch of 3 examples with different text and region
// counts, two regions masked.
func fdInputBatch(c Config) *Input {
	r := rand.New(rand.NewPCG(3, 4))
	in := &Input{B: 3, T: 6, N: 4, TxtLens: []int{6, 3, 5}, NBB: []int{2, 4, 1}}
	in.InputIDs = make([]int32, in.B*in.T)
	for b := 0; b < in.B; b++ {
		for j := 0; j < in.TxtLens[b]; j++ {
			in.InputIDs[b*in.T+j] = int32(1 + r.IntN(c.VocabSize-1))
		}
	}
	in.ImgFeat = make([]float32, in.B*in.N*c.ImgDim)
	in.ImgPos = make([]float32, in.B*in.N*ImgPosDim)
	in.ImgMasks = make([]int32, in.B*in.N)
	for b := 0; b < in.B; b++ {
		for k := 0; k < in.NBB[b]; k++ {
			row := b*in.N + k
			for d := 0; d < c.ImgDim; d++ {
				in.ImgFeat[row*c.ImgDim+d] = float32(r.NormFloat64())
			}
			for d := 0; d < ImgPosDim; d++ {
				in.ImgPos[row*ImgPosDim+d] = float32(r.Float64())
			}
		}
	}
	in.ImgMasks[0*in.N+1], in.ImgMasks[1*in.N+2] = 1, 1
	for _, row := range []int{1, in.N + 2} {
		clear(in.ImgFeat[row*c.ImgDim : (row+1)*c.ImgDim])
	}
	return in
}

func randTensor(be compute.Backend, seed uint64, shape ...int) *compute.Tensor {
	r := rand.New(rand.NewPCG(seed, 1))
	h := make([]float32, compute.Numel(shape))
	for i := range h {
		h[i] = float32(r.NormFloat64())
	}
	return be.FromF32(h, shape...)
}

// perturbParams moves every LayerNorm weight away from 1 and every bias
// away from 0, so their gradients are exercised.
func perturbParams(be compute.Backend, ps *ParamSet, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	for _, p := range ps.List() {
		h := be.ToF32(p.W)
		for i := range h {
			h[i] += float32(0.1 * r.NormFloat64())
		}
		be.Copy(p.W, be.FromF32(h, p.Shape...))
	}
}

func TestGradLinear(t *testing.T) {
	be := compute.NewCPU(0)
	ps := newParamSet(be, 1, 0.5)
	l := NewLinear(ps, "lin", 7, 5)
	perturbParams(be, ps, 1)
	x := randTensor(be, 2, 9, 7)
	dx := be.Alloc(compute.F32, 9, 7)
	y := be.Alloc(compute.F32, 9, 5)
	checkFD(t, be, fdCase{
		params: ps.List(),
		inputs: []fdInput{{"x", x, func() *compute.Tensor { return dx }}},
		fwd:    func() []*compute.Tensor { l.Fwd(be, y, x); return []*compute.Tensor{y} },
		bwd:    func(d []*compute.Tensor) { l.Bwd(be, dx, d[0], x, 0) },
	})
}

func TestGradLayerNorm(t *testing.T) {
	be := compute.NewCPU(0)
	ps := newParamSet(be, 1, 0.5)
	l := NewLayerNorm(ps, "ln", 11)
	perturbParams(be, ps, 1)
	x := randTensor(be, 2, 5, 11)
	dx := be.Alloc(compute.F32, 5, 11)
	y := be.Alloc(compute.F32, 5, 11)
	checkFD(t, be, fdCase{
		params: ps.List(),
		inputs: []fdInput{{"x", x, func() *compute.Tensor { return dx }}},
		fwd:    func() []*compute.Tensor { l.Fwd(be, y, x); return []*compute.Tensor{y} },
		bwd:    func(d []*compute.Tensor) { l.Bwd(be, dx, d[0]) },
	})
}

func TestGradMLPHead(t *testing.T) {
	be := compute.NewCPU(0)
	ps := newParamSet(be, 1, 0.5)
	h := NewMLP(ps, "dense", "ln", 8, 8)
	perturbParams(be, ps, 1)
	x := randTensor(be, 2, 4, 8)
	dx := be.Alloc(compute.F32, 4, 8)
	checkFD(t, be, fdCase{
		params: ps.List(),
		inputs: []fdInput{{"x", x, func() *compute.Tensor { return dx }}},
		fwd:    func() []*compute.Tensor { return []*compute.Tensor{h.Fwd(be, x)} },
		bwd:    func(d []*compute.Tensor) { h.Bwd(be, dx, d[0]) },
	})
}

// TestGradEncoderLayer checks one layer with dropout on (the masks are
// seeded, so the function is deterministic) and ragged lengths.
func TestGradEncoderLayer(t *testing.T) {
	be := compute.NewCPU(0)
	c := fdConfig()
	ps := newParamSet(be, 1, 0.2)
	run := &runState{train: true, stepSeed: 5, hiddenP: 0.1, attnP: 0.1}
	l := newEncoderLayer(ps, run, c, 0)
	perturbParams(be, ps, 1)
	b, s := 3, 5
	x := randTensor(be, 2, b*s, c.HiddenSize)
	lens := be.FromI32([]int32{5, 2, 4}, b)
	var g layerGrads
	dx := be.Alloc(compute.F32, b*s, c.HiddenSize)
	checkFD(t, be, fdCase{
		params: ps.List(),
		inputs: []fdInput{{"x", x, func() *compute.Tensor { return dx }}},
		fwd:    func() []*compute.Tensor { return []*compute.Tensor{l.Fwd(be, x, lens)} },
		bwd:    func(d []*compute.Tensor) { l.Bwd(be, &g, dx, d[0], lens) },
	})
}

// TestGradModel checks the whole backbone and every pretraining head,
// through the embeddings (text, image with masked regions), gather_index,
// encoder and pooler, in training mode.
func TestGradModel(t *testing.T) {
	be := compute.NewCPU(0)
	c := fdConfig()
	m, err := New(be, c, 1)
	if err != nil {
		t.Fatal(err)
	}
	heads := NewPretrainHeads(m)
	perturbParams(be, m.Params, 1)
	m.SetTrain(true)
	m.SetStepSeed(9)
	in := fdInputBatch(c)
	s := in.SeqLen()
	mlmIdx := be.FromI32([]int32{1, 2, int32(s + 1), int32(2*s + 3)}, 4)
	mrmIdx := be.FromI32([]int32{int32(in.TxtLens[0] + 1), int32(s + in.TxtLens[1] + 2)}, 2)
	feat := be.FromF32(in.ImgFeat, in.B*in.N, c.ImgDim)
	fwd := func() []*compute.Tensor {
		copy(in.ImgFeat, be.ToF32(feat))
		if err := m.Forward(in); err != nil {
			t.Fatal(err)
		}
		return []*compute.Tensor{m.Seq(), m.Pooled(), heads.MLM(mlmIdx), heads.MRFR(mrmIdx), heads.MRC(mrmIdx), heads.ITM()}
	}
	checkFD(t, be, fdCase{
		params: m.Params.List(),
		inputs: []fdInput{{"img_feat", feat, m.GradImgFeat}},
		fwd:    fwd,
		bwd: func(d []*compute.Tensor) {
			be.Axpy(1, d[0], m.GradSeq())
			be.Axpy(1, d[1], m.GradPooled())
			heads.MLMBackward(d[2])
			heads.MRFRBackward(d[3])
			heads.MRCBackward(d[4])
			heads.ITMBackward(d[5])
			m.Backward(true)
		},
	})
}
