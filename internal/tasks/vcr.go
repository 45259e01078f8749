package tasks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// VCR model surgery (init_type_embedding, init_word_embedding of the
// official model/vcr.py and model/pretrain_vcr.py): the type table grows
// to VCRTypes rows, the new rows copies of row 0 (the text type), and the
// word table by VCRExtraWords rows drawn from N(0, initializer_range), the
// special tokens (person tags) the VCR txt_dbs use.
const (
	VCRTypes      = 4
	VCRExtraWords = 81
)

// VCRTypeRowsFrom are the rows the third and fourth types start as.
var VCRTypeRowsFrom = []int{0, 0}

// checkpoint_from values (train_vcr.py's --checkpoint_from).
const (
	// CheckpointFromPretrain loads a first-stage checkpoint (two token
	// types, the BERT vocabulary) and grows the tables after loading; the
	// original's default.
	CheckpointFromPretrain = "pretrain"
	// CheckpointFromVCRPretrain grows the tables first and loads a
	// checkpoint that has them grown already (the second-stage
	// pretraining's, or a VCR fine-tuned one), keeping what it lacks as
	// initialised.
	CheckpointFromVCRPretrain = "vcr_pretrain"
)

// GrowVCRTables applies VCR's surgery to m: the type table to VCRTypes
// rows (rows 2 and 3 copied from row 0), the word table (and a tied MLM
// decoder's bias) to words rows. A model that has them already is left as
// it is.
func GrowVCRTables(m *model.Model, words int) error {
	if err := m.GrowTypeVocab(VCRTypes, VCRTypeRowsFrom); err != nil {
		return err
	}
	return m.GrowWordVocab(words)
}

// tableRows returns the first dimension of a checkpoint tensor (0 if absent).
func tableRows(sd *ckpt.StateDict, name string) int {
	if sd == nil {
		return 0
	}
	for _, k := range sd.Keys {
		if model.CanonicalKey(k) == name && len(sd.Tensors[k].Shape) == 2 {
			return sd.Tensors[k].Shape[0]
		}
	}
	return 0
}

// HasVCRTables reports whether sd has VCR's grown token type table
// (VCRTypes rows): a second-stage pretraining or VCR checkpoint.
func HasVCRTables(sd *ckpt.StateDict) bool {
	return tableRows(sd, model.TypeEmbeddingName) == VCRTypes
}

// LoadVCRTables loads sd into m with VCR's surgery, for fine-tuning and
// second-stage pretraining alike: a checkpoint whose type table has
// VCRTypes rows is loaded after the tables are grown to its sizes, any
// other one before (and the tables are grown after). from is the
// configured checkpoint_from ("" skips the check, as on a resume or in
// eval): "pretrain" refuses a grown checkpoint and "vcr_pretrain" an
// ungrown one, where the original would fail on a size mismatch.
func LoadVCRTables(m *model.Model, sd *ckpt.StateDict, source, from string, partial bool) (model.LoadReport, error) {
	base := m.Cfg.VocabSize
	if m.Cfg.TypeVocabSize == VCRTypes {
		base -= VCRExtraWords // the model config has the grown tables already
	}
	types, words := tableRows(sd, model.TypeEmbeddingName), tableRows(sd, model.WordEmbeddingName)
	grown := types == VCRTypes
	switch {
	case sd == nil:
	case from == CheckpointFromPretrain && grown:
		return model.LoadReport{}, fmt.Errorf("checkpoint %s has VCR's grown tables (%d token types, %d words), which checkpoint_from %q does not expect: set checkpoint_from: %s to fine-tune from it",
			source, types, words, from, CheckpointFromVCRPretrain)
	case from == CheckpointFromVCRPretrain && !grown:
		return model.LoadReport{}, fmt.Errorf("checkpoint %s has %d token types and %d words, not VCR's grown tables (%d and %d) that checkpoint_from %q expects: give the second-stage checkpoint (uniter pretrain on the VCR dbs) or set checkpoint_from: %s",
			source, types, words, VCRTypes, base+VCRExtraWords, from, CheckpointFromPretrain)
	case from != "" && from != CheckpointFromPretrain && from != CheckpointFromVCRPretrain:
		return model.LoadReport{}, fmt.Errorf("checkpoint_from %q: want %s or %s", from, CheckpointFromPretrain, CheckpointFromVCRPretrain)
	}
	if grown {
		if words != base+VCRExtraWords {
			return model.LoadReport{}, fmt.Errorf("checkpoint %s: %d token types but %d words, want %d (the model's %d plus VCR's %d)", source, types, words, base+VCRExtraWords, base, VCRExtraWords)
		}
		if err := GrowVCRTables(m, words); err != nil {
			return model.LoadReport{}, err
		}
	}
	rep, err := loadWeights(m, sd, source, partial)
	if err != nil {
		return rep, err
	}
	return rep, GrowVCRTables(m, base+VCRExtraWords)
}

