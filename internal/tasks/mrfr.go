package tasks

import (
	"fmt"

	"uniter/internal/compute"
	"uniter/internal/data"
)

// mrfr is masked region feature regression: the MRFR head
// at each masked region regresses the region's original feature; the loss
// is the mean squared error over all [n_masked, img_dim] elements.
func (p *Pretrain) mrfr(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	d := p.M.Cfg.ImgDim
	if b.ImgDim != d {
		return Result{}, fmt.Errorf("batch has %d-d region features, the model %d", b.ImgDim, d)
	}
	rows, err := regionRows(b, seqLen(b))
	if err != nil {
		return Result{}, err
	}
	if len(b.MRFRTargets) != len(rows)*d {
		return Result{}, fmt.Errorf("MRFR targets have %d values, want %d masked regions x %d", len(b.MRFRTargets), len(rows), d)
	}
	if err := p.forward(b, true); err != nil {
		return Result{}, err
	}
	be := p.M.Backend()
	n := len(rows)
	pred := p.H.MRFR(be.FromI32(rows, n))
	loss := mse(be, pred, be.FromF32(b.MRFRTargets, n, d), gradScale)
	if backward {
		p.H.MRFRBackward(pred)
		p.backward()
	}
	return Result{Loss: loss, Count: n}, nil
}

// mse returns mean((pred-target)^2) over all elements and overwrites pred
// with the gradient of that mean times gradScale, 2*(pred-target)/numel.
func mse(be compute.Backend, pred, target *compute.Tensor, gradScale float32) float64 {
	numel := pred.Len()
	be.Axpy(-1, target, pred)
	loss := be.SumSq(pred) / float64(numel)
	be.Scale(pred, 2*gradScale/float32(numel))
	return loss
}
