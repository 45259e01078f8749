package model

import (
	"uniter/internal/compute"
)

// textEmbeddings is Dropout(LN(word[ids] + pos[position] + type[type_ids])).
type textEmbeddings struct {
	word, pos, typ *Param
	ln             *layerNorm
	drop           dropout

	ids, posIDs, typeIDs *compute.Tensor
	sum, tmp, dsum, row0 slot
}

// scatterSkipPad is ScatterAdd into an embedding table built with
// padding_idx=0, as the official word and mask embeddings are: row 0
// receives no gradient from the lookup. Row 0 is saved and restored rather
// than skipped so that other contributions already accumulated in it (the
// tied MLM decoder's) stay.
func scatterSkipPad(be compute.Backend, g, src, idx *compute.Tensor, save *slot) {
	row := g.RowRange(0, 1)
	keep := save.f32(be, 1, g.Cols())
	be.Copy(keep, row)
	be.ScatterAdd(g, src, idx)
	be.Copy(row, keep)
}

func newTextEmbeddings(ps *ParamSet, run *runState, c Config) *textEmbeddings {
	p := "uniter.embeddings."
	return &textEmbeddings{
		word: ps.add(p+"word_embeddings.weight", initNormal, c.VocabSize, c.HiddenSize),
		pos:  ps.add(p+"position_embeddings.weight", initNormal, c.MaxPositionEmbeddings, c.HiddenSize),
		typ:  ps.add(p+"token_type_embeddings.weight", initNormal, c.TypeVocabSize, c.HiddenSize),
		ln:   newLayerNorm(ps, p+"LayerNorm", c.HiddenSize),
		drop: run.newDropout(),
	}
}

// fwd writes the embeddings of ids [M] into out [M, H].
func (e *textEmbeddings) fwd(be compute.Backend, out, ids, posIDs, typeIDs *compute.Tensor) {
	e.ids, e.posIDs, e.typeIDs = ids, posIDs, typeIDs
	m, h := ids.Len(), e.word.Shape[1]
	sum, tmp := e.sum.f32(be, m, h), e.tmp.f32(be, m, h)
	be.Gather(sum, e.word.W, ids)
	be.Gather(tmp, e.pos.W, posIDs)
	be.Add(sum, sum, tmp)
	be.Gather(tmp, e.typ.W, typeIDs)
	be.Add(sum, sum, tmp)
	e.ln.fwd(be, out, sum)
	e.drop.fwd(be, out)
}

// bwd accumulates the table gradients from dout [M, H]; dout is clobbered.
func (e *textEmbeddings) bwd(be compute.Backend, dout *compute.Tensor) {
	e.drop.bwd(be, dout)
	dsum := e.dsum.f32(be, dout.Shape...)
	e.ln.bwd(be, dsum, dout)
	scatterSkipPad(be, e.word.G, dsum, e.ids, &e.row0)
	be.ScatterAdd(e.pos.G, dsum, e.posIDs)
	be.ScatterAdd(e.typ.G, dsum, e.typeIDs)
}

// imageEmbeddings is
// Dropout(LN(LN_img(img_linear(feat + mask_emb[masks])) + LN_pos(pos_linear(pos7)) + type[type_ids])).
type imageEmbeddings struct {
	imgLinear, posLinear *linear
	imgLN, posLN, ln     *layerNorm
	maskEmb, typ         *Param
	drop                 dropout

	masks, typeIDs, feat, pos, in *compute.Tensor
	featIn, a, aln, b, bln, sum   slot
	dsum, da, db, dfeat, row0     slot
	zeroRow                       *compute.Tensor
}

func newImageEmbeddings(ps *ParamSet, run *runState, c Config, typ *Param) *imageEmbeddings {
	p := "uniter.img_embeddings."
	return &imageEmbeddings{
		imgLinear: newLinear(ps, p+"img_linear", c.ImgDim, c.HiddenSize),
		imgLN:     newLayerNorm(ps, p+"img_layer_norm", c.HiddenSize),
		posLN:     newLayerNorm(ps, p+"pos_layer_norm", c.HiddenSize),
		posLinear: newLinear(ps, p+"pos_linear", ImgPosDim, c.HiddenSize),
		maskEmb:   ps.add(p+"mask_embedding.weight", initNormal, 2, c.ImgDim),
		ln:        newLayerNorm(ps, p+"LayerNorm", c.HiddenSize),
		typ:       typ,
		drop:      run.newDropout(),
	}
}

// fwd writes the embeddings of feat [M, img_dim], pos [M, 7] into out
// [M, H]. masks [M] (I32, 0/1) is nil unless a region-modelling task masks
// regions.
func (e *imageEmbeddings) fwd(be compute.Backend, out, feat, pos, typeIDs, masks *compute.Tensor) {
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
		in = e.featIn.f32(be, feat.Shape...)
		be.Gather(in, e.maskEmb.W, masks)
		be.Add(in, in, feat)
	}
	e.in = in
	a, aln := e.a.f32(be, m, h), e.aln.f32(be, m, h)
	e.imgLinear.fwd(be, a, in)
	e.imgLN.fwd(be, aln, a)
	b, bln := e.b.f32(be, m, h), e.bln.f32(be, m, h)
	e.posLinear.fwd(be, b, pos)
	e.posLN.fwd(be, bln, b)
	sum := e.sum.f32(be, m, h)
	be.Gather(sum, e.typ.W, typeIDs)
	be.Add(sum, sum, aln)
	be.Add(sum, sum, bln)
	e.ln.fwd(be, out, sum)
	e.drop.fwd(be, out)
}

// bwd accumulates parameter gradients from dout [M, H] (clobbered). It
// returns the gradient of the input features when wantDFeat is set.
func (e *imageEmbeddings) bwd(be compute.Backend, dout *compute.Tensor, wantDFeat bool) *compute.Tensor {
	m, h := dout.Rows(), e.imgLinear.out
	e.drop.bwd(be, dout)
	dsum := e.dsum.f32(be, m, h)
	e.ln.bwd(be, dsum, dout)
	be.ScatterAdd(e.typ.G, dsum, e.typeIDs)

	da := e.da.f32(be, m, h)
	e.imgLN.bwd(be, da, dsum)
	var dfeat *compute.Tensor
	if wantDFeat || e.masks != nil {
		dfeat = e.dfeat.f32(be, e.feat.Shape...)
	}
	e.imgLinear.bwd(be, dfeat, da, e.in, 0)
	if e.masks != nil {
		scatterSkipPad(be, e.maskEmb.G, dfeat, e.masks, &e.row0)
	}

	db := e.db.f32(be, m, h)
	e.posLN.bwd(be, db, dsum)
	e.posLinear.bwd(be, nil, db, e.pos, 0)
	return dfeat
}