// VCR is visual commonsense reasoning: each answer (Q->A) or rationale
// (QA->R) choice is a row, scored by the official head vcr_output,
// Linear(H,2H) -> ReLU -> LayerNorm(2H) -> Linear(2H,2), on the pooled
// [CLS]. Training: 2-way cross-entropy per row against "this is the right
// choice", mean over rows. Evaluation: a choice's score is its class-1
// logit; Q->A picks the best of four answers, QA->R the best of the four
// rationales after the true answer, Q->AR needs both right.
type VCR struct {
	backbone
	from   string
	all    bool
	dense  *model.Linear // vcr_output.0
	ln     *model.LayerNorm
	out    *model.Linear // vcr_output.3
	hidden model.Buf
	act    model.Buf
	normed model.Buf
	logits model.Buf
	dlog   model.Buf
	dn     model.Buf
	da     model.Buf
	dpool  model.Buf
	loss   model.Buf
}

// NewVCR registers the VCR head on m (the table surgery happens in Load).
// from is checkpoint_from, checked when Load reads the configured initial
// checkpoint ("" checks nothing); all makes evaluation sets score every
// rationale after every answer (VCRTestRows) even with targets, as
// inf_vcr.py does.
func NewVCR(m *model.Model, from string, all, fp16 bool) *VCR {
	h := m.Cfg.HiddenSize
	return &VCR{backbone: backbone{m: m, fp16: fp16}, from: from, all: all,
		dense: model.NewLinear(m.Params, "vcr_output.0", h, 2*h),
		ln:    model.NewLayerNorm(m.Params, "vcr_output.2", 2*h),
		out:   model.NewLinear(m.Params, "vcr_output.3", 2*h, 2)}
}

// Name is "vcr".
func (v *VCR) Name() string { return "vcr" }

// Classes is the width of a validation example's scores: four Q->A and
// four QA->R choices (VCRTestRows on a split without targets).
func (v *VCR) Classes() int { return data.VCRValRows }

// Open reads a VCR txt_db with its img_dbs; img is the detected-box db
// alone (OpenVCR takes both).
func (v *VCR) Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	return v.OpenVCR(txt, nil, img, o)
}

// OpenVCR reads a VCR txt_db with its ground-truth-box db gt and its
// detected-box db det (either may be nil): a training set when o.Train.
func (v *VCR) OpenVCR(txt *db.TxtDB, gt, det *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	return data.NewVCRSet(txt, gt, det, o.Train, v.all, o)
}

// OpenVCRFinal reads an evaluation split in the test layout
// (VCRTestRows: every rationale after every answer) whatever v was built
// with: train_vcr.py's final validation on VcrEvalDataset("test").
func (v *VCR) OpenVCRFinal(txt *db.TxtDB, gt, det *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	o.Train = false
	return data.NewVCRSet(txt, gt, det, false, true, o)
}

// Load copies a checkpoint with VCR's surgery (LoadVCRTables). With
// checkpoint_from vcr_pretrain the checkpoint may lack parameters, which
// keep their initialisation, as the original's non-strict load.
func (v *VCR) Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	if v.from == CheckpointFromVCRPretrain {
		partial = true
	}
	rep, err := LoadVCRTables(v.m, sd, source, v.from, partial)
	// Later loads (a resume) check nothing: the run's own checkpoints are grown.
	v.from = ""
	return rep, err
}

// LossUnits is the batch's rows: the loss is a mean over them.
func (v *VCR) LossUnits(_ string, b *data.Batch) int { return b.B }

// head runs vcr_output on the pooled rows into logits [B, 2].
func (v *VCR) head() *compute.Tensor {
	be, h := v.m.Backend(), v.m.Cfg.HiddenSize
	pooled := v.m.Pooled()
	n := pooled.Rows()
	hid := v.hidden.F32(be, n, 2*h)
	v.dense.Fwd(be, hid, pooled)
	act := v.act.F32(be, n, 2*h)
	be.ReluFwd(act, hid)
	nm := v.normed.F32(be, n, 2*h)
	v.ln.Fwd(be, nm, act)
	logits := v.logits.F32(be, n, 2)
	v.out.Fwd(be, logits, nm)
	return logits
}

