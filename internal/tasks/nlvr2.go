package tasks

import (
	"bytes"
	"fmt"
	"math"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
)

// NLVR2 variants (the official configs' "model" key).
const (
	NLVR2Paired     = "paired"
	NLVR2Triplet    = "triplet"
	NLVR2PairedAttn = "paired-attn"
)

// NLVR2Variants lists the variants, the default first.
var NLVR2Variants = []string{NLVR2PairedAttn, NLVR2Paired, NLVR2Triplet}

// NLVR2 is natural-language visual reasoning over an image pair. The
// token type table has a third row for the right
// image's regions. paired runs the sentence with each image as two rows and
// classifies their concatenated pooled outputs; triplet runs one row with
// both images; paired-attn (the official default) lets each side's last
// layer attend to the other's (attn1: left to right, attn2: right to
// left), fuses with fc, pools each side by attention and classifies the
// two pools. Loss: 2-way cross-entropy, mean; metrics accuracy and the
// official consistency.
type NLVR2 struct {
	backbone
	variant    string
	useImgType bool
	out        *model.Linear // nlvr2_output

	// paired-attn
	attn1, attn2   *crossAttention
	fc, pool       *model.Linear
	fcDrop, pDrop  model.Dropout
	src, cat, f    model.Buf
	score, p0, p   model.Buf
	pooled, cat2   model.Buf
	lrIdx, catIdx  *compute.Tensor
	poolIdx        *compute.Tensor
	dsrc, dcat, df model.Buf
	dscore, dpool  model.Buf
	dcat2          model.Buf

	logits, dlogits, loss, pred model.Buf
}

// NewNLVR2 registers the head of variant on m (the type-table surgery
// happens in Load).
func NewNLVR2(m *model.Model, variant string, useImgType, fp16 bool) (*NLVR2, error) {
	h := m.Cfg.HiddenSize
	n := &NLVR2{backbone: backbone{m: m, fp16: fp16}, variant: variant, useImgType: useImgType}
	ps := m.Params
	switch variant {
	case NLVR2Paired:
		n.out = model.NewLinear(ps, "nlvr2_output", 2*h, 2)
	case NLVR2Triplet:
		n.out = model.NewLinear(ps, "nlvr2_output", h, 2)
	case NLVR2PairedAttn:
		n.attn1 = newCrossAttention(m, "attn1")
		n.attn2 = newCrossAttention(m, "attn2")
		n.fc = model.NewLinear(ps, "fc.0", 2*h, h)
		n.fcDrop = m.NewDropout()
		n.pool = model.NewLinear(ps, "attn_pool.fc.0", h, 1)
		n.pDrop = m.NewDropout()
		n.out = model.NewLinear(ps, "nlvr2_output", 2*h, 2)
	default:
		return nil, fmt.Errorf("nlvr2: variant %q: want one of %s", variant, strings.Join(NLVR2Variants, ", "))
	}
	return n, nil
}

// Name is "nlvr2".
func (n *NLVR2) Name() string { return "nlvr2" }

// Classes is 2 (False, True).
func (n *NLVR2) Classes() int { return 2 }

// Open reads an NLVR2 txt_db (a pair of images per example) with its
// img_db; paired-attn reads pairs as paired does.
func (n *NLVR2) Open(txt *db.TxtDB, img *db.ImgDB, o data.DownstreamOptions) (Dataset, error) {
	layout := NLVR2Paired
	if n.variant == NLVR2Triplet {
		layout = NLVR2Triplet
	}
	return data.NewNLVR2Set(txt, img, layout, n.useImgType, o)
}

