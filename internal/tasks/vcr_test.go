package tasks

import (
	"math"
	"slices"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// The VCR golden data (scripts/vcr_ref.py).
const vcrRef = "../../testdata/finetune/vcr.pt"

// vcrBaseConfig is the golden model before VCR's surgery.
func vcrBaseConfig() model.Config {
	return model.Config{VocabSize: 40, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 4,
		IntermediateSize: 24, HiddenAct: "gelu", MaxPositionEmbeddings: 32, TypeVocabSize: 2,
		InitializerRange: 0.02, ImgDim: 12, ImgLabelDim: data.LabelDim}
}

// refStateDict is the golden model's parameters as a checkpoint.
func refStateDict(r *ref, prefix string) *ckpt.StateDict {
	sd := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for _, k := range r.sd.Keys {
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		x := r.tensor(k)
		sd.Keys = append(sd.Keys, name)
		sd.Tensors[name] = &ckpt.Tensor{Shape: x.Shape, DType: "float32", Float: x.Float}
	}
	return sd
}

// goldenVCR is the base model with the VCR head and the golden (grown)
// checkpoint loaded through Load, as checkpoint_from vcr_pretrain does.
func goldenVCR(t *testing.T, r *ref) *VCR {
	t.Helper()
	m, err := model.New(compute.NewCPU(0), vcrBaseConfig(), 1)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVCR(m, CheckpointFromVCRPretrain, false, false)
	rep, err := v.Load(refStateDict(r, "param/"), "vcr.pt", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Missing)+len(rep.MissingBackbone)+len(rep.Unexpected) > 0 {
		t.Fatalf("load: %s", rep)
	}
	if m.Cfg.TypeVocabSize != VCRTypes || m.Cfg.VocabSize != 40+VCRExtraWords {
		t.Fatalf("after load: %d types, %d words", m.Cfg.TypeVocabSize, m.Cfg.VocabSize)
	}
	m.SetTrain(false)
	return v
}

// vcrBatch collates the golden rows (flat ids and types, row lengths),
// every row with the golden image, rows to an example.
func vcrBatch(t *testing.T, r *ref, prefix string, rows int, labels []int32) *data.Batch {
	t.Helper()
	ids, types, lens := r.i32(prefix+"/ids"), r.i32(prefix+"/types"), r.ints(prefix+"/lens")
	feat, pos := r.f32("img_feat"), r.f32("img_pos")
	var exs []*data.Example
	off := 0
	for i, l := range lens {
		ex := &data.Example{ID: "val-1", InputIDs: ids[off : off+l], TxtTypeIDs: types[off : off+l],
			NBB: len(pos) / data.PosDim, ImgFeat: feat, ImgPos: pos}
		if labels != nil {
			ex.Label = labels[i/rows]
		} else {
			ex.NoLabel = true
		}
		exs = append(exs, ex)
		off += l
	}
	b, err := data.CollateRows(exs, len(feat)/(len(pos)/data.PosDim), rows)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVCRRowsMatchPyTorch checks the row builder against data/vcr.py's
// layout: ids and token types of the validation and test layouts.
func TestVCRRowsMatchPyTorch(t *testing.T) {
	r := loadRefPath(t, vcrRef)
	q := r.i32("ex/q")
	split := func(flat []int32, lens []int) [][]int32 {
		var out [][]int32
		for _, l := range lens {
			out, flat = append(out, flat[:l]), flat[l:]
		}
		return out
	}
	as, rs := split(r.i32("ex/as"), r.ints("ex/as_lens")), split(r.i32("ex/rs"), r.ints("ex/rs_lens"))
	const qa = 1
	layouts := map[string][][2][]int32{}
	for _, a := range as {
		layouts["val"] = append(layouts["val"], [2][]int32{a, nil})
	}
	layouts["test"] = slices.Clone(layouts["val"])
	for _, x := range rs {
		layouts["val"] = append(layouts["val"], [2][]int32{as[qa], x})
	}
	for _, a := range as {
		for _, x := range rs {
			layouts["test"] = append(layouts["test"], [2][]int32{a, x})
		}
	}
	for name, rows := range layouts {
		var ids, types []int32
		for _, ar := range rows {
			i, ty := data.VCRRow(1, 2, q, ar[0], ar[1])
			ids, types = append(ids, i...), append(types, ty...)
		}
		if !slices.Equal(ids, r.i32(name+"/ids")) || !slices.Equal(types, r.i32(name+"/types")) {
			t.Errorf("%s rows: ids %v types %v\nPyTorch ids %v types %v", name, ids, types, r.i32(name+"/ids"), r.i32(name+"/types"))
		}
	}
}

// TestVCRMatchesPyTorch runs VCR's training step (a Q->A and a QA->R
// example, four rows each) on the golden model and compares the logits'
// scores, the loss (cross-entropy per row, mean) and every parameter's
// gradient, the grown tables' included, with PyTorch; then the evaluation
// of the validation layout (8 scores) and the test layout (20 scores):
// scores, the Q->A plus QA->R cross-entropy and the prediction.
func TestVCRMatchesPyTorch(t *testing.T) {
	r := loadRefPath(t, vcrRef)
	v := goldenVCR(t, r)
	m := v.m
	be := m.Backend()
	b := vcrBatch(t, r, "train", data.VCRChoiceRows, r.i32("train/labels"))
	m.Params.ZeroGrad()
	res, err := v.Step("vcr", b, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := r.f32("train/logits")
	scores := make([]float32, len(want)/2)
	for i := range scores {
		scores[i] = want[2*i+1]
	}
	checkRel(t, "scores", be.ToF32(res.Logits), scores, refTol)
	checkScalar(t, "loss", res.Loss, r.scalar("train/loss"), refTol)
	if v.LossUnits("vcr", b) != 8 || res.Examples != 2 || res.Count != 2 {
		t.Errorf("units %d examples %d count %d, want 8 2 2", v.LossUnits("vcr", b), res.Examples, res.Count)
	}
	worst := 0.0
	for _, p := range m.Params.List() {
		w := r.f32("grad/" + p.Name)
		got := be.ToF32(p.G)
		if p.Name == "uniter.encoder.layer.0.attention.self.key.bias" {
			// Exactly 0 in exact arithmetic (the softmax ignores a shift
			// of every key's score): both sides hold float32 rounding.
			if d := relErr(got, make([]float32, len(got))); d > 1e-6 {
				t.Errorf("grad %s: |%g| should be rounding noise", p.Name, d)
			}
			continue
		}
		checkRel(t, "grad "+p.Name, got, w, refTol)
		worst = math.Max(worst, relErr(got, w))
	}
	t.Logf("VCR training step: worst gradient relative error %.3g", worst)

	for _, c := range []struct {
		name string
		rows int
	}{{"val", data.VCRValRows}, {"test", data.VCRTestRows}} {
		eb := vcrBatch(t, r, c.name, c.rows, []int32{4*1 + 3})
		ev, err := v.Step("vcr", eb, false, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRel(t, c.name+" scores", be.ToF32(ev.Logits), r.f32(c.name+"/scores"), refTol)
		checkScalar(t, c.name+" loss sum", ev.LossSum, r.scalar(c.name+"/loss_sum"), refTol)
		if ev.Pred[0] != r.i32(c.name + "/pred")[0] || ev.Count != 1 || ev.Score != float64(ev.Correct) {
			t.Errorf("%s: pred %v count %d score %v correct %d, PyTorch pred %v", c.name, ev.Pred, ev.Count, ev.Score, ev.Correct, r.i32(c.name+"/pred"))
		}
		if _, err := v.Step("vcr", eb, true, 1); err == nil {
			t.Errorf("%s: training on an evaluation batch: no error", c.name)
		}
		unl := vcrBatch(t, r, c.name, c.rows, nil)
		pr, err := v.Step("vcr", unl, false, 1)
		if err != nil || pr.Count != 0 || pr.Pred[0]/4 != ev.Pred[0]/4 {
			t.Errorf("%s without targets: count %d pred %v err %v", c.name, pr.Count, pr.Pred, err)
		}
	}
	bad := vcrBatch(t, r, "train", data.VCRChoiceRows, []int32{4, 0})
	if _, err := v.Step("vcr", bad, true, 1); err == nil {
		t.Error("choice label 4: no error")
	}
}

// TestVCRFiniteDifferences checks VCR's backward against central
// differences of the training loss for a sample of the head's entries,
// the new word rows and the token types 2 and 3.
func TestVCRFiniteDifferences(t *testing.T) {
	r := loadRefPath(t, vcrRef)
	v := goldenVCR(t, r)
	m := v.m
	be := m.Backend()
	b := vcrBatch(t, r, "train", data.VCRChoiceRows, r.i32("train/labels"))
	m.Params.ZeroGrad()
	if _, err := v.Step("vcr", b, true, 1); err != nil {
		t.Fatal(err)
	}
	loss := func() float64 {
		res, err := v.Step("vcr", b, false, 1)
		if err != nil {
			t.Fatal(err)
		}
		return res.Loss
	}
	h := m.Cfg.HiddenSize
	for k, c := range []struct {
		name string
		keep func(int) bool
	}{
		{"vcr_output.0.weight", nil}, {"vcr_output.2.weight", nil}, {"vcr_output.3.weight", nil}, {"vcr_output.3.bias", nil},
		{model.WordEmbeddingName, func(i int) bool { return i/h >= 40 }},
		{model.TypeEmbeddingName, func(i int) bool { return i/h >= 2 }},
	} {
		p := m.Params.Get(c.name)
		g := be.ToF32(p.G)
		// ReLU kinks: one-sided differences where a step crosses one.
		checkFD(t, be, c.name, p.W, g, fdCoords(g, 3, uint64(k), c.keep), 1e-2, 1e-2, true, loss)
	}
}

// TestVCRLoadSurgery checks VCR's table growth against PyTorch's
// init_type_embedding / init_word_embedding: a first-stage (2-type)
// checkpoint loads, then rows 2 and 3 become copies of row 0 and the
// word table gains 81 rows (the old ones kept, the new ~N(0, 0.02));
// checkpoint_from refuses the other kind of checkpoint in one sentence;
// a model config with the grown tables loads a grown checkpoint as it is.
func TestVCRLoadSurgery(t *testing.T) {
	r := loadRefPath(t, vcrRef)
	first := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	base, err := model.New(compute.NewCPU(0), vcrBaseConfig(), 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range base.Params.List() {
		x := base.Backend().ToF32(p.W)
		switch p.Name {
		case model.TypeEmbeddingName:
			x = r.f32("grow/type_before")
		case model.WordEmbeddingName:
			x = r.f32("grow/word_before")
		}
		first.Keys = append(first.Keys, p.Name)
		first.Tensors[p.Name] = &ckpt.Tensor{Shape: p.Shape, DType: "float32", Float: x}
	}
	newModel := func(cfg model.Config, from string) *VCR {
		m, err := model.New(compute.NewCPU(0), cfg, 5)
		if err != nil {
			t.Fatal(err)
		}
		return NewVCR(m, from, false, false)
	}
	v := newModel(vcrBaseConfig(), CheckpointFromPretrain)
	rep, err := v.Load(first, "first.pt", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Missing) != 6 {
		t.Errorf("missing %v, want the 6 vcr_output parameters", rep.Missing)
	}
	be := v.m.Backend()
	typ := be.ToF32(v.m.Params.Get(model.TypeEmbeddingName).W)
	if !slices.Equal(typ, r.f32("grow/type_after")) {
		t.Errorf("type table %v, PyTorch %v", typ, r.f32("grow/type_after"))
	}
	word := be.ToF32(v.m.Params.Get(model.WordEmbeddingName).W)
	h := v.m.Cfg.HiddenSize
	if len(word) != (40+VCRExtraWords)*h || !slices.Equal(word[:40*h], r.f32("grow/word_after_old_rows")) {
		t.Fatalf("word table of %d rows, or its first 40 rows changed", len(word)/h)
	}
	var ss float64
	for _, x := range word[40*h:] {
		ss += float64(x) * float64(x)
	}
	if std := math.Sqrt(ss / float64(VCRExtraWords*h)); std < 0.017 || std > 0.023 {
		t.Errorf("new word rows: std %.4f, want about 0.02", std)
	}

	grown := refStateDict(r, "param/")
	_, err = newModel(vcrBaseConfig(), CheckpointFromPretrain).Load(grown, "vcr_2nd_stage.pt", false)
	if err == nil || !strings.Contains(err.Error(), "set checkpoint_from: vcr_pretrain") {
		t.Errorf("pretrain with a grown checkpoint: %v", err)
	}
	_, err = newModel(vcrBaseConfig(), CheckpointFromVCRPretrain).Load(first, "uniter-base.pt", false)
	if err == nil || !strings.Contains(err.Error(), "checkpoint_from \"vcr_pretrain\" expects") {
		t.Errorf("vcr_pretrain with a first-stage checkpoint: %v", err)
	}
	cfg := vcrBaseConfig()
	cfg.VocabSize, cfg.TypeVocabSize = 40+VCRExtraWords, VCRTypes
	g := newModel(cfg, "")
	if _, err := g.Load(grown, "model.safetensors", false); err != nil {
		t.Fatal(err)
	}
	if g.m.Cfg.VocabSize != 40+VCRExtraWords || g.m.Cfg.TypeVocabSize != VCRTypes {
		t.Errorf("grown config: %d words %d types after load", g.m.Cfg.VocabSize, g.m.Cfg.TypeVocabSize)
	}
	fresh := newModel(vcrBaseConfig(), CheckpointFromPretrain)
	if _, err := fresh.Load(nil, "", false); err != nil || fresh.m.Cfg.VocabSize != 40+VCRExtraWords {
		t.Errorf("fresh model: %v, %d words", err, fresh.m.Cfg.VocabSize)
	}
}

// TestVCRMetrics checks acc_qa, acc_qar and acc (both right) from the
// encoded predictions, and the submission csv's layout and order.
func TestVCRMetrics(t *testing.T) {
	v := &VCR{}
	e := &Eval{IDs: []string{"val-10", "val-2", "val-3"}, Pred: []int32{4*1 + 2, 4*0 + 3, 4*2 + 1},
		Labels: []int32{4*1 + 2, 4*1 + 3, 4*3 + 0}, N: 3, Score: 1, LossSum: 6}
	m := v.Metrics(e)
	if m["acc_qa"] != 1.0/3 || m["acc_qar"] != 2.0/3 || m["acc"] != 1.0/3 || m["loss"] != 2 || m["n"] != 3 {
		t.Errorf("metrics %v", m)
	}
	for i := range 3 * data.VCRTestRows {
		e.Logits = append(e.Logits, float32(i)/4)
	}
	csv, err := VCRSubmissionCSV(e)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(csv)), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "annot_id,answer_0,answer_1,answer_2,answer_3,rationale_conditioned_on_a0_0,") ||
		!strings.HasSuffix(lines[0], ",rationale_conditioned_on_a3_3") || !strings.HasPrefix(lines[1], "val-2,5.0,5.25,") ||
		!strings.HasPrefix(lines[3], "val-10,0.0,0.25,") || len(strings.Split(lines[1], ",")) != 21 {
		t.Errorf("csv:\n%s", csv)
	}
	shape, logits := SavedLogits(v, e)
	if !slices.Equal(shape, []int{3, 8}) || logits[4] != (4+4*1)/4.0 || logits[8+4] != (20+4+4*1)/4.0 {
		t.Errorf("saved logits %v %v", shape, logits[:16])
	}
}

// TestLoadVCRPretrain checks the second-stage pretraining's surgery: a
// first-stage checkpoint's MLM head is replaced by a fresh one tied to the
// grown table (bias zeros over 121 words, LayerNorm ones and zeros, the
// transform within PyTorch's default Linear bound), a grown checkpoint
// (a resume) keeps its head.
func TestLoadVCRPretrain(t *testing.T) {
	newPT := func() *model.Model {
		m, err := model.New(compute.NewCPU(0), vcrBaseConfig(), 9)
		if err != nil {
			t.Fatal(err)
		}
		model.NewPretrainHeads(m)
		return m
	}
	src := newPT()
	be := src.Backend()
	bias := src.Params.Get("cls.predictions.bias")
	be.Copy(bias.W, be.FromF32(slices.Repeat([]float32{0.5}, 40), 40))
	first := src.StateDict()
	m := newPT()
	if _, err := LoadVCRPretrain(m, first, "first.pt", true, 1); err != nil {
		t.Fatal(err)
	}
	b := be.ToF32(m.Params.Get("cls.predictions.bias").W)
	if len(b) != 40+VCRExtraWords || slices.Max(b) != 0 || slices.Min(b) != 0 {
		t.Errorf("MLM bias after the surgery: %d values in [%v, %v], want 121 zeros", len(b), slices.Min(b), slices.Max(b))
	}
	w := be.ToF32(m.Params.Get("cls.predictions.transform.dense.weight").W)
	if bound := float32(0.25); slices.Max(w) > bound || slices.Min(w) < -bound || slices.Max(w) < bound/2 {
		t.Errorf("transform weight in [%v, %v], want U(-0.25, 0.25)", slices.Min(w), slices.Max(w))
	}
	if ln := be.ToF32(m.Params.Get("cls.predictions.transform.LayerNorm.weight").W); slices.Min(ln) != 1 || slices.Max(ln) != 1 {
		t.Error("transform LayerNorm weight not ones")
	}
	if m.Params.Get("cls.predictions.decoder.weight") != m.Params.Get(model.WordEmbeddingName) || m.Cfg.VocabSize != 121 || m.Cfg.TypeVocabSize != 4 {
		t.Error("decoder not tied to the grown word table")
	}
	be.Copy(m.Params.Get("cls.predictions.bias").W, be.FromF32(slices.Repeat([]float32{0.25}, 121), 121))
	grown := m.StateDict()
	r := newPT()
	if _, err := LoadVCRPretrain(r, grown, "step_1", false, 1); err != nil {
		t.Fatal(err)
	}
	if b := be.ToF32(r.Params.Get("cls.predictions.bias").W); len(b) != 121 || b[120] != 0.25 {
		t.Error("a grown checkpoint's MLM head was not kept")
	}
}
