package train

import (
	"math"
	"strings"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/model"
)

func TestLossScaler(t *testing.T) {
	cases := []struct {
		name   string
		start  float64
		window int
		finite []bool
		scales []float64 // scale after each update
		skips  []bool
	}{
		{"overflow halves and skips", 65536, 2000, []bool{false, false, true},
			[]float64{32768, 16384, 16384}, []bool{true, true, false}},
		{"grows after window clean steps", 8, 3, []bool{true, true, true, true, true, true},
			[]float64{8, 8, 16, 16, 16, 32}, []bool{false, false, false, false, false, false}},
		{"an overflow restarts the count", 8, 3, []bool{true, true, false, true, true, true},
			[]float64{8, 8, 4, 4, 4, 8}, []bool{false, false, true, false, false, false}},
		{"capped at 2^24", 1 << 24, 1, []bool{true}, []float64{1 << 24}, []bool{false}},
	}
	for _, c := range cases {
		s := NewLossScaler(c.start, c.window)
		for i, f := range c.finite {
			if skip := s.Update(f); skip != c.skips[i] || s.Scale != c.scales[i] {
				t.Errorf("%s: update %d (finite %v): skip %v scale %v, want %v %v", c.name, i, f, skip, s.Scale, c.skips[i], c.scales[i])
			}
		}
	}
}

// updaterParams is two parameters with gradients g (the second all ones).
func updaterParams(be compute.Backend, g []float32) []*model.Param {
	return []*model.Param{
		{Name: "uniter.a.weight", Shape: []int{len(g)}, W: be.FromF32([]float32{1, 2, 3}[:len(g)], len(g)), G: be.FromF32(g, len(g))},
		{Name: "uniter.b.bias", Shape: []int{2}, W: be.FromF32([]float32{-1, 1}, 2), G: be.FromF32([]float32{1, 1}, 2)},
	}
}

// TestUpdaterOverflow injects inf and nan gradients: the step is skipped,
// weights and optimizer state stay, and only that task's scale halves; clean
// steps then update and grow the scale.
func TestUpdaterOverflow(t *testing.T) {
	be := compute.NewCPU(1)
	for _, bad := range []float32{float32(math.Inf(1)), float32(math.NaN())} {
		params := updaterParams(be, []float32{0.5, bad, 0.25})
		opt := NewAdamW(be, params, AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, WeightDecay: 0.01})
		u := NewUpdater(be, params, opt, 5, true, 65536, 2)
		w0 := [][]float32{be.ToF32(params[0].W), be.ToF32(params[1].W)}
		info, err := u.Apply("mlm_x", 1e-3)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Skipped || info.LossScale != 65536 {
			t.Fatalf("grad %v: %+v, want a skipped step at scale 65536", bad, info)
		}
		for i, p := range params {
			checkClose(t, "weights after a skipped step", be.ToF32(p.W), w0[i], 0)
		}
		if opt.Steps() != 0 || u.Scale("mlm_x") != 32768 || u.Scale("itm_x") != 65536 {
			t.Fatalf("after overflow: adam steps %d, scales mlm %v itm %v; want 0, 32768, 65536", opt.Steps(), u.Scale("mlm_x"), u.Scale("itm_x"))
		}
		be.Copy(params[0].G, be.FromF32([]float32{0.5, 1, 0.25}, 3))
		for i := range 2 {
			if info, err := u.Apply("mlm_x", 1e-3); err != nil || info.Skipped {
				t.Fatalf("clean step %d: %+v %v", i, info, err)
			}
		}
		if opt.Steps() != 2 || u.Scale("mlm_x") != 65536 {
			t.Fatalf("after 2 clean steps (window 2): adam steps %d scale %v, want 2 and 65536", opt.Steps(), u.Scale("mlm_x"))
		}
		if got := be.ToF32(params[0].W); got[0] == w0[0][0] {
			t.Fatalf("clean steps left the weights unchanged")
		}
	}
}

func TestUpdaterFP32Diverged(t *testing.T) {
	be := compute.NewCPU(1)
	params := updaterParams(be, []float32{float32(math.Inf(-1))})
	u := NewUpdater(be, params, NewAdamW(be, params, AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}), -1, false, 65536, 2000)
	if _, err := u.Apply("mlm_x", 1e-3); err == nil || !strings.Contains(err.Error(), "non-finite") {
		t.Fatalf("fp32 inf gradient: err %v, want a non-finite gradient error", err)
	}
	if u.Scale("mlm_x") != 1 {
		t.Errorf("fp32 loss scale %v, want 1", u.Scale("mlm_x"))
	}
}

// TestUpdaterUnscalesAndClips checks that a window computed at loss scale
// s updates as the unscaled, clipped gradient would.
func TestUpdaterUnscalesAndClips(t *testing.T) {
	be := compute.NewCPU(1)
	scaled := updaterParams(be, []float32{30 * 65536, 40 * 65536, 0})
	be.Copy(scaled[1].G, be.FromF32([]float32{0, 0}, 2))
	u := NewUpdater(be, scaled, NewAdamW(be, scaled, AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}), 5, true, 65536, 2000)
	info, err := u.Apply("mlm_x", 0.1)
	if err != nil || info.Skipped || math.Abs(info.GradNorm-50) > 1e-9 {
		t.Fatalf("%+v %v, want an applied step with unscaled norm 50", info, err)
	}
	plain := updaterParams(be, []float32{3, 4, 0})
	be.Copy(plain[1].G, be.FromF32([]float32{0, 0}, 2))
	NewAdamW(be, plain, AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}).Step(0.1, 5/(50+1e-6)*10)
	checkClose(t, "scaled and clipped update", be.ToF32(scaled[0].W), be.ToF32(plain[0].W), 1e-6)
}

// TestUpdaterScaleFloor checks that overflows halve the scale down to 1 and
// that an overflow at scale 1 stops the run instead of skipping forever.
func TestUpdaterScaleFloor(t *testing.T) {
	be := compute.NewCPU(1)
	params := updaterParams(be, []float32{float32(math.Inf(1))})
	u := NewUpdater(be, params, NewAdamW(be, params, AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}), -1, true, 4, 2000)
	for _, want := range []float64{4, 2} {
		info, err := u.Apply("vqa", 1e-3)
		if err != nil || !info.Skipped || info.LossScale != want {
			t.Fatalf("overflow at scale %v: %+v %v, want a skipped step", want, info, err)
		}
	}
	if got := u.Scale("vqa"); got != 1 {
		t.Fatalf("scale after two overflows from 4: %v, want the floor 1", got)
	}
	if _, err := u.Apply("vqa", 1e-3); err == nil || !strings.Contains(err.Error(), "minimum loss scale") {
		t.Fatalf("overflow at the floor: err %v, want a diverged-run error", err)
	}
}
