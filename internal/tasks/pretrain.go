// Package tasks implements UNITER's pretraining tasks on top of the model
// and its pretraining heads: masked language modelling (MLM), masked region
// feature regression (MRFR), masked region classification (MRC and its KL
// variant MRC-kl) and image-text matching (ITM) with word-region alignment
// by optimal transport (WRA). Each task selects the joint rows its head
// reads, computes the loss exactly as the official code reduces it, and
// feeds the gradient back into the model.
//
// Heads address the compact joint layout of model.Input (reference 1.5):
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
// argmax over classes [from, C) equals their label.
func xent(be compute.Backend, logits *compute.Tensor, labels []int32, ignore int32, from int, gradScale float32) (float64, int) {
	n, c := logits.Rows(), logits.Cols()
	// The argmax needs the logits before the in-place gradient replaces
	// them; the backend has no argmax, so they come to the host.
	host := be.ToF32(logits)
	correct := 0
	for i, y := range labels {
		row := host[i*c : (i+1)*c]
		best := from
		for j := from + 1; j < c; j++ {
			if row[j] > row[best] {
				best = j
			}
		}
		if y != ignore && int32(best) == y {
			correct++
		}
	}
	loss := be.Alloc(compute.F32, n)
	be.SoftmaxXent(loss, logits, logits, be.FromI32(labels, n), ignore, gradScale/float32(n))
	return be.Sum(loss) / float64(n), correct
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
