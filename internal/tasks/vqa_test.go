package tasks

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// headResult is what the head part of a downstream step measured.
type headResult struct {
	logits        []float32
	pred          []int32
	loss, lossSum float64
	score         float64
}

// vqaHead is VQA.Step after the backbone forward: the head and its loss on
// whatever m.Pooled() holds (the golden input), with the backward of
// loss*gradScale into GradPooled and the head's parameters. It stops
// before the backbone's backward. TestVQAStepMatchesHead checks it against
// Step itself.
func vqaHead(v *VQA, targets []float32, backward bool, gradScale float32) headResult {
	m := v.m
	be, n, c := m.Backend(), m.Pooled().Rows(), len(v.answers)
	hid := v.mlp.Fwd(be, m.Pooled())
	logits := v.logits.F32(be, n, c)
	v.out.Fwd(be, logits, hid)
	res := headResult{logits: be.ToF32(logits), pred: argmax(be, &v.pred, logits)}
	loss := v.loss.F32(be, n)
	var dlogits *compute.Tensor
	if backward {
		dlogits = v.dlogits.F32(be, n, c)
	}
	be.BCEWithLogits(loss, dlogits, logits, be.FromF32(targets, n, c), gradScale/float32(n))
	res.lossSum = be.Sum(loss)
	res.loss = res.lossSum / float64(n)
	for i, p := range res.pred {
		res.score += float64(targets[i*c+int(p)])
	}
	if backward {
		dh := v.dh.F32(be, n, 2*m.Cfg.HiddenSize)
		v.out.Bwd(be, dh, dlogits, hid, 0)
		dpool := v.dpool.F32(be, n, m.Cfg.HiddenSize)
		v.mlp.Bwd(be, dpool, dh)
		be.Add(m.GradPooled(), m.GradPooled(), dpool)
	}
	return res
}

func testAnswers(c int) []string {
	a := make([]string, c)
	for i := range a {
		a[i] = fmt.Sprintf("answer%d", i)
	}
	return a
}

// goldenVQA builds the VQA head with the golden weights on a backbone
// whose last forward ran on a batch of the golden size, its pooled output
// replaced by the golden one.
func goldenVQA(t *testing.T, r *ref) (*VQA, *data.Batch, []string) {
	t.Helper()
	sh := r.tensor("vqa/targets").Shape
	n, c := sh[0], sh[1]
	m := headModel(t, 0, 1)
	v, err := NewVQA(m, "vqa", testAnswers(c), false)
	if err != nil {
		t.Fatal(err)
	}
	names := setRefParams(t, r, m, "vqa")
	m.SetTrain(false)
	b := headBatch(t, m.Cfg, []int{5, 7, 4, 6, 3}[:n], 1, nil, r.f32("vqa/targets"), 0)
	if err := v.forward(b, false); err != nil {
		t.Fatal(err)
	}
	setHost(m.Backend(), m.Pooled(), r.f32("vqa/pooled"))
	return v, b, names
}

// TestVQAHeadMatchesPyTorch compares the VQA head (vqa_output and the
// BCE of train_vqa.py) on the golden pooled input with PyTorch: logits,
// the training loss (mean over every logit times the answers), the
// validation sum, the score, the gradient w.r.t. the pooled output and
// every head parameter's gradient; then a second step scaled by 2
// accumulates.
func TestVQAHeadMatchesPyTorch(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	v, _, names := goldenVQA(t, r)
	m := v.m
	be := m.Backend()
	targets := r.f32("vqa/targets")
	m.Params.ZeroGrad()
	res := vqaHead(v, targets, true, 1)

	worst := relErr(res.logits, r.f32("vqa/logits"))
	checkRel(t, "logits", res.logits, r.f32("vqa/logits"), refTol)
	checkScalar(t, "loss", res.loss, r.scalar("vqa/loss"), refTol)
	checkScalar(t, "validation loss sum", res.lossSum, r.scalar("vqa/val_loss_sum"), refTol)
	if want := r.scalar("vqa/score"); math.Abs(res.score-want) > 1e-6 {
		t.Errorf("score = %v, PyTorch %v", res.score, want)
	}
	gp := be.ToF32(m.GradPooled())
	checkRel(t, "grad pooled", gp, r.f32("vqa/grad/pooled"), refTol)
	worst = math.Max(worst, relErr(gp, r.f32("vqa/grad/pooled")))
	worst = math.Max(worst, checkHeadGrads(t, r, m, "vqa", names, 1))
	t.Logf("VQA: worst relative error %.3g", worst)

	vqaHead(v, targets, true, 2)
	checkHeadGrads(t, r, m, "vqa", names, 3)
	want := slices.Clone(r.f32("vqa/grad/pooled"))
	for i := range want {
		want[i] *= 3
	}
	checkRel(t, "accumulated grad pooled", be.ToF32(m.GradPooled()), want, refTol)
}

