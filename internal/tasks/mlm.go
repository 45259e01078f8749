package tasks

import (
	"fmt"

	"uniter/internal/data"
)

// mlm is masked language modelling: cross-entropy of the
// MLM head at the masked text positions (label != -1), averaged over them.
// The image is complete, so the model runs without region masks.
func (p *Pretrain) mlm(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	rows, labels, err := mlmTargets(b, seqLen(b), p.M.Cfg.VocabSize)
	if err != nil {
		return Result{}, err
	}
	if err := p.forward(b, false); err != nil {
		return Result{}, err
	}
	be := p.M.Backend()
	logits := p.H.MLM(be.FromI32(rows, len(rows)))
	loss, correct := xent(be, logits, labels, -1, 0, gradScale, nil)
	if backward {
		p.H.MLMBackward(logits)
		p.backward()
	}
	return Result{Loss: loss, Correct: correct, Count: len(rows)}, nil
}

// mlmTargets returns the joint rows and labels of the masked tokens in the
// reference's order (example, then position), which is the order of
// txt_labels[txt_labels != -1].
func mlmTargets(b *data.Batch, s, vocab int) ([]int32, []int32, error) {
	if b.MLMLabels == nil {
		return nil, nil, fmt.Errorf("batch has no MLM labels")
	}
	if len(b.MLMLabels) != b.B*b.Tmax {
		return nil, nil, fmt.Errorf("MLM labels have %d entries, want %d x %d", len(b.MLMLabels), b.B, b.Tmax)
	}
	var rows, labels []int32
	for i := range b.B {
		for j, y := range b.MLMLabels[i*b.Tmax : (i+1)*b.Tmax] {
			if y == -1 {
				continue
			}
			if y < 0 || int(y) >= vocab {
				return nil, nil, fmt.Errorf("example %d: MLM label %d at position %d out of range [0, %d)", i, y, j, vocab)
			}
			if j >= b.TxtLens[i] {
				return nil, nil, fmt.Errorf("example %d: MLM label at position %d past the text (length %d)", i, j, b.TxtLens[i])
			}
			rows = append(rows, int32(i*s+j))
			labels = append(labels, y)
		}
	}
	if len(rows) == 0 {
		return nil, nil, fmt.Errorf("batch has no masked tokens (every MLM label is -1)")
	}
	return rows, labels, nil
}
