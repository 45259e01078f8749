package tasks

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// ITR is image-text retrieval (model/itm.py's
// UniterForImageTextRetrieval): the head rank_output, Linear(H, 1) on the
// pooled [CLS], scores a text-image pair. Training compares each positive
// pair's sigmoid score with its negatives' by the hinge
// mean(clamp(margin + s_neg - s_pos, 0)):
//
//   - plain (train_itm.py): every example is [positive, NegSize negative
//     images, NegSize negative texts], the mean over the batch's 2*NegSize
//     terms per example;
//   - hard negatives (HardSize > 0, train_itm_hard_negatives.py): one image
//     against 1 + NegSize texts and one text against 1 + NegSize images are
//     scored without gradient in evaluation mode, the HardSize highest
//     scoring negatives of each kept (torch.topk) and trained on as
//     [positive, HardSize negatives] in training mode; the example's loss is
//     the image side's mean plus the text side's, as the original adds the
//     two backward passes.
type ITR struct {
	backbone
	rank     *model.Linear
	margin   float32
	hardSize int
	infBatch int

	// FromITM records that Load initialised rank_output from the
	// checkpoint's ITM "match" row.
	FromITM bool

	scores model.Buf
}

// ITRDefaultInfBatch is the original's inf_minibatch_size: rows per
// scoring forward.
const ITRDefaultInfBatch = 400

// NewITR registers rank_output on m. hardSize 0 is the plain recipe;
// infBatch bounds the rows of one scoring forward (0: 400).
func NewITR(m *model.Model, margin float64, hardSize, infBatch int, fp16 bool) (*ITR, error) {
	if hardSize < 0 {
		return nil, fmt.Errorf("itr: hard_neg_size = %d: must be >= 0", hardSize)
	}
	if infBatch <= 0 {
		infBatch = ITRDefaultInfBatch
	}
	h := m.Cfg.HiddenSize
	return &ITR{backbone: backbone{m: m, fp16: fp16}, rank: model.NewLinear(m.Params, "rank_output", h, 1),
		margin: float32(margin), hardSize: hardSize, infBatch: infBatch}, nil
}

// Name is "itr".
func (r *ITR) Name() string { return "itr" }

// Classes is 1: a pair's score.
func (r *ITR) Classes() int { return 1 }

// HardSize is the number of hard negatives trained on (0: plain recipe).
func (r *ITR) HardSize() int { return r.hardSize }

// Open reads a retrieval txt_db with its img_db.
func (r *ITR) Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	return data.NewITRSet(txt, img, o)
}

// Load copies a checkpoint into the model. A checkpoint without
// rank_output (a pretraining one) initialises it from the ITM head's
// "match" row, itm_output row 1, as the original's init_output.
func (r *ITR) Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	rep, err := loadWeights(r.m, sd, source, partial)
	if err != nil || sd == nil {
		return rep, err
	}
	if _, ok := sd.Tensors["rank_output.weight"]; ok {
		return rep, nil
	}
	h := r.m.Cfg.HiddenSize
	w, b := sd.Tensors["itm_output.weight"], sd.Tensors["itm_output.bias"]
	if w == nil || b == nil || !slices.Equal(w.Shape, []int{2, h}) || len(b.Float) != 2 || len(w.Float) != 2*h {
		return rep, nil
	}
	if err := r.m.Params.Set("rank_output.weight", []int{1, h}, w.Float[h:2*h]); err != nil {
		return rep, err
	}
	if err := r.m.Params.Set("rank_output.bias", []int{1}, b.Float[1:2]); err != nil {
		return rep, err
	}
	r.FromITM = true
	rep.Missing = slices.DeleteFunc(rep.Missing, func(k string) bool { return strings.HasPrefix(k, "rank_output.") })
	rep.PretrainHeads = slices.DeleteFunc(rep.PretrainHeads, func(k string) bool { return strings.HasPrefix(k, "itm_output.") })
	return rep, nil
}

// LossUnits is the batch's examples (positives): each example's loss is
// one mean over its terms.
func (r *ITR) LossUnits(_ string, b *data.Batch) int { return len(b.IDs) }

