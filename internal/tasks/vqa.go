package tasks

import (
	"encoding/json"
	"fmt"
	"strconv"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// VQA is visual question answering, and with the three
// VEAnswers visual entailment: the official head vqa_output, Linear(H,2H)
// -> GELU -> LayerNorm(2H) -> Linear(2H, answers), on the pooled [CLS];
// soft-score targets; training loss BCE-with-logits averaged over every
// logit times the number of answers (the reference's instance-level BCE);
// validation loss the BCE summed per example; score the target score of
// the argmax answer.
type VQA struct {
	backbone
	name    string
	answers []string
	mlp     *model.MLP
	out     *model.Linear

	logits, dlogits, dh, dpool, loss, pred model.Buf
}

// NewVQA registers the VQA head for answers (label2ans: index -> answer)
// on m. name is "vqa" or "ve" (VE: answers are VEAnswers).
func NewVQA(m *model.Model, name string, answers []string, fp16 bool) (*VQA, error) {
	if len(answers) == 0 {
		return nil, fmt.Errorf("%s: empty answer vocabulary", name)
	}
	h := m.Cfg.HiddenSize
	v := &VQA{backbone: backbone{m: m, fp16: fp16}, name: name, answers: answers}
	v.mlp = model.NewMLP(m.Params, "vqa_output.0", "vqa_output.2", h, 2*h)
	v.out = model.NewLinear(m.Params, "vqa_output.3", 2*h, len(answers))
	return v, nil
}

// Name is "vqa" or "ve".
func (v *VQA) Name() string { return v.name }

// Classes is the number of answers.
func (v *VQA) Classes() int { return len(v.answers) }

// Open reads a VQA/VE txt_db with its img_db.
func (v *VQA) Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	return data.NewVQASet(txt, img, len(v.answers), o)
}

// Load copies a checkpoint into the model (no surgery for VQA/VE).
func (v *VQA) Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	return loadWeights(v.m, sd, source, partial)
}

// LossUnits is the batch's examples: the loss is a mean over them.
func (v *VQA) LossUnits(_ string, b *data.Batch) int { return b.B }

// Step runs the head on b. A batch without targets (a test split) gives
// predictions only and cannot be trained on.
func (v *VQA) Step(_ string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("%s: %w", v.name, err)
	}
	c := len(v.answers)
	hasTargets := b.Targets != nil
	if hasTargets && (b.TargetDim != c || len(b.Targets) != b.B*c) {
		return Result{}, fmt.Errorf("%s: batch targets have %d answers, the head has %d (ans2label)", v.name, b.TargetDim, c)
	}
	if backward && !hasTargets {
		return Result{}, fmt.Errorf("%s: cannot train on a split without targets", v.name)
	}
	if err := v.forward(b, false); err != nil {
		return Result{}, fmt.Errorf("%s: %w", v.name, err)
	}
	be, n := v.m.Backend(), b.B
	pooled := v.m.Pooled()
	hid := v.mlp.Fwd(be, pooled)
	logits := v.logits.F32(be, n, c)
	v.out.Fwd(be, logits, hid)
	res := Result{Examples: n, Tokens: b.Tokens(), Logits: logits, Pred: argmax(be, &v.pred, logits)}
	if !hasTargets {
		return res, nil
	}
	targets := be.FromF32(b.Targets, n, c)
	loss := v.loss.F32(be, n)
	var dlogits *compute.Tensor
	if backward {
		dlogits = v.dlogits.F32(be, n, c)
	}
	// mean over n*c logits times c answers = sum / n.
	be.BCEWithLogits(loss, dlogits, logits, targets, gradScale/float32(n))
	res.LossSum = be.Sum(loss)
	res.Loss = res.LossSum / float64(n)
	res.Count = n
	for i, p := range res.Pred {
		res.Score += float64(b.Targets[i*c+int(p)])
	}
	if backward {
		dh := v.dh.F32(be, n, 2*v.m.Cfg.HiddenSize)
		v.out.Bwd(be, dh, dlogits, hid, 0)
		dpool := v.dpool.F32(be, n, v.m.Cfg.HiddenSize)
		v.mlp.Bwd(be, dpool, dh)
		be.Add(v.m.GradPooled(), v.m.GradPooled(), dpool)
		v.backward()
	}
	return res, nil
}

// Metrics are acc (VQA score, VE accuracy) and loss (BCE summed over the
// answers, per example).
func (v *VQA) Metrics(e *Eval) map[string]float64 { return meanMetrics(e) }

// Results renders the predicted answers: for uniter eval the official
// inference file [{"answer", "question_id"}] (question ids as integers
// when they are, as inf_vqa.py writes them); for a training run's
// results/ the training scripts' {question_id: answer}.
func (v *VQA) Results(e *Eval, training bool) (string, []byte, error) {
	if training {
		m := make(map[string]string, len(e.IDs))
		for i, id := range e.IDs {
			m[id] = v.answers[e.Pred[i]]
		}
		b, err := json.Marshal(m)
		return ".json", b, err
	}
	type answer struct {
		Answer     string `json:"answer"`
		QuestionID any    `json:"question_id"`
	}
	out := make([]answer, len(e.IDs))
	for i, id := range e.IDs {
		var qid any = id
		if n, err := strconv.ParseInt(id, 10, 64); err == nil {
			qid = n
		}
		out[i] = answer{Answer: v.answers[e.Pred[i]], QuestionID: qid}
	}
	b, err := json.Marshal(out)
	return ".json", b, err
}
