package data

import (
	"fmt"
	"slices"
	"sync"
)

// PosDim is the size of a region's location input [x1,y1,x2,y2,w,h,w*h].
const PosDim = 7

// LabelDim is the detector's class count: 1600 Visual Genome classes plus
// background at 0.
const LabelDim = 1601

// Example is one decoded input row: a token sequence and a set of regions,
// with whatever targets its task needs. Per-region slices are row-major.
type Example struct {
	// ID is the txt_db example id.
	ID string
	// InputIDs is the full token sequence, specials included
	// ([CLS] ... [SEP]); its length is the text length tl.
	InputIDs []int32
	// TxtTypeIDs gives each token's type; nil means all 0.
	TxtTypeIDs []int32
	// MLMLabels gives each token's MLM target, -1 where ignored; nil when
	// the example has no MLM target.
	MLMLabels []int32

	// NBB is the number of regions.
	NBB int
	// ImgFeat holds NBB region features of the batch's feature size; masked
	// regions are already zeroed.
	ImgFeat []float32
	// ImgPos holds NBB 7-d locations [x1,y1,x2,y2,w,h,w*h].
	ImgPos []float32
	// ImgTypeIDs gives each region's type; nil means all 1.
	ImgTypeIDs []int32
	// ImgMask marks masked regions; nil when no region is masked.
	ImgMask []bool

	// FeatTargets holds the original features of the masked regions, in
	// region order (MRFR).
	FeatTargets []float32
	// MRCLabels holds argmax(soft_labels[1:])+1 of the masked regions (MRC);
	// empty when the task needs no class targets.
	MRCLabels []int32
	// MRCSoft holds the LabelDim-wide soft labels of the masked regions
	// (MRC-kl); empty likewise.
	MRCSoft []float32

	// Label is a per-example class: the ITM match label (1 match, 0 not) or
	// a downstream task's class.
	Label int32
	// NoLabel marks an example without a class label (VQA, whose target is
	// soft; a test split); a batch of such examples has nil Labels.
	NoLabel bool
	// Targets is a per-example soft target vector (VQA answer scores); all
	// examples of a batch must have the same length.
	Targets []float32
	// Boxes is a referring expression's geometry in pixels, kept in float64
	// as the original's numpy does: the target box x, y, w, h, then the
	// image width and height (REBoxDim values); nil for other tasks.
	Boxes []float64
}

// Batch is a collated, padded batch in the layout the model consumes. Text
// is [B,Tmax], regions [B,Nmax], and the joint sequence the compact
// [B,S] layout addressed by GatherIndex: per row its text, then its
// regions, then padding (docs/data.md, "Batches").
//
// A row is one input sequence. Usually every example is one row; an
// example may span RowsPerExample consecutive rows (NLVR2 paired: the
// sentence with each image), and then the per-example fields IDs, Labels
// and Targets have B/RowsPerExample entries.
type Batch struct {
	// B is the number of rows, Tmax the longest text (specials included),
	// Nmax the most regions and S the longest joint sequence max(tl+nbb).
	B, Tmax, Nmax, S int
	// RowsPerExample is how many consecutive rows make up one example.
	RowsPerExample int
	// ImgDim is the region feature size.
	ImgDim int
	// IDs are the example ids in example order.
	IDs []string

	// InputIDs [B*Tmax], padded with 0.
	InputIDs []int32
	// TxtTypeIDs [B*Tmax], padded with 0.
	TxtTypeIDs []int32
	// TxtLens are the text lengths, specials included.
	TxtLens []int

	// ImgFeat [B*Nmax*ImgDim], padded with 0.
	ImgFeat []float32
	// ImgPos [B*Nmax*7], padded with 0.
	ImgPos []float32
	// ImgTypeIDs [B*Nmax], padded with 0.
	ImgTypeIDs []int32
	// NBB are the region counts.
	NBB []int
	// ImgMasks [B*Nmax] marks masked regions; nil when the batch masks none.
	ImgMasks []bool

	// GatherIndex [B*S] maps compact joint positions to rows of the
	// concatenation [text (Tmax); image (Nmax)].
	GatherIndex []int32
	// AttnLens are tl+nbb: the attended prefix of each compact row.
	AttnLens []int

	// MLMLabels [B*Tmax], -1 where ignored; nil when no example has MLM
	// labels.
	MLMLabels []int32
	// ImgMaskTgt [B*S] marks masked regions in the compact layout; nil
	// without ImgMasks. Its true positions, row-major, are in the order of
	// the MRFR/MRC target rows.
	ImgMaskTgt []bool
	// MRFRTargets [NMasked*ImgDim]: original features of masked regions.
	MRFRTargets []float32
	// MRCLabels [NMasked]: MRC class targets; empty when the examples
	// carried no soft labels.
	MRCLabels []int32
	// MRCSoft [NMasked*LabelDim]: soft labels for MRC-kl; empty likewise.
	MRCSoft []float32
	// NMasked is the number of masked regions.
	NMasked int

	// Labels [B/RowsPerExample]: per-example class labels (ITM, downstream
	// tasks); nil when the examples have none (NoLabel).
	Labels []int32
	// Targets [B/RowsPerExample*TargetDim]: per-example soft targets; nil
	// when TargetDim is 0.
	Targets []float32
	// TargetDim is the length of each example's Targets.
	TargetDim int
	// Boxes [B/RowsPerExample*REBoxDim]: each example's Boxes (RE); nil
	// when the examples have none.
	Boxes []float64

	// Rows are uncollated rows for a task that builds its own sub-batches
	// from them (ITR hard negatives score hundreds of candidate pairs in
	// chunks and train on a few): such a batch carries only the per-example
	// fields and the lengths of each example's first row.
	Rows []*Example
}

