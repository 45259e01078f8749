package tasks

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// Reference data written by scripts/tasks_ref.py from PyTorch.
const refDir = "../../testdata/tasks/"

// refTol is the fp32 relative error budget against PyTorch.
const refTol = 1e-5

type ref struct {
	t  *testing.T
	sd *ckpt.StateDict
}

func loadRef(t *testing.T, name string) *ref {
	t.Helper()
	sd, err := ckpt.ReadTorch(refDir + name)
	if err != nil {
		t.Fatal(err)
	}
	return &ref{t: t, sd: sd}
}

func (r *ref) tensor(key string) *ckpt.Tensor {
	r.t.Helper()
	x := r.sd.Tensors[key]
	if x == nil {
		r.t.Fatalf("reference data has no %q", key)
	}
	return x
}

func (r *ref) f32(key string) []float32 { return r.tensor(key).Float }

func (r *ref) scalar(key string) float64 {
	r.t.Helper()
	x := r.tensor(key)
	if x.Float != nil {
		return float64(x.Float[0])
	}
	return float64(x.Int[0])
}

func (r *ref) i32(key string) []int32 {
	src := r.tensor(key).Int
	out := make([]int32, len(src))
	for i, v := range src {
		out[i] = int32(v)
	}
	return out
}

func (r *ref) ints(key string) []int {
	src := r.tensor(key).Int
	out := make([]int, len(src))
	for i, v := range src {
		out[i] = int(v)
	}
	return out
}

// relErr is max|got-want| / max|want|.
func relErr(got, want []float32) float64 {
	var diff, den float64
	for i := range want {
		diff = math.Max(diff, math.Abs(float64(got[i])-float64(want[i])))
		den = math.Max(den, math.Abs(float64(want[i])))
	}
	if den == 0 {
		return diff
	}
	return diff / den
}

// checkRel reports the relative error of got against want and fails above
// tol (or on NaN, or a length mismatch).
func checkRel(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	if e := relErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %g", name, e, tol)
	} else {
		t.Logf("%s: relative error %.3g", name, e)
	}
}

// checkScalar compares one value at relative tolerance tol.
func checkScalar(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	e := math.Abs(got-want) / math.Max(math.Abs(want), 1e-30)
	if !(e <= tol) {
		t.Errorf("%s = %.9g, PyTorch %.9g (relative error %.3g > %g)", name, got, want, e, tol)
	} else {
		t.Logf("%s = %.9g, relative error %.3g", name, got, e)
	}
}

// The fine-tuning heads' golden data (scripts/finetune_ref.py).
const finetuneRef = "../../testdata/finetune/heads.pt"

func loadRefPath(t *testing.T, path string) *ref {
	t.Helper()
	sd, err := ckpt.ReadTorch(path)
	if err != nil {
		t.Fatal(err)
	}
	return &ref{t: t, sd: sd}
}

// headConfig is a backbone of the golden heads' size (H 16, 4 heads); the
// backbone only shapes the batch, its outputs are replaced by the golden
// inputs.
func headConfig(dropout float64) model.Config {
	return model.Config{VocabSize: 40, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 4,
		IntermediateSize: 24, HiddenAct: "gelu", HiddenDropoutProb: dropout, AttentionProbsDropoutProb: dropout,
		MaxPositionEmbeddings: 16, TypeVocabSize: 2, InitializerRange: 0.2, ImgDim: 12, ImgLabelDim: data.LabelDim}
}

func headModel(t *testing.T, dropout float64, seed uint64) *model.Model {
	t.Helper()
	m, err := model.New(compute.NewCPU(0), headConfig(dropout), seed)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// headBatch collates rows whose joint lengths (text + regions) are lens,
// perExample rows to an example, with per-example labels (nil: none) and
// soft targets (nil: none, else [examples*dim]). Every text has at least
// [CLS] and [SEP]; region types are imgType (0: the default 1).
func headBatch(t *testing.T, cfg model.Config, lens []int, perExample int, labels []int32, targets []float32, imgType int32) *data.Batch {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(lens)), uint64(perExample)))
	nex := len(lens) / perExample
	var exs []*data.Example
	for i, l := range lens {
		e := i / perExample
		tl := (l + 1) / 2
		nbb := l - tl
		ids := make([]int32, tl)
		for k := range ids {
			ids[k] = int32(5 + rng.IntN(cfg.VocabSize-5))
		}
		ids[0], ids[tl-1] = 1, 2
		ex := &data.Example{ID: fmt.Sprintf("ex-%d-%d-0", e/2, e%2), InputIDs: ids, NBB: nbb,
			ImgFeat: make([]float32, nbb*cfg.ImgDim), ImgPos: make([]float32, nbb*data.PosDim)}
		for k := range ex.ImgFeat {
			ex.ImgFeat[k] = float32(rng.NormFloat64())
		}
		for k := range ex.ImgPos {
			ex.ImgPos[k] = float32(rng.Float64())
		}
		if imgType != 0 {
			ex.ImgTypeIDs = make([]int32, nbb)
			for k := range ex.ImgTypeIDs {
				ex.ImgTypeIDs[k] = imgType
			}
		}
		if labels != nil {
			ex.Label = labels[e]
		} else {
			ex.NoLabel = true
		}
		if targets != nil {
			dim := len(targets) / nex
			ex.Targets = targets[e*dim : (e+1)*dim]
		}
		exs = append(exs, ex)
	}
	b, err := data.CollateRows(exs, cfg.ImgDim, perExample)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// setRefParams loads every prefix/param/<name> of the reference into the
