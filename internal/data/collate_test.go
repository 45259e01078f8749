package data

import (
	"math"
	"reflect"
	"testing"
)

// regions returns an example with tl tokens and nbb regions of dim d whose
// values identify (example, region, column).
func testExample(id string, tl, nbb, d int, base float32) *Example {
	ex := &Example{ID: id, NBB: nbb}
	for i := 0; i < tl; i++ {
		ex.InputIDs = append(ex.InputIDs, int32(1000+i))
	}
	for r := 0; r < nbb; r++ {
		for c := 0; c < d; c++ {
			ex.ImgFeat = append(ex.ImgFeat, base+float32(r*d+c))
		}
		for c := 0; c < PosDim; c++ {
			ex.ImgPos = append(ex.ImgPos, -(base + float32(r*PosDim+c)))
		}
	}
	return ex
}

func TestCollateGatherIndex(t *testing.T) {
	// The reference example: Tmax 5, Nmax 3; row 0 tl 3 nbb 3, row 1 tl 5 nbb 1.
	exs := []*Example{testExample("a", 3, 3, 2, 1), testExample("b", 5, 1, 2, 100)}
	b, err := Collate(exs, 2)
	if err != nil {
		t.Fatal(err)
	}
	if b.B != 2 || b.Tmax != 5 || b.Nmax != 3 || b.S != 6 {
		t.Fatalf("dims B %d Tmax %d Nmax %d S %d", b.B, b.Tmax, b.Nmax, b.S)
	}
	if want := []int32{0, 1, 2, 5, 6, 7, 0, 1, 2, 3, 4, 5}; !reflect.DeepEqual(b.GatherIndex, want) {
		t.Errorf("GatherIndex = %v, want %v", b.GatherIndex, want)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"InputIDs", b.InputIDs, []int32{1000, 1001, 1002, 0, 0, 1000, 1001, 1002, 1003, 1004}},
		{"TxtTypeIDs", b.TxtTypeIDs, make([]int32, 10)},
		{"TxtLens", b.TxtLens, []int{3, 5}},
		{"NBB", b.NBB, []int{3, 1}},
		{"AttnLens", b.AttnLens, []int{6, 6}},
		{"ImgFeat", b.ImgFeat, []float32{1, 2, 3, 4, 5, 6, 100, 101, 0, 0, 0, 0}},
		{"ImgTypeIDs", b.ImgTypeIDs, []int32{1, 1, 1, 1, 0, 0}},
		{"IDs", b.IDs, []string{"a", "b"}},
		{"AttnMask", b.AttnMask(), []float32{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"Labels", b.Labels, []int32{0, 0}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if b.ImgPos[7*3] != -100 || b.ImgPos[7*4] != 0 || len(b.ImgPos) != 2*3*7 {
		t.Errorf("ImgPos padding wrong: %v", b.ImgPos)
	}
	if b.MLMLabels != nil || b.ImgMasks != nil || b.ImgMaskTgt != nil || b.Targets != nil {
		t.Error("optional targets allocated without examples carrying them")
	}
}

func TestCollateTargets(t *testing.T) {
	a := testExample("a", 4, 2, 3, 1)
	a.MLMLabels = []int32{-1, 7, -1, -1}
	a.Label = 1
	a.Targets = []float32{0.3, 1}
	b := testExample("b", 2, 3, 3, 50)
	b.Targets = []float32{0, 0.6}
	soft := make([]float32, 3*LabelDim)
	soft[0*LabelDim+5] = 0.9
	soft[2*LabelDim+0] = 0.8 // background ignored by the argmax
	soft[2*LabelDim+9] = 0.1
	if err := ApplyRegionMask(b, []bool{true, false, true}, soft, 3); err != nil {
		t.Fatal(err)
	}
	bt, err := Collate([]*Example{a, b}, 3)
	if err != nil {
		t.Fatal(err)
	}
	// S = max(4+2, 2+3) = 6; row b's masked regions 0 and 2 sit at
	// compact positions 2 and 4.
	checks := []struct {
		name      string
		got, want any
	}{
		{"MLMLabels", bt.MLMLabels, []int32{-1, 7, -1, -1, -1, -1, -1, -1}},
		{"ImgMasks", bt.ImgMasks, []bool{false, false, false, true, false, true}},
		{"ImgMaskTgt", bt.ImgMaskTgt, []bool{false, false, false, false, false, false, false, false, true, false, true, false}},
		{"MRFRTargets", bt.MRFRTargets, []float32{50, 51, 52, 56, 57, 58}},
		{"MRCLabels", bt.MRCLabels, []int32{5, 9}},
		{"NMasked", bt.NMasked, 2},
		{"Labels", bt.Labels, []int32{1, 0}},
		{"Targets", bt.Targets, []float32{0.3, 1, 0, 0.6}},
		{"TargetDim", bt.TargetDim, 2},
		{"GatherIndex", bt.GatherIndex, []int32{0, 1, 2, 3, 4, 5, 0, 1, 4, 5, 6, 5}},
		{"masked features zeroed", bt.ImgFeat[3*3*1:], []float32{0, 0, 0, 53, 54, 55, 0, 0, 0}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(bt.MRCSoft) != 2*LabelDim || bt.MRCSoft[5] != 0.9 || bt.MRCSoft[LabelDim+9] != 0.1 {
		t.Error("MRCSoft rows wrong")
	}
	if bt.Tokens() != 11 || math.Abs(bt.PadFrac()-1.0/12) > 1e-12 {
		t.Errorf("Tokens %d PadFrac %v", bt.Tokens(), bt.PadFrac())
	}
}

func TestCollateErrors(t *testing.T) {
	mk := func(f func(*Example)) []*Example {
		ex := testExample("x", 3, 2, 4, 0)
		f(ex)
		return []*Example{ex}
	}
	cases := []struct {
		name string
		exs  []*Example
		dim  int
	}{
		{"empty", nil, 4},
		{"bad dim", mk(func(*Example) {}), 0},
		{"feature size", mk(func(*Example) {}), 3},
		{"short pos", mk(func(e *Example) { e.ImgPos = e.ImgPos[:5] }), 4},
		{"labels length", mk(func(e *Example) { e.MLMLabels = []int32{1} }), 4},
		{"types length", mk(func(e *Example) { e.TxtTypeIDs = []int32{1} }), 4},
		{"mask length", mk(func(e *Example) { e.ImgMask = []bool{true} }), 4},
		{"targets without mask", mk(func(e *Example) { e.MRCLabels = []int32{3} }), 4},
		{"negative nbb", mk(func(e *Example) { e.NBB = -1 }), 4},
		{"target dims differ", append(mk(func(*Example) {}), &Example{ID: "y", Targets: []float32{1}}), 4},
	}
	for _, c := range cases {
		if _, err := Collate(c.exs, c.dim); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func TestWithSpecials(t *testing.T) {
	if got := WithSpecials([]int32{5, 6}, 101, 102); !reflect.DeepEqual(got, []int32{101, 5, 6, 102}) {
		t.Errorf("WithSpecials = %v", got)
	}
}

func TestCollateReleaseReuse(t *testing.T) {
	// A released buffer full of non-zero features must come back with zero
	// padding rows.
	big, err := Collate([]*Example{testExample("a", 2, 4, 3, 7), testExample("b", 2, 4, 3, 9)}, 3)
	if err != nil {
		t.Fatal(err)
	}
	big.Release()
	big.Release()
	if big.ImgFeat != nil {
		t.Error("ImgFeat kept after Release")
	}
	for range 3 {
		small, err := Collate([]*Example{testExample("c", 2, 1, 3, 1), testExample("d", 2, 2, 3, 5)}, 3)
		if err != nil {
			t.Fatal(err)
		}
		want := []float32{1, 2, 3, 0, 0, 0, 5, 6, 7, 8, 9, 10}
		if !reflect.DeepEqual(small.ImgFeat, want) {
			t.Fatalf("ImgFeat after reuse = %v, want %v", small.ImgFeat, want)
		}
		small.Release()
	}
}