// Load copies a checkpoint with the official surgery: the type table gets
// a third row copied from row 1 (init_type_embedding). A checkpoint that
// already has three rows (an NLVR2 fine-tuned one) is loaded after the
// table is grown, one with two (a pretrained one) before.
func (n *NLVR2) Load(sd *ckpt.StateDict, source string, partial bool) (model.LoadReport, error) {
	grown := false
	if sd != nil {
		for _, k := range sd.Keys {
			if model.CanonicalKey(k) == model.TypeEmbeddingName && len(sd.Tensors[k].Shape) == 2 && sd.Tensors[k].Shape[0] == 3 {
				grown = true
			}
		}
	}
	if grown {
		if err := n.m.GrowTypeVocab(3, []int{1}); err != nil {
			return model.LoadReport{}, err
		}
	}
	rep, err := loadWeights(n.m, sd, source, partial)
	if err != nil {
		return rep, err
	}
	return rep, n.m.GrowTypeVocab(3, []int{1})
}

// LossUnits is the batch's examples (pairs).
func (n *NLVR2) LossUnits(_ string, b *data.Batch) int { return len(b.IDs) }

// Step runs the variant's head on b.
func (n *NLVR2) Step(_ string, b *data.Batch, backward bool, gradScale float32) (Result, error) {
	if err := checkBatch(b); err != nil {
		return Result{}, fmt.Errorf("nlvr2: %w", err)
	}
	rows := 1
	if n.variant != NLVR2Triplet {
		rows = 2
	}
	if b.RowsPerExample != rows || b.B%rows != 0 {
		return Result{}, fmt.Errorf("nlvr2 %s: batch has %d rows per example, want %d", n.variant, b.RowsPerExample, rows)
	}
	ex := b.B / rows
	if b.Labels != nil {
		if len(b.Labels) != ex {
			return Result{}, fmt.Errorf("nlvr2: batch of %d examples has %d labels", ex, len(b.Labels))
		}
		for i, y := range b.Labels {
			if y != 0 && y != 1 {
				return Result{}, fmt.Errorf("nlvr2: example %s: target %d, want 0 or 1", b.IDs[i], y)
			}
		}
	} else if backward {
		return Result{}, fmt.Errorf("nlvr2: cannot train on a split without targets")
	}
	if err := n.forward(b, false); err != nil {
		return Result{}, fmt.Errorf("nlvr2: %w", err)
	}
	be, h := n.m.Backend(), n.m.Cfg.HiddenSize
	var feat *compute.Tensor // input of nlvr2_output
	switch n.variant {
	case NLVR2Paired:
		feat = n.m.Pooled().View(ex, 2*h)
	case NLVR2Triplet:
		feat = n.m.Pooled()
	default:
		feat = n.attnForward(b, ex)
	}
	logits := n.logits.F32(be, ex, 2)
	n.out.Fwd(be, logits, feat)
	res := Result{Examples: ex, Tokens: b.Tokens(), Logits: logits, Pred: argmax(be, &n.pred, logits)}
	if b.Labels == nil {
		return res, nil
	}
	loss := n.loss.F32(be, ex)
	var dlogits *compute.Tensor
	if backward {
		dlogits = n.dlogits.F32(be, ex, 2)
	}
	be.SoftmaxXent(loss, dlogits, logits, be.FromI32(b.Labels, ex), -1, gradScale/float32(ex))
	res.LossSum = be.Sum(loss)
	res.Loss = res.LossSum / float64(ex)
	res.Count = ex
	for i, p := range res.Pred {
		if p == b.Labels[i] {
			res.Correct++
		}
	}
	res.Score = float64(res.Correct)
	if !backward {
		return res, nil
	}
	switch n.variant {
	case NLVR2Paired, NLVR2Triplet:
		// nlvr2_output's input is the pooled output itself (paired: two
		// rows side by side), so its gradient lands there directly.
		dfeat := n.dcat2.F32(be, feat.Shape...)
		n.out.Bwd(be, dfeat, dlogits, feat, 0)
		gp := n.m.GradPooled()
		be.Add(gp, gp, dfeat.View(gp.Shape...))
	default:
		n.attnBackward(dlogits, feat, ex)
	}
	n.backward()
	return res, nil
}

