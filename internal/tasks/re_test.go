package tasks

import (
	"encoding/json"
	"math"
	"slices"
	"testing"

	"uniter/internal/data"
)

const reRef = "../../testdata/finetune/re_heads.pt"

// goldenRE builds the RE head of mlp layers with the golden weights on a
// backbone whose last forward ran on the golden batch layout, its last
// layer replaced by the golden sequence.
func goldenRE(t *testing.T, r *ref, mlp int) (*RE, *data.Batch, []string, string) {
	t.Helper()
	prefix := map[int]string{1: "re_mlp1", 2: "re_mlp2"}[mlp]
	m := headModel(t, 0, 1)
	re, err := NewRE(m, mlp, false)
	if err != nil {
		t.Fatal(err)
	}
	names := setRefParams(t, r, m, prefix)
	m.SetTrain(false)
	b := headBatch(t, m.Cfg, []int{9, 12, 4, 11}, 1, r.i32(prefix+"/targets"), nil, 0)
	if !slices.Equal(b.TxtLens, r.ints(prefix+"/txt_lens")) || !slices.Equal(b.NBB, r.ints(prefix+"/num_bbs")) {
		t.Fatalf("batch layout tl %v nbb %v, reference %v %v", b.TxtLens, b.NBB, r.ints(prefix+"/txt_lens"), r.ints(prefix+"/num_bbs"))
	}
	if err := re.forward(b, false); err != nil {
		t.Fatal(err)
	}
	setHost(m.Backend(), m.Seq(), r.f32(prefix+"/seq"))
	return re, b, names, prefix
}

// reShiftFree are the head parameters that shift every region's score of
// a row alike (the last bias, and through the last weight the LayerNorm
// bias): the softmax ignores the shift, so their gradient is exactly 0 and
// PyTorch's is rounding noise, compared absolutely.
var reShiftFree = []string{"re_output.bias", "re_output.2.bias", "re_output.3.bias"}

// splitShiftFree separates reShiftFree from the other head parameters.
func splitShiftFree(names []string) (rest, free []string) {
	for _, n := range names {
		if slices.Contains(reShiftFree, n) {
			free = append(free, n)
		} else {
			rest = append(rest, n)
		}
	}
	return rest, free
}

// checkZeroGrads requires the shift-free gradients to be 0 up to rounding,
// as PyTorch's are.
func checkZeroGrads(t *testing.T, r *ref, re *RE, prefix string, free []string) {
	t.Helper()
	for _, n := range free {
		got := re.m.Backend().ToF32(re.m.Params.Get(n).G)
		want := r.f32(prefix + "/grad/" + n)
		for i := range got {
			if math.Abs(float64(got[i])) > 1e-6 || math.Abs(float64(want[i])) > 1e-6 {
				t.Errorf("%s grad %s[%d] = %v (PyTorch %v), want 0 up to rounding", prefix, n, i, got[i], want[i])
			}
		}
	}
}

// reHead is RE.Step after the backbone forward and before its backward.
func reHead(re *RE, b *data.Batch, backward bool, gradScale float32) Result {
	return re.finish(b, re.head(b), backward, gradScale)
}

// TestREHeadMatchesPyTorch compares both RE heads (mlp 1 and 2) with
// PyTorch on the golden last layer: the padded scores, the summed
// cross-entropy, the gradient w.r.t. the whole last layer (zero outside
// the region part) and every head parameter's gradient; a second step
// scaled by 2 accumulates.
func TestREHeadMatchesPyTorch(t *testing.T) {
	r := loadRefPath(t, reRef)
	for _, mlp := range []int{1, 2} {
		re, b, names, prefix := goldenRE(t, r, mlp)
		m := re.m
		be := m.Backend()
		m.Params.ZeroGrad()
		be.Zero(m.GradSeq())
		res := reHead(re, b, true, 1)
		logits := be.ToF32(res.Logits)
		checkRel(t, prefix+" logits", logits, r.f32(prefix+"/logits"), refTol)
		checkScalar(t, prefix+" loss", res.Loss, r.scalar(prefix+"/loss"), refTol)
		gs := be.ToF32(m.GradSeq())
		checkRel(t, prefix+" grad seq", gs, r.f32(prefix+"/grad/seq"), refTol)
		worst := math.Max(relErr(logits, r.f32(prefix+"/logits")), relErr(gs, r.f32(prefix+"/grad/seq")))
		rest, free := splitShiftFree(names)
		worst = math.Max(worst, checkHeadGrads(t, r, m, prefix, rest, 1))
		checkZeroGrads(t, r, re, prefix, free)
		t.Logf("%s: worst relative error %.3g", prefix, worst)

		reHead(re, b, true, 2)
		checkHeadGrads(t, r, m, prefix, rest, 3)
		want := slices.Clone(r.f32(prefix + "/grad/seq"))
		for i := range want {
			want[i] *= 3
		}
		checkRel(t, prefix+" accumulated grad seq", be.ToF32(m.GradSeq()), want, refTol)
	}
}

