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

// nlvr2Head is NLVR2.Step after the backbone forward: the variant's head
// and the cross-entropy on whatever m.Pooled() (paired, triplet) or
// m.Seq() (paired-attn) holds, with the backward of loss*gradScale into
// GradPooled or GradSeq and the head's parameters, stopping before the
// backbone's backward. TestNLVR2StepMatchesHead checks it against Step.
func nlvr2Head(n *NLVR2, b *data.Batch, labels []int32, backward bool, gradScale float32) headResult {
	m := n.m
	be, h, ex := m.Backend(), m.Cfg.HiddenSize, len(labels)
	var feat *compute.Tensor
	switch n.variant {
	case NLVR2Paired:
		feat = m.Pooled().View(ex, 2*h)
	case NLVR2Triplet:
		feat = m.Pooled()
	default:
		feat = n.attnForward(b, ex)
	}
	logits := n.logits.F32(be, ex, 2)
	n.out.Fwd(be, logits, feat)
	res := headResult{logits: be.ToF32(logits), pred: argmax(be, &n.pred, logits)}
	loss := n.loss.F32(be, ex)
	var dlogits *compute.Tensor
	if backward {
		dlogits = n.dlogits.F32(be, ex, 2)
	}
	be.SoftmaxXent(loss, dlogits, logits, be.FromI32(labels, ex), -1, gradScale/float32(ex))
	res.lossSum = be.Sum(loss)
	res.loss = res.lossSum / float64(ex)
	for i, p := range res.pred {
		if p == labels[i] {
			res.score++
		}
	}
	if !backward {
		return res
	}
	switch n.variant {
	case NLVR2Paired, NLVR2Triplet:
		dfeat := n.dcat2.F32(be, feat.Shape...)
		n.out.Bwd(be, dfeat, dlogits, feat, 0)
		gp := m.GradPooled()
		be.Add(gp, gp, dfeat.View(gp.Shape...))
	default:
		n.attnBackward(dlogits, feat, ex)
	}
	return res
}

// nlvr2Case is one variant's golden data: its prefix in heads.pt, its
// input (pooled or seq) and the batch layout that produces it.
type nlvr2Case struct {
	variant, prefix, input string
	lens                   []int // joint length of each row
	perExample             int
}

// attnEps is the finite-difference step of paired-attn.
var attnEps = 2e-3

// attnLens are finetune_ref.py's ATTN_LENS (S 9).
var attnLens = []int{9, 5, 4, 7, 6, 6}

var nlvr2Cases = []nlvr2Case{
	{NLVR2Paired, "nlvr2_paired", "pooled", []int{5, 7, 4, 6, 3, 8}, 2},
	{NLVR2Triplet, "nlvr2_triplet", "pooled", []int{9, 6, 7}, 1},
	{NLVR2PairedAttn, "nlvr2_attn", "seq", attnLens, 2},
}

// goldenNLVR2 builds the variant's head with the golden weights on a
// backbone whose last forward ran on a batch of the golden layout (seed
// picks the step seed, train the mode), its output replaced by the golden
// input.
func goldenNLVR2(t *testing.T, r *ref, c nlvr2Case, dropout float64) (*NLVR2, *data.Batch, []string) {
	t.Helper()
	m := headModel(t, dropout, 1)
	n, err := NewNLVR2(m, c.variant, true, false)
	if err != nil {
		t.Fatal(err)
	}
	names := setRefParams(t, r, m, c.prefix)
	m.SetTrain(false)
	b := headBatch(t, m.Cfg, c.lens, c.perExample, r.i32(c.prefix+"/labels"), nil, 0)
	if err := n.forward(b, false); err != nil {
		t.Fatal(err)
	}
	in := m.Pooled()
	if c.input == "seq" {
		in = m.Seq()
		if s, want := m.SeqLen(), len(r.f32(c.prefix+"/seq"))/(len(c.lens)*m.Cfg.HiddenSize); s != want {
			t.Fatalf("batch has S %d, reference %d", s, want)
		}
		if got := r.ints(c.prefix + "/lens"); !slices.Equal(got, c.lens) {
			t.Fatalf("reference lengths %v, test %v", got, c.lens)
		}
	}
	setHost(m.Backend(), in, r.f32(c.prefix+"/"+c.input))
	return n, b, names
}