// attnForward is paired-attn from the last layer to nlvr2_output's input
// [ex, 2H]. Example k's rows 2k (left) and 2k+1 (right) of the joint
// sequence are gathered into a stacked buffer [left (ex*S); right (ex*S)],
// so that both directions, fc and the pooling run on contiguous rows.
func (n *NLVR2) attnForward(b *data.Batch, ex int) *compute.Tensor {
	be, h, s := n.m.Backend(), n.m.Cfg.HiddenSize, n.m.SeqLen()
	half := ex * s
	lr := make([]int32, 2*half)
	for k := range ex {
		for j := range s {
			lr[k*s+j] = int32(2*k*s + j)
			lr[half+k*s+j] = int32((2*k+1)*s + j)
		}
	}
	lens := make([]int32, 2*ex) // each left row's valid length, then each right row's
	for k := range ex {
		lens[k] = int32(b.TxtLens[2*k] + b.NBB[2*k])
		lens[ex+k] = int32(b.TxtLens[2*k+1] + b.NBB[2*k+1])
	}
	n.lrIdx = be.FromI32(lr, 2*half)

	// src = [l2r; r2l; left; right]: cat[l2r, left] and cat[r2l, right]
	// are its rows interleaved, so one Gather builds fc's input.
	src := n.src.F32(be, 4*half, h)
	x := src.RowRange(2*half, 4*half)
	be.Gather(x, n.m.Seq(), n.lrIdx)
	left, right := x.RowRange(0, half), x.RowRange(half, 2*half)
	leftLens, rightLens := lens[:ex], lens[ex:]
	n.attn1.fwd(src.RowRange(0, half), left, right, leftLens, rightLens, s)
	n.attn2.fwd(src.RowRange(half, 2*half), right, left, rightLens, leftLens, s)
	ci := make([]int32, 4*half)
	for r := range 2 * half {
		ci[2*r], ci[2*r+1] = int32(r), int32(2*half+r)
	}
	n.catIdx = be.FromI32(ci, 4*half)
	cat := n.cat.F32(be, 4*half, h)
	be.Gather(cat, src, n.catIdx)

	f := n.f.F32(be, 2*half, h)
	n.fc.Fwd(be, f, cat.View(2*half, 2*h))
	be.ReluFwd(f, f)
	n.fcDrop.Fwd(be, f)

	// AttentionPool: softmax over each side's valid positions of
	// relu(Linear(H,1)); the -1e4 mask of the reference is exactly 0 in
	// fp32 after the softmax.
	score := n.score.F32(be, 2*half, 1)
	n.pool.Fwd(be, score, f)
	be.ReluFwd(score, score)
	p0 := n.p0.F32(be, 2*ex, s)
	be.SoftmaxRows(p0, score.View(2*ex, s), be.FromI32(lens, 2*ex))
	p := n.p.F32(be, 2*ex, s)
	be.DropoutFwd(p, p0, n.pDrop.AttnP(), n.pDrop.Seed())
	pooled := n.pooled.F32(be, 2*ex, h)
	for g := range 2 * ex {
		be.Gemm(false, false, 1, p.RowRange(g, g+1), f.RowRange(g*s, (g+1)*s), 0, pooled.RowRange(g, g+1))
	}
	pi := make([]int32, 2*ex)
	for k := range ex {
		pi[2*k], pi[2*k+1] = int32(k), int32(ex+k)
	}
	n.poolIdx = be.FromI32(pi, 2*ex)
	cat2 := n.cat2.F32(be, 2*ex, h)
	be.Gather(cat2, pooled, n.poolIdx)
	return cat2.View(ex, 2*h)
}

