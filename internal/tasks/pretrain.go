// Package tasks implements UNITER's pretraining tasks on top of the model
// and its pretraining heads: masked language modelling (MLM), masked region
// feature regression (MRFR), masked region classification (MRC and its KL
// variant MRC-kl) and image-text matching (ITM) with word-region alignment
// by optimal transport (WRA). Each task selects the joint rows its head
// reads, computes the loss exactly as the official code reduces it, and
// feeds the gradient back into the model.
package tasks

import (
	"fmt"

	"uniter/internal/data"
	"uniter/internal/model"
)

// ModelInput converts a collated batch to the model's input. Region masks
// are passed through when the batch has them.
func ModelInput(b *data.Batch) *model.Input {
	in := &model.Input{
		B: b.B, T: b.Tmax, N: b.Nmax,
		InputIDs: b.InputIDs, TxtTypeIDs: b.TxtTypeIDs, TxtLens: b.TxtLens,
		ImgFeat: b.ImgFeat, ImgPos: b.ImgPos, ImgTypeIDs: b.ImgTypeIDs, NBB: b.NBB,
		GatherIndex: b.GatherIndex,
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

// Result is what one task step measured on one batch.
type Result struct {
	// Loss is the task loss as the reference reduces it (ITM: itm_ce +
	// OTWeight*ot_loss).
	Loss float64
	// Parts holds named components of the loss, e.g. "itm_loss", "ot_loss".
	Parts map[string]float64
	// Correct counts correct predictions (MLM tokens, MRC regions, ITM
	// examples); 0 for MRFR and MRC-kl.
	Correct int
	// Count is the number of predictions: masked tokens, masked regions or
	// examples.
	Count int
	// Examples is the batch size.
	Examples int
	// Tokens is the number of real (non-pad) joint positions: text plus
	// regions.
	Tokens int
}

// Pretrain runs the pretraining tasks on a model with pretraining heads.
type Pretrain struct {
	M *model.Model
	H *model.PretrainHeads
	// OTWeight is the WRA weight lambda (0.1 in every official config).
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
// the dropout step seed on the model.
func (p *Pretrain) Step(task string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	return Result{}, fmt.Errorf("task %q: not implemented yet", task)
}