// gradInput is the backbone-output gradient a variant's head writes.
func gradInput(n *NLVR2) *compute.Tensor {
	if n.variant == NLVR2PairedAttn {
		return n.m.GradSeq()
	}
	return n.m.GradPooled()
}

// TestNLVR2HeadsMatchPyTorch compares every NLVR2 head on its golden input
// with PyTorch: logits, the training loss (cross-entropy mean), the
// gradient w.r.t. the pooled output or the last layer (exactly 0 on padded
// positions) and every head parameter's gradient; a second step scaled by
// 2 accumulates. paired-attn's logits must not depend on the padded rows.
func TestNLVR2HeadsMatchPyTorch(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	for _, c := range nlvr2Cases {
		t.Run(c.variant, func(t *testing.T) {
			n, b, names := goldenNLVR2(t, r, c, 0)
			m := n.m
			be := m.Backend()
			labels := r.i32(c.prefix + "/labels")
			m.Params.ZeroGrad()
			res := nlvr2Head(n, b, labels, true, 1)

			want := r.f32(c.prefix + "/logits")
			worst := relErr(res.logits, want)
			checkRel(t, "logits", res.logits, want, refTol)
			checkScalar(t, "loss", res.loss, r.scalar(c.prefix+"/loss"), refTol)
			gIn, wantIn := be.ToF32(gradInput(n)), r.f32(c.prefix+"/grad/"+c.input)
			checkRel(t, "grad "+c.input, gIn, wantIn, refTol)
			worst = math.Max(worst, relErr(gIn, wantIn))
			worst = math.Max(worst, checkHeadGrads(t, r, m, c.prefix, names, 1))
			t.Logf("%s: worst relative error %.3g", c.variant, worst)

			if c.input == "seq" {
				s, h := m.SeqLen(), m.Cfg.HiddenSize
				seq := r.f32(c.prefix + "/seq")
				other := slices.Clone(seq)
				padded := 0
				for row, l := range c.lens {
					for j := l; j < s; j++ {
						for k := range h {
							i := (row*s+j)*h + k
							if gIn[i] != 0 {
								t.Fatalf("grad seq at padded row %d position %d = %v, want 0", row, j, gIn[i])
							}
							other[i] *= -3
							padded++
						}
					}
				}
				if padded == 0 {
					t.Fatal("no padding in the golden batch")
				}
				setHost(be, m.Seq(), other)
				if o := nlvr2Head(n, b, labels, false, 1); !slices.Equal(o.logits, res.logits) {
					t.Errorf("logits depend on the padded rows: %v, then %v", res.logits, o.logits)
				}
				setHost(be, m.Seq(), seq)
			}

			nlvr2Head(n, b, labels, true, 2)
			checkHeadGrads(t, r, m, c.prefix, names, 3)
			wantIn = slices.Clone(wantIn)
			for i := range wantIn {
				wantIn[i] *= 3
			}
			checkRel(t, "accumulated grad "+c.input, be.ToF32(gradInput(n)), wantIn, refTol)
		})
	}
}