// attnBackward is the backward of attnForward from nlvr2_output's
// gradient, into GradSeq.
func (n *NLVR2) attnBackward(dlogits, feat *compute.Tensor, ex int) {
	be, h, s := n.m.Backend(), n.m.Cfg.HiddenSize, n.m.SeqLen()
	half := ex * s
	dcat2 := n.dcat2.F32(be, ex, 2*h)
	n.out.Bwd(be, dcat2, dlogits, feat, 0)
	dpool := n.dpool.F32(be, 2*ex, h)
	be.Zero(dpool)
	be.ScatterAdd(dpool, dcat2.View(2*ex, h), n.poolIdx)

	f := n.f.F32(be, 2*half, h)
	p := n.p.F32(be, 2*ex, s)
	df := n.df.F32(be, 2*half, h)
	dscore := n.dscore.F32(be, 2*ex, s)
	for g := range 2 * ex {
		fg := f.RowRange(g*s, (g+1)*s)
		be.Gemm(true, false, 1, p.RowRange(g, g+1), dpool.RowRange(g, g+1), 0, df.RowRange(g*s, (g+1)*s))
		be.Gemm(false, true, 1, dpool.RowRange(g, g+1), fg, 0, dscore.RowRange(g, g+1))
	}
	be.DropoutBwd(dscore, dscore, n.pDrop.AttnP(), n.pDrop.Seed())
	be.SoftmaxRowsBwd(dscore, n.p0.F32(be, 2*ex, s), dscore)
	ds := dscore.View(2*half, 1)
	be.ReluBwd(ds, n.score.F32(be, 2*half, 1), ds)
	n.pool.Bwd(be, df, ds, f, 1)

	n.fcDrop.Bwd(be, df)
	be.ReluBwd(df, f, df)
	dcat := n.dcat.F32(be, 2*half, 2*h)
	n.fc.Bwd(be, dcat, df, n.cat.F32(be, 2*half, 2*h), 0)
	dsrc := n.dsrc.F32(be, 4*half, h)
	be.Zero(dsrc)
	be.ScatterAdd(dsrc, dcat.View(4*half, h), n.catIdx)

	src := n.src.F32(be, 4*half, h)
	x, dx := src.RowRange(2*half, 4*half), dsrc.RowRange(2*half, 4*half)
	left, right := x.RowRange(0, half), x.RowRange(half, 2*half)
	dleft, dright := dx.RowRange(0, half), dx.RowRange(half, 2*half)
	n.attn1.bwd(dsrc.RowRange(0, half), left, right, dleft, dright)
	n.attn2.bwd(dsrc.RowRange(half, 2*half), right, left, dright, dleft)
	be.ScatterAdd(n.m.GradSeq(), dx, n.lrIdx)
}

// Metrics are acc, loss (cross-entropy per example) and consistency: the
// share of sentences (identifiers with their third dash-separated field
// blanked, as the official eval_nlvr2.py groups them) whose every example
// is right.
func (n *NLVR2) Metrics(e *Eval) map[string]float64 {
	m := meanMetrics(e)
	if !e.Labelled() {
		return m
	}
	consistent := map[string]bool{}
	for i, id := range e.IDs {
		parts := strings.Split(id, "-")
		if len(parts) > 2 {
			parts[2] = ""
		}
		key := strings.Join(parts, "-")
		ok, seen := consistent[key]
		consistent[key] = (ok || !seen) && e.Pred[i] == e.Labels[i]
	}
	good := 0
	for _, ok := range consistent {
		if ok {
			good++
		}
	}
	m["consistency"] = float64(good) / float64(len(consistent))
	return m
}

// Results renders identifier,True|False lines, the official format of
// both inference and training.
func (n *NLVR2) Results(e *Eval, _ bool) (string, []byte, error) {
	var buf bytes.Buffer
	for i, id := range e.IDs {
		ans := "False"
		if e.Pred[i] == 1 {
			ans = "True"
		}
		fmt.Fprintf(&buf, "%s,%s\n", id, ans)
	}
	return ".csv", buf.Bytes(), nil
}