// Step trains (or, without backward, measures) the ranking loss on b.
func (r *ITR) Step(_ string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("itr: %w", err)
	}
	if r.hardSize > 0 {
		return r.hardStep(b, backward, gradScale)
	}
	if b.Rows != nil {
		return Result{}, fmt.Errorf("itr: a hard-negative batch given to the plain recipe (hard_neg_size 0)")
	}
	group := b.RowsPerExample
	if group < 2 || b.B%group != 0 {
		return Result{}, fmt.Errorf("itr: examples of %d rows, want a positive and at least one negative", group)
	}
	nex := b.B / group
	if err := r.forward(b, false); err != nil {
		return Result{}, fmt.Errorf("itr: %w", err)
	}
	scores := r.head()
	loss, ds := HingeLoss(r.m.Backend().ToF32(scores), group, r.margin)
	res := Result{Loss: loss, Count: nex, Examples: nex, Tokens: b.Tokens(), Logits: scores}
	if backward {
		// mean over examples: the whole batch's mean is what HingeLoss took.
		r.headBackward(ds, gradScale)
		r.backward()
	}
	return res, nil
}

// head runs rank_output on the pooled output of the last forward: [B, 1].
func (r *ITR) head() *compute.Tensor {
	be := r.m.Backend()
	pooled := r.m.Pooled()
	out := r.scores.F32(be, pooled.Rows(), 1)
	r.rank.Fwd(be, out, pooled)
	return out
}

// headBackward adds the gradient ds*gradScale of the scores through
// rank_output into GradPooled.
func (r *ITR) headBackward(ds []float32, gradScale float32) {
	be := r.m.Backend()
	g := make([]float32, len(ds))
	for i, v := range ds {
		g[i] = v * gradScale
	}
	dy := be.FromF32(g, len(g), 1)
	r.rank.Bwd(be, r.m.GradPooled(), dy, r.m.Pooled(), 1)
}

// hardStep runs the hard-negative recipe on each example of b (b.Rows:
// the text side's 1 + NegSize rows, then the image side's).
func (r *ITR) hardStep(b *data.Batch, backward bool, gradScale float32) (Result, error) {
	nex := len(b.IDs)
	if b.Rows == nil {
		return Result{}, fmt.Errorf("itr: a plain batch given to the hard-negative recipe (hard_neg_size %d)", r.hardSize)
	}
	if nex == 0 || len(b.Rows)%(2*nex) != 0 {
		return Result{}, fmt.Errorf("itr: a hard-negative batch of %d examples has %d rows, want two candidate lists each", nex, len(b.Rows))
	}
	per := len(b.Rows) / nex
	cand := per / 2
	if cand-1 < r.hardSize {
		return Result{}, fmt.Errorf("itr: hard_neg_size = %d exceeds the %d negatives per candidate list (negative_size)", r.hardSize, cand-1)
	}
	seed := r.m.StepSeed()
	defer r.m.SetStepSeed(seed)
	res := Result{Count: nex, Examples: nex, Parts: map[string]float64{}}
	for e := range nex {
		rows := b.Rows[e*per : (e+1)*per]
		// The image side first, as the original's loop.
		for side, part := range []struct {
			name string
			rows []*data.Example
		}{{"img_side_loss", rows[cand:]}, {"txt_side_loss", rows[:cand]}} {
			r.m.SetStepSeed(seed ^ uint64(2*e+side+1)*0x9e3779b97f4a7c15)
			loss, tokens, err := r.hardSide(part.rows, backward, gradScale)
			if err != nil {
				return Result{}, err
			}
			res.Loss += loss / float64(nex)
			res.Parts[part.name] += loss / float64(nex)
			res.Tokens += tokens
		}
	}
	return res, nil
}

