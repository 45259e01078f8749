package tasks

import (
	"math"
	"slices"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/data"
)

// The ITR golden data (scripts/itr_ref.py).
const itrRef = "../../testdata/finetune/itr.pt"

// itrHeadResult is what itrHead measured.
type itrHeadResult struct {
	scores []float32
	loss   float64
}

// itrHead is ITR.Step after the backbone forward: rank_output and the
// hinge loss on whatever m.Pooled() holds, groups of group rows, with the
// backward into GradPooled and rank_output's gradients.
func itrHead(r *ITR, group int, backward bool, gradScale float32) itrHeadResult {
	scores := r.m.Backend().ToF32(r.head())
	loss, ds := HingeLoss(scores, group, r.margin)
	if backward {
		r.headBackward(ds, gradScale)
	}
	return itrHeadResult{scores: scores, loss: loss}
}

// goldenITR builds the ITR head with the golden weights of prefix on a
// backbone whose last forward ran on a batch of rows rows (group rows per
// example), its pooled output replaced by pooledKey's.
func goldenITR(t *testing.T, r *ref, prefix, pooledKey string, group int) (*ITR, []string) {
	t.Helper()
	n := r.tensor(pooledKey).Shape[0]
	m := headModel(t, 0, 1)
	it, err := NewITR(m, 0.2, 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	names := setRefParams(t, r, m, prefix)
	m.SetTrain(false)
	lens := make([]int, n)
	for i := range lens {
		lens[i] = 3 + i%5
	}
	b := headBatch(t, m.Cfg, lens, group, nil, nil, 0)
	if err := it.forward(b, false); err != nil {
		t.Fatal(err)
	}
	setHost(m.Backend(), m.Pooled(), r.f32(pooledKey))
	return it, names
}

// TestITRHeadMatchesPyTorch compares rank_output and the plain recipe's
// hinge loss (3 examples of a positive, 2 negative images and 2 negative
// texts; some terms clamped) with PyTorch: scores, loss, the gradient
// w.r.t. the pooled output and rank_output's gradients, then a second
// step scaled by 2 accumulates.
func TestITRHeadMatchesPyTorch(t *testing.T) {
	r := loadRefPath(t, itrRef)
	it, names := goldenITR(t, r, "plain", "plain/pooled", 5)
	m, be := it.m, it.m.Backend()
	m.Params.ZeroGrad()
	res := itrHead(it, 5, true, 1)
	checkRel(t, "scores", res.scores, r.f32("plain/scores"), refTol)
	checkScalar(t, "loss", res.loss, r.scalar("plain/loss"), refTol)
	checkRel(t, "grad pooled", be.ToF32(m.GradPooled()), r.f32("plain/grad/pooled"), refTol)
	checkHeadGrads(t, r, m, "plain", names, 1)
	itrHead(it, 5, true, 2)
	checkHeadGrads(t, r, m, "plain", names, 3)
}

// TestITRHardNegativesMatchPyTorch checks the hard-negative selection
// against torch.topk (ties: the same values; distinct scores: the same
// rows) and the hard step's loss, the image side's mean plus the text
// side's, with the gradients of both backward passes.
func TestITRHardNegativesMatchPyTorch(t *testing.T) {
	r := loadRefPath(t, itrRef)
	k := int(r.scalar("hard/k"))
	cand := r.f32("hard/cand_scores")
	sel := HardNegatives(cand, k)
	if sel[0] != 0 || len(sel) != k+1 {
		t.Fatalf("selection %v: want the positive 0 and %d negatives", sel, k)
	}
	var vals []float32
	for _, i := range sel[1:] {
		vals = append(vals, cand[i])
	}
	slices.SortFunc(vals, func(a, b float32) int { return cmpF(b, a) })
	if want := r.f32("hard/selected_values"); !slices.Equal(vals, want) {
		t.Errorf("selected values %v, torch.topk %v", vals, want)
	}
	sel2 := HardNegatives(r.f32("hard/cand_scores2"), k)
	slices.Sort(sel2[1:])
	if want := r.ints("hard/selected2"); !slices.Equal(sel2, want) {
		t.Errorf("selected rows %v, torch.topk %v", sel2, want)
	}
	if got := HardNegatives([]float32{0, 1, float32(math.NaN()), 2}, 1); !slices.Equal(got, []int{0, 2}) {
		t.Errorf("NaN candidate: selected %v, want [0 2] (torch ranks NaN highest)", got)
	}
	if got := HardNegatives([]float32{5, 1, 1, 1}, 2); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("all tied: selected %v, want [0 1 2]", got)
	}

	it, names := goldenITR(t, r, "hard", "hard/img_pooled", k+1)
	m, be := it.m, it.m.Backend()
	m.Params.ZeroGrad()
	li := itrHead(it, k+1, true, 1)
	checkRel(t, "grad img-side pooled", be.ToF32(m.GradPooled()), r.f32("hard/grad/img_pooled"), refTol)
	setHost(be, m.Pooled(), r.f32("hard/txt_pooled"))
	be.Zero(m.GradPooled())
	lt := itrHead(it, k+1, true, 1)
	checkRel(t, "grad txt-side pooled", be.ToF32(m.GradPooled()), r.f32("hard/grad/txt_pooled"), refTol)
	checkScalar(t, "loss", li.loss+lt.loss, r.scalar("hard/loss"), refTol)
	checkHeadGrads(t, r, m, "hard", names, 1)
}

