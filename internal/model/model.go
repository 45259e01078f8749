package model

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"uniter/internal/compute"
)

// Input is one collated batch on the host, laid out as the reference's
// collate produces it. Text rows are [CLS] ids [SEP] padded to T; region
// rows are padded to N. Either modality may be absent (text-only or
// image-only forward).
type Input struct {
	B, T, N int

	InputIDs   []int32 // [B*T]; nil for an image-only forward
	TxtTypeIDs []int32 // [B*T]; nil means all 0
	TxtLens    []int   // [B] text lengths including [CLS] and [SEP]

	ImgFeat    []float32 // [B*N*img_dim]; nil for a text-only forward
	ImgPos     []float32 // [B*N*7] box features
	ImgTypeIDs []int32   // [B*N]; nil means all 1
	ImgMasks   []int32   // [B*N] 0/1; nil unless regions are masked
	NBB        []int     // [B] regions per example

	// GatherIndex [B*S] joins text and regions; nil means
	// computed from TxtLens and NBB.
	GatherIndex []int32
}

// hasText and hasImage tell which modalities the batch carries.
func (in *Input) hasText() bool  { return in.InputIDs != nil }
func (in *Input) hasImage() bool { return in.ImgFeat != nil }

// Lens returns each example's valid joint length (text + regions).
func (in *Input) Lens() []int {
	l := make([]int, in.B)
	for b := range l {
		if in.hasText() {
			l[b] += in.TxtLens[b]
		}
		if in.hasImage() {
			l[b] += in.NBB[b]
		}
	}
	return l
}

// SeqLen is S, the joint sequence length: the longest example.
func (in *Input) SeqLen() int {
	switch {
	case !in.hasImage():
		return in.T
	case !in.hasText():
		return in.N
	}
	s := 0
	for _, l := range in.Lens() {
		s = max(s, l)
	}
	return s
}

// GatherIndexFor builds the reference's gather_index [B*S]: for row b,
// arange(S) with positions [tl, tl+nbb) replaced by arange(T, T+nbb).
func GatherIndexFor(txtLens, nbb []int, t, s int) []int32 {
	g := make([]int32, len(txtLens)*s)
	for b := range txtLens {
		row := g[b*s : (b+1)*s]
		for i := range row {
			row[i] = int32(i)
		}
		for r := 0; r < nbb[b]; r++ {
			row[txtLens[b]+r] = int32(t + r)
		}
	}
	return g
}

// Model is the UNITER backbone (embeddings, encoder, pooler). Heads register
// their parameters in the same ParamSet and feed gradients back through
// GradSeq and GradPooled.
type Model struct {
	Cfg    Config
	Params *ParamSet

	be     compute.Backend
	run    runState
	txt    *textEmbeddings
	img    *imageEmbeddings
	enc    *encoder
	pooler *Linear

	// state of the last forward
	in                   *Input
	s                    int
	lens, gidx, firstIdx *compute.Tensor
	emb, joint, dJoint   Buf
	seq                  *compute.Tensor
	poolPre, pooled      Buf
	dSeq, dPooled, dPool Buf
	dFirst               Buf
	dFeat                *compute.Tensor
}

// New builds a model with freshly initialised weights
// drawn from seed.
func New(be compute.Backend, cfg Config, seed uint64) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model config: %w", err)
	}
	m := &Model{Cfg: cfg, be: be, Params: newParamSet(be, seed, cfg.InitializerRange)}
	m.run = runState{hiddenP: float32(cfg.HiddenDropoutProb), attnP: float32(cfg.AttentionProbsDropoutProb)}
	m.txt = newTextEmbeddings(m.Params, &m.run, cfg)
	m.img = newImageEmbeddings(m.Params, &m.run, cfg, m.txt.typ)
	m.enc = newEncoder(m.Params, &m.run, cfg)
	m.pooler = NewLinear(m.Params, "uniter.pooler.dense", cfg.HiddenSize, cfg.HiddenSize)
	return m, nil
}

// NewDropout is a new dropout site for a head, on the model's train/eval
// switch and step seed.
func (m *Model) NewDropout() Dropout { return m.run.newDropout() }

// TypeEmbeddingName is the official key of the token type table, which text
// and regions share.
const TypeEmbeddingName = "uniter.embeddings.token_type_embeddings.weight"

