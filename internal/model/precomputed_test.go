package model

import (
	"math"
	"testing"

	"uniter/internal/compute"
)

// TestForwardPooledMatchesForward: the inference encoder (shared
// activations, last layer at the [CLS] rows only) gives Forward's pooled
// output on batches of mixed text and region lengths, also when a larger
// batch follows a smaller one (its buffers grow) and after it Forward
// still gives the same.
func TestForwardPooledMatchesForward(t *testing.T) {
	c, _ := Preset("tiny")
	m, err := New(compute.NewCPU(2), c, 3)
	if err != nil {
		t.Fatal(err)
	}
	m.SetTrain(false)
	be := m.Backend()
	for _, tc := range []struct{ txt, nbb []int }{
		{[]int{4, 2}, []int{3, 1}},
		{[]int{9, 7, 5, 9, 3}, []int{6, 2, 4, 1, 6}},
	} {
		b, tmax, nmax := len(tc.txt), 9, 6
		in := SyntheticInput(c, b, tmax, nmax, uint64(b))
		copy(in.TxtLens, tc.txt)
		copy(in.NBB, tc.nbb)
		for i, l := range tc.txt {
			in.InputIDs[i*tmax+l-1] = int32(min(102, c.VocabSize-1))
			clear(in.InputIDs[i*tmax+l : (i+1)*tmax])
		}
		if err := m.Forward(in); err != nil {
			t.Fatal(err)
		}
		want := be.ToF32(m.Pooled())
		p, err := m.ForwardPooled(in)
		if err != nil {
			t.Fatal(err)
		}
		got := be.ToF32(p)
		if len(got) != b*c.HiddenSize {
			t.Fatalf("pooled output of %d values, want %d", len(got), b*c.HiddenSize)
		}
		worst, scale := 0.0, 0.0
		for i := range want {
			worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
			scale = math.Max(scale, math.Abs(float64(want[i])))
		}
		if worst > 1e-6*scale {
			t.Errorf("batch of %d: ForwardPooled differs from Forward by %.3g (values up to %.3g)", b, worst, scale)
		}
		if err := m.Forward(in); err != nil {
			t.Fatal(err)
		}
		for i, v := range be.ToF32(m.Pooled()) {
			if v != want[i] {
				t.Fatalf("batch of %d: Forward after ForwardPooled gives %v at %d, before %v", b, v, i, want[i])
			}
		}
	}
	m.SetTrain(true)
	if _, err := m.ForwardPooled(SyntheticInput(c, 1, 3, 2, 1)); err == nil {
		t.Error("ForwardPooled in training mode: no error")
	}
}