// model and checks that they are exactly the model's parameters outside
// the backbone (the head's official names). It returns the names.
func setRefParams(t *testing.T, r *ref, m *model.Model, prefix string) []string {
	t.Helper()
	var names []string
	for _, k := range r.sd.Keys {
		name, ok := strings.CutPrefix(k, prefix+"/param/")
		if !ok {
			continue
		}
		x := r.tensor(k)
		if err := m.Params.Set(name, x.Shape, x.Float); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	var head []string
	for _, n := range m.Params.Names() {
		if !strings.HasPrefix(n, "uniter.") {
			head = append(head, n)
		}
	}
	slices.Sort(head)
	got := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, head) {
		t.Fatalf("head parameters %v, reference has %v", head, got)
	}
	return names
}

// checkHeadGrads compares every head parameter's gradient with the
// reference's grad/<name> times scale, returning the worst relative error.
func checkHeadGrads(t *testing.T, r *ref, m *model.Model, prefix string, names []string, scale float32) float64 {
	t.Helper()
	be, worst := m.Backend(), 0.0
	for _, name := range names {
		want := slices.Clone(r.f32(prefix + "/grad/" + name))
		for i := range want {
			want[i] *= scale
		}
		got := be.ToF32(m.Params.Get(name).G)
		checkRel(t, "grad "+name, got, want, refTol)
		worst = math.Max(worst, relErr(got, want))
	}
	return worst
}

// setHost copies host values into a device tensor of the same size.
func setHost(be compute.Backend, dst *compute.Tensor, v []float32) {
	be.Copy(dst, be.FromF32(v, dst.Shape...))
}

// fdCoords picks coordinates of the gradient g to check: the k largest
// |g| and up to k more drawn (deterministically) from the coordinates with
// |g| at least a tenth of the largest; keep (nil: all) restricts the
// choice.
func fdCoords(g []float32, k int, seed uint64, keep func(i int) bool) []int {
	var order []int
	for i := range g {
		if keep == nil || keep(i) {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmpAbs(g[b], g[a]) })
	if len(order) == 0 || g[order[0]] == 0 {
		return nil
	}
	n := min(k, len(order))
	out := slices.Clone(order[:n])
	var big []int
	for _, i := range order[n:] {
		if math.Abs(float64(g[i])) >= 0.1*math.Abs(float64(g[order[0]])) {
			big = append(big, i)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	rng.Shuffle(len(big), func(a, b int) { big[a], big[b] = big[b], big[a] })
	return append(out, big[:min(k, len(big))]...)
}

// checkFD compares the analytic gradient g of loss w.r.t. the device
// tensor x with central differences of step eps at coords, perturbing x
// in place (restored afterwards). It fails above tol relative error and
// returns the worst one.
//
// With kinks the loss is only piecewise smooth (ReLUs), and a step may
// cross a kink: the gradient must then match the central difference or
// one of the one-sided ones (the side without the kink), within tol.
func checkFD(t *testing.T, be compute.Backend, name string, x *compute.Tensor, g []float32, coords []int, eps, tol float64, kinks bool, loss func() float64) float64 {
	t.Helper()
	if len(coords) == 0 {
		t.Errorf("%s: zero gradient, nothing to check", name)
		return 0
	}
	w := be.ToF32(x)
	l0 := 0.0
	if kinks {
		l0 = loss()
	}
	worst, sided := 0.0, 0
	for _, i := range coords {
		w0 := w[i]
		hi, lo := w0+float32(eps), w0-float32(eps)
		w[i] = hi
		setHost(be, x, w)
		lp := loss()
		w[i] = lo
		setHost(be, x, w)
		lm := loss()
		w[i] = w0
		setHost(be, x, w)
		ana := float64(g[i])
		num := (lp - lm) / (float64(hi) - float64(lo))
		e := math.Abs(num-ana) / math.Abs(ana)
		if kinks && !(e <= tol) {
			for _, side := range []float64{(lp - l0) / (float64(hi) - float64(w0)), (l0 - lm) / (float64(w0) - float64(lo))} {
				if es := math.Abs(side-ana) / math.Abs(ana); es < e {
					e, num = es, side
				}
			}
			if e <= tol {
				sided++
			}
		}
		worst = math.Max(worst, e)
		if !(e <= tol) {
			t.Errorf("%s[%d]: analytic %.6g, numeric %.6g (relative error %.3g > %g)", name, i, g[i], num, e, tol)
		}
	}
	t.Logf("%s: %d coordinates (%d by a one-sided difference), worst relative error %.3g", name, len(coords), sided, worst)
	return worst
}