// REBoxDim is the length of a referring expression's Boxes.
const REBoxDim = 6

// Collate pads examples, one row each, into a batch. imgDim is the region
// feature size every example's ImgFeat rows must have.
func Collate(exs []*Example, imgDim int) (*Batch, error) {
	return CollateRows(exs, imgDim, 1)
}

// CollateRows pads rows into a batch whose examples are each perExample
// consecutive rows. An example's ID, Label, NoLabel and Targets are those
// of its first row, and its other rows must repeat them.
func CollateRows(exs []*Example, imgDim, perExample int) (*Batch, error) {
	if len(exs) == 0 {
		return nil, fmt.Errorf("collate: empty batch")
	}
	if imgDim <= 0 {
		return nil, fmt.Errorf("collate: image feature size %d", imgDim)
	}
	if perExample <= 0 || len(exs)%perExample != 0 {
		return nil, fmt.Errorf("collate: %d rows do not split into examples of %d rows", len(exs), perExample)
	}
	b := &Batch{B: len(exs), RowsPerExample: perExample, ImgDim: imgDim, TargetDim: len(exs[0].Targets)}
	nex := len(exs) / perExample
	hasMLM, hasMask, labelled := false, false, 0
	for i, ex := range exs {
		if err := ex.check(imgDim, b.TargetDim); err != nil {
			return nil, err
		}
		if first := exs[i-i%perExample]; first != ex && !sameExample(first, ex) {
			return nil, fmt.Errorf("collate: rows %d and %d of one example differ in id (%q, %q), label or targets", i-i%perExample, i, first.ID, ex.ID)
		}
		if i%perExample == 0 && !ex.NoLabel {
			labelled++
		}
		b.Tmax = max(b.Tmax, len(ex.InputIDs))
		b.Nmax = max(b.Nmax, ex.NBB)
		b.S = max(b.S, len(ex.InputIDs)+ex.NBB)
		hasMLM = hasMLM || ex.MLMLabels != nil
		hasMask = hasMask || ex.ImgMask != nil
		for _, m := range ex.ImgMask {
			if m {
				b.NMasked++
			}
		}
	}
	if labelled != 0 && labelled != nex {
		return nil, fmt.Errorf("collate: class labels for only %d of the %d examples", labelled, nex)
	}
	B, T, N, S := b.B, b.Tmax, b.Nmax, b.S
	b.IDs = make([]string, nex)
	b.InputIDs = make([]int32, B*T)
	b.TxtTypeIDs = make([]int32, B*T)
	b.TxtLens = make([]int, B)
	b.ImgFeat = getFloats(B * N * imgDim)
	b.ImgPos = make([]float32, B*N*PosDim)
	b.ImgTypeIDs = make([]int32, B*N)
	b.NBB = make([]int, B)
	b.GatherIndex = make([]int32, B*S)
	b.AttnLens = make([]int, B)
	if labelled > 0 {
		b.Labels = make([]int32, nex)
	}
	if hasMLM {
		b.MLMLabels = make([]int32, B*T)
		for i := range b.MLMLabels {
			b.MLMLabels[i] = -1
		}
	}
	if hasMask {
		b.ImgMasks = make([]bool, B*N)
		b.ImgMaskTgt = make([]bool, B*S)
		b.MRFRTargets = make([]float32, 0, b.NMasked*imgDim)
		b.MRCLabels = make([]int32, 0, b.NMasked)
		b.MRCSoft = make([]float32, 0, b.NMasked*LabelDim)
	}
	if b.TargetDim > 0 {
		b.Targets = make([]float32, 0, nex*b.TargetDim)
	}
	for i, ex := range exs {
		tl, nbb := len(ex.InputIDs), ex.NBB
		b.TxtLens[i], b.NBB[i], b.AttnLens[i] = tl, nbb, tl+nbb
		copy(b.InputIDs[i*T:], ex.InputIDs)
		copy(b.TxtTypeIDs[i*T:], ex.TxtTypeIDs)
		if ex.MLMLabels != nil {
			copy(b.MLMLabels[i*T:], ex.MLMLabels)
		}
		// The buffer may be recycled: clear the padding rows explicitly.
		clear(b.ImgFeat[i*N*imgDim+copy(b.ImgFeat[i*N*imgDim:], ex.ImgFeat) : (i+1)*N*imgDim])
		copy(b.ImgPos[i*N*PosDim:], ex.ImgPos)
		imgTypes := b.ImgTypeIDs[i*N : i*N+nbb]
		if ex.ImgTypeIDs != nil {
			copy(imgTypes, ex.ImgTypeIDs)
		} else {
			for j := range imgTypes {
				imgTypes[j] = 1
			}
		}
		gi := b.GatherIndex[i*S : (i+1)*S]
		for j := range gi {
			gi[j] = int32(j)
		}
		for j := 0; j < nbb; j++ {
			gi[tl+j] = int32(T + j)
		}
		if ex.ImgMask != nil {
			copy(b.ImgMasks[i*N:], ex.ImgMask)
			copy(b.ImgMaskTgt[i*S+tl:], ex.ImgMask)
			b.MRFRTargets = append(b.MRFRTargets, ex.FeatTargets...)
			b.MRCLabels = append(b.MRCLabels, ex.MRCLabels...)
			b.MRCSoft = append(b.MRCSoft, ex.MRCSoft...)
		}
		if i%perExample == 0 {
			e := i / perExample
			b.IDs[e] = ex.ID
			if b.Labels != nil {
				b.Labels[e] = ex.Label
			}
			b.Targets = append(b.Targets, ex.Targets...)
			b.Boxes = append(b.Boxes, ex.Boxes...)
		}
	}
	if (len(b.MRCLabels) != 0 && len(b.MRCLabels) != b.NMasked) || (len(b.MRCSoft) != 0 && len(b.MRCSoft) != b.NMasked*LabelDim) {
		return nil, fmt.Errorf("collate: region class targets for only some of the %d masked regions", b.NMasked)
	}
	return b, nil
}