// TestREFiniteDifferences checks both heads' backward against central
// differences of the summed cross-entropy w.r.t. the region rows of the
// last layer and a sample of every head parameter.
func TestREFiniteDifferences(t *testing.T) {
	r := loadRefPath(t, reRef)
	for _, mlp := range []int{1, 2} {
		re, b, names, prefix := goldenRE(t, r, mlp)
		m := re.m
		be := m.Backend()
		m.Params.ZeroGrad()
		be.Zero(m.GradSeq())
		reHead(re, b, true, 1)
		loss := func() float64 { return reHead(re, b, false, 1).Loss }
		const eps, tol = 1e-2, 2e-3
		g := be.ToF32(m.GradSeq())
		worst := checkFD(t, be, prefix+" seq", m.Seq(), g, fdCoords(g, 6, 1, nil), eps, tol, false, loss)
		rest, _ := splitShiftFree(names)
		for k, name := range rest {
			p := m.Params.Get(name)
			g := be.ToF32(p.G)
			worst = math.Max(worst, checkFD(t, be, name, p.W, g, fdCoords(g, 3, uint64(k), nil), eps, tol, false, loss))
		}
		t.Logf("%s finite differences: worst relative error %.3g", prefix, worst)
	}
}

// TestREStep: Step is the head between the backbone's forward and
// backward; an evaluation pads the logits to the widest image opened;
// batches without targets cannot train; boxes give the IoU accuracy and
// the results file.
func TestREStep(t *testing.T) {
	r := loadRefPath(t, reRef)
	re, b, _, prefix := goldenRE(t, r, 1)
	m := re.m
	be := m.Backend()
	// Step reruns the backbone: compare with the head on that output.
	m.Params.ZeroGrad()
	res, err := re.Step("re", b, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	h := reHead(re, b, false, 1)
	checkScalar(t, "step loss", res.Loss, h.Loss, 1e-6)
	if res.Count != b.B || res.Examples != b.B || !slices.Equal(res.Pred, h.Pred) {
		t.Errorf("step count %d examples %d pred %v, head pred %v", res.Count, res.Examples, res.Pred, h.Pred)
	}
	_ = prefix

	noLabels := *b
	noLabels.Labels = nil
	if _, err := re.Step("re", &noLabels, true, 1); err == nil {
		t.Error("training without target regions: no error")
	}
	re.width = 9
	ev, err := re.Step("re", &noLabels, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if sh := ev.Logits.Shape; sh[0] != b.B || sh[1] != 9 {
		t.Errorf("evaluation logits shape %v, want [%d 9]", sh, b.B)
	}
	lg := be.ToF32(ev.Logits)
	for i := range b.B {
		for j := b.NBB[i]; j < 9; j++ {
			if lg[i*9+j] != REPad {
				t.Errorf("row %d slot %d = %v, want the pad %v", i, j, lg[i*9+j], REPad)
			}
		}
	}
	// Boxes: the image is 100 x 50 pixels; the target of row 0 is its
	// predicted region's own box (IoU 1), the others far away.
	withBoxes := noLabels
	withBoxes.Boxes = make([]float64, b.B*data.REBoxDim)
	for i := range b.B {
		pos := b.ImgPos[(i*b.Nmax+int(ev.Pred[i]))*data.PosDim:]
		pb := PredBox(pos, 100, 50)
		bx := withBoxes.Boxes[i*data.REBoxDim:]
		copy(bx, []float64{1000, 1000, 5, 5, 100, 50})
		if i == 0 {
			copy(bx, []float64{float64(pb[0]), float64(pb[1]), float64(pb[2]), float64(pb[3])})
		}
	}
	res, err = re.Step("re", &withBoxes, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != b.B || res.Score != 1 || len(res.Boxes) != b.B*REBoxes {
		t.Errorf("boxes: count %d score %v boxes %d", res.Count, res.Score, len(res.Boxes))
	}
	e := &Eval{}
	if err := e.Add(re, &withBoxes, res); err != nil {
		t.Fatal(err)
	}
	mt := re.Metrics(e)
	if mt["acc"] != 0.25 || mt["n"] != 4 {
		t.Errorf("metrics %v, want acc 0.25 n 4", mt)
	}
	if _, ok := mt["loss"]; ok {
		t.Errorf("metrics %v: a loss without target regions", mt)
	}
	ext, out, err := re.Results(e, false)
	if err != nil || ext != ".json" {
		t.Fatal(ext, err)
	}
	var got map[string]map[string][]float64
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || len(got[b.IDs[1]]["pred_box"]) != 4 || got[b.IDs[1]]["tgt_box"][0] != 1000 {
		t.Errorf("results %s", out)
	}
}

// TestREIoU checks computeIoU's -1 pixel convention and numpy's mixed
// precision on hand-computed cases.
func TestREIoU(t *testing.T) {
	cases := []struct {
		pred [4]float32
		tgt  [4]float64
		want float64
	}{
		// Identical 10x10 boxes: inter (19-10+1)^2 = 100, union 100.
		{[4]float32{10, 10, 10, 10}, [4]float64{10, 10, 10, 10}, 1},
		// Shifted by 5: inter 5*10 = 50, union 150.
		{[4]float32{10, 10, 10, 10}, [4]float64{15, 10, 10, 10}, 50.0 / 150},
		// Touching edges: x2 = 19 vs x1 = 20: no overlap.
		{[4]float32{10, 10, 10, 10}, [4]float64{20, 10, 10, 10}, 0},
		// One pixel column of overlap: x1 = x2 is no overlap (strict <).
		{[4]float32{10, 10, 10, 10}, [4]float64{19, 10, 10, 10}, 0},
	}
	for _, c := range cases {
		if got := REIoU(c.pred, c.tgt); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("IoU(%v, %v) = %v, want %v", c.pred, c.tgt, got, c.want)
		}
	}
	// The original's obj_boxes and computeIoU as numpy runs them on
	// fp16 boxes (scripts: numpy, float32 predicted box, float64 target).
	numpy := []struct {
		pos  [6]float32
		w, h float64
		tgt  [4]float64
		want float64
	}{
		{[6]float32{0.83984375, 0.121337890625, 0, 0, 0.0187530517578125, 0.040618896484375}, 452, 549, [4]float64{372.45, 62.17, 11.02, 17.84}, 0.15488022283020694},
		{[6]float32{0.456787109375, 0.64892578125, 0, 0, 0.5908203125, 0.02398681640625}, 448, 393, [4]float64{172.09, 262.99, 344.09, 7.54}, 0.082450226951888},
		{[6]float32{0.283447265625, 0.693359375, 0, 0, 0.54443359375, 0.7802734375}, 410, 397, [4]float64{95.74, 261.0, 290.18, 247.81}, 0.5862522125027498},
		{[6]float32{0.1427001953125, 0.3251953125, 0, 0, 0.4248046875, 0.413818359375}, 506, 328, [4]float64{86.01, 125.23, 279.44, 108.59}, 0.5797234096155772},
		{[6]float32{0.315673828125, 0.56298828125, 0, 0, 0.203369140625, 0.65380859375}, 413, 301, [4]float64{147.17, 176.82, 109.19, 157.44}, 0.4571610894805463},
	}
	for _, c := range numpy {
		if got := REIoU(PredBox(c.pos[:], c.w, c.h), c.tgt); got != c.want {
			t.Errorf("IoU(%v on %vx%v, %v) = %v, numpy %v", c.pos, c.w, c.h, c.tgt, got, c.want)
		}
	}
}