// TestVQAStepMatchesHead checks that VQA.Step is vqaHead after the
// backbone forward and followed by the backbone backward: the same
// logits, predictions, loss, validation sum, score and every gradient,
// with a gradient scale; an evaluation step leaves the gradients alone,
// and a test split (no targets) predicts only.
func TestVQAStepMatchesHead(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	v, b, _ := goldenVQA(t, r)
	m := v.m
	be := m.Backend()
	const scale = 0.5

	// Targets that some of the backbone's own predictions score through.
	first, err := v.Step("vqa", b, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := v.Classes()
	for i, p := range first.Pred {
		if i%2 == 0 {
			b.Targets[i*c+int(p)] = 0.3 * float32(i+1)
		}
	}

	m.Params.ZeroGrad()
	res, err := v.Step("vqa", b, true, scale)
	if err != nil {
		t.Fatal(err)
	}
	stepGrads := allGrads(m)
	logits := be.ToF32(res.Logits)

	m.Params.ZeroGrad()
	if err := v.forward(b, false); err != nil {
		t.Fatal(err)
	}
	h := vqaHead(v, b.Targets, true, scale)
	v.backward()
	if !slices.Equal(logits, h.logits) || !slices.Equal(res.Pred, h.pred) {
		t.Errorf("Step logits %v pred %v, head %v %v", logits, res.Pred, h.logits, h.pred)
	}
	if res.Loss != h.loss || res.LossSum != h.lossSum || res.Score != h.score {
		t.Errorf("Step loss %v sum %v score %v, head %v %v %v", res.Loss, res.LossSum, res.Score, h.loss, h.lossSum, h.score)
	}
	if res.Score == 0 {
		t.Error("score 0: the targets do not exercise it")
	}
	if res.Count != b.B || res.Examples != b.B || res.Tokens != b.Tokens() {
		t.Errorf("count %d examples %d tokens %d, want %d %d %d", res.Count, res.Examples, res.Tokens, b.B, b.B, b.Tokens())
	}
	if v.LossUnits("vqa", b) != b.B {
		t.Errorf("loss units %d, want %d", v.LossUnits("vqa", b), b.B)
	}
	compareGrads(t, m, stepGrads, 0)

	ev, err := v.Step("vqa", b, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Loss != res.Loss || ev.Score != res.Score {
		t.Errorf("evaluation step loss %v score %v, training step %v %v", ev.Loss, ev.Score, res.Loss, res.Score)
	}
	compareGrads(t, m, stepGrads, 0)

	test := *b
	test.Targets, test.TargetDim = nil, 0
	pr, err := v.Step("vqa", &test, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if pr.Count != 0 || pr.LossSum != 0 || !slices.Equal(pr.Pred, res.Pred) {
		t.Errorf("test split: count %d loss sum %v pred %v, want 0, 0, %v", pr.Count, pr.LossSum, pr.Pred, res.Pred)
	}
	if _, err := v.Step("vqa", &test, true, 1); err == nil {
		t.Error("training on a split without targets: no error")
	}
	wrong := *b
	wrong.TargetDim, wrong.Targets = 3, make([]float32, 3*b.B)
	if _, err := v.Step("vqa", &wrong, false, 1); err == nil {
		t.Error("targets of another answer vocabulary: no error")
	}
}

// TestVQAFiniteDifferences checks the VQA head's backward against central
// differences of its training loss w.r.t. the pooled input and a sample of
// every head parameter's entries, at the golden point.
func TestVQAFiniteDifferences(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	v, _, names := goldenVQA(t, r)
	m := v.m
	be := m.Backend()
	targets := r.f32("vqa/targets")
	m.Params.ZeroGrad()
	vqaHead(v, targets, true, 1)
	loss := func() float64 { return vqaHead(v, targets, false, 1).loss }
	const eps, tol = 1e-2, 1e-3
	g := be.ToF32(m.GradPooled())
	worst := checkFD(t, be, "pooled", m.Pooled(), g, fdCoords(g, 4, 1, nil), eps, tol, false, loss)
	for k, name := range names {
		p := m.Params.Get(name)
		g := be.ToF32(p.G)
		worst = math.Max(worst, checkFD(t, be, name, p.W, g, fdCoords(g, 3, uint64(k), nil), eps, tol, false, loss))
	}
	t.Logf("VQA finite differences: worst relative error %.3g", worst)
}

// TestVQAEvalMetrics reduces the golden batch's step as an evaluation
// does: loss is the BCE sum per example, acc the score per example; the
// results are the official inference file or the training one.
func TestVQAEvalMetrics(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	v, b, _ := goldenVQA(t, r)
	h := vqaHead(v, r.f32("vqa/targets"), false, 1)
	var e Eval
	if err := e.Add(v, b, Result{Examples: b.B, Count: b.B, LossSum: h.lossSum, Score: h.score, Pred: h.pred}); err != nil {
		t.Fatal(err)
	}
	met := v.Metrics(&e)
	n := float64(b.B)
	checkScalar(t, "loss", met["loss"], r.scalar("vqa/val_loss_sum")/n, refTol)
	checkScalar(t, "acc", met["acc"], r.scalar("vqa/score")/n, 1e-6)
	if met["n"] != n {
		t.Errorf("n = %v, want %v", met["n"], n)
	}
	if err := e.Add(v, b, Result{Examples: b.B, Pred: h.pred}); err == nil {
		t.Error("a split mixing labelled and unlabelled batches: no error")
	}

	b.IDs = []string{"7", "x1", "9", "10", "11"}
	e = Eval{}
	e.Add(v, b, Result{Examples: b.B, Count: b.B, Pred: h.pred})
	_, out, err := v.Results(&e, false)
	if err != nil {
		t.Fatal(err)
	}
	var inf []map[string]any
	if err := json.Unmarshal(out, &inf); err != nil {
		t.Fatal(err)
	}
	if len(inf) != b.B || inf[0]["question_id"] != float64(7) || inf[1]["question_id"] != "x1" || inf[0]["answer"] != v.answers[h.pred[0]] {
		t.Errorf("inference results %s", out)
	}
	_, out, err = v.Results(&e, true)
	if err != nil {
		t.Fatal(err)
	}
	var tr map[string]string
	if err := json.Unmarshal(out, &tr); err != nil {
		t.Fatal(err)
	}
	if len(tr) != b.B || tr["x1"] != v.answers[h.pred[1]] {
		t.Errorf("training results %s", out)
	}
}

// allGrads copies every parameter's gradient to the host.
func allGrads(m *model.Model) map[string][]float32 {
	out := map[string][]float32{}
	for _, p := range m.Params.List() {
		out[p.Name] = m.Backend().ToF32(p.G)
	}
	return out
}

// compareGrads checks every parameter gradient against want (relative
// error at most tol; 0 asks for equality).
func compareGrads(t *testing.T, m *model.Model, want map[string][]float32, tol float64) {
	t.Helper()
	nonzero := 0
	for _, p := range m.Params.List() {
		got := m.Backend().ToF32(p.G)
		if e := relErr(got, want[p.Name]); !(e <= tol) {
			t.Errorf("grad %s: relative error %.3g against Step", p.Name, e)
		}
		if slices.ContainsFunc(got, func(x float32) bool { return x != 0 }) {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Error("every gradient is zero")
	}
}
