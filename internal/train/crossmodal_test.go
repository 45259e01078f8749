package train

import (
	"math/rand/v2"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// crossModalBatch draws n ITM examples whose label only the pairing of text
// and image determines: the image is of kind 0 or 1 (regions near one of
// two feature prototypes), the caption names a kind by one word, and the
// pair matches when the named kind is the image's.
func crossModalBatch(rng *rand.Rand, protos [2][]float32, n int) (*data.Batch, error) {
	dim := len(protos[0])
	exs := make([]*data.Example, n)
	for i := range exs {
		kind, named := rng.IntN(2), rng.IntN(2)
		nbb := 3 + rng.IntN(4)
		ex := &data.Example{ID: "x", NBB: nbb, Label: 0}
		if kind == named {
			ex.Label = 1
		}
		filler := int32(120 + rng.IntN(20))
		ex.InputIDs = []int32{101, filler, int32(110 + named), 102}
		for r := 0; r < nbb; r++ {
			for j := 0; j < dim; j++ {
				ex.ImgFeat = append(ex.ImgFeat, protos[kind][j]+0.3*float32(rng.NormFloat64()))
			}
			x, y := rng.Float32()*0.8, rng.Float32()*0.8
			ex.ImgPos = append(ex.ImgPos, x, y, x+0.2, y+0.2, 0.2, 0.2, 0.04)
		}
		exs[i] = ex
	}
	return data.Collate(exs, dim)
}

// TestCrossModalITM trains ITM through the real pipeline (Collate, the ITM
// task with WRA, AdamW under the warmup schedule, clipping, dropout) on a
// task that text or image alone cannot solve, and checks that held-out
// accuracy reaches 95%.
func TestCrossModalITM(t *testing.T) {
	be := compute.NewCPU(2)
	mc := microModel()
	mc.HiddenSize, mc.NumHiddenLayers, mc.NumAttentionHeads, mc.IntermediateSize = 64, 2, 2, 128
	m, err := model.New(be, mc, 1)
	if err != nil {
		t.Fatal(err)
	}
	p := &tasks.Pretrain{M: m, H: model.NewPretrainHeads(m), OTWeight: 0.1}
	opt := NewAdamW(be, m.Params.List(), AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: AdamEps, WeightDecay: 0.01})
	upd := NewUpdater(be, m.Params.List(), opt, 5, false, 1, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	var protos [2][]float32
	for k := range protos {
		for range mc.ImgDim {
			protos[k] = append(protos[k], max(0, float32(rng.NormFloat64())))
		}
	}
	const steps = 300
	for step := 1; step <= steps; step++ {
		b, err := crossModalBatch(rng, protos, 32)
		if err != nil {
			t.Fatal(err)
		}
		m.Params.ZeroGrad()
		m.SetTrain(true)
		w, err := windowAlone(p, data.TaskITM, []*data.Batch{b}, 1, func(int) uint64 { return uint64(step) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := upd.Apply("itm", LR(1e-3, step, 30, steps)); err != nil {
			t.Fatal(err)
		}
		if step%50 == 0 {
			t.Logf("step %d loss %.4f itm %.4f", step, w.loss, w.parts["itm_loss"])
		}
	}
	m.SetTrain(false)
	correct, count := 0, 0
	for range 4 {
		b, err := crossModalBatch(rng, protos, 64)
		if err != nil {
			t.Fatal(err)
		}
		res, err := p.Step(data.TaskITM, b, false, 1)
		if err != nil {
			t.Fatal(err)
		}
		correct += res.Correct
		count += res.Count
	}
	acc := float64(correct) / float64(count)
	t.Logf("held-out ITM accuracy %.3f", acc)
	if acc < 0.95 {
		t.Errorf("held-out ITM accuracy %.3f < 0.95: the model does not learn to relate text and regions", acc)
	}
}