// GrowTypeVocab gives the token type table n rows, copying rows: new row i
// takes the values of row from[i-old] (NLVR2 copies row 1 into row 2; VCR
// copies row 0 into rows 2 and 3), as the official init_type_embedding does.
// A table that already has n rows is left as it is.
func (m *Model) GrowTypeVocab(n int, from []int) error {
	p := m.Params.Get(TypeEmbeddingName)
	old := p.Shape[0]
	if old == n {
		return nil
	}
	if n < old || len(from) != n-old {
		return fmt.Errorf("token type table: cannot grow %d rows to %d copying rows %v", old, n, from)
	}
	for _, r := range from {
		if r < 0 || r >= old {
			return fmt.Errorf("token type table: row %d to copy outside the %d rows", r, old)
		}
	}
	h := p.Shape[1]
	if _, err := m.Params.Resize(TypeEmbeddingName, n, InitNormal); err != nil {
		return err
	}
	// Resize kept the old rows in place; the new ones become copies.
	host := m.be.ToF32(p.W)
	for i, r := range from {
		copy(host[(old+i)*h:(old+i+1)*h], host[r*h:(r+1)*h])
	}
	m.be.Copy(p.W, m.be.FromF32(host, n, h))
	m.Cfg.TypeVocabSize = n
	return nil
}

// Backend returns the backend the model runs on.
func (m *Model) Backend() compute.Backend { return m.be }

// SetTrain switches dropout on (training) or off (evaluation).
func (m *Model) SetTrain(train bool) { m.run.train = train }

// Training reports whether dropout is on (SetTrain).
func (m *Model) Training() bool { return m.run.train }

// StepSeed is the dropout seed SetStepSeed last set: a task that runs
// several training forwards in one micro-batch derives theirs from it.
func (m *Model) StepSeed() uint64 { return m.run.stepSeed }

// SetStepSeed sets the seed of every dropout mask of the next forward; the
// trainer advances it each micro-batch so runs are reproducible.
func (m *Model) SetStepSeed(seed uint64) { m.run.stepSeed = seed }

// Validate checks a batch against the model before any work is done.
func (m *Model) Validate(in *Input) error {
	c := m.Cfg
	if in.B <= 0 {
		return fmt.Errorf("batch size %d", in.B)
	}
	if !in.hasText() && !in.hasImage() {
		return fmt.Errorf("batch has neither text nor image")
	}
	if in.hasText() {
		if len(in.InputIDs) != in.B*in.T || len(in.TxtLens) != in.B {
			return fmt.Errorf("input_ids has %d ids and %d lengths, want %d x %d", len(in.InputIDs), len(in.TxtLens), in.B, in.T)
		}
		if in.T > c.MaxPositionEmbeddings {
			return fmt.Errorf("text length %d exceeds max_position_embeddings %d", in.T, c.MaxPositionEmbeddings)
		}
		for i, id := range in.InputIDs {
			if id < 0 || int(id) >= c.VocabSize {
				return fmt.Errorf("input_ids[%d][%d] = %d out of range [0, %d)", i/in.T, i%in.T, id, c.VocabSize)
			}
		}
		if err := checkIDs("txt_type_ids", in.TxtTypeIDs, in.B*in.T, c.TypeVocabSize); err != nil {
			return err
		}
		for b, l := range in.TxtLens {
			if l < 1 || l > in.T {
				return fmt.Errorf("text length of example %d = %d, want 1..%d", b, l, in.T)
			}
		}
	}
	if in.hasImage() {
		n := in.B * in.N
		if len(in.ImgFeat) != n*c.ImgDim {
			return fmt.Errorf("img_feat has %d values, want %d x %d x %d (img_dim)", len(in.ImgFeat), in.B, in.N, c.ImgDim)
		}
		if len(in.ImgPos) != n*ImgPosDim || len(in.NBB) != in.B {
			return fmt.Errorf("img_pos_feat has %d values and %d region counts, want %d x %d x 7", len(in.ImgPos), len(in.NBB), in.B, in.N)
		}
		if err := checkIDs("img_type_ids", in.ImgTypeIDs, n, c.TypeVocabSize); err != nil {
			return err
		}
		if err := checkIDs("img_masks", in.ImgMasks, n, 2); err != nil {
			return err
		}
		for b, k := range in.NBB {
			if k < 1 || k > in.N {
				return fmt.Errorf("region count of example %d = %d, want 1..%d", b, k, in.N)
			}
		}
	}
	if in.hasText() && in.hasImage() && in.GatherIndex != nil {
		s := in.SeqLen()
		if len(in.GatherIndex) != in.B*s {
			return fmt.Errorf("gather_index has %d entries, want %d x %d", len(in.GatherIndex), in.B, s)
		}
		for i, g := range in.GatherIndex {
			if g < 0 || int(g) >= in.T+in.N {
				return fmt.Errorf("gather_index[%d][%d] = %d out of range [0, %d)", i/s, i%s, g, in.T+in.N)
			}
		}
	}
	return nil
}

