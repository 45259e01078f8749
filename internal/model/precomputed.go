package model

import (
	"fmt"

	"uniter/internal/compute"
)

// Cross-encoder scoring of many text-image pairs (retrieval) runs the
// embeddings once per text and once per image: they depend on one side
// only (text rows: word, position and type 0; region rows: features,
// boxes and type 1, each LayerNorm'd per row). Only the encoder sees the
// pair. These functions run in evaluation mode: no dropout, no backward.

// EmbedTexts returns the embedding rows of texts (each with its specials,
// type 0, positions from 0) packed one after the other: [sum len, H].
func (m *Model) EmbedTexts(texts [][]int32) (*compute.Tensor, error) {
	if m.run.train {
		return nil, fmt.Errorf("EmbedTexts: the model is in training mode")
	}
	var ids, pos []int32
	for k, t := range texts {
		if len(t) == 0 || len(t) > m.Cfg.MaxPositionEmbeddings {
			return nil, fmt.Errorf("text %d has %d tokens, want 1..%d", k, len(t), m.Cfg.MaxPositionEmbeddings)
		}
		if err := checkIDs("input_ids", t, len(t), m.Cfg.VocabSize); err != nil {
			return nil, fmt.Errorf("text %d: %w", k, err)
		}
		ids = append(ids, t...)
		for p := range t {
			pos = append(pos, int32(p))
		}
	}
	be, n := m.be, len(ids)
	out := be.Alloc(compute.F32, n, m.Cfg.HiddenSize)
	m.txt.Fwd(be, out, be.FromI32(ids, n), be.FromI32(pos, n), be.FromI32(make([]int32, n), n))
	return out, nil
}

// EmbedImages returns the embedding rows of images (feat [nbb*img_dim]
// and box [nbb*7] each, region type 1) packed: [sum nbb, H].
func (m *Model) EmbedImages(feats, boxes [][]float32, nbb []int) (*compute.Tensor, error) {
	if m.run.train {
		return nil, fmt.Errorf("EmbedImages: the model is in training mode")
	}
	var f, p []float32
	n := 0
	for k := range nbb {
		if len(feats[k]) != nbb[k]*m.Cfg.ImgDim || len(boxes[k]) != nbb[k]*ImgPosDim {
			return nil, fmt.Errorf("image %d: %d features and %d box values for %d regions of %d", k, len(feats[k]), len(boxes[k]), nbb[k], m.Cfg.ImgDim)
		}
		f = append(f, feats[k]...)
		p = append(p, boxes[k]...)
		n += nbb[k]
	}
	be := m.be
	typ := make([]int32, n)
	for i := range typ {
		typ[i] = 1
	}
	out := be.Alloc(compute.F32, n, m.Cfg.HiddenSize)
	m.img.Fwd(be, out, be.FromF32(f, n, m.Cfg.ImgDim), be.FromF32(p, n, ImgPosDim), be.FromI32(typ, n), nil)
	return out, nil
}

// EncodeGathered runs the encoder and the pooler on b rows of s joint
// positions each, row r made of table's rows idx[r*s:(r+1)*s] of which
// the first lens[r] are real (the rest padding: masked as keys, as the
// reference's attention mask does; nil: every position real), and returns
// the pooled output [b, H] (valid until the next forward), as
// ForwardPooled does: Pooled and SeqLen describe this forward afterwards,
// Seq does not, and it cannot be backpropagated.
func (m *Model) EncodeGathered(table *compute.Tensor, idx []int32, lens []int, b, s int) (*compute.Tensor, error) {
	if m.run.train {
		return nil, fmt.Errorf("EncodeGathered: the model is in training mode")
	}
	if b <= 0 || s <= 0 || len(idx) != b*s || (lens != nil && len(lens) != b) {
		return nil, fmt.Errorf("EncodeGathered: %d indices and %d lengths for %d rows of %d", len(idx), len(lens), b, s)
	}
	be, h := m.be, m.Cfg.HiddenSize
	lens32 := make([]int32, b)
	for r := range lens32 {
		lens32[r] = int32(s)
		if lens != nil {
			if lens[r] < 1 || lens[r] > s {
				return nil, fmt.Errorf("EncodeGathered: row %d has length %d of %d", r, lens[r], s)
			}
			lens32[r] = int32(lens[r])
		}
	}
	x := m.joint.F32(be, b*s, h)
	be.Gather(x, table, be.FromI32(idx, b*s))
	m.s, m.in = s, &Input{B: b}
	return m.encodePooled(x, lens32), nil
}
