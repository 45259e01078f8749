package tasks

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// REBoxes is the length of an example's Result.Boxes and Eval.Boxes: the
// predicted box, then the target box, each x, y, w, h in pixels.
const REBoxes = 8

// REPad is the score of a padded region slot (masked_fill(obj_masks,
// -1e4) in the original), which also pads the rows of --save-logits.
const REPad = -1e4

// RE is referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg):
// re_output scores every region of the last layer's region part
// seq[:, tl:tl+nbb]; padded slots score REPad; the training loss is the
// cross-entropy over the regions against the target region, summed over
// the batch (train_re.py's loss.sum()); the prediction is the argmax
// region and it is right when its box overlaps the target box with IoU >
// 0.5.
type RE struct {
	backbone
	mlp   int
	dense *model.MLP    // mlp 2: re_output.0 (Linear) and .2 (LayerNorm)
	out   *model.Linear // re_output (mlp 1) or re_output.3 (mlp 2)
	// width is the largest region count of the datasets opened, the width
	// of the evaluation logits (--save-logits pads every row to it).
	width int

	seqIdx, posIdx                   *compute.Tensor
	hid, score, logits, dlogits      model.Buf
	dscore, dh, dhid, loss, pred, wl model.Buf
}

// NewRE registers the RE head with mlp layers (1 or 2; 0 means 1) on m.
func NewRE(m *model.Model, mlp int, fp16 bool) (*RE, error) {
	if mlp == 0 {
		mlp = 1
	}
	h := m.Cfg.HiddenSize
	r := &RE{backbone: backbone{m: m, fp16: fp16}, mlp: mlp}
	switch mlp {
	case 1:
		r.out = model.NewLinear(m.Params, "re_output", h, 1)
	case 2:
		r.dense = model.NewMLP(m.Params, "re_output.0", "re_output.2", h, h)
		r.out = model.NewLinear(m.Params, "re_output.3", h, 1)
	default:
		return nil, fmt.Errorf("re: mlp %d: want 1 or 2 (the layers of re_output)", mlp)
	}
	return r, nil
}

// REMLPOf returns the RE head depth a checkpoint's parameters hold (2
// when it has re_output.0, else 1), as inf_re.py takes it from the run's
// hps.json.
func REMLPOf(sd *ckpt.StateDict) int {
	if sd != nil {
		if _, ok := sd.Tensors["re_output.0.weight"]; ok {
			return 2
		}
	}
	return 1
}

// Name is "re".
func (r *RE) Name() string { return "re" }

// Classes is the width of the evaluation logits: the most regions of an
// image in the datasets opened.
func (r *RE) Classes() int { return r.width }

// Open reads an RE txt_db with its img_db: ground-truth boxes when the
// img_db's path holds "coco_gt" (as the original decides) or o.GTBoxes,
// detected ones otherwise.
func (r *RE) Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	gt := o.GTBoxes || data.IsREGroundTruth(img.Dir())
	if o.Train && !gt {
		// train_re.py's ReDataset reads the ground-truth boxes whatever
		// the img_db (visual_grounding_coco_gt_*, "Please use
		// visual_grounding_coco_gt").
		return nil, fmt.Errorf("re: train img_db %s: training needs the ground-truth boxes, an img_db with \"coco_gt\" in its path (re_coco_gt), as train_re.py; the detected ones (re_coco_det) are for validation", img.Dir())
	}
	s, err := data.NewRESet(txt, img, gt, o)
	if err != nil {
		return nil, err
	}
	r.width = max(r.width, s.MaxNBB())
	return s, nil
}

// Load copies a checkpoint into the model (no surgery for RE).
func (r *RE) Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	return loadWeights(r.m, sd, source, partial)
}

// LossUnits is 1: the loss is a sum over the batch's sentences, not a mean,
// so a micro-batch weighs as much however many sentences it holds, as
// train_re.py backpropagates loss.sum() of each batch.
func (r *RE) LossUnits(string, *data.Batch) int { return 1 }

// Step runs the head on b: Labels (the target region, ground-truth boxes)
// give the loss, Boxes the IoU accuracy; a batch with neither predicts
// only.
func (r *RE) Step(_ string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("re: %w", err)
	}
	n := b.B
	if b.RowsPerExample != 1 {
		return Result{}, fmt.Errorf("re: batch has %d rows per example, want 1", b.RowsPerExample)
	}
	if b.Boxes != nil && len(b.Boxes) != n*data.REBoxDim {
		return Result{}, fmt.Errorf("re: batch of %d sentences has %d box values, want %d", n, len(b.Boxes), n*data.REBoxDim)
	}
	if b.Labels != nil {
		for i, y := range b.Labels {
			if y < 0 || int(y) >= b.NBB[i] {
				return Result{}, fmt.Errorf("re: sentence %s: target region %d of %d", b.IDs[i], y, b.NBB[i])
			}
		}
	} else if backward {
		return Result{}, fmt.Errorf("re: cannot train without target regions: the train img_db must hold the ground-truth boxes (re_coco_gt; \"coco_gt\" in its path)")
	}
	if err := r.forward(b, false); err != nil {
		return Result{}, fmt.Errorf("re: %w", err)
	}
	logits := r.head(b)
	res := r.finish(b, logits, backward, gradScale)
	if backward {
		r.backward()
	}
	return res, nil
}