// TestNLVR2StepMatchesHead checks that NLVR2.Step is nlvr2Head after the
// backbone forward and followed by the backbone backward, for every
// variant, in evaluation mode and (paired-attn) in training mode with
// dropout, where Step and the head must draw the same masks from the step
// seed; plus the batch checks.
func TestNLVR2StepMatchesHead(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	for _, c := range nlvr2Cases {
		for _, train := range []bool{false, true} {
			if train && c.variant != NLVR2PairedAttn {
				continue
			}
			name := c.variant
			if train {
				name += " dropout"
			}
			t.Run(name, func(t *testing.T) {
				n, b, _ := goldenNLVR2(t, r, c, 0.3)
				m := n.m
				be := m.Backend()
				m.SetTrain(train)
				m.SetStepSeed(77)
				const scale = 0.5
				ex := len(b.Labels)
				// Labels that half the backbone's own predictions get right.
				first, err := n.Step("nlvr2", b, false, 1)
				if err != nil {
					t.Fatal(err)
				}
				for i, p := range first.Pred {
					b.Labels[i] = p ^ int32(i%2)
				}

				m.Params.ZeroGrad()
				res, err := n.Step("nlvr2", b, true, scale)
				if err != nil {
					t.Fatal(err)
				}
				stepGrads := allGrads(m)
				logits := be.ToF32(res.Logits)

				m.Params.ZeroGrad()
				if err := n.forward(b, false); err != nil {
					t.Fatal(err)
				}
				h := nlvr2Head(n, b, b.Labels, true, scale)
				n.backward()
				if !slices.Equal(logits, h.logits) || !slices.Equal(res.Pred, h.pred) {
					t.Errorf("Step logits %v pred %v, head %v %v", logits, res.Pred, h.logits, h.pred)
				}
				if res.Loss != h.loss || res.LossSum != h.lossSum || res.Score != h.score || float64(res.Correct) != h.score {
					t.Errorf("Step loss %v sum %v score %v correct %d, head %v %v %v", res.Loss, res.LossSum, res.Score, res.Correct, h.loss, h.lossSum, h.score)
				}
				if res.Count != ex || res.Examples != ex || res.Tokens != b.Tokens() || n.LossUnits("nlvr2", b) != ex {
					t.Errorf("count %d examples %d tokens %d units %d, want %d %d %d %d", res.Count, res.Examples, res.Tokens, n.LossUnits("nlvr2", b), ex, ex, b.Tokens(), ex)
				}
				if res.Correct != (ex+1)/2 {
					t.Errorf("correct %d, want %d", res.Correct, (ex+1)/2)
				}
				compareGrads(t, m, stepGrads, 0)

				if train {
					m.SetTrain(false)
					ev, err := n.Step("nlvr2", b, false, 1)
					if err != nil {
						t.Fatal(err)
					}
					if slices.Equal(be.ToF32(ev.Logits), logits) {
						t.Error("dropout on: logits equal the evaluation ones")
					}
					return
				}
				ev, err := n.Step("nlvr2", b, false, 1)
				if err != nil {
					t.Fatal(err)
				}
				if ev.Loss != res.Loss || ev.Correct != res.Correct {
					t.Errorf("evaluation step loss %v correct %d, training step %v %d", ev.Loss, ev.Correct, res.Loss, res.Correct)
				}
				compareGrads(t, m, stepGrads, 0)

				test := *b
				test.Labels = nil
				pr, err := n.Step("nlvr2", &test, false, 1)
				if err != nil {
					t.Fatal(err)
				}
				if pr.Count != 0 || !slices.Equal(pr.Pred, res.Pred) {
					t.Errorf("test split: count %d pred %v, want 0 and %v", pr.Count, pr.Pred, res.Pred)
				}
				if _, err := n.Step("nlvr2", &test, true, 1); err == nil {
					t.Error("training on a split without targets: no error")
				}
				bad := *b
				bad.Labels = slices.Clone(b.Labels)
				bad.Labels[0] = 2
				if _, err := n.Step("nlvr2", &bad, false, 1); err == nil {
					t.Error("label 2: no error")
				}
				other := *b
				other.RowsPerExample = 3 - b.RowsPerExample
				if _, err := n.Step("nlvr2", &other, false, 1); err == nil {
					t.Errorf("a batch of %d rows per example: no error", other.RowsPerExample)
				}
			})
		}
	}
}

