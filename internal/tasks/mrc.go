package tasks

import (
	"fmt"
	"math"

	"uniter/internal/compute"
	"uniter/internal/data"
)

// mrc is masked region classification: cross-entropy of the
// MRC head at each masked region against the detector's most likely
// non-background class argmax(soft_labels[1:])+1 (the batch's MRCLabels),
// with class 0 ignored and the mean over all masked regions. A region
// counts as correct when the argmax over the non-background logits is its
// class, as the reference's validation scores it.
func (p *Pretrain) mrc(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	rows, err := regionRows(b, seqLen(b))
	if err != nil {
		return Result{}, err
	}
	classes := p.M.Cfg.ImgLabelDim
	if len(b.MRCLabels) != len(rows) {
		return Result{}, fmt.Errorf("batch has %d MRC labels for %d masked regions", len(b.MRCLabels), len(rows))
	}
	for k, y := range b.MRCLabels {
		if y < 0 || int(y) >= classes {
			return Result{}, fmt.Errorf("MRC label %d of masked region %d out of range [0, %d)", y, k, classes)
		}
	}
	if err := p.forward(b, true); err != nil {
		return Result{}, err
	}
	be := p.M.Backend()
	logits := p.H.MRC(be.FromI32(rows, len(rows)))
	loss, correct := xent(be, logits, b.MRCLabels, 0, 1, gradScale, &p.mrcCols)
	if backward {
		p.H.MRCBackward(logits)
		p.backward()
	}
	return Result{Loss: loss, Correct: correct, Count: len(rows)}, nil
}

// mrckl is MRC-kl: kl_div(log_softmax(logits), soft_labels)
// element-wise, averaged over all [n_masked, img_label_dim] elements. A
// region counts as correct when the argmax of its logits over all classes,
// background included, is the argmax of its soft labels, as the
// reference's validate_mrc scores MRC-kl (compute_accuracy_for_soft_targets
// on the log-softmax and the soft labels). The argmax is taken of the
// logits themselves: log_softmax only subtracts a row constant, so the two
// differ only where float32 rounding of x - max - logsumexp ties two
// logits closer than an ulp of logsumexp (torch then takes the lower
// class).
func (p *Pretrain) mrckl(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	rows, err := regionRows(b, seqLen(b))
	if err != nil {
		return Result{}, err
	}
	classes := p.M.Cfg.ImgLabelDim
	if len(b.MRCSoft) != len(rows)*classes {
		return Result{}, fmt.Errorf("batch has %d soft label values, want %d masked regions x %d classes", len(b.MRCSoft), len(rows), classes)
	}
	for k, v := range b.MRCSoft {
		// A negative or NaN target would make the reference's loss NaN.
		if !(v >= 0) || math.IsInf(float64(v), 0) {
			return Result{}, fmt.Errorf("soft label %v of masked region %d, class %d is not a probability", v, k/classes, k%classes)
		}
	}
	if err := p.forward(b, true); err != nil {
		return Result{}, err
	}
	be := p.M.Backend()
	n := len(rows)
	logits := p.H.MRC(be.FromI32(rows, n))
	// The argmax reads the logits before the gradient replaces them.
	pred := argmaxFrom(be, logits, 0, nil)
	correct := 0
	for k, y := range pred {
		if y == softArgmax(b.MRCSoft[k*classes:(k+1)*classes]) {
			correct++
		}
	}
	loss := softmaxKL(be, logits, be.FromF32(b.MRCSoft, n, classes), gradScale)
	if backward {
		p.H.MRCBackward(logits)
		p.backward()
	}
	return Result{Loss: loss, Correct: correct, Count: n}, nil
}

// softArgmax is the class of a soft label row's largest value, the first
// on ties as torch.max returns (the row holds no NaN: mrckl checks it).
func softArgmax(soft []float32) int32 {
	best := 0
	for c, v := range soft {
		if v > soft[best] {
			best = c
		}
	}
	return int32(best)
}

// softmaxKL returns the mean of kl_div(log_softmax(logits), target) over
// all elements and overwrites logits with its gradient times gradScale.
func softmaxKL(be compute.Backend, logits, target *compute.Tensor, gradScale float32) float64 {
	numel := logits.Len()
	loss := be.Alloc(compute.F32, logits.Rows())
	be.SoftmaxKL(loss, logits, logits, target, gradScale/float32(numel))
	return be.Sum(loss) / float64(numel)
}
