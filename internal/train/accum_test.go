package train

import (
	"context"
	"math"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// TestAccumulationEqualsBigBatch: a window of k micro-batches accumulates
// the same gradient and loss as one batch of the same examples (fp32,
// dropout off), for every task, with micro-batches of unequal sizes.
func TestAccumulationEqualsBigBatch(t *testing.T) {
	be := compute.NewCPU(2)
	mc := microModel()
	mc.HiddenDropoutProb, mc.AttentionProbsDropoutProb = 0, 0
	m, err := model.New(be, mc, 5)
	if err != nil {
		t.Fatal(err)
	}
	p := &tasks.Pretrain{M: m, H: model.NewPretrainHeads(m), OTWeight: 0.1}
	dbs := NewDBs(db.DefaultImgDBOptions())
	defer dbs.Close()
	ds, err := OpenDataset(dbs, []string{world(t, "txt/pretrain_train.db")}, []string{world(t, "img/synth_train")},
		data.PretrainOptions{MaxTxtLen: 60, Seed: 9, ImgDim: mc.ImgDim, MaskProb: data.MaskProb, ITMNegProb: data.ITMNegProb}, mc.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	all := []int{3, 17, 29, 41, 5, 66, 90, 12, 150, 7, 33, 101, 2, 88, 140, 61}
	splits := [][]int{all[:3], all[3:8], all[8:10], all[10:]}
	seed := func(int) uint64 { return 1 }
	m.SetTrain(true)
	for _, task := range TaskNames {
		t.Run(task, func(t *testing.T) {
			build := ds.Build(task)
			batch := func(idx []int) *data.Batch {
				b, err := build(context.Background(), data.Job{Indices: idx})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			m.Params.ZeroGrad()
			one, err := windowAlone(p, task, []*data.Batch{batch(all)}, 1, seed)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]float32{}
			for _, q := range m.Params.List() {
				want[q.Name] = be.ToF32(q.G)
			}
			m.Params.ZeroGrad()
			var micro []*data.Batch
			for _, s := range splits {
				micro = append(micro, batch(s))
			}
			acc, err := windowAlone(p, task, micro, 1, seed)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(acc.loss-one.loss) > 1e-6*math.Abs(one.loss) {
				t.Errorf("window loss %v, one batch %v", acc.loss, one.loss)
			}
			if acc.examples != one.examples || acc.tokens != one.tokens {
				t.Errorf("window has %d examples %d tokens, one batch %d %d", acc.examples, acc.tokens, one.examples, one.tokens)
			}
			// Gradients compared as one vector: relative L2 error, and no
			// element off by more than tol of the largest element (some
			// gradients, such as attention key biases, are zero up to
			// rounding and have no scale of their own).
			var diff2, norm2, maxAbs, maxDiff float64
			for _, q := range m.Params.List() {
				got := be.ToF32(q.G)
				for i, w := range want[q.Name] {
					d := float64(got[i]) - float64(w)
					diff2 += d * d
					norm2 += float64(w) * float64(w)
					maxAbs = max(maxAbs, math.Abs(float64(w)))
					maxDiff = max(maxDiff, math.Abs(d))
				}
			}
			if norm2 == 0 {
				t.Fatalf("%s: no gradient at all", task)
			}
			t.Logf("%s: relative L2 error %.2g, max element error %.2g of max %.2g", task, math.Sqrt(diff2/norm2), maxDiff, maxAbs)
			if math.Sqrt(diff2/norm2) > 1e-5 || maxDiff > 1e-5*maxAbs {
				t.Errorf("%s: accumulated gradient differs from the one-batch gradient: relative L2 %.3g, max element %.3g of %.3g",
					task, math.Sqrt(diff2/norm2), maxDiff, maxAbs)
			}
		})
	}
}

// windowAlone runs batches as a whole window of one replica.
func windowAlone(p tasks.Task, task string, batches []*data.Batch, scale float64, seed func(int) uint64) (window, error) {
	var units []int
	total := 0
	for _, b := range batches {
		units = append(units, p.LossUnits(task, b))
		total += units[len(units)-1]
	}
	defer func() {
		for _, b := range batches {
			b.Release()
		}
	}()
	return runWindow(p, task, batches, units, total, scale, seed, nil)
}