func cmpF(a, b float32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestITRFiniteDifferences checks the head and hinge backward against
// central differences w.r.t. the pooled input and rank_output.
func TestITRFiniteDifferences(t *testing.T) {
	r := loadRefPath(t, itrRef)
	it, names := goldenITR(t, r, "plain", "plain/pooled", 5)
	m, be := it.m, it.m.Backend()
	m.Params.ZeroGrad()
	itrHead(it, 5, true, 1)
	loss := func() float64 { return itrHead(it, 5, false, 1).loss }
	const eps, tol = 1e-2, 2e-3
	g := be.ToF32(m.GradPooled())
	worst := checkFD(t, be, "pooled", m.Pooled(), g, fdCoords(g, 6, 1, nil), eps, tol, true, loss)
	for k, name := range names {
		p := m.Params.Get(name)
		g := be.ToF32(p.G)
		worst = math.Max(worst, checkFD(t, be, name, p.W, g, fdCoords(g, 4, uint64(k), nil), eps, tol, true, loss))
	}
	t.Logf("ITR finite differences: worst relative error %.3g", worst)
}

// TestITRInitFromITM loads a checkpoint without rank_output: rank_output
// becomes the ITM head's match row (row 1), as init_output; the ITM keys
// are then used, not reported. A checkpoint with rank_output keeps it.
func TestITRInitFromITM(t *testing.T) {
	r := loadRefPath(t, itrRef)
	m := headModel(t, 0, 1)
	it, err := NewITR(m, 0.2, 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Cfg.HiddenSize
	w, b := r.f32("init/itm_weight"), r.f32("init/itm_bias")
	sd := &ckpt.StateDict{Keys: []string{"itm_output.weight", "itm_output.bias"}, Tensors: map[string]*ckpt.Tensor{
		"itm_output.weight": {Shape: []int{2, h}, DType: "float32", Float: w},
		"itm_output.bias":   {Shape: []int{2}, DType: "float32", Float: b},
	}}
	rep, err := it.Load(sd, "test", true)
	if err != nil {
		t.Fatal(err)
	}
	if !it.FromITM || len(rep.PretrainHeads) != 0 || len(rep.Missing) != 0 {
		t.Errorf("FromITM %v, report %+v", it.FromITM, rep)
	}
	be := m.Backend()
	if got := be.ToF32(m.Params.Get("rank_output.weight").W); !slices.Equal(got, w[h:]) {
		t.Errorf("rank_output.weight is not itm_output.weight[1]")
	}
	if got := be.ToF32(m.Params.Get("rank_output.bias").W); got[0] != b[1] {
		t.Errorf("rank_output.bias %v, want itm_output.bias[1] %v", got[0], b[1])
	}
	// A fine-tuned checkpoint's own rank_output wins.
	own := make([]float32, h)
	own[0] = 7
	sd.Keys = append(sd.Keys, "rank_output.weight", "rank_output.bias")
	sd.Tensors["rank_output.weight"] = &ckpt.Tensor{Shape: []int{1, h}, DType: "float32", Float: own}
	sd.Tensors["rank_output.bias"] = &ckpt.Tensor{Shape: []int{1}, DType: "float32", Float: []float32{3}}
	it2, _ := NewITR(headModel(t, 0, 1), 0.2, 0, 0, false)
	if _, err := it2.Load(sd, "test", true); err != nil {
		t.Fatal(err)
	}
	if it2.FromITM || be.ToF32(it2.m.Params.Get("rank_output.weight").W)[0] != 7 {
		t.Error("a checkpoint with rank_output was overwritten from itm_output")
	}
}

// TestITRStepMatchesHead runs the plain recipe's Step on a batch and
// checks its loss against the head on the same pooled output, and that a
// hard-negative batch trains on 1 + hard_size rows per side.
func TestITRStepMatchesHead(t *testing.T) {
	m := headModel(t, 0, 3)
	it, err := NewITR(m, 0.2, 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	m.SetTrain(false)
	b := headBatch(t, m.Cfg, []int{5, 6, 7, 4, 3, 6, 5, 4, 6}, 3, nil, nil, 0)
	m.Params.ZeroGrad()
	res, err := it.Step("itr", b, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := itrHead(it, 3, false, 1)
	if math.Abs(res.Loss-want.loss) > 1e-7 || res.Examples != 3 || it.LossUnits("itr", b) != 3 {
		t.Errorf("step loss %v examples %d, head %v", res.Loss, res.Examples, want.loss)
	}

	hard, err := NewITR(headModel(t, 0, 3), 0.2, 2, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	rows := headBatch(t, hard.m.Cfg, []int{5, 6, 7, 4, 3, 6, 5, 4, 6, 5}, 1, nil, nil, 0)
	var exs []*data.Example
	for i := range rows.B {
		tl, nbb := rows.TxtLens[i], rows.NBB[i]
		d := hard.m.Cfg.ImgDim
		ex := &data.Example{ID: "x", InputIDs: rows.InputIDs[i*rows.Tmax : i*rows.Tmax+tl], NBB: nbb, NoLabel: true,
			ImgFeat: rows.ImgFeat[i*rows.Nmax*d : (i*rows.Nmax+nbb)*d], ImgPos: rows.ImgPos[i*rows.Nmax*data.PosDim : (i*rows.Nmax+nbb)*data.PosDim]}
		exs = append(exs, ex)
	}
	hb, err := data.CollateITR([][]*data.Example{exs}, hard.m.Cfg.ImgDim, true)
	if err != nil {
		t.Fatal(err)
	}
	hard.m.SetTrain(true)
	res, err = hard.Step("itr", hb, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !hard.m.Training() || !(res.Loss > 0) || res.Parts["img_side_loss"]+res.Parts["txt_side_loss"] != res.Loss {
		t.Errorf("hard step: loss %v parts %v, training %v", res.Loss, res.Parts, hard.m.Training())
	}
	if _, err := NewITR(headModel(t, 0, 3), 0.2, 5, 0, false); err != nil {
		t.Fatal(err)
	}
	big, _ := NewITR(headModel(t, 0, 3), 0.2, 5, 0, false)
	if _, err := big.Step("itr", hb, true, 1); err == nil {
		t.Error("hard_neg_size above the candidates: no error")
	}
}

// TestITRMetrics checks the recalls on a small score matrix, the
// original's image-recall count included.
func TestITRMetrics(t *testing.T) {
	// 3 texts x 2 images; texts 0, 1 show image 0, text 2 image 1.
	scores := []float32{
		0.9, 0.1, // text 0: image 0 first
		0.2, 0.8, // text 1: image 0 second
		0.3, 0.7, // text 2: image 1 first
	}
	m := ITRMetrics(scores, 3, 2, []int{0, 0, 1}, [][]int{{0, 1}, {2}})
	want := map[string]float64{
		"img_r1": 2.0 / 3, "img_r5": 1, "img_r10": 1,
		// column 0: text 0 (0.9) first; column 1: text 1 (0.8) first, text 2 second.
		"txt_r1": 0.5, "txt_r5": 1, "txt_r10": 1,
		// itm_eval.py also counts the row index: texts 0 (R@1..10), 1 and 2 (R@5, R@10).
		"img_r1_official": 3.0 / 3, "img_r5_official": 6.0 / 3, "img_r10_official": 6.0 / 3,
	}
	for k, v := range want {
		if math.Abs(m[k]-v) > 1e-12 {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if math.Abs(m["r_mean"]-(m["img_r_mean"]+m["txt_r_mean"])/2) > 1e-12 {
		t.Errorf("r_mean %v", m["r_mean"])
	}
	if RankOf([]float32{1, 2, 1, 1}, 2) != 2 {
		t.Error("RankOf: a tie ranks after the lower index")
	}
}