// sameExample reports whether two rows carry the same example fields.
func sameExample(a, b *Example) bool {
	return a.ID == b.ID && a.Label == b.Label && a.NoLabel == b.NoLabel && slices.Equal(a.Targets, b.Targets)
}

// check validates the example's slice sizes against each other so that a
// malformed example is an error naming it rather than a corrupt batch.
func (ex *Example) check(imgDim, targetDim int) error {
	tl, nbb := len(ex.InputIDs), ex.NBB
	bad := func(what string, got, want int) error {
		return fmt.Errorf("collate: example %q: %s has %d values, want %d", ex.ID, what, got, want)
	}
	switch {
	case nbb < 0:
		return fmt.Errorf("collate: example %q: negative region count %d", ex.ID, nbb)
	case ex.TxtTypeIDs != nil && len(ex.TxtTypeIDs) != tl:
		return bad("TxtTypeIDs", len(ex.TxtTypeIDs), tl)
	case ex.MLMLabels != nil && len(ex.MLMLabels) != tl:
		return bad("MLMLabels", len(ex.MLMLabels), tl)
	case len(ex.ImgFeat) != nbb*imgDim:
		return bad("ImgFeat", len(ex.ImgFeat), nbb*imgDim)
	case len(ex.ImgPos) != nbb*PosDim:
		return bad("ImgPos", len(ex.ImgPos), nbb*PosDim)
	case ex.ImgTypeIDs != nil && len(ex.ImgTypeIDs) != nbb:
		return bad("ImgTypeIDs", len(ex.ImgTypeIDs), nbb)
	case len(ex.Targets) != targetDim:
		return bad("Targets", len(ex.Targets), targetDim)
	}
	if ex.ImgMask == nil {
		if len(ex.FeatTargets)+len(ex.MRCLabels)+len(ex.MRCSoft) != 0 {
			return fmt.Errorf("collate: example %q: region targets without ImgMask", ex.ID)
		}
		return nil
	}
	masked := 0
	for _, m := range ex.ImgMask {
		if m {
			masked++
		}
	}
	switch {
	case len(ex.ImgMask) != nbb:
		return bad("ImgMask", len(ex.ImgMask), nbb)
	case len(ex.FeatTargets) != masked*imgDim:
		return bad("FeatTargets", len(ex.FeatTargets), masked*imgDim)
	case len(ex.MRCLabels) != 0 && len(ex.MRCLabels) != masked:
		return bad("MRCLabels", len(ex.MRCLabels), masked)
	case len(ex.MRCSoft) != 0 && len(ex.MRCSoft) != masked*LabelDim:
		return bad("MRCSoft", len(ex.MRCSoft), masked*LabelDim)
	}
	return nil
}

