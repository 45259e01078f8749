package tasks

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// fdConfig is a model small enough for finite differences of whole steps,
// with the detector's 1601 region classes so that batches come from the
// data package unchanged. The larger init spreads the hidden states so
// that every loss has a gradient well above float32 noise.
func fdConfig() model.Config {
	return model.Config{VocabSize: 40, HiddenSize: 16, NumHiddenLayers: 2, NumAttentionHeads: 2,
		IntermediateSize: 24, HiddenAct: "gelu", HiddenDropoutProb: 0.1, AttentionProbsDropoutProb: 0.1,
		MaxPositionEmbeddings: 16, TypeVocabSize: 2, InitializerRange: 0.2, ImgDim: 12, ImgLabelDim: data.LabelDim}
}

func newFDPretrain(t *testing.T) *Pretrain {
	t.Helper()
	m, err := model.New(compute.NewCPU(0), fdConfig(), 42)
	if err != nil {
		t.Fatal(err)
	}
	return &Pretrain{M: m, H: model.NewPretrainHeads(m), OTWeight: 0.1}
}

// Token ids of the test vocabulary.
const (
	fdCLS, fdSEP, fdMASK = 1, 2, 3
	fdFirstWord          = 5
)

// fdBatch builds a task's batch the way data.PretrainSet does: BERT word
// masking for MLM, region masking with targets for MRFR/MRC/MRC-kl, and
// ITM labels, then data.Collate. Texts and region counts differ so that
// every example has padding.
func fdBatch(t *testing.T, task string, cfg model.Config) *data.Batch {
	t.Helper()
	rng := data.NewRand(7, uint64(len(task)), uint64(task[len(task)-1]))
	words, nbbs := []int{5, 2, 4}, []int{3, 5, 2}
	var exs []*data.Example
	for i, nw := range words {
		ids := make([]int32, nw)
		for k := range ids {
			ids[k] = int32(fdFirstWord + rng.IntN(cfg.VocabSize-fdFirstWord))
		}
		nbb := nbbs[i]
		ex := &data.Example{ID: fmt.Sprint(i), NBB: nbb, Label: int32(1 - i%2),
			ImgFeat: make([]float32, nbb*cfg.ImgDim), ImgPos: make([]float32, nbb*data.PosDim)}
		for k := range ex.ImgFeat {
			ex.ImgFeat[k] = float32(rng.NormFloat64())
		}
		for k := range ex.ImgPos {
			ex.ImgPos[k] = float32(rng.Float64())
		}
		switch task {
		case data.TaskMLM:
			masked, labels, err := data.MaskWords(rng, ids, fdMASK, [2]int32{fdFirstWord, int32(cfg.VocabSize)})
			if err != nil {
				t.Fatal(err)
			}
			ex.InputIDs, ex.MLMLabels = data.MLMInput(masked, labels, fdCLS, fdSEP)
		case data.TaskMRFR, data.TaskMRC, data.TaskMRCKL:
			ex.InputIDs = data.WithSpecials(ids, fdCLS, fdSEP)
			var soft []float32
			if task != data.TaskMRFR {
				soft = make([]float32, nbb*data.LabelDim)
				for r := range nbb {
					row := soft[r*data.LabelDim : (r+1)*data.LabelDim]
					for range 5 {
						row[rng.IntN(data.LabelDim)] += float32(rng.Float64()) / 5
					}
				}
			}
			if err := data.ApplyRegionMask(ex, data.MaskRegions(rng, nbb, 0.4), soft, cfg.ImgDim); err != nil {
				t.Fatal(err)
			}
		default:
			ex.InputIDs = data.WithSpecials(ids, fdCLS, fdSEP)
		}
		exs = append(exs, ex)
	}
	b, err := data.Collate(exs, cfg.ImgDim)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fdParams are checked for every task: deep in the backbone, the
// embeddings (each tied to a head), and the task's own head.
var fdParams = map[string][]string{
	data.TaskMLM:   {"cls.predictions.transform.dense.weight", "cls.predictions.bias"},
	data.TaskMRFR:  {"feat_regress.net.0.weight", "feat_regress.bias"},
	data.TaskMRC:   {"region_classifier.net.0.weight", "region_classifier.net.3.weight"},
	data.TaskMRCKL: {"region_classifier.net.0.weight", "region_classifier.net.3.weight"},
	data.TaskITM:   {"itm_output.weight", "uniter.pooler.dense.weight"},
}

var fdShared = []string{
	"uniter.encoder.layer.0.attention.self.query.weight",
	"uniter.encoder.layer.1.output.dense.weight",
	"uniter.embeddings.word_embeddings.weight",
	"uniter.img_embeddings.img_linear.weight",
}

// TestStepFiniteDifferences checks, for every task, the gradients a
// training step accumulates against central differences of the loss the
// step reports, at the largest-gradient coordinates of several parameters
// (dropout off). With WRA the reference differentiates the distance with
// the transport plan held constant, while the step's loss moves the plan
// too; 50 IPOT iterations leave the plan close enough to optimal that the
// difference stays under 1%, so that case has the looser tolerance.
func TestStepFiniteDifferences(t *testing.T) {
	cases := []struct {
		name, task string
		otWeight   float64
		tol        float64
	}{
		{data.TaskMLM, data.TaskMLM, 0, 1e-3},
		{data.TaskMRFR, data.TaskMRFR, 0, 1e-3},
		{data.TaskMRC, data.TaskMRC, 0, 1e-3},
		{data.TaskMRCKL, data.TaskMRCKL, 0, 1e-3},
		{"itm without wra", data.TaskITM, 0, 1e-3},
		{"itm with wra", data.TaskITM, 0.1, 1e-2},
	}
	for _, c := range cases {
		task := c.task
		t.Run(c.name, func(t *testing.T) {
			p := newFDPretrain(t)
			p.OTWeight = c.otWeight
			p.M.SetTrain(false)
			be := p.M.Backend()
			b := fdBatch(t, task, p.M.Cfg)
			p.M.Params.ZeroGrad()
			res, err := p.Step(task, b, true, 1)
			if err != nil {
				t.Fatal(err)
			}
			if math.IsNaN(res.Loss) || math.IsInf(res.Loss, 0) || res.Count == 0 {
				t.Fatalf("loss %v over %d predictions", res.Loss, res.Count)
			}
			loss := func() float64 {
				r, err := p.Step(task, b, false, 1)
				if err != nil {
					t.Fatal(err)
				}
				return r.Loss
			}
			for _, name := range append(slices.Clone(fdShared), fdParams[task]...) {
				prm := p.M.Params.Get(name)
				g, w := be.ToF32(prm.G), be.ToF32(prm.W)
				order := make([]int, len(g))
				for i := range order {
					order[i] = i
				}
				slices.SortFunc(order, func(a, b int) int { return cmpAbs(g[b], g[a]) })
				if g[order[0]] == 0 {
					t.Errorf("%s: zero gradient", name)
					continue
				}
				for _, i := range order[:3] {
					const eps = 1e-2
					w0 := w[i]
					w[i] = w0 + eps
					be.Copy(prm.W, be.FromF32(w, prm.Shape...))
					lp := loss()
					w[i] = w0 - eps
					be.Copy(prm.W, be.FromF32(w, prm.Shape...))
					lm := loss()
					w[i] = w0
					be.Copy(prm.W, be.FromF32(w, prm.Shape...))
					num := (lp - lm) / (2 * eps)
					e := math.Abs(num-float64(g[i])) / math.Abs(float64(g[i]))
					if e > c.tol {
						t.Errorf("%s[%d]: analytic %.6g, numeric %.6g (relative error %.3g)", name, i, g[i], num, e)
					} else {
						t.Logf("%s[%d]: analytic %.6g, numeric %.6g (relative error %.3g)", name, i, g[i], num, e)
					}
				}
			}
		})
	}
}

func cmpAbs(a, b float32) int {
	x, y := math.Abs(float64(a)), math.Abs(float64(b))
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}
