package data

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// constSource makes every Float64 draw about 1, so nothing is selected.
type constSource struct{}

func (constSource) Uint64() uint64 { return math.MaxUint64 }

func within(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.4f, want %.4f +- %.4f", name, got, want, tol)
	} else {
		t.Logf("%s = %.4f", name, got)
	}
}

func TestMaskWordsStatistics(t *testing.T) {
	const mask, seqs, seqLen = 3, 1000, 100
	// Original ids lie outside v_range, so a random replacement is always
	// distinguishable from an unchanged token.
	vRange := [2]int32{1000, 30000}
	var selected, masked, random, kept, total int
	for s := 0; s < seqs; s++ {
		ids := make([]int32, seqLen)
		for i := range ids {
			ids[i] = int32(10 + i%50)
		}
		out, labels, err := MaskWords(NewRand(42, uint64(s)), ids, mask, vRange)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ids {
			total++
			if labels[i] == -1 {
				if out[i] != ids[i] {
					t.Fatalf("unselected token %d changed", i)
				}
				continue
			}
			if labels[i] != ids[i] {
				t.Fatalf("label %d, original %d", labels[i], ids[i])
			}
			selected++
			switch {
			case out[i] == mask:
				masked++
			case out[i] == ids[i]:
				kept++
			case out[i] >= vRange[0] && out[i] < vRange[1]:
				random++
			default:
				t.Fatalf("token became %d", out[i])
			}
		}
	}
	within(t, "selected fraction", float64(selected)/float64(total), 0.15, 0.005)
	within(t, "[MASK] share", float64(masked)/float64(selected), 0.8, 0.01)
	within(t, "random share", float64(random)/float64(selected), 0.1, 0.01)
	within(t, "unchanged share", float64(kept)/float64(selected), 0.1, 0.01)
}

func TestMaskWordsForced(t *testing.T) {
	rng := rand.New(constSource{})
	out, labels, err := MaskWords(rng, []int32{7, 8, 9}, 3, [2]int32{10, 20})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, []int32{3, 8, 9}) || !reflect.DeepEqual(labels, []int32{7, -1, -1}) {
		t.Errorf("forced: out %v labels %v", out, labels)
	}
	ids, lab := MLMInput(out, labels, 101, 102)
	if !reflect.DeepEqual(ids, []int32{101, 3, 8, 9, 102}) || !reflect.DeepEqual(lab, []int32{-1, 7, -1, -1, -1}) {
		t.Errorf("MLMInput: %v %v", ids, lab)
	}
	if out, labels, err := MaskWords(rng, nil, 3, [2]int32{10, 20}); err != nil || len(out)+len(labels) != 0 {
		t.Errorf("empty input: %v %v %v", out, labels, err)
	}
	if _, _, err := MaskWords(rng, []int32{1}, 3, [2]int32{20, 20}); err == nil {
		t.Error("empty v_range: no error")
	}
}

func TestMaskRegions(t *testing.T) {
	sel, total := 0, 0
	for s := 0; s < 2800; s++ {
		for _, m := range MaskRegions(NewRand(9, uint64(s)), 36, MaskProb) {
			total++
			if m {
				sel++
			}
		}
	}
	within(t, "region mask fraction", float64(sel)/float64(total), 0.15, 0.005)

	for _, nbb := range []int{1, 5, 36} {
		m := MaskRegions(rand.New(constSource{}), nbb, MaskProb)
		n := 0
		for _, v := range m {
			if v {
				n++
			}
		}
		if len(m) != nbb || n != 1 {
			t.Errorf("forced with %d regions: %v", nbb, m)
		}
	}
	if m := MaskRegions(NewRand(1), 0, MaskProb); len(m) != 0 {
		t.Errorf("no regions: %v", m)
	}
	// The forced region is uniform, not always the first.
	first := 0
	for s := 0; s < 200; s++ {
		if MaskRegions(NewRand(uint64(s)), 10, 0)[0] {
			first++
		}
	}
	if first == 0 || first > 60 {
		t.Errorf("forced region was the first %d times in 200", first)
	}
}

func TestApplyRegionMaskErrors(t *testing.T) {
	ex := testExample("e", 2, 2, 3, 0)
	if err := ApplyRegionMask(ex, []bool{true}, nil, 3); err == nil {
		t.Error("short mask: no error")
	}
	if err := ApplyRegionMask(ex, []bool{true, false}, make([]float32, 5), 3); err == nil {
		t.Error("short soft labels: no error")
	}
	if err := ApplyRegionMask(ex, []bool{false, true}, nil, 3); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ex.FeatTargets, []float32{3, 4, 5}) || len(ex.MRCLabels) != 0 {
		t.Errorf("MRFR only: targets %v labels %v", ex.FeatTargets, ex.MRCLabels)
	}
}

func TestAssignITM(t *testing.T) {
	imgOf := make([]string, 20000)
	for i := range imgOf {
		imgOf[i] = fmt.Sprintf("img%03d.npz", i%200)
	}
	labels, imgs, err := AssignITM(imgOf, ITMNegProb, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	neg := 0
	for i := range imgOf {
		switch labels[i] {
		case 1:
			if imgs[i] != imgOf[i] {
				t.Fatalf("positive %d has image %s", i, imgs[i])
			}
		case 0:
			neg++
			if imgs[i] == imgOf[i] {
				t.Fatalf("negative %d kept its image", i)
			}
		default:
			t.Fatalf("label %d", labels[i])
		}
	}
	within(t, "negative fraction", float64(neg)/float64(len(imgOf)), 0.5, 0.01)
	// The negatives reach every other image, including the pool's ends.
	used := map[string]bool{}
	for i, l := range labels {
		if l == 0 {
			used[imgs[i]] = true
		}
	}
	if len(used) != 200 {
		t.Errorf("negatives used %d of 200 images", len(used))
	}
	l2, i2, _ := AssignITM(imgOf, ITMNegProb, 5, 0)
	if !reflect.DeepEqual(labels, l2) || !reflect.DeepEqual(imgs, i2) {
		t.Error("not deterministic")
	}
	l3, _, _ := AssignITM(imgOf, ITMNegProb, 5, 1)
	if reflect.DeepEqual(labels, l3) {
		t.Error("epochs 0 and 1 drew the same labels")
	}
	if _, _, err := AssignITM([]string{"a", "a", "a"}, 1, 5, 0); err == nil {
		t.Error("one-image pool: no error")
	}
}

func TestTaskMixer(t *testing.T) {
	m, err := NewTaskMixer([]string{"itm", "mlm", "mrfr", "mrckl"}, []int{6, 8, 4, 4}, 3)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	const n = 44000
	for s := 0; s < n; s++ {
		count[m.Task(s)]++
	}
	for task, r := range map[string]float64{"itm": 6, "mlm": 8, "mrfr": 4, "mrckl": 4} {
		within(t, task+" share", float64(count[task])/n, r/22, 0.01)
	}
	m2, _ := NewTaskMixer([]string{"itm", "mlm", "mrfr", "mrckl"}, []int{6, 8, 4, 4}, 3)
	for s := 0; s < 100; s++ {
		if m.Task(s) != m2.Task(s) {
			t.Fatal("not deterministic")
		}
	}
	for _, c := range []struct {
		tasks  []string
		ratios []int
	}{{nil, nil}, {[]string{"a"}, []int{1, 2}}, {[]string{"a"}, []int{0}}} {
		if _, err := NewTaskMixer(c.tasks, c.ratios, 0); err == nil {
			t.Errorf("NewTaskMixer(%v, %v): no error", c.tasks, c.ratios)
		}
	}
}