// headBackward propagates dlogits [B, 2] into GradPooled.
func (v *VCR) headBackward(dlogits *compute.Tensor) {
	be, h := v.m.Backend(), v.m.Cfg.HiddenSize
	n := dlogits.Rows()
	dn := v.dn.F32(be, n, 2*h)
	v.out.Bwd(be, dn, dlogits, v.normed.F32(be, n, 2*h), 0)
	da := v.da.F32(be, n, 2*h)
	v.ln.Bwd(be, da, dn)
	be.ReluBwd(da, v.act.F32(be, n, 2*h), da)
	dp := v.dpool.F32(be, n, h)
	v.dense.Bwd(be, dp, da, v.m.Pooled(), 0)
	be.Add(v.m.GradPooled(), v.m.GradPooled(), dp)
}

// Step runs the head on b: a training batch (VCRChoiceRows rows an
// example, Labels the right choices) or an evaluation one (VCRValRows or
// VCRTestRows, Labels 4*qa_target+qar_target, nil without targets).
// Result.Logits are each example's choice scores (the class-1 logits),
// Result.Pred 4*Q->A choice + QA->R choice, the rationale chosen after the
// true answer (after the predicted one without targets); training: the
// choice.
func (v *VCR) Step(_ string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("vcr: %w", err)
	}
	rows := b.RowsPerExample
	if (rows != data.VCRChoiceRows && rows != data.VCRValRows && rows != data.VCRTestRows) || b.B%rows != 0 {
		return Result{}, fmt.Errorf("vcr: batch has %d rows per example, want %d (training), %d or %d (evaluation)", rows, data.VCRChoiceRows, data.VCRValRows, data.VCRTestRows)
	}
	ex := b.B / rows
	train := rows == data.VCRChoiceRows
	if b.Labels != nil {
		if len(b.Labels) != ex {
			return Result{}, fmt.Errorf("vcr: batch of %d examples has %d labels", ex, len(b.Labels))
		}
		hi := int32(4)
		if !train {
			hi = 16
		}
		for i, y := range b.Labels {
			if y < 0 || y >= hi {
				return Result{}, fmt.Errorf("vcr: example %s: target %d, want 0 to %d", b.IDs[i], y, hi-1)
			}
		}
	}
	if backward && (!train || b.Labels == nil) {
		return Result{}, fmt.Errorf("vcr: can train only on %d-row choice batches with targets", data.VCRChoiceRows)
	}
	if err := v.forward(b, false); err != nil {
		return Result{}, fmt.Errorf("vcr: %w", err)
	}
	be := v.m.Backend()
	logits := v.head()
	host := be.ToF32(logits)
	scores := make([]float32, b.B)
	for r := range b.B {
		scores[r] = host[2*r+1]
	}
	res := Result{Examples: ex, Tokens: b.Tokens(), Logits: be.FromF32(scores, ex, rows), Pred: make([]int32, ex)}
	if train {
		for e := range ex {
			res.Pred[e] = int32(argmax4(scores[e*rows:]))
		}
	} else {
		for e := range ex {
			s := scores[e*rows : (e+1)*rows]
			qa := argmax4(s)
			// QA->R is judged after the true answer (train_vcr.py); without
			// targets, after the predicted one.
			given := qa
			if b.Labels != nil {
				given = int(b.Labels[e]) / 4
			}
			res.Pred[e] = int32(4*qa + argmax4(vcrRationales(s, given)))
		}
	}
	if b.Labels == nil {
		return res, nil
	}
	res.Count = ex
	if !train {
		// train_vcr.py's validate: cross-entropy over the four Q->A scores
		// plus over the four QA->R scores after the true answer.
		for e, y := range b.Labels {
			s := scores[e*rows : (e+1)*rows]
			qa, qar := int(y)/4, int(y)%4
			res.LossSum += xent4(s[:4], qa) + xent4(vcrRationales(s, qa), qar)
			if res.Pred[e] == y {
				res.Correct++
			}
		}
		res.Loss = res.LossSum / float64(ex)
		res.Score = float64(res.Correct)
		return res, nil
	}
	labels := make([]int32, b.B)
	for e, y := range b.Labels {
		labels[e*rows+int(y)] = 1
		if res.Pred[e] == y {
			res.Correct++
		}
	}
	loss := v.loss.F32(be, b.B)
	var dlogits *compute.Tensor
	if backward {
		dlogits = v.dlog.F32(be, b.B, 2)
	}
	be.SoftmaxXent(loss, dlogits, logits, be.FromI32(labels, b.B), -1, gradScale/float32(b.B))
	sum := be.Sum(loss)
	res.Loss = sum / float64(b.B)
	// LossSum per example: the four rows' cross-entropies.
	res.LossSum = sum
	res.Score = float64(res.Correct)
	if backward {
		v.headBackward(dlogits)
		v.backward()
	}
	return res, nil
}

