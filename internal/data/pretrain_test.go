package data

import (
	"context"
	"errors"
	"io"
	"math"
	"reflect"
	"slices"
	"testing"

	"uniter/internal/db"
)

func testPretrainSet(t *testing.T, opts PretrainOptions) *PretrainSet {
	t.Helper()
	dir, _ := testWorld(t)
	set, err := NewPretrainSet(openTxt(t, dir, "txt/pretrain_train.db"), openImg(t, dir, "img/synth_train"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestPretrainExamples(t *testing.T) {
	set := testPretrainSet(t, PretrainOptions{Seed: 3, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
	if set.ImgDim() != 32 || set.Len() != 16*5 {
		t.Fatalf("ImgDim %d Len %d", set.ImgDim(), set.Len())
	}
	lens, err := set.Lens(TaskMLM, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range set.Len() {
		words, _ := set.txt.Len(set.ids[i])
		nbb, _ := set.img.NBB(set.imgOf[i])
		if lens[i] != words+nbb {
			t.Fatalf("len %d: %d, want %d+%d", i, lens[i], words, nbb)
		}

		original, _ := set.txt.Get(set.ids[i])
		ids, _ := original.InputIDs()
		mlm, err := set.Example(TaskMLM, 0, i)
		if err != nil {
			t.Fatal(err)
		}
		n := len(mlm.InputIDs)
		if n != len(ids)+2 || mlm.InputIDs[0] != 101 || mlm.InputIDs[n-1] != 102 || mlm.MLMLabels[0] != -1 || mlm.MLMLabels[n-1] != -1 {
			t.Fatalf("mlm %d: %v labels %v", i, mlm.InputIDs, mlm.MLMLabels)
		}
		masked := 0
		for k, l := range mlm.MLMLabels[1 : n-1] {
			if l != -1 {
				masked++
				if l != ids[k] {
					t.Fatalf("mlm %d: label %d for word %d", i, l, ids[k])
				}
			} else if mlm.InputIDs[k+1] != ids[k] {
				t.Fatalf("mlm %d: unselected word changed", i)
			}
		}
		if masked == 0 {
			t.Fatalf("mlm %d: nothing masked", i)
		}

		for _, task := range []string{TaskMRFR, TaskMRC, TaskMRCKL} {
			ex, err := set.Example(task, 0, i)
			if err != nil {
				t.Fatal(err)
			}
			k := 0
			for r, m := range ex.ImgMask {
				if !m {
					continue
				}
				if slices.ContainsFunc(ex.ImgFeat[r*32:(r+1)*32], func(v float32) bool { return v != 0 }) {
					t.Fatalf("%s %d: masked region %d not zeroed", task, i, r)
				}
				k++
			}
			if k == 0 || len(ex.FeatTargets) != k*32 {
				t.Fatalf("%s %d: %d masked, %d target values", task, i, k, len(ex.FeatTargets))
			}
			if task == TaskMRFR && len(ex.MRCLabels) != 0 {
				t.Fatalf("mrfr carries class targets")
			}
			if task != TaskMRFR {
				for _, c := range ex.MRCLabels {
					if c < 1 || int(c) > len(synthClasses) {
						t.Fatalf("%s %d: class %d", task, i, c)
					}
				}
				if len(ex.MRCLabels) != k || len(ex.MRCSoft) != k*LabelDim {
					t.Fatalf("%s %d: %d labels, %d soft values for %d masked", task, i, len(ex.MRCLabels), len(ex.MRCSoft), k)
				}
			}
		}
	}
	if _, err := set.Example("vqa", 0, 0); err == nil {
		t.Error("unknown task: no error")
	}
	if _, err := set.Example(TaskMLM, 0, set.Len()); err == nil {
		t.Error("index out of range: no error")
	}
	a, _ := set.Example(TaskMLM, 0, 7)
	b, _ := set.Example(TaskMLM, 1, 7)
	c, _ := set.Example(TaskMLM, 0, 7)
	if !reflect.DeepEqual(a, c) {
		t.Error("the same epoch and index gave different masks")
	}
	if reflect.DeepEqual(a, b) && reflect.DeepEqual(a.MLMLabels, b.MLMLabels) {
		t.Log("epochs 0 and 1 masked example 7 alike (possible, unlikely)")
	}
}

func TestPretrainITM(t *testing.T) {
	set := testPretrainSet(t, PretrainOptions{Seed: 3, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
	neg := 0
	lens, _ := set.Lens(TaskITM, 2)
	for i := range set.Len() {
		ex, err := set.Example(TaskITM, 2, i)
		if err != nil {
			t.Fatal(err)
		}
		e, _ := set.itmEpoch(2)
		if ex.Label == 0 {
			neg++
			if e.imgs[i] == set.imgOf[i] {
				t.Fatalf("negative %d kept its image", i)
			}
		}
		words, _ := set.txt.Len(set.ids[i])
		if lens[i] != words+ex.NBB {
			t.Fatalf("itm len %d: %d, want %d+%d", i, lens[i], words, ex.NBB)
		}
	}
	if neg == 0 || neg == set.Len() {
		t.Errorf("%d negatives of %d", neg, set.Len())
	}
}

func TestPretrainShards(t *testing.T) {
	var all []string
	for rank := range 3 {
		set := testPretrainSet(t, PretrainOptions{Seed: 3, Rank: rank, World: 3, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
		all = append(all, set.IDs()...)
	}
	full := testPretrainSet(t, PretrainOptions{Seed: 3, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
	slices.Sort(all)
	if !reflect.DeepEqual(all, full.IDs()) {
		t.Errorf("shards cover %d ids, the set has %d", len(all), full.Len())
	}
	dir, _ := testWorld(t)
	if _, err := NewPretrainSet(openTxt(t, dir, "txt/pretrain_train.db"), openImg(t, dir, "img/synth_train"), PretrainOptions{Rank: 3, World: 3}); err == nil {
		t.Error("rank 3 of 3: no error")
	}
}

// TestPretrainLoaderDeterministic builds two epochs of every task with one
// and with four workers and requires identical batches.
func TestPretrainLoaderDeterministic(t *testing.T) {
	set := testPretrainSet(t, PretrainOptions{Seed: 3, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
	run := func(task string, workers int) []*Batch {
		stream := NewBatchStream(NewTokenBucketSampler(400, 9, false), set.LensFunc(task), 2)
		l := NewLoader(context.Background(), stream, set.Build(task), workers, 3)
		defer l.Close()
		var out []*Batch
		for {
			b, _, err := l.Next()
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	for _, task := range []string{TaskMLM, TaskMRFR, TaskMRC, TaskMRCKL, TaskITM} {
		a, b := run(task, 1), run(task, 4)
		if len(a) == 0 || !reflect.DeepEqual(a, b) {
			t.Errorf("%s: %d batches with 1 worker, %d with 4, or contents differ", task, len(a), len(b))
		}
		n := 0
		for _, bt := range a {
			n += bt.B
		}
		if n != 2*set.Len() {
			t.Errorf("%s: %d examples in two epochs of %d", task, n, set.Len())
		}
	}
}

func TestAppendRegions(t *testing.T) {
	a := &db.Image{NBB: 2, Dim: 2, Features: []float32{1, 2, 3, 4}, NormBB: []float32{0, 0, .5, .5, .5, .5, 0, 0, 1, 1, 1, 1}}
	b := &db.Image{NBB: 1, Dim: 2, Features: []float32{5, 6}, NormBB: []float32{0, 0, .25, 1, .25, 1}}
	ex := &Example{ID: "x", InputIDs: []int32{101, 102}}
	AppendRegions(ex, a, 1)
	if ex.ImgTypeIDs != nil || ex.NBB != 2 {
		t.Fatalf("type-1 regions: types %v nbb %d", ex.ImgTypeIDs, ex.NBB)
	}
	AppendRegions(ex, b, 2)
	if ex.NBB != 3 || !reflect.DeepEqual(ex.ImgTypeIDs, []int32{1, 1, 2}) || !reflect.DeepEqual(ex.ImgFeat, []float32{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("after the second image: nbb %d types %v feat %v", ex.NBB, ex.ImgTypeIDs, ex.ImgFeat)
	}
	if len(ex.ImgPos) != 21 || ex.ImgPos[20] != 0.25 || ex.ImgPos[6] != 0.25 {
		t.Fatalf("positions %v", ex.ImgPos)
	}
	if _, err := Collate([]*Example{ex}, 2); err != nil {
		t.Fatal(err)
	}
}

// TestPretrainProbabilitiesAsGiven: zero is a probability like any other
// (itm_neg_prob 0: no negatives; mrm_prob 0: only the forced region), one
// masks every region or pairs every text with another image, and values
// outside [0, 1] are refused.
func TestPretrainProbabilitiesAsGiven(t *testing.T) {
	for _, c := range []struct {
		mask, neg    float64
		masked, negs func(nbb, n int) bool
	}{
		{0, 0, func(nbb, n int) bool { return n == 1 }, func(_, n int) bool { return n == 0 }},
		{1, 1, func(nbb, n int) bool { return n == nbb }, func(all, n int) bool { return n == all }},
	} {
		set := testPretrainSet(t, PretrainOptions{Seed: 3, MaskProb: c.mask, ITMNegProb: c.neg})
		for epoch := range 2 {
			neg := 0
			for i := range set.Len() {
				ex, err := set.Example(TaskITM, epoch, i)
				if err != nil {
					t.Fatal(err)
				}
				neg += int(1 - ex.Label)
				for _, task := range []string{TaskMRFR, TaskMRC} {
					ex, err := set.Example(task, epoch, i)
					if err != nil {
						t.Fatal(err)
					}
					n := 0
					for _, m := range ex.ImgMask {
						if m {
							n++
						}
					}
					if !c.masked(ex.NBB, n) {
						t.Errorf("mask prob %v: %s example %d masks %d of %d regions", c.mask, task, i, n, ex.NBB)
					}
				}
			}
			if !c.negs(set.Len(), neg) {
				t.Errorf("itm_neg_prob %v: epoch %d has %d negatives of %d", c.neg, epoch, neg, set.Len())
			}
		}
	}
	dir, _ := testWorld(t)
	for _, o := range []PretrainOptions{{MaskProb: -0.1}, {MaskProb: 1.5}, {ITMNegProb: -1}, {ITMNegProb: 2}, {ITMNegProb: math.NaN()}, {MaskProb: math.NaN()}} {
		if _, err := NewPretrainSet(openTxt(t, dir, "txt/pretrain_train.db"), openImg(t, dir, "img/synth_train"), o); err == nil {
			t.Errorf("options %+v: no error", o)
		}
	}
}