// TestNLVR2FiniteDifferences checks every NLVR2 head's backward against
// central differences of its training loss w.r.t. its input (valid
// positions; padded ones must not move the loss at all) and a sample of
// every head parameter's entries, at the golden point; paired-attn also
// with dropout on (the masks are a function of the step seed, so every
// evaluation of the loss drops the same units).
func TestNLVR2FiniteDifferences(t *testing.T) {
	r := loadRefPath(t, finetuneRef)
	for _, c := range nlvr2Cases {
		for _, train := range []bool{false, true} {
			if train && c.variant != NLVR2PairedAttn {
				continue
			}
			name := c.variant
			if train {
				name += " dropout"
			}
			t.Run(name, func(t *testing.T) {
				n, b, names := goldenNLVR2(t, r, c, 0.3)
				m := n.m
				be := m.Backend()
				m.SetTrain(train)
				m.SetStepSeed(12345)
				labels := r.i32(c.prefix + "/labels")
				m.Params.ZeroGrad()
				base := nlvr2Head(n, b, labels, true, 1)
				loss := func() float64 { return nlvr2Head(n, b, labels, false, 1).loss }
				if l := loss(); l != base.loss {
					t.Fatalf("loss %v, then %v: the forward is not reproducible", base.loss, l)
				}
				// The pooled heads are smooth; paired-attn's ReLUs (fc, attn_pool)
				// make its loss piecewise smooth: a smaller step, float32 noise
				// allowing, and one-sided differences where a step crosses a kink.
				eps, tol, kinks := 1e-2, 1e-3, false
				if c.variant == NLVR2PairedAttn {
					eps, tol, kinks = attnEps, 1e-2, true
				}
				in := m.Pooled()
				valid := func(int) bool { return true }
				if c.input == "seq" {
					in = m.Seq()
					s, h := m.SeqLen(), m.Cfg.HiddenSize
					valid = func(i int) bool { return i/h%s < c.lens[i/h/s] }
					x := be.ToF32(in)
					for i := range x {
						if valid(i) {
							continue
						}
						x0 := x[i]
						x[i] = x0 + 1
						setHost(be, in, x)
						if l := loss(); l != base.loss {
							t.Fatalf("seq[%d] (padding) moves the loss: %v, then %v", i, base.loss, l)
						}
						x[i] = x0
						setHost(be, in, x)
					}
				}
				g := be.ToF32(gradInput(n))
				worst := checkFD(t, be, c.input, in, g, fdCoords(g, 5, 1, valid), eps, tol, kinks, loss)
				for k, name := range names {
					p := m.Params.Get(name)
					g := be.ToF32(p.G)
					worst = math.Max(worst, checkFD(t, be, name, p.W, g, fdCoords(g, 3, uint64(k), nil), eps, tol, kinks, loss))
				}
				t.Logf("%s finite differences: worst relative error %.3g", name, worst)
			})
		}
	}
}

