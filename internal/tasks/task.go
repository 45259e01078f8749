package tasks

import (
	"fmt"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// Task is one training objective on a model: pretraining (several loss
// keys, one per {task}_{dataset}) or a downstream task (one key, its name).
// The trainer runs any Task the same way: per optimizer update it draws a
// key, accumulates the gradients of that key's micro-batches weighted by
// their loss units, and steps.
type Task interface {
	// Model is the backbone the task's heads sit on.
	Model() *model.Model
	// Step runs the forward and loss of key on b and, with backward, the
	// backward of loss*gradScale, accumulating (+=) into the parameters'
	// gradients. The caller zeroes gradients per optimizer window and sets
	// train/eval mode and the dropout step seed on the model. A batch that
	// lacks the targets of the task, or whose targets are out of range, is
	// an error and runs nothing.
	Step(key string, b *data.Batch, backward bool, gradScale float32) (Result, error)
	// LossUnits is the number of terms key's loss averages over in b, so
	// that an accumulation window weights its micro-batches as one batch.
	LossUnits(key string, b *data.Batch) int
}

// Dataset is what a task's batches are read from: a txt_db with its
// img_db, or several concatenated.
type Dataset interface {
	// Lens are the sampler lengths of a key's epoch.
	Lens(key string, epoch int) ([]int, error)
	// Build decodes and collates one batch of a key.
	Build(key string) data.BuildFunc[*data.Batch]
}

// Downstream is a fine-tuning task: a Task with its own head, metrics and
// prediction files (VQA, VE, NLVR2).
type Downstream interface {
	Task
	// Name is the task's CLI name (vqa, ve, nlvr2).
	Name() string
	// Classes is the width of a logits row.
	Classes() int
	// Open reads a txt_db/img_db pair as this task's dataset.
	Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error)
	// Metrics reduces an evaluation to the task's metrics (the names its metrics.json uses).
	Metrics(e *Eval) map[string]float64
	// Results renders the predictions of an evaluation in the task's
	// official output format: the inference scripts' for uniter eval, the
	// training scripts' (training true) for the results/ of a run. ext is
	// the file's extension (".json", ".csv").
	Results(e *Eval, training bool) (ext string, content []byte, err error)
	// Load copies a checkpoint into the model with the task's own model
	// surgery (NLVR2's third type row); sd nil means a fresh
	// initialisation, which still gets the surgery. partial accepts a
	// checkpoint without every backbone parameter (an init checkpoint).
	Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error)
}

// Result is what one task step measured on one batch.
type Result struct {
	// Loss is the task loss as the reference's training reduces it (ITM:
	// itm_ce + OTWeight*ot_loss; VQA: BCE mean times the answers).
	Loss float64
	// Parts holds named components of the loss: "itm_loss", "ot_loss" and,
	// when the batch has such examples, "ot_pos" and "ot_neg" (mean
	// distance of matched and mismatched pairs, as the reference logs
	// them). Nil for single-component tasks.
	Parts map[string]float64
	// Correct counts correct predictions (MLM tokens, MRC regions, ITM and
	// NLVR2/VE examples, MRC-kl regions); 0 for MRFR.
	Correct int
	// Count is the number of predictions the loss and Correct cover:
	// masked tokens, masked regions or labelled examples.
	Count int
	// Examples is the number of examples (NLVR2 paired: half the rows).
	Examples int
	// Tokens is the number of real (non-pad) joint positions: text plus
	// regions.
	Tokens int

	// Downstream tasks only.
	// LossSum is the validation loss summed over the labelled examples
	// (the reference's validate() reductions).
	LossSum float64
	// Score is the summed task score: VQA's soft score of the predicted
	// answer, otherwise Correct.
	Score float64
	// Pred is each example's predicted class (argmax of its logits).
	Pred []int32
	// Logits [Examples, Classes] are the raw scores on the device, valid
	// until the next Step.
	Logits *compute.Tensor
	// Boxes (RE) holds each example's predicted then target box, x y w h
	// in pixels (REBoxes values an example); nil for other tasks.
	Boxes []float64
}

// checkBatch rejects an empty or inconsistent batch before any work.
func checkBatch(b *data.Batch) error {
	if b == nil || b.B == 0 {
		return fmt.Errorf("empty batch")
	}
	if len(b.TxtLens) != b.B || len(b.NBB) != b.B {
		return fmt.Errorf("batch of %d has %d text lengths and %d region counts", b.B, len(b.TxtLens), len(b.NBB))
	}
	return nil
}

// backbone is the part every task shares: the model, its forward on a
// batch and its backward from what the heads accumulated.
type backbone struct {
	m *model.Model
	// fp16 emulates fp16 gradients: the gradient entering the backbone is
	// rounded to fp16, so a too-large loss scale overflows to inf as on a
	// GPU.
	fp16 bool
}

func (k *backbone) Model() *model.Model { return k.m }

// forward runs the backbone on b, with region masks only when asked (the
// reference passes img_masks for the region-modelling tasks alone).
func (k *backbone) forward(b *data.Batch, masks bool) error {
	in := ModelInput(b)
	if !masks {
		in.ImgMasks = nil
	}
	if in.InputIDs == nil || in.ImgFeat == nil {
		return fmt.Errorf("every batch needs text and regions (Tmax %d, Nmax %d)", b.Tmax, b.Nmax)
	}
	return k.m.Forward(in)
}

// backward propagates GradSeq and GradPooled through the backbone.
func (k *backbone) backward() {
	if k.fp16 {
		be := k.m.Backend()
		be.RoundFP16(k.m.GradSeq())
		be.RoundFP16(k.m.GradPooled())
	}
	k.m.Backward(false)
}

// argmax returns each row's predicted class, computed on the device (into
// buf, or a new tensor when buf is nil); only the indices travel to the
// host.
func argmax(be compute.Backend, buf *model.Buf, logits *compute.Tensor) []int32 {
	var idx *compute.Tensor
	if buf != nil {
		idx = buf.Get(be, compute.I32, logits.Rows())
	} else {
		idx = be.Alloc(compute.I32, logits.Rows())
	}
	be.Argmax(idx, logits)
	return be.ToI32(idx)
}

// loadWeights loads sd (nil: keep the initialisation) into m.
func loadWeights(m *model.Model, sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	if sd == nil {
		return model.LoadReport{}, nil
	}
	if partial {
		return m.LoadInitStateDict(sd, source)
	}
	return m.LoadStateDict(sd, source)
}