// head computes the region scores [B, Nmax] of the last forward: the
// regions of every row gathered from the joint sequence, re_output on them,
// scattered into a matrix whose padded slots hold REPad.
func (r *RE) head(b *data.Batch) *compute.Tensor {
	be, h := r.m.Backend(), r.m.Cfg.HiddenSize
	s, nmax := r.m.SeqLen(), b.Nmax
	var seqIdx, posIdx []int32
	fill := make([]float32, b.B*nmax)
	for i := range b.B {
		for j := range nmax {
			if j < b.NBB[i] {
				seqIdx = append(seqIdx, int32(i*s+b.TxtLens[i]+j))
				posIdx = append(posIdx, int32(i*nmax+j))
			} else {
				fill[i*nmax+j] = REPad
			}
		}
	}
	total := len(seqIdx)
	r.seqIdx, r.posIdx = be.FromI32(seqIdx, total), be.FromI32(posIdx, total)
	hid := r.hid.F32(be, total, h)
	be.Gather(hid, r.m.Seq(), r.seqIdx)
	in := hid
	if r.dense != nil {
		in = r.dense.Fwd(be, hid)
	}
	score := r.score.F32(be, total, 1)
	r.out.Fwd(be, score, in)
	// The real slots start at 0 and add their score: exactly the score.
	logits := r.logits.F32(be, b.B, nmax)
	be.Copy(logits, be.FromF32(fill, b.B, nmax))
	be.ScatterAdd(logits.View(b.B*nmax, 1), score, r.posIdx)
	return logits
}

// finish takes the scores of head: predictions, the summed cross-entropy
// and, with backward, the head's backward into GradSeq (the caller runs the
// backbone's).
func (r *RE) finish(b *data.Batch, logits *compute.Tensor, backward bool, gradScale float32) Result {
	be, h, n, nmax := r.m.Backend(), r.m.Cfg.HiddenSize, b.B, b.Nmax
	res := Result{Examples: n, Tokens: b.Tokens(), Logits: logits, Pred: argmax(be, &r.pred, logits)}
	if !backward && r.width > nmax {
		res.Logits = r.padLogits(logits, n, nmax)
	}
	if b.Labels != nil {
		loss := r.loss.F32(be, n)
		var dlogits *compute.Tensor
		if backward {
			dlogits = r.dlogits.F32(be, n, nmax)
		}
		be.SoftmaxXent(loss, dlogits, logits, be.FromI32(b.Labels, n), -1, gradScale)
		res.LossSum = be.Sum(loss)
		res.Loss = res.LossSum
		res.Count = n
		for i, p := range res.Pred {
			if p == b.Labels[i] {
				res.Correct++
			}
		}
		res.Score = float64(res.Correct)
		if backward {
			total := r.seqIdx.Len()
			// masked_fill cuts the padded slots out of the graph: only the
			// real regions' scores get a gradient.
			ds := r.dscore.F32(be, total, 1)
			be.Gather(ds, dlogits.View(n*nmax, 1), r.posIdx)
			dh := r.dh.F32(be, total, h)
			if r.dense != nil {
				r.out.Bwd(be, dh, ds, r.dense.Output(), 0)
				dhid := r.dhid.F32(be, total, h)
				r.dense.Bwd(be, dhid, dh)
				dh = dhid
			} else {
				r.out.Bwd(be, dh, ds, r.hid.F32(be, total, h), 0)
			}
			be.ScatterAdd(r.m.GradSeq(), dh, r.seqIdx)
		}
	}
	if b.Boxes != nil {
		res.Count, res.Score, res.Correct = n, 0, 0
		res.Boxes = make([]float64, 0, n*REBoxes)
		for i, p := range res.Pred {
			bx := b.Boxes[i*data.REBoxDim : (i+1)*data.REBoxDim]
			pos := b.ImgPos[(i*nmax+int(p))*data.PosDim:]
			pred := PredBox(pos, bx[4], bx[5])
			if REIoU(pred, [4]float64(bx[:4])) > 0.5 {
				res.Correct++
			}
			for _, v := range pred {
				res.Boxes = append(res.Boxes, float64(v))
			}
			res.Boxes = append(res.Boxes, bx[:4]...)
		}
		res.Score = float64(res.Correct)
	}
	return res
}

// padLogits widens [n, nmax] scores to [n, width] with REPad.
func (r *RE) padLogits(logits *compute.Tensor, n, nmax int) *compute.Tensor {
	be := r.m.Backend()
	host := be.ToF32(logits)
	out := make([]float32, n*r.width)
	for i := range n {
		row := out[i*r.width : (i+1)*r.width]
		copy(row, host[i*nmax:(i+1)*nmax])
		for j := nmax; j < r.width; j++ {
			row[j] = REPad
		}
	}
	t := r.wl.F32(be, n, r.width)
	be.Copy(t, be.FromF32(out, n, r.width))
	return t
}