// TestNLVR2LoadGrowsTypeTable checks the official surgery: a pretrained
// checkpoint's 2-row token type table gets a third row copied from row 1,
// a fine-tuned 3-row one is loaded as it is, and no checkpoint grows the
// fresh table; afterwards the right image's type 2 is accepted.
func TestNLVR2LoadGrowsTypeTable(t *testing.T) {
	newTask := func(seed uint64) *NLVR2 {
		n, err := NewNLVR2(headModel(t, 0, seed), NLVR2PairedAttn, true, false)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	table := func(n *NLVR2) ([]int, []float32) {
		p := n.m.Params.Get(model.TypeEmbeddingName)
		return p.Shape, n.m.Backend().ToF32(p.W)
	}
	src := newTask(1)
	sd2 := src.m.StateDict()
	h := src.m.Cfg.HiddenSize
	old := sd2.Tensors[model.TypeEmbeddingName]
	if old.Shape[0] != 2 {
		t.Fatalf("fresh type table %v, want 2 rows", old.Shape)
	}
	b := headBatch(t, src.m.Cfg, attnLens, 2, []int32{0, 1, 1}, nil, 2)

	check := func(t *testing.T, n *NLVR2, sd *ckpt.StateDict, want []float32) {
		t.Helper()
		if err := n.forward(b, false); err == nil {
			t.Fatal("type 2 accepted by a 2-row table")
		}
		rep, err := n.Load(sd, "test", false)
		if err != nil {
			t.Fatal(err)
		}
		if sd != nil && len(rep.Missing)+len(rep.Unexpected) > 0 {
			t.Errorf("load report %s", rep)
		}
		shape, got := table(n)
		if !slices.Equal(shape, []int{3, h}) || n.m.Cfg.TypeVocabSize != 3 {
			t.Fatalf("type table %v, type_vocab_size %d, want [3 %d] and 3", shape, n.m.Cfg.TypeVocabSize, h)
		}
		if !slices.Equal(got, want) {
			t.Errorf("type table\n%v\nwant\n%v", got, want)
		}
		if sd != nil {
			for _, k := range sd.Keys {
				if k == model.TypeEmbeddingName {
					continue
				}
				if !slices.Equal(n.m.Backend().ToF32(n.m.Params.Get(k).W), sd.Tensors[k].Float) {
					t.Errorf("%s not loaded", k)
				}
			}
		}
		if err := n.forward(b, false); err != nil {
			t.Errorf("type 2 after the surgery: %v", err)
		}
	}

	t.Run("two rows", func(t *testing.T) {
		want := append(slices.Clone(old.Float), old.Float[h:2*h]...)
		check(t, newTask(2), sd2, want)
	})
	t.Run("three rows", func(t *testing.T) {
		sd3 := &ckpt.StateDict{Keys: sd2.Keys, Tensors: map[string]*ckpt.Tensor{}}
		for k, v := range sd2.Tensors {
			sd3.Tensors[k] = v
		}
		rows := slices.Clone(old.Float)
		for k := range h {
			rows = append(rows, float32(k)/10-0.7) // a row 2 of its own
		}
		sd3.Tensors[model.TypeEmbeddingName] = &ckpt.Tensor{Shape: []int{3, h}, DType: "float32", Float: rows}
		check(t, newTask(3), sd3, rows)
	})
	t.Run("official names", func(t *testing.T) {
		// An official checkpoint: backbone keys without "uniter.", LayerNorm
		// gamma/beta.
		sd := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
		for _, k := range sd2.Keys {
			key := strings.TrimPrefix(k, "uniter.")
			if rest, ok := strings.CutSuffix(key, "LayerNorm.weight"); ok {
				key = rest + "LayerNorm.gamma"
			}
			sd.Keys = append(sd.Keys, key)
			sd.Tensors[key] = sd2.Tensors[k]
		}
		n := newTask(4)
		want := append(slices.Clone(old.Float), old.Float[h:2*h]...)
		if _, err := n.Load(sd, "official", false); err != nil {
			t.Fatal(err)
		}
		if shape, got := table(n); !slices.Equal(shape, []int{3, h}) || !slices.Equal(got, want) {
			t.Errorf("type table %v %v, want [3 %d] %v", shape, got, h, want)
		}
	})
	t.Run("fresh", func(t *testing.T) {
		n := newTask(5)
		_, init := table(n)
		check(t, n, nil, append(slices.Clone(init), init[h:2*h]...))
	})
}

// TestNLVR2Metrics checks accuracy, the per-example loss and the official
// consistency (sentences grouped by the identifier with its third field
// blanked, consistent when all their examples are right) and the CSV.
func TestNLVR2Metrics(t *testing.T) {
	n, err := NewNLVR2(headModel(t, 0, 1), NLVR2Paired, true, false)
	if err != nil {
		t.Fatal(err)
	}
	e := &Eval{
		IDs:    []string{"dev-1-0-0", "dev-1-1-0", "dev-2-0-1", "dev-2-3-1", "dev-3-0-0"},
		Pred:   []int32{1, 0, 1, 1, 0},
		Labels: []int32{1, 0, 0, 1, 0},
		N:      5, LossSum: 2.5, Score: 4,
	}
	m := n.Metrics(e)
	if m["acc"] != 0.8 || m["loss"] != 0.5 || m["n"] != 5 {
		t.Errorf("metrics %v", m)
	}
	// groups dev-1--0 (right), dev-2--1 (one wrong), dev-3--0 (right)
	if math.Abs(m["consistency"]-2.0/3) > 1e-12 {
		t.Errorf("consistency %v, want 2/3", m["consistency"])
	}
	ext, out, err := n.Results(e, false)
	if err != nil || ext != ".csv" || !strings.HasPrefix(string(out), "dev-1-0-0,True\ndev-1-1-0,False\n") {
		t.Errorf("results %q %q %v", ext, out, err)
	}
}