// hardSide scores one candidate list (the positive first) without
// gradient, keeps the positive and the hardSize top negatives, and runs
// the loss on them in the model's mode; it returns their mean hinge.
func (r *ITR) hardSide(rows []*data.Example, backward bool, gradScale float32) (float64, int, error) {
	train := r.m.Training()
	r.m.SetTrain(false)
	scores, err := r.ScoreRows(rows)
	r.m.SetTrain(train)
	if err != nil {
		return 0, 0, err
	}
	sel := HardNegatives(scores, r.hardSize)
	hard := make([]*data.Example, len(sel))
	for i, k := range sel {
		hard[i] = rows[k]
	}
	hb, err := data.CollateRows(hard, r.m.Cfg.ImgDim, 1)
	if err != nil {
		return 0, 0, err
	}
	defer hb.Release()
	if err := r.forward(hb, false); err != nil {
		return 0, 0, fmt.Errorf("itr: %w", err)
	}
	loss, ds := HingeLoss(r.m.Backend().ToF32(r.head()), len(hard), r.margin)
	if backward {
		r.headBackward(ds, gradScale)
		r.backward()
	}
	return loss, hb.Tokens(), nil
}

// ScoreRows returns rank_output's raw score of each row, computed in
// chunks of at most inf_minibatch_size rows in the model's current mode
// without any gradient (in evaluation mode by Model.ForwardPooled).
func (r *ITR) ScoreRows(rows []*data.Example) ([]float32, error) {
	out := make([]float32, 0, len(rows))
	if len(rows) == 0 {
		return out, nil
	}
	imgDim := r.m.Cfg.ImgDim
	for st := 0; st < len(rows); st += r.infBatch {
		b, err := data.CollateRows(rows[st:min(st+r.infBatch, len(rows))], imgDim, 1)
		if err != nil {
			return nil, err
		}
		if r.m.Training() {
			err = r.forward(b, false)
		} else {
			_, err = r.m.ForwardPooled(ModelInput(b))
		}
		b.Release()
		if err != nil {
			return nil, fmt.Errorf("itr: %w", err)
		}
		out = append(out, r.m.Backend().ToF32(r.head())...)
	}
	return out, nil
}

// Sigmoid is torch.sigmoid in float32.
func Sigmoid(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }

// HingeLoss is the ranking loss of scores grouped in consecutive groups
// of size group, each [positive, negatives...]: the mean over every
// negative of clamp(margin + sigmoid(neg) - sigmoid(pos), 0), and its
// gradient with respect to each raw score. As torch's clamp, a term at
// exactly 0 passes its gradient.
func HingeLoss(scores []float32, group int, margin float32) (float64, []float32) {
	ds := make([]float32, len(scores))
	if group < 2 || len(scores)%group != 0 {
		return 0, ds
	}
	n := float64(len(scores) / group * (group - 1))
	var sum float64
	for g := 0; g < len(scores); g += group {
		sp := Sigmoid(scores[g])
		var dpos float64
		for k := g + 1; k < g+group; k++ {
			sn := Sigmoid(scores[k])
			v := margin + sn - sp
			if v >= 0 {
				sum += float64(v)
				ds[k] = float32(float64(sn) * (1 - float64(sn)) / n)
				dpos -= 1 / n
			}
		}
		ds[g] = float32(dpos * float64(sp) * (1 - float64(sp)))
	}
	return sum / n, ds
}

// HardNegatives picks the rows a hard-negative step trains on from a
// candidate list's scores (the positive at 0): 0, then the k highest
// scoring negatives as torch.topk(scores[1:], k) + 1 does, highest first,
// ties to the lower index. A NaN counts as the highest, as in torch.
func HardNegatives(scores []float32, k int) []int {
	idx := make([]int, len(scores)-1)
	for i := range idx {
		idx[i] = i + 1
	}
	key := func(v float32) float64 {
		if v != v {
			return math.Inf(1)
		}
		return float64(v)
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(key(scores[b]), key(scores[a])) })
	return append([]int{0}, idx[:min(k, len(idx))]...)
}

// Metrics are not computed from an Eval: retrieval is evaluated by its
// ranking (train.EvaluateITR).
func (r *ITR) Metrics(e *Eval) map[string]float64 { return meanMetrics(e) }

// Results has no per-example output: retrieval writes its score matrix.
func (r *ITR) Results(*Eval, bool) (string, []byte, error) {
	return "", nil, fmt.Errorf("itr: results are the score matrix of the ranking evaluation")
}