// PredBox is a region's box in pixels, x y w h, from its location input
// (x1, y1, x2, y2, w, h normalised): x1*W, y1*H, w*W, h*H, each product
// rounded to float32 as the original's float32 tensors are.
func PredBox(pos []float32, width, height float64) [4]float32 {
	w, h := float32(width), float32(height)
	return [4]float32{pos[0] * w, pos[1] * h, pos[4] * w, pos[5] * h}
}

// num is a number as numpy carries it through the original's computeIoU:
// a float32 scalar (the predicted box) or a float64 one (the target box);
// float32 with float32 stays float32, anything with float64 is float64.
type num struct {
	v   float64
	f32 bool
}

func (a num) sub(b num) num {
	if a.f32 && b.f32 {
		return num{float64(float32(a.v) - float32(b.v)), true}
	}
	return num{a.v - b.v, false}
}

func (a num) add(b num) num {
	if a.f32 && b.f32 {
		return num{float64(float32(a.v) + float32(b.v)), true}
	}
	return num{a.v + b.v, false}
}

func (a num) mul(b num) num {
	if a.f32 && b.f32 {
		return num{float64(float32(a.v) * float32(b.v)), true}
	}
	return num{a.v * b.v, false}
}

// addInt adds a Python int, which keeps a numpy scalar's type.
func (a num) addInt(k float64) num {
	if a.f32 {
		return num{float64(float32(a.v) + float32(k)), true}
	}
	return num{a.v + k, false}
}

// pyMax and pyMin return the argument Python's max and min return: the
// first of equal values.
func pyMax(a, b num) num {
	if b.v > a.v {
		return b
	}
	return a
}

func pyMin(a, b num) num {
	if b.v < a.v {
		return b
	}
	return a
}

// REIoU is the original's computeIoU of a predicted box (float32, as the
// original's obj_boxes) and a target box (float64), both x y w h: the
// intersection uses the -1 pixel convention (x2 = x + w - 1, side = x2 -
// x1 + 1), the union the plain areas w*h, each operation in the precision
// numpy gives it.
func REIoU(pred [4]float32, tgt [4]float64) float64 {
	var a, b [4]num
	for i := range 4 {
		a[i] = num{float64(pred[i]), true}
		b[i] = num{tgt[i], false}
	}
	x1, y1 := pyMax(a[0], b[0]), pyMax(a[1], b[1])
	x2 := pyMin(a[0].add(a[2]).addInt(-1), b[0].add(b[2]).addInt(-1))
	y2 := pyMin(a[1].add(a[3]).addInt(-1), b[1].add(b[3]).addInt(-1))
	inter := num{}
	if x1.v < x2.v && y1.v < y2.v {
		inter = x2.sub(x1).addInt(1).mul(y2.sub(y1).addInt(1))
	}
	union := a[2].mul(a[3]).add(b[2].mul(b[3])).sub(inter)
	if union.v == 0 {
		return math.NaN()
	}
	return inter.v / union.v
}

// Metrics are acc (the share of sentences whose predicted box has IoU >
// 0.5 with the target), n, and, where the target regions are known
// (ground-truth boxes), loss: the cross-entropy per sentence.
func (r *RE) Metrics(e *Eval) map[string]float64 {
	m := map[string]float64{"n": float64(len(e.IDs))}
	if !e.Labelled() {
		return m
	}
	m["acc"] = e.Score / float64(e.N)
	withTargets := len(e.Labels) > 0
	for _, y := range e.Labels {
		withTargets = withTargets && y >= 0
	}
	if withTargets {
		m["loss"] = e.LossSum / float64(e.N)
	}
	return m
}

// Results renders {sent_id: {"pred_box": [x, y, w, h], "tgt_box": [x, y,
// w, h]}}, the predictions train_re.py's validate() returns, for eval and
// a run's results/ alike.
func (r *RE) Results(e *Eval, _ bool) (string, []byte, error) {
	if len(e.Boxes) != len(e.IDs)*REBoxes {
		return "", nil, fmt.Errorf("re: %d sentences have %d box values: the split has no target boxes", len(e.IDs), len(e.Boxes))
	}
	type boxes struct {
		Pred []float64 `json:"pred_box"`
		Tgt  []float64 `json:"tgt_box"`
	}
	out := make(map[string]boxes, len(e.IDs))
	for i, id := range e.IDs {
		key := id
		if n, err := strconv.ParseInt(id, 10, 64); err == nil {
			key = strconv.FormatInt(n, 10)
		}
		bx := e.Boxes[i*REBoxes : (i+1)*REBoxes]
		out[key] = boxes{Pred: bx[:4], Tgt: bx[4:]}
	}
	b, err := json.Marshal(out)
	return ".json", b, err
}

// SetWidth sets the width of the evaluation logits (the most regions of
// an image of the split evaluated next).
func (r *RE) SetWidth(n int) { r.width = n }