// vcrRationales returns the four QA->R scores of an evaluation example
// after answer a: the last four of a validation example, the a-th group of
// four of a test-layout one.
func vcrRationales(s []float32, a int) []float32 {
	if len(s) == data.VCRValRows {
		return s[4:8]
	}
	return s[4+4*a : 8+4*a]
}

// argmax4 is the first index of the largest of s[0:4], as torch's max.
func argmax4(s []float32) int {
	best := 0
	for k := 1; k < 4; k++ {
		if s[k] > s[best] {
			best = k
		}
	}
	return best
}

// xent4 is the cross-entropy of the scores s[0:4] against class y.
func xent4(s []float32, y int) float64 {
	m := math.Inf(-1)
	for _, x := range s[:4] {
		m = math.Max(m, float64(x))
	}
	z := 0.0
	for _, x := range s[:4] {
		z += math.Exp(float64(x) - m)
	}
	return m + math.Log(z) - float64(s[y])
}

// keepsLogits makes an evaluation keep the scores: VCR's prediction files
// are the scores themselves.
func (v *VCR) keepsLogits() {}

// keepsLogits reports whether task's evaluations keep every example's
// scores whether or not --save-logits asks for them.
func keepsLogits(task Downstream) bool {
	_, ok := task.(interface{ keepsLogits() })
	return ok
}

// Metrics are acc_qa (Q->A), acc_qar (QA->R after the true answer), acc
// (Q->AR: both right), loss (the Q->A plus the QA->R cross-entropy per
// example, train_vcr.py's vcr_qa_loss + vcr_qar_loss) and n.
func (v *VCR) Metrics(e *Eval) map[string]float64 {
	m := meanMetrics(e)
	if !e.Labelled() {
		return m
	}
	qa, qar := 0, 0
	for i, y := range e.Labels {
		p := e.Pred[i]
		if p/4 == y/4 {
			qa++
		}
		if p%4 == y%4 {
			qar++
		}
	}
	m["acc_qa"] = float64(qa) / float64(e.N)
	m["acc_qar"] = float64(qar) / float64(e.N)
	return m
}

// scoreRows splits the kept scores into one row per example.
func (v *VCR) scoreRows(e *Eval) ([][]float32, error) {
	n := len(e.IDs)
	if n == 0 {
		return nil, nil
	}
	if len(e.Logits)%n != 0 {
		return nil, fmt.Errorf("vcr: %d scores for %d examples", len(e.Logits), n)
	}
	w := len(e.Logits) / n
	out := make([][]float32, n)
	for i := range out {
		out[i] = e.Logits[i*w : (i+1)*w]
	}
	return out, nil
}

// Results renders {qid: [scores]}: the format of train_vcr.py's results
// files and of inf_vcr.py's results_{checkpoint}_all.json (there the 20
// scores of the test layout).
func (v *VCR) Results(e *Eval, _ bool) (string, []byte, error) {
	rows, err := v.scoreRows(e)
	if err != nil {
		return "", nil, err
	}
	m := make(map[string][]float32, len(rows))
	for i, s := range rows {
		m[e.IDs[i]] = s
	}
	b, err := json.Marshal(m)
	return ".json", b, err
}