// AttnMask returns the [B*S] attention mask: 1 on each row's first AttnLens
// positions, 0 after.
func (b *Batch) AttnMask() []float32 {
	m := make([]float32, b.B*b.S)
	for i, n := range b.AttnLens {
		for j := 0; j < n; j++ {
			m[i*b.S+j] = 1
		}
	}
	return m
}

// Tokens is the number of real (unpadded) joint positions.
func (b *Batch) Tokens() int {
	n := 0
	for _, l := range b.AttnLens {
		n += l
	}
	return n
}

// PadFrac is the fraction of the [B,S] joint slots that are padding.
func (b *Batch) PadFrac() float64 {
	if b.B*b.S == 0 {
		return 0
	}
	return 1 - float64(b.Tokens())/float64(b.B*b.S)
}

// WithSpecials returns [CLS] ids [SEP].
func WithSpecials(ids []int32, cls, sep int32) []int32 {
	out := make([]int32, 0, len(ids)+2)
	out = append(out, cls)
	out = append(out, ids...)
	return append(out, sep)
}

// featPool recycles the region feature buffers of released batches: they
// are the bulk of a batch (B*Nmax*2048 floats), and allocating them fresh
// costs a zeroing pass and garbage-collector work per batch.
var featPool sync.Pool

// getFloats returns a slice of n floats with unspecified contents.
func getFloats(n int) []float32 {
	if p, ok := featPool.Get().(*[]float32); ok {
		if cap(*p) >= n {
			return (*p)[:n]
		}
		featPool.Put(p)
	}
	return make([]float32, n)
}

// Release hands the batch's feature buffer back for reuse by later batches.
// It is optional (without it the garbage collector reclaims the buffer);
// after it the batch's ImgFeat must not be used.
func (b *Batch) Release() {
	if b.ImgFeat == nil {
		return
	}
	buf := b.ImgFeat[:0]
	b.ImgFeat = nil
	featPool.Put(&buf)
}
