package tasks

import (
	"encoding/json"
	"fmt"

	"uniter/internal/data"
)

// Eval accumulates one evaluation pass of a downstream task over a split:
// the predictions in example order and the sums the task's metrics reduce.
// uniter eval and the trainer's validation both fill it batch by batch.
type Eval struct {
	// IDs are the txt_db example ids in evaluation order.
	IDs []string
	// Pred are the predicted classes, one per example.
	Pred []int32
	// Labels are the examples' class labels (VQA/VE: -1), nil for a split
	// without labels.
	Labels []int32
	// LossSum and Score are the summed validation loss and task score over
	// the N labelled examples.
	LossSum, Score float64
	N              int
	// Logits [len(IDs), Classes] are kept when KeepLogits is set
	// (--save-logits).
	KeepLogits bool
	Logits     []float32
	// Boxes (RE) are the examples' predicted and target boxes, REBoxes
	// values each (Result.Boxes).
	Boxes     []float64
	unlabeled int
}

// Add records one batch's step result. Mixing batches with and without
// labels in one split is an error (a split is either labelled or not).
func (e *Eval) Add(task Downstream, b *data.Batch, r Result) error {
	e.IDs = append(e.IDs, b.IDs...)
	e.Pred = append(e.Pred, r.Pred...)
	e.Boxes = append(e.Boxes, r.Boxes...)
	labelled := r.Count > 0
	if labelled {
		if e.unlabeled > 0 {
			return fmt.Errorf("%s evaluation: split mixes examples with and without targets", task.Name())
		}
		e.LossSum += r.LossSum
		e.Score += r.Score
		e.N += r.Count
		if b.Labels != nil {
			e.Labels = append(e.Labels, b.Labels...)
		} else {
			for range r.Examples {
				e.Labels = append(e.Labels, -1)
			}
		}
	} else {
		if e.N > 0 {
			return fmt.Errorf("%s evaluation: split mixes examples with and without targets", task.Name())
		}
		e.unlabeled += r.Examples
	}
	if e.KeepLogits || keepsLogits(task) {
		e.Logits = append(e.Logits, task.Model().Backend().ToF32(r.Logits)...)
	}
	return nil
}

// Labelled reports whether the split had targets (metrics exist).
func (e *Eval) Labelled() bool { return e.N > 0 }

// meanMetrics are the metrics every downstream task reports: loss (the
// validation reduction per example) and acc (score per example). An
// unlabelled split has none.
func meanMetrics(e *Eval) map[string]float64 {
	m := map[string]float64{"n": float64(len(e.IDs))}
	if e.N > 0 {
		m["loss"] = e.LossSum / float64(e.N)
		m["acc"] = e.Score / float64(e.N)
	}
	return m
}

// Append adds o's examples after e's: the shards of a split evaluated by
// several replicas, in shard order, make the whole split's Eval.
func (e *Eval) Append(o *Eval) error {
	if (e.N > 0 || o.N > 0) && (e.unlabeled > 0 || o.unlabeled > 0) {
		return fmt.Errorf("evaluation: split mixes examples with and without targets")
	}
	e.IDs = append(e.IDs, o.IDs...)
	e.Pred = append(e.Pred, o.Pred...)
	e.Labels = append(e.Labels, o.Labels...)
	e.Logits = append(e.Logits, o.Logits...)
	e.Boxes = append(e.Boxes, o.Boxes...)
	e.LossSum += o.LossSum
	e.Score += o.Score
	e.N += o.N
	e.unlabeled += o.unlabeled
	return nil
}

// evalWire is an Eval as it travels between processes.
type evalWire struct {
	IDs            []string
	Pred, Labels   []int32
	LossSum, Score float64
	N, Unlabeled   int
	KeepLogits     bool
	Logits         []float32
	Boxes          []float64 `json:",omitempty"`
}

// MarshalJSON encodes every field, the count of unlabelled examples too.
func (e *Eval) MarshalJSON() ([]byte, error) {
	return json.Marshal(evalWire{IDs: e.IDs, Pred: e.Pred, Labels: e.Labels, LossSum: e.LossSum, Score: e.Score,
		N: e.N, Unlabeled: e.unlabeled, KeepLogits: e.KeepLogits, Logits: e.Logits, Boxes: e.Boxes})
}

// UnmarshalJSON decodes what MarshalJSON wrote.
func (e *Eval) UnmarshalJSON(b []byte) error {
	var w evalWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*e = Eval{IDs: w.IDs, Pred: w.Pred, Labels: w.Labels, LossSum: w.LossSum, Score: w.Score, N: w.N,
		unlabeled: w.Unlabeled, KeepLogits: w.KeepLogits, Logits: w.Logits, Boxes: w.Boxes}
	return nil
}