func checkIDs(name string, ids []int32, n, limit int) error {
	if ids == nil {
		return nil
	}
	if len(ids) != n {
		return fmt.Errorf("%s has %d entries, want %d", name, len(ids), n)
	}
	for i, id := range ids {
		if id < 0 || int(id) >= limit {
			return fmt.Errorf("%s[%d] = %d out of range [0, %d)", name, i, id, limit)
		}
	}
	return nil
}

// Forward runs the backbone on a batch and keeps what the backward needs.
// Seq and Pooled return its outputs; GradSeq and GradPooled are zeroed for
// the heads to accumulate into.
func (m *Model) Forward(in *Input) error {
	if err := m.Validate(in); err != nil {
		return err
	}
	be, h := m.be, m.Cfg.HiddenSize
	x, lens32 := m.embed(in)
	m.lens = be.FromI32(lens32, in.B)
	m.seq = m.enc.Fwd(be, x, m.lens)

	first := make([]int32, in.B)
	for b := range first {
		first[b] = int32(b * m.s)
	}
	m.firstIdx = be.FromI32(first, in.B)
	pre := m.poolPre.F32(be, in.B, h)
	be.Gather(pre, m.seq, m.firstIdx)
	m.pool(pre)

	be.Zero(m.dSeq.F32(be, in.B*m.s, h))
	be.Zero(m.dPooled.F32(be, in.B, h))
	return nil
}

// ForwardPooled is Forward in evaluation mode for a head that reads only
// the pooled output (retrieval scores): the last layer runs at the [CLS]
// rows alone and the layers share one set of activations. It returns
// Pooled; Seq is not kept, and neither this nor an earlier forward can be
// backpropagated.
func (m *Model) ForwardPooled(in *Input) (*compute.Tensor, error) {
	if m.run.train {
		return nil, fmt.Errorf("ForwardPooled: the model is in training mode")
	}
	if err := m.Validate(in); err != nil {
		return nil, err
	}
	x, lens32 := m.embed(in)
	return m.encodePooled(x, lens32), nil
}

// embed runs the embeddings of a validated batch and returns the encoder's
// input [B*S, H] and each example's valid length; it sets in and s.
func (m *Model) embed(in *Input) (*compute.Tensor, []int32) {
	be, h := m.be, m.Cfg.HiddenSize
	m.in = in
	m.s = in.SeqLen()
	lens := in.Lens()
	lens32 := make([]int32, in.B)
	for i, l := range lens {
		lens32[i] = int32(l)
	}

	bt, bn := in.B*in.T, in.B*in.N
	if !in.hasImage() {
		bn = 0
	}
	if !in.hasText() {
		bt = 0
	}
	emb := m.emb.F32(be, bt+bn, h)
	if in.hasText() {
		ids := be.FromI32(in.InputIDs, bt)
		pos := make([]int32, bt)
		for i := range pos {
			pos[i] = int32(i % in.T)
		}
		typ := in.TxtTypeIDs
		if typ == nil {
			typ = make([]int32, bt)
		}
		m.txt.Fwd(be, emb.RowRange(0, bt), ids, be.FromI32(pos, bt), be.FromI32(typ, bt))
	}
	if in.hasImage() {
		typ := in.ImgTypeIDs
		if typ == nil {
			typ = make([]int32, bn)
			for i := range typ {
				typ[i] = 1
			}
		}
		var masks *compute.Tensor
		if in.ImgMasks != nil {
			masks = be.FromI32(in.ImgMasks, bn)
		}
		m.img.Fwd(be, emb.RowRange(bt, bt+bn), be.FromF32(in.ImgFeat, bn, m.Cfg.ImgDim),
			be.FromF32(in.ImgPos, bn, ImgPosDim), be.FromI32(typ, bn), masks)
	}

	x := emb
	if in.hasText() && in.hasImage() {
		x = m.joint.F32(be, in.B*m.s, h)
		m.gidx = be.FromI32(m.globalGather(in), in.B*m.s)
		be.Gather(x, emb, m.gidx)
	}
	return x, lens32
}