// crossAttention is torch's MultiheadAttention as paired-attn uses it:
// queries from one side, keys and values from the other, padded keys
// excluded. in_proj_weight [3H, H] holds the q, k and v projections.
type crossAttention struct {
	m              *model.Model
	q, k, v, out   *model.Linear
	drop           model.Dropout
	heads          int
	qb, kb, vb, cb model.Buf
	lse            model.Buf
	lensT          *compute.Tensor // [2, ex]: query lengths, key lengths
	ex, s          int             // sequences and positions of the last fwd
	dq, dk, dv, dc model.Buf
}

func newCrossAttention(m *model.Model, name string) *crossAttention {
	h := m.Cfg.HiddenSize
	w := m.Params.Add(name+".in_proj_weight", model.InitXavierUniform, 3*h, h)
	bias := m.Params.Add(name+".in_proj_bias", model.InitZeros, 3*h)
	part := func(i int) *model.Linear {
		return &model.Linear{
			W: &model.Param{Name: w.Name, W: w.W.RowRange(i*h, (i+1)*h), G: w.G.RowRange(i*h, (i+1)*h)},
			B: &model.Param{Name: bias.Name, W: bias.W.View(3, h).RowRange(i, i+1).View(h), G: bias.G.View(3, h).RowRange(i, i+1).View(h)},
		}
	}
	return &crossAttention{m: m, q: part(0), k: part(1), v: part(2), out: model.NewLinear(m.Params, name+".out_proj", h, h),
		drop: m.NewDropout(), heads: m.Cfg.NumAttentionHeads}
}

func (a *crossAttention) scale() float32 {
	return float32(1 / math.Sqrt(float64(a.m.Cfg.HiddenSize/a.heads)))
}

// fwd sets out [ex*S, H] = out_proj(attention(q=query, k=v=kv)) where
// query and kv are ex sequences of S rows with valid lengths qLens, kLens.
func (a *crossAttention) fwd(out, query, kv *compute.Tensor, qLens, kLens []int32, s int) {
	be, h := a.m.Backend(), a.m.Cfg.HiddenSize
	rows := query.Rows()
	q, k, v := a.qb.F32(be, rows, h), a.kb.F32(be, rows, h), a.vb.F32(be, rows, h)
	a.q.Fwd(be, q, query)
	a.k.Fwd(be, k, kv)
	a.v.Fwd(be, v, kv)
	lens := append(append([]int32(nil), qLens...), kLens...)
	a.ex, a.s = len(qLens), s
	a.lensT = be.FromI32(lens, 2, a.ex)
	ctx := a.cb.F32(be, rows, h)
	be.AttentionFwd(ctx, a.lse.F32(be, a.ex, a.heads, s), q, k, v, a.lensT, a.heads, a.scale(), a.drop.AttnP(), a.drop.Seed())
	a.out.Fwd(be, out, ctx)
}

// bwd takes dout of the last fwd and adds the input gradients into
// dquery and dkv (which must hold the other contributions already).
func (a *crossAttention) bwd(dout, query, kv, dquery, dkv *compute.Tensor) {
	be, h := a.m.Backend(), a.m.Cfg.HiddenSize
	rows := query.Rows()
	ctx := a.cb.F32(be, rows, h)
	dc := a.dc.F32(be, rows, h)
	a.out.Bwd(be, dc, dout, ctx, 0)
	q, k, v := a.qb.F32(be, rows, h), a.kb.F32(be, rows, h), a.vb.F32(be, rows, h)
	dq, dk, dv := a.dq.F32(be, rows, h), a.dk.F32(be, rows, h), a.dv.F32(be, rows, h)
	be.AttentionBwd(dq, dk, dv, dc, ctx, a.lse.F32(be, a.ex, a.heads, a.s), q, k, v, a.lensT, a.heads, a.scale(), a.drop.AttnP(), a.drop.Seed())
	a.q.Bwd(be, dquery, dq, query, 1)
	a.k.Bwd(be, dkv, dk, kv, 1)
	a.v.Bwd(be, dkv, dv, kv, 1)
}
