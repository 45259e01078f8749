package model

import (
	"uniter/internal/compute"
)

// textEmbeddings is Dropout(LN(word[ids] + pos[position] + type[type_ids])).
type textEmbeddings struct {
	word, pos, typ *Param
	ln             *LayerNorm
	drop           Dropout

	ids, posIDs, typeIDs *compute.Tensor
	sum, tmp, dsum, row0 Buf
}

// scatterSkipPad is ScatterAdd into an embedding table built with
// padding_idx=0, as the official word and mask embeddings are: row 0
// receives no gradient from the lookup. Row 0 is saved and restored rather
// than skipped so that other contributions already accumulated in it (the
// tied MLM decoder's) stay.
func scatterSkipPad(be compute.Backend, g, src, idx *compute.Tensor, save *Buf) {
	row := g.RowRange(0, 1)
	keep := save.F32(be, 1, g.Cols())
	be.Copy(keep, row)
	be.ScatterAdd(g, src, idx)
	be.Copy(row, keep)
}

func newTextEmbeddings(ps *ParamSet, run *runState, c Config) *textEmbeddings {
	p := "uniter.embeddings."
	return &textEmbeddings{
		word: ps.Add(p+"word_embeddings.weight", InitNormal, c.VocabSize, c.HiddenSize),
		pos:  ps.Add(p+"position_embeddings.weight", InitNormal, c.MaxPositionEmbeddings, c.HiddenSize),
		typ:  ps.Add(p+"token_type_embeddings.weight", InitNormal, c.TypeVocabSize, c.HiddenSize),
		ln:   NewLayerNorm(ps, p+"LayerNorm", c.HiddenSize),
		drop: run.newDropout(),
	}
}

// fwd writes the embeddings of ids [M] into out [M, H].
func (e *textEmbeddings) Fwd(be compute.Backend, out, ids, posIDs, typeIDs *compute.Tensor) {
	e.ids, e.posIDs, e.typeIDs = ids, posIDs, typeIDs
	m, h := ids.Len(), e.word.Shape[1]
	sum, tmp := e.sum.F32(be, m, h), e.tmp.F32(be, m, h)
	be.Gather(sum, e.word.W, ids)
	be.Gather(tmp, e.pos.W, posIDs)
	be.Add(sum, sum, tmp)
	be.Gather(tmp, e.typ.W, typeIDs)
	be.Add(sum, sum, tmp)
	e.ln.Fwd(be, out, sum)
	e.drop.Fwd(be, out)
}

// bwd accumulates the table gradients from dout [M, H]; dout is clobbered.
func (e *textEmbeddings) Bwd(be compute.Backend, dout *compute.Tensor) {
	e.drop.Bwd(be, dout)
	dsum := e.dsum.F32(be, dout.Shape...)
	e.ln.Bwd(be, dsum, dout)
	scatterSkipPad(be, e.word.G, dsum, e.ids, &e.row0)
	be.ScatterAdd(e.pos.G, dsum, e.posIDs)
	be.ScatterAdd(e.typ.G, dsum, e.typeIDs)
}

// imageEmbeddings is
// Dropout(LN(LN_img(img_linear(feat + mask_emb[masks])) + LN_pos(pos_linear(pos7)) + type[type_ids])).
type imageEmbeddings struct {
	imgLinear, posLinear *Linear
	imgLN, posLN, ln     *LayerNorm
	maskEmb, typ         *Param
	drop                 Dropout

	masks, typeIDs, feat, pos, in *compute.Tensor
	featIn, a, aln, b, bln, sum   Buf
	dsum, da, db, dfeat, row0     Buf
	zeroRow                       *compute.Tensor
}

func newImageEmbeddings(ps *ParamSet, run *runState, c Config, typ *Param) *imageEmbeddings {
	p := "uniter.img_embeddings."
	return &imageEmbeddings{
		imgLinear: NewLinear(ps, p+"img_linear", c.ImgDim, c.HiddenSize),
		imgLN:     NewLayerNorm(ps, p+"img_layer_norm", c.HiddenSize),
		posLN:     NewLayerNorm(ps, p+"pos_layer_norm", c.HiddenSize),
		posLinear: NewLinear(ps, p+"pos_linear", ImgPosDim, c.HiddenSize),
		maskEmb:   ps.Add(p+"mask_embedding.weight", InitNormal, 2, c.ImgDim),
		ln:        NewLayerNorm(ps, p+"LayerNorm", c.HiddenSize),
		typ:       typ,
		drop:      run.newDropout(),
	}
}

// fwd writes the embeddings of feat [M, img_dim], pos [M, 7] into out
// [M, H]. masks [M] (I32, 0/1) is nil unless a region-modelling task masks
// regions.
func (e *imageEmbeddings) Fwd(be compute.Backend, out, feat, pos, typeIDs, masks *compute.Tensor) {
	e.feat, e.pos, e.typeIDs, e.masks = feat, pos, typeIDs, masks
	m, h := feat.Rows(), e.imgLinear.out
	in := feat
	if masks != nil {
		// The reference zeroes row 0 of mask_embedding on every masked
		// forward, so unmasked regions add nothing.
		if e.zeroRow == nil {
			e.zeroRow = be.Alloc(compute.F32, e.maskEmb.Shape[1])
		}
		be.Copy(e.maskEmb.W.RowRange(0, 1), e.zeroRow)
		in = e.featIn.F32(be, feat.Shape...)
		be.Gather(in, e.maskEmb.W, masks)
		be.Add(in, in, feat)
	}
	e.in = in
	a, aln := e.a.F32(be, m, h), e.aln.F32(be, m, h)
	e.imgLinear.Fwd(be, a, in)
	e.imgLN.Fwd(be, aln, a)
	b, bln := e.b.F32(be, m, h), e.bln.F32(be, m, h)
	e.posLinear.Fwd(be, b, pos)
	e.posLN.Fwd(be, bln, b)
	sum := e.sum.F32(be, m, h)
	be.Gather(sum, e.typ.W, typeIDs)
	be.Add(sum, sum, aln)
	be.Add(sum, sum, bln)
	e.ln.Fwd(be, out, sum)
	e.drop.Fwd(be, out)
}

// bwd accumulates parameter gradients from dout [M, H] (clobbered). It
// returns the gradient of the input features when wantDFeat is set.
func (e *imageEmbeddings) Bwd(be compute.Backend, dout *compute.Tensor, wantDFeat bool) *compute.Tensor {
	m, h := dout.Rows(), e.imgLinear.out
	e.drop.Bwd(be, dout)
	dsum := e.dsum.F32(be, m, h)
	e.ln.Bwd(be, dsum, dout)
	be.ScatterAdd(e.typ.G, dsum, e.typeIDs)

	da := e.da.F32(be, m, h)
	e.imgLN.Bwd(be, da, dsum)
	var dfeat *compute.Tensor
	if wantDFeat || e.masks != nil {
		dfeat = e.dfeat.F32(be, e.feat.Shape...)
	}
	e.imgLinear.Bwd(be, dfeat, da, e.in, 0)
	if e.masks != nil {
		scatterSkipPad(be, e.maskEmb.G, dfeat, e.masks, &e.row0)
	}

	db := e.db.F32(be, m, h)
	e.posLN.Bwd(be, db, dsum)
	e.posLinear.Bwd(be, nil, db, e.pos, 0)
	return dfeat
}