// encodePooled runs the inference encoder (encoder.fwdPooled) on x
// [B*S, H], S = m.s, with valid lengths lens, then the pooler, and
// returns the pooled output [B, H].
func (m *Model) encodePooled(x *compute.Tensor, lens []int32) *compute.Tensor {
	be, b := m.be, len(lens)
	lens2 := make([]int32, 2*b)
	first := make([]int32, b)
	for r, l := range lens {
		lens2[r], lens2[b+r], first[r] = 1, l, int32(r*m.s)
	}
	m.seq = nil
	cls := m.enc.fwdPooled(be, x, be.FromI32(lens, b), be.FromI32(lens2, 2, b), be.FromI32(first, b))
	return m.pool(cls)
}

// pool sets Pooled = tanh(pooler(pre)) for the [CLS] rows pre [B, H].
func (m *Model) pool(pre *compute.Tensor) *compute.Tensor {
	be := m.be
	pooled := m.pooled.F32(be, pre.Rows(), m.Cfg.HiddenSize)
	m.pooler.Fwd(be, pooled, pre)
	be.TanhFwd(pooled, pooled)
	return pooled
}

// globalGather turns the per-example gather_index into row indices of the
// embedding buffer [text rows B*T; image rows B*N].
func (m *Model) globalGather(in *Input) []int32 {
	g := in.GatherIndex
	if g == nil {
		g = GatherIndexFor(in.TxtLens, in.NBB, in.T, m.s)
	}
	out := make([]int32, len(g))
	for i, v := range g {
		b := i / m.s
		if int(v) < in.T {
			out[i] = int32(b*in.T) + v
		} else {
			out[i] = int32(in.B*in.T+b*in.N) + v - int32(in.T)
		}
	}
	return out
}

// SeqLen is S of the last forward.
func (m *Model) SeqLen() int { return m.s }

// Seq is the last layer's output [B*S, H] of the last forward.
func (m *Model) Seq() *compute.Tensor { return m.seq }

// Layer returns layer i's output [B*S, H] of the last forward.
func (m *Model) Layer(i int) *compute.Tensor { return m.enc.output(i) }

// Embeddings returns the joined embedding rows fed to the encoder [B*S, H]
// (or the single modality's embeddings).
func (m *Model) Embeddings() *compute.Tensor { return m.enc.layers[0].x }

// Pooled is tanh(dense(seq[:, 0])) [B, H].
func (m *Model) Pooled() *compute.Tensor { return m.pooled.t.View(m.in.B, m.Cfg.HiddenSize) }

// GradSeq is the gradient of the loss w.r.t. Seq, accumulated by heads.
func (m *Model) GradSeq() *compute.Tensor { return m.dSeq.t.View(m.in.B*m.s, m.Cfg.HiddenSize) }

// GradPooled is the gradient of the loss w.r.t. Pooled, accumulated by heads.
func (m *Model) GradPooled() *compute.Tensor { return m.dPooled.t.View(m.in.B, m.Cfg.HiddenSize) }

// GradImgFeat is the gradient w.r.t. the input region features [B*N,
// img_dim] after a Backward(true).
func (m *Model) GradImgFeat() *compute.Tensor { return m.dFeat }

