package model

import (
	"uniter/internal/compute"
)

// PretrainHeads are the official pretraining heads: MLM (decoder tied to the
// word embeddings), MRFR (output tied to img_linear), MRC and ITM. Each head
// reads rows of the model's last layer selected by flat indices into the
// [B*S] joint rows, and its backward accumulates into the model's GradSeq /
// GradPooled.
type PretrainHeads struct {
	m *Model

	mlmT      *MLP
	mlmBias   *Param
	mrfrT     *MLP
	mrfrBias  *Param
	mrcT      *MLP
	mrcOut    *Linear
	itm       *Linear
	mlmIdx    *compute.Tensor
	mrfrIdx   *compute.Tensor
	mrcIdx    *compute.Tensor
	mlmIn     Buf
	mrfrIn    Buf
	mrcIn     Buf
	mlmOut    Buf
	mrfrOut   Buf
	mrcHid    *compute.Tensor
	mrcOutBuf Buf
	itmOut    Buf
	dmlm      Buf
	dmrfr     Buf
	dmrc      Buf
	dhid      Buf
}

// NewPretrainHeads registers the pretraining heads' parameters (official
// names, tied weights as aliases) in m's parameter set.
func NewPretrainHeads(m *Model) *PretrainHeads {
	ps, c := m.Params, m.Cfg
	h := c.HiddenSize
	p := &PretrainHeads{m: m}
	p.mlmT = NewMLP(ps, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", h, h)
	p.mlmBias = ps.Add("cls.predictions.bias", InitZeros, c.VocabSize)
	ps.tie("cls.predictions.decoder.weight", m.txt.word)
	p.mrfrT = NewMLP(ps, "feat_regress.net.0", "feat_regress.net.2", h, h)
	ps.tie("feat_regress.weight", m.img.imgLinear.W)
	p.mrfrBias = ps.Add("feat_regress.bias", InitZeros, c.ImgDim)
	p.mrcT = NewMLP(ps, "region_classifier.net.0", "region_classifier.net.2", h, h)
	p.mrcOut = NewLinear(ps, "region_classifier.net.3", h, c.ImgLabelDim)
	p.itm = NewLinear(ps, "itm_output", h, 2)
	return p
}

// gatherRows selects rows idx of the model's last layer into s.
func (p *PretrainHeads) gatherRows(s *Buf, idx *compute.Tensor) *compute.Tensor {
	be := p.m.be
	x := s.F32(be, idx.Len(), p.m.Cfg.HiddenSize)
	be.Gather(x, p.m.Seq(), idx)
	return x
}

// MLM returns vocabulary logits [n, vocab] at the joint rows idx [n].
func (p *PretrainHeads) MLM(idx *compute.Tensor) *compute.Tensor {
	be := p.m.be
	p.mlmIdx = idx
	t := p.mlmT.Fwd(be, p.gatherRows(&p.mlmIn, idx))
	out := p.mlmOut.F32(be, idx.Len(), p.m.Cfg.VocabSize)
	be.Gemm(false, true, 1, t, p.m.txt.word.W, 0, out)
	be.AddBias(out, p.mlmBias.W)
	return out
}

// MLMBackward takes dlogits [n, vocab] of the last MLM call.
func (p *PretrainHeads) MLMBackward(dlogits *compute.Tensor) {
	be, w := p.m.be, p.m.txt.word
	t := p.mlmT.Output()
	be.Gemm(true, false, 1, dlogits, t, 1, w.G)
	be.SumRows(p.mlmBias.G, dlogits, 1)
	dt := p.dhid.F32(be, t.Shape...)
	be.Gemm(false, false, 1, dlogits, w.W, 0, dt)
	p.backToSeq(p.mlmT, &p.dmlm, dt, p.mlmIdx)
}

// backToSeq runs a head transform's backward and scatters the row
// gradients into GradSeq.
func (p *PretrainHeads) backToSeq(t *MLP, ds *Buf, dt, idx *compute.Tensor) {
	be := p.m.be
	dx := ds.F32(be, idx.Len(), p.m.Cfg.HiddenSize)
	t.Bwd(be, dx, dt)
	be.ScatterAdd(p.m.GradSeq(), dx, idx)
}

// MRFR returns the regressed region features [n, img_dim] at joint rows idx.
func (p *PretrainHeads) MRFR(idx *compute.Tensor) *compute.Tensor {
	be := p.m.be
	p.mrfrIdx = idx
	t := p.mrfrT.Fwd(be, p.gatherRows(&p.mrfrIn, idx))
	out := p.mrfrOut.F32(be, idx.Len(), p.m.Cfg.ImgDim)
	// F.linear(h, W_img_linear.t(), b): W is [H, img_dim], so out = t W.
	be.Gemm(false, false, 1, t, p.m.img.imgLinear.W.W, 0, out)
	be.AddBias(out, p.mrfrBias.W)
	return out
}

// MRFRBackward takes dout [n, img_dim] of the last MRFR call.
func (p *PretrainHeads) MRFRBackward(dout *compute.Tensor) {
	be, w := p.m.be, p.m.img.imgLinear.W
	t := p.mrfrT.Output()
	be.Gemm(true, false, 1, t, dout, 1, w.G)
	be.SumRows(p.mrfrBias.G, dout, 1)
	dt := p.dhid.F32(be, t.Shape...)
	be.Gemm(false, true, 1, dout, w.W, 0, dt)
	p.backToSeq(p.mrfrT, &p.dmrfr, dt, p.mrfrIdx)
}

// MRC returns region-class logits [n, img_label_dim] at joint rows idx.
func (p *PretrainHeads) MRC(idx *compute.Tensor) *compute.Tensor {
	be := p.m.be
	p.mrcIdx = idx
	p.mrcHid = p.mrcT.Fwd(be, p.gatherRows(&p.mrcIn, idx))
	out := p.mrcOutBuf.F32(be, idx.Len(), p.mrcOut.out)
	p.mrcOut.Fwd(be, out, p.mrcHid)
	return out
}

// MRCBackward takes dlogits [n, img_label_dim] of the last MRC call.
func (p *PretrainHeads) MRCBackward(dlogits *compute.Tensor) {
	be := p.m.be
	dt := p.dhid.F32(be, p.mrcHid.Shape...)
	p.mrcOut.Bwd(be, dt, dlogits, p.mrcHid, 0)
	p.backToSeq(p.mrcT, &p.dmrc, dt, p.mrcIdx)
}

// ITM returns match logits [B, 2] from the pooled output.
func (p *PretrainHeads) ITM() *compute.Tensor {
	pooled := p.m.Pooled()
	out := p.itmOut.F32(p.m.be, pooled.Rows(), 2)
	p.itm.Fwd(p.m.be, out, pooled)
	return out
}

// ITMBackward takes dlogits [B, 2] of the last ITM call.
func (p *PretrainHeads) ITMBackward(dlogits *compute.Tensor) {
	p.itm.Bwd(p.m.be, p.m.GradPooled(), dlogits, p.m.Pooled(), 1)
}
