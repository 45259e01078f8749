// Package tasks implements UNITER's pretraining tasks on top of the model
// and its pretraining heads: masked language modelling (MLM), masked region
// feature regression (MRFR), masked region classification (MRC and its KL
// variant MRC-kl) and image-text matching (ITM) with word-region alignment
// by optimal transport (WRA). Each task selects the joint rows its head
// reads, computes the loss exactly as the official code reduces it, and
// feeds the gradient back into the model.
//
// Heads address the compact joint layout of model.Input:
// text position j of example i is joint row i*S+j, and region r of example
// i is joint row i*S+tl_i+r.
package tasks

import (
	"fmt"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// ModelInput converts a collated batch to the model's input. Region masks
// are passed through when the batch has them; a batch without text or
// without regions becomes a single-modality input.
func ModelInput(b *data.Batch) *model.Input {
	in := &model.Input{
		B: b.B, T: b.Tmax, N: b.Nmax,
		InputIDs: b.InputIDs, TxtTypeIDs: b.TxtTypeIDs, TxtLens: b.TxtLens,
		ImgFeat: b.ImgFeat, ImgPos: b.ImgPos, ImgTypeIDs: b.ImgTypeIDs, NBB: b.NBB,
		GatherIndex: b.GatherIndex,
	}
	if b.Tmax == 0 {
		in.InputIDs = nil
	}
	if b.Nmax == 0 {
		in.ImgFeat = nil
	}
	if b.ImgMasks != nil {
		in.ImgMasks = make([]int32, len(b.ImgMasks))
		for i, m := range b.ImgMasks {
			if m {
				in.ImgMasks[i] = 1
			}
		}
	}
	return in
}

// Pretrain runs the pretraining tasks on a model with pretraining heads.
type Pretrain struct {
	// M is the backbone and H its pretraining heads (model.NewPretrainHeads(M)).
	M *model.Model
	H *model.PretrainHeads
	// OTWeight is the WRA weight lambda (0.1 in every official config); 0
	// leaves WRA out of ITM steps.
	OTWeight float64
	// FP16 emulates fp16 gradients: the gradient entering the backbone
	// (GradSeq, GradPooled) is rounded to fp16, so a too-large loss scale
	// overflows to inf as it would on a GPU.
	FP16 bool

	// mrcCols selects MRC's non-background logits for the argmax.
	mrcCols colSelect
}

// Step runs task ("mlm", "mrfr", "mrc", "mrckl" or "itm") on b: the
// forward, the loss, and when backward is set the backward of
// loss*gradScale, accumulating (+=) into the parameters' gradients. The
// caller zeroes gradients per optimizer window and sets train/eval mode and
// the dropout step seed on the model. A batch that lacks the targets of the
// task, or whose targets are out of range, is an error and runs nothing.
func (p *Pretrain) Step(task string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	var run func(*data.Batch, bool, float32) (Result, error)
	switch task {
	case data.TaskMLM:
		run = p.mlm
	case data.TaskMRFR:
		run = p.mrfr
	case data.TaskMRC:
		run = p.mrc
	case data.TaskMRCKL:
		run = p.mrckl
	case data.TaskITM:
		run = p.itm
	default:
		return Result{}, fmt.Errorf("unknown pretraining task %q (want %s, %s, %s, %s or %s)",
			task, data.TaskMLM, data.TaskMRFR, data.TaskMRC, data.TaskMRCKL, data.TaskITM)
	}
	if p.M == nil || p.H == nil {
		return Result{}, fmt.Errorf("%s: pretraining needs a model and its pretraining heads", task)
	}
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("%s: %w", task, err)
	}
	res, err := run(b, backward, gradScale)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", task, err)
	}
	res.Examples = b.B
	res.Tokens = b.Tokens()
	return res, nil
}

// forward runs the backbone on b. Only the region-modelling tasks give the
// model the region masks.
func (p *Pretrain) forward(b *data.Batch, masks bool) error {
	return (&backbone{m: p.M, fp16: p.FP16}).forward(b, masks)
}

// backward propagates what the heads accumulated through the backbone.
func (p *Pretrain) backward() { (&backbone{m: p.M, fp16: p.FP16}).backward() }

// Model is the backbone the pretraining heads sit on.
func (p *Pretrain) Model() *model.Model { return p.M }

// LossUnits is the number of terms a task's loss averages over in batch b:
// masked tokens (MLM), masked regions (MRFR, MRC, MRC-kl) or examples
// (ITM, whose WRA term is also divided by the batch size).
func (p *Pretrain) LossUnits(task string, b *data.Batch) int {
	switch task {
	case data.TaskMLM:
		n := 0
		for _, l := range b.MLMLabels {
			if l != -1 {
				n++
			}
		}
		return n
	case data.TaskITM:
		return b.B
	}
	return b.NMasked
}

