package tasks

import (
	"fmt"

	"uniter/internal/compute"
	"uniter/internal/data"
)

// itm is image-text matching: 2-way softmax cross-entropy
// of the ITM head on the pooled output against the batch's labels (1
// match, 0 not), averaged over examples, plus OTWeight times the WRA loss.
func (p *Pretrain) itm(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if len(b.Labels) != b.B {
		return Result{}, fmt.Errorf("batch of %d has %d ITM labels", b.B, len(b.Labels))
	}
	for i, y := range b.Labels {
		if y != 0 && y != 1 {
			return Result{}, fmt.Errorf("example %d: ITM label %d, want 0 or 1", i, y)
		}
	}
	if err := p.forward(b, false); err != nil {
		return Result{}, err
	}
	be := p.M.Backend()
	logits := p.H.ITM()
	loss, correct := xent(be, logits, b.Labels, -1, 0, gradScale, nil)
	if backward {
		p.H.ITMBackward(logits)
	}
	res := Result{Loss: loss, Correct: correct, Count: b.B, Parts: map[string]float64{"itm_loss": loss}}
	if p.OTWeight != 0 {
		p.wra(b, backward, gradScale, res.Parts)
		res.Loss += p.OTWeight * res.Parts["ot_loss"]
	}
	if backward {
		p.backward()
	}
	return res, nil
}

// wra adds the word-region alignment loss of an ITM batch to parts:
// ot_loss = (sum of matched distances - sum of mismatched distances) / B,
// and the mean distances ot_pos and ot_neg where such examples exist. With
// backward it scatters the gradient of OTWeight*ot_loss*gradScale into
// GradSeq. The rows of each example are its first tl+nbb joint positions
// (text including [CLS] and [SEP], then regions); they travel to the host
// for the transport plans and back as a gradient.
func (p *Pretrain) wra(b *data.Batch, backward bool, gradScale float32, parts map[string]float64) {
	be, h, s := p.M.Backend(), p.M.Cfg.HiddenSize, p.M.SeqLen()
	var rows []int32
	for i, tl := range b.TxtLens {
		for k := range tl + b.NBB[i] {
			rows = append(rows, int32(i*s+k))
		}
	}
	idx := be.FromI32(rows, len(rows))
	x := be.Alloc(compute.F32, len(rows), h)
	be.Gather(x, p.M.Seq(), idx)

	sign := func(y int32) float64 { return float64(2*y - 1) }
	var coef []float64
	var grad []float32
	if backward {
		coef = make([]float64, b.B)
		for i, y := range b.Labels {
			coef[i] = sign(y) * p.OTWeight * float64(gradScale) / float64(b.B)
		}
		grad = make([]float32, len(rows)*h)
	}
	dist := wraDist(be.ToF32(x), h, b.TxtLens, b.NBB, coef, grad)

	var sum, pos, neg float64
	var nPos, nNeg int
	for i, d := range dist {
		sum += sign(b.Labels[i]) * d
		if b.Labels[i] == 1 {
			pos += d
			nPos++
		} else {
			neg += d
			nNeg++
		}
	}
	parts["ot_loss"] = sum / float64(b.B)
	if nPos > 0 {
		parts["ot_pos"] = pos / float64(nPos)
	}
	if nNeg > 0 {
		parts["ot_neg"] = neg / float64(nNeg)
	}
	if backward {
		be.ScatterAdd(p.M.GradSeq(), be.FromF32(grad, len(rows), h), idx)
	}
}