// VCRSubmissionCSV renders inf_vcr.py's save_for_submission csv from an
// evaluation in the test layout (20 scores an example): a header annot_id,
// answer_0..3, rationale_conditioned_on_a{0..3}_{0..3}, then one line per
// example ordered by the number after the id's first "-" (val-123 ->
// 123), floats as Python prints them.
func VCRSubmissionCSV(e *Eval) ([]byte, error) {
	n := len(e.IDs)
	if n == 0 || len(e.Logits) != n*data.VCRTestRows {
		return nil, fmt.Errorf("vcr: the submission csv needs %d scores an example (the test layout), have %d for %d examples", data.VCRTestRows, len(e.Logits), n)
	}
	order := make([]int, n)
	keys := make([]int64, n)
	for i, id := range e.IDs {
		order[i] = i
		parts := strings.Split(id, "-")
		if len(parts) < 2 {
			return nil, fmt.Errorf("vcr: id %q: want split-number (the submission orders by the number)", id)
		}
		k, err := strconv.ParseInt(parts[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("vcr: id %q: want split-number (the submission orders by the number)", id)
		}
		keys[i] = k
	}
	sort.SliceStable(order, func(a, b int) bool { return keys[order[a]] < keys[order[b]] })
	var buf bytes.Buffer
	buf.WriteString("annot_id")
	for _, g := range []string{"answer", "rationale_conditioned_on_a0", "rationale_conditioned_on_a1", "rationale_conditioned_on_a2", "rationale_conditioned_on_a3"} {
		for k := range 4 {
			fmt.Fprintf(&buf, ",%s_%d", g, k)
		}
	}
	buf.WriteByte('\n')
	for _, i := range order {
		buf.WriteString(e.IDs[i])
		for _, x := range e.Logits[i*data.VCRTestRows : (i+1)*data.VCRTestRows] {
			buf.WriteByte(',')
			buf.WriteString(db.PyFloat(float64(x)))
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

// SavedLogits are the rows --save-logits writes for task: VCR's [n, 8]
// (four Q->A scores, then the four QA->R scores after the true answer,
// picked from the test layout when the split has targets) or [n, 20]
// without targets; other tasks' [n, Classes] as kept.
func SavedLogits(task Downstream, e *Eval) ([]int, []float32) {
	v, ok := task.(*VCR)
	n := len(e.IDs)
	if !ok || n == 0 {
		return []int{n, task.Classes()}, e.Logits
	}
	rows, err := v.scoreRows(e)
	if err != nil || len(rows[0]) != data.VCRTestRows || !e.Labelled() {
		return []int{n, len(e.Logits) / n}, e.Logits
	}
	out := make([]float32, 0, n*data.VCRValRows)
	for i, s := range rows {
		qa := int(e.Labels[i]) / 4
		out = append(append(out, s[:4]...), s[4+4*qa:8+4*qa]...)
	}
	return []int{n, data.VCRValRows}, out
}

// LoadVCRPretrain loads sd into a pretraining model for the second-stage
// VCR pretraining (pretrain_vcr.py), with VCR's surgery (LoadVCRTables).
// When the tables are grown here (sd is a first-stage checkpoint, or nil),
// the MLM head is a new one, as init_word_embedding builds a fresh
// BertOnlyMLMHead tied to the new table: its transform takes PyTorch's
// default nn.Linear init (U(-1/sqrt(H), 1/sqrt(H)), drawn from seed),
// its LayerNorm ones and zeros, its bias zeros, whatever the checkpoint
// held. A checkpoint grown already (a resume, a second-stage one) keeps
// its head.
func LoadVCRPretrain(m *model.Model, sd *ckpt.StateDict, source string, partial bool, seed uint64) (model.LoadReport, error) {
	grown := tableRows(sd, model.TypeEmbeddingName) == VCRTypes
	rep, err := LoadVCRTables(m, sd, source, "", partial)
	if err != nil || grown {
		return rep, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x7c8))
	h := m.Cfg.HiddenSize
	bound := 1 / math.Sqrt(float64(h))
	for _, p := range []struct {
		name string
		fill func(i int) float32
	}{
		{"cls.predictions.transform.dense.weight", func(int) float32 { return float32((2*rng.Float64() - 1) * bound) }},
		{"cls.predictions.transform.dense.bias", func(int) float32 { return float32((2*rng.Float64() - 1) * bound) }},
		{"cls.predictions.transform.LayerNorm.weight", func(int) float32 { return 1 }},
		{"cls.predictions.transform.LayerNorm.bias", func(int) float32 { return 0 }},
		{"cls.predictions.bias", func(int) float32 { return 0 }},
	} {
		q := m.Params.Get(p.name)
		if q == nil {
			return rep, fmt.Errorf("vcr pretraining: the model has no %s", p.name)
		}
		v := make([]float32, q.Numel())
		for i := range v {
			v[i] = p.fill(i)
		}
		if err := m.Params.Set(p.name, q.Shape, v); err != nil {
			return rep, err
		}
	}
	return rep, nil
}