// Backward propagates GradSeq and GradPooled to every backbone parameter
// (accumulating). With wantFeatGrad it also keeps the input-feature gradient.
func (m *Model) Backward(wantFeatGrad bool) {
	be, in, h := m.be, m.in, m.Cfg.HiddenSize
	dSeq := m.GradSeq()
	// The heads wrote their gradients before calling Backward.
	m.run.stageDone(stageHeads)

	pooled := m.Pooled()
	dPre := m.dPool.F32(be, in.B, h)
	be.TanhBwd(dPre, pooled, m.GradPooled())
	dFirst := m.dFirst.F32(be, in.B, h)
	m.pooler.Bwd(be, dFirst, dPre, m.poolPre.F32(be, in.B, h), 0)
	m.run.stageDone(stagePooler)
	be.ScatterAdd(dSeq, dFirst, m.firstIdx)

	dx := m.enc.Bwd(be, dSeq, m.lens)

	bt, bn := in.B*in.T, in.B*in.N
	if !in.hasText() {
		bt = 0
	}
	if !in.hasImage() {
		bn = 0
	}
	dEmb := dx
	if in.hasText() && in.hasImage() {
		dEmb = m.dJoint.F32(be, bt+bn, h)
		be.Zero(dEmb)
		be.ScatterAdd(dEmb, dx, m.gidx)
	}
	if in.hasText() {
		m.txt.Bwd(be, dEmb.RowRange(0, bt))
	}
	m.dFeat = nil
	if in.hasImage() {
		m.dFeat = m.img.Bwd(be, dEmb.RowRange(bt, bt+bn), wantFeatGrad)
	}
	m.run.stageDone(m.Cfg.NumHiddenLayers + stagePooler + 1)
}

// The stages of Backward, in the order their gradients become final: the
// heads (everything outside the backbone, written before Backward is
// called), the pooler, encoder layers last to first, then the embeddings
// (which the MLM decoder's tied word table also writes to, first).
const (
	stageHeads  = 0
	stagePooler = 1
)

// GradStages returns the parameters grouped by the stage of Backward that
// finishes their gradients, in that order, each group in creation order.
// Data-parallel training lays the flat gradient buffers out in this order
// so that a bucket can be all-reduced while the rest of the backward runs.
func (m *Model) GradStages() [][]*Param {
	layers := m.Cfg.NumHiddenLayers
	stages := make([][]*Param, layers+stagePooler+2)
	for _, p := range m.Params.List() {
		stages[m.gradStage(p.Name)] = append(stages[m.gradStage(p.Name)], p)
	}
	return stages
}

func (m *Model) gradStage(name string) int {
	layers := m.Cfg.NumHiddenLayers
	switch {
	case strings.HasPrefix(name, "uniter.pooler."):
		return stagePooler
	case strings.HasPrefix(name, "uniter.encoder.layer."):
		i, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(name, "uniter.encoder.layer."), ".", 2)[0])
		if err == nil && i >= 0 && i < layers {
			return stagePooler + layers - i
		}
	case strings.HasPrefix(name, "uniter.embeddings."), strings.HasPrefix(name, "uniter.img_embeddings."):
		return layers + stagePooler + 1
	}
	return stageHeads
}

// OnGradStage makes every Backward call fn(stage) as each stage of
// GradStages is finished; nil stops it. fn runs on the goroutine calling
// Backward.
func (m *Model) OnGradStage(fn func(stage int)) { m.run.gradStage = fn }

// SyntheticInput is a random batch for benchmarks: b examples of t tokens
// (with [CLS] 101 and [SEP] 102) and n regions each.
func SyntheticInput(cfg Config, b, t, n int, seed uint64) *Input {
	r := rand.New(rand.NewPCG(seed, 99))
	in := &Input{B: b, T: t, N: n,
		InputIDs: make([]int32, b*t), TxtLens: make([]int, b),
		ImgFeat: make([]float32, b*n*cfg.ImgDim), ImgPos: make([]float32, b*n*ImgPosDim), NBB: make([]int, b)}
	for i := 0; i < b; i++ {
		in.TxtLens[i], in.NBB[i] = t, n
		for j := 0; j < t; j++ {
			in.InputIDs[i*t+j] = int32(1 + r.IntN(cfg.VocabSize-1))
		}
		in.InputIDs[i*t] = int32(min(101, cfg.VocabSize-1))
		in.InputIDs[i*t+t-1] = int32(min(102, cfg.VocabSize-1))
	}
	for i := range in.ImgFeat {
		in.ImgFeat[i] = float32(r.ExpFloat64())
	}
	for k := 0; k < b*n; k++ {
		x1, y1 := r.Float64()*0.7, r.Float64()*0.7
		w, h := 0.05+r.Float64()*0.25, 0.05+r.Float64()*0.25
		copy(in.ImgPos[k*7:], []float32{float32(x1), float32(y1), float32(x1 + w), float32(y1 + h), float32(w), float32(h), float32(w * h)})
	}
	return in
}