// xent is the softmax cross-entropy of logits [n, C] against labels,
// averaged over all n rows as the reference's loss.mean() does (ignored
// rows count in n with loss 0). It overwrites logits with the gradient of
// the mean times gradScale and returns the mean loss and how many rows'
// argmax over classes [from, C) equals their label. The argmax runs on the
// device before the gradient replaces the logits (cols selects the columns
// when from > 0; nil builds the selection for this call).
func xent(be compute.Backend, logits *compute.Tensor, labels []int32, ignore int32, from int, gradScale float32, cols *colSelect) (float64, int) {
	n := logits.Rows()
	pred := argmaxFrom(be, logits, from, cols)
	correct := 0
	for i, y := range labels {
		if y != ignore && pred[i] == y {
			correct++
		}
	}
	loss := be.Alloc(compute.F32, n)
	be.SoftmaxXent(loss, logits, logits, be.FromI32(labels, n), ignore, gradScale/float32(n))
	return be.Sum(loss) / float64(n), correct
}

// argmaxFrom returns, for each row of x [n, C], the column of its largest
// value among columns [from, C): torch's x[:, from:].max(-1)[1] + from,
// the lowest column on ties and the first NaN if there is one. It runs on
// the device and only the n indices come to the host; for from > 0 the
// columns are first gathered (exact copies) into an [n, C-from] tensor.
func argmaxFrom(be compute.Backend, x *compute.Tensor, from int, cols *colSelect) []int32 {
	n, c := x.Rows(), x.Cols()
	if n == 0 {
		return nil
	}
	if from < 0 || from >= c {
		panic(fmt.Sprintf("tasks: argmax from column %d of %d", from, c))
	}
	src := x
	if from > 0 {
		if cols == nil {
			cols = &colSelect{}
		}
		w := c - from
		flat := cols.flat.F32(be, n*w, 1)
		be.Gather(flat, x.View(n*c, 1), cols.index(be, n, c, from))
		src = flat.View(n, w)
	}
	pred := argmax(be, nil, src)
	for i := range pred {
		pred[i] += int32(from)
	}
	return pred
}

// colSelect caches the device index that gathers columns [from, C) of an
// [n, C] matrix seen as n*C rows of one value: row i*C+j for every i, then
// j. The index of n rows is a prefix of that of more rows, so one index
// serves every batch up to the largest seen; flat is the gathered copy.
type colSelect struct {
	be            compute.Backend
	idx           *compute.Tensor
	rows, c, from int
	flat          model.Buf
}

func (s *colSelect) index(be compute.Backend, n, c, from int) *compute.Tensor {
	w := c - from
	if s.idx == nil || s.be != be || s.c != c || s.from != from || s.rows < n {
		rows := n
		if s.idx != nil && s.be == be && s.c == c && s.from == from {
			rows = max(n, 2*s.rows)
		}
		host := make([]int32, 0, rows*w)
		for i := range rows {
			for j := from; j < c; j++ {
				host = append(host, int32(i*c+j))
			}
		}
		s.be, s.idx, s.rows, s.c, s.from = be, be.FromI32(host, rows*w), rows, c, from
	}
	return s.idx.View(n * w)
}

// regionRows returns the joint rows of the masked regions in target order
// (example, then region), checking that every masked region exists.
func regionRows(b *data.Batch, s int) ([]int32, error) {
	if b.ImgMasks == nil || b.NMasked == 0 {
		return nil, fmt.Errorf("batch has no masked regions")
	}
	if len(b.ImgMasks) != b.B*b.Nmax {
		return nil, fmt.Errorf("img_masks has %d entries, want %d x %d", len(b.ImgMasks), b.B, b.Nmax)
	}
	rows := make([]int32, 0, b.NMasked)
	for i := range b.B {
		for r, m := range b.ImgMasks[i*b.Nmax : (i+1)*b.Nmax] {
			if !m {
				continue
			}
			if r >= b.NBB[i] {
				return nil, fmt.Errorf("example %d: region %d is masked but the example has %d regions", i, r, b.NBB[i])
			}
			rows = append(rows, int32(i*s+b.TxtLens[i]+r))
		}
	}
	if len(rows) != b.NMasked {
		return nil, fmt.Errorf("img_masks marks %d regions, the batch counts %d", len(rows), b.NMasked)
	}
	return rows, nil
}

// seqLen is the joint length S the model uses for b: the longest example.
func seqLen(b *data.Batch) int {
	s := 0
	for i, tl := range b.TxtLens {
		s = max(s, tl+b.NBB[i])
	}
	return s
}
