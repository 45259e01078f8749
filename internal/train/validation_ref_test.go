package train

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// The pretraining validation against the original's validate_* functions
// (scripts/pretrain_val_ref.py): the golden tiny model on five examples in
// two batches, every region masked, ITM without negatives (and a mixed
// case), reduced as pretrain.py reduces them.
const (
	valRefPath = "../../testdata/tasks/validation.pt"
	goldenDir  = "../../testdata/golden/"
	// valRefTol is the relative agreement required of every loss and OT
	// number: the reference sums float32 losses per batch in float32.
	valRefTol = 1e-7
)

type valRef struct {
	t  *testing.T
	sd *ckpt.StateDict
}

func (r valRef) tensor(key string) *ckpt.Tensor {
	r.t.Helper()
	x := r.sd.Tensors[key]
	if x == nil {
		r.t.Fatalf("%s has no %q", valRefPath, key)
	}
	return x
}

// f64 reads a float64 stored as the int64 of its bits.
func (r valRef) f64(key string) float64 {
	r.t.Helper()
	return math.Float64frombits(uint64(r.tensor(key).Int[0]))
}

func (r valRef) ints(key string) []int {
	r.t.Helper()
	var out []int
	for _, v := range r.tensor(key).Int {
		out = append(out, int(v))
	}
	return out
}

func (r valRef) f32(key string) []float32 { return r.tensor(key).Float }

// goldenValPretrain loads the golden tiny model with its pretraining heads
// on the CPU, in evaluation mode, with WRA on.
func goldenValPretrain(t *testing.T) *tasks.Pretrain {
	t.Helper()
	js, err := os.ReadFile(goldenDir + "tiny.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(js)
	if err != nil {
		t.Fatal(err)
	}
	sd, err := ckpt.ReadTorch(goldenDir + "tiny.pt")
	if err != nil {
		t.Fatal(err)
	}
	params := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for _, k := range sd.Keys {
		if name, ok := strings.CutPrefix(k, "param/"); ok {
			params.Keys = append(params.Keys, name)
			params.Tensors[name] = sd.Tensors[k]
		}
	}
	m, err := model.New(compute.NewCPU(0), cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	h := model.NewPretrainHeads(m)
	rep, err := m.LoadStateDict(params, "golden")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Missing)+len(rep.Unexpected) > 0 {
		t.Fatalf("golden parameters do not match the model: %s", rep)
	}
	return &tasks.Pretrain{M: m, H: h, OTWeight: 0.1}
}

// refSet serves the reference's examples as a Dataset, in the reference's
// batches: every length is 1 and the budget is the first batch's size.
type refSet struct {
	t       *testing.T
	r       valRef
	imgDim  int
	classes int
	labels  []int32 // ITM labels
	batches [][]int
}

func newRefSet(t *testing.T, r valRef, p *tasks.Pretrain, labels []int32) *refSet {
	s := &refSet{t: t, r: r, imgDim: p.M.Cfg.ImgDim, classes: p.M.Cfg.ImgLabelDim, labels: labels}
	k := 0
	for _, n := range r.ints("in/batch_sizes") {
		s.batches = append(s.batches, []int{})
		for range n {
			s.batches[len(s.batches)-1] = append(s.batches[len(s.batches)-1], k)
			k++
		}
	}
	return s
}

func (s *refSet) budget() int { return len(s.batches[0]) }

func (s *refSet) Lens(string, int) ([]int, error) {
	n := 0
	for _, b := range s.batches {
		n += len(b)
	}
	return slices.Repeat([]int{1}, n), nil
}

func (s *refSet) Build(task string) data.BuildFunc[*data.Batch] {
	return func(_ context.Context, j data.Job) (*data.Batch, error) {
		if !slices.ContainsFunc(s.batches, func(b []int) bool { return slices.Equal(b, j.Indices) }) {
			return nil, fmt.Errorf("batch %v is not one of the reference's %v", j.Indices, s.batches)
		}
		return s.batch(task, j.Indices)
	}
}

// batch collates examples idx for task as the data pipeline would, with
// every region masked for the region tasks.
func (s *refSet) batch(task string, idx []int) (*data.Batch, error) {
	r := s.r
	tls, nbbs := r.ints("in/txt_lens"), r.ints("in/num_bbs")
	ids, mlmIDs, mlmLabels := r.ints("in/ids"), r.ints("in/mlm_ids"), r.ints("in/mlm_labels")
	feat, pos, soft := r.f32("in/feat"), r.f32("in/pos"), r.f32("in/soft")
	// Offsets of each example's words and regions.
	tok, reg := make([]int, len(tls)+1), make([]int, len(tls)+1)
	for i := range tls {
		tok[i+1], reg[i+1] = tok[i]+tls[i], reg[i]+nbbs[i]
	}
	i32 := func(v []int) []int32 {
		out := make([]int32, len(v))
		for k, x := range v {
			out[k] = int32(x)
		}
		return out
	}
	var exs []*data.Example
	var mrcSoft []float32
	for _, i := range idx {
		n, d := nbbs[i], s.imgDim
		ex := &data.Example{
			ID: fmt.Sprint(i), NBB: n, Label: 1,
			InputIDs: i32(ids[tok[i]:tok[i+1]]),
			ImgFeat:  slices.Clone(feat[reg[i]*d : reg[i+1]*d]),
			ImgPos:   slices.Clone(pos[reg[i]*data.PosDim : reg[i+1]*data.PosDim]),
		}
		switch task {
		case data.TaskMLM:
			ex.InputIDs, ex.MLMLabels = i32(mlmIDs[tok[i]:tok[i+1]]), i32(mlmLabels[tok[i]:tok[i+1]])
		case data.TaskMRFR, data.TaskMRC, data.TaskMRCKL:
			if err := data.ApplyRegionMask(ex, slices.Repeat([]bool{true}, n), nil, d); err != nil {
				return nil, err
			}
			rows := soft[reg[i]*s.classes : reg[i+1]*s.classes]
			if task == data.TaskMRC {
				for k := range n {
					ex.MRCLabels = append(ex.MRCLabels, data.MRCLabel(rows[k*s.classes:(k+1)*s.classes]))
				}
			}
			mrcSoft = append(mrcSoft, rows...)
		case data.TaskITM:
			ex.Label = s.labels[i]
		}
		exs = append(exs, ex)
	}
	b, err := data.Collate(exs, s.imgDim)
	if err != nil {
		return nil, err
	}
	if task == data.TaskMRCKL {
		// The golden model has 31 region classes; Collate carries only the
		// detector's 1601-wide soft labels.
		b.MRCSoft = mrcSoft
	}
	return b, nil
}

func TestValidationMatchesOriginal(t *testing.T) {
	sd, err := ckpt.ReadTorch(valRefPath)
	if err != nil {
		t.Fatal(err)
	}
	r := valRef{t: t, sd: sd}
	p := goldenValPretrain(t)
	ones := slices.Repeat([]int32{1}, len(r.ints("in/txt_lens")))
	var mixed []int32
	for _, y := range r.ints("in/itm_mixed") {
		mixed = append(mixed, int32(y))
	}
	cases := []struct {
		name, task string
		labels     []int32
		keys       []string // the metrics besides n
	}{
		{"mlm", data.TaskMLM, ones, []string{"loss", "acc"}},
		{"mrfr", data.TaskMRFR, ones, []string{"loss"}},
		{"mrc", data.TaskMRC, ones, []string{"loss", "acc"}},
		{"mrckl", data.TaskMRCKL, ones, []string{"loss", "acc"}},
		// No negatives: the original's ot_neg is 0; there is no mean
		// distance of a mismatched pair.
		{"itm", data.TaskITM, ones, []string{"loss", "acc", "ot_loss", "ot_pos", "ot_neg", "ot_pos_mean"}},
		{"itm_mixed", data.TaskITM, mixed, []string{"loss", "acc", "ot_loss", "ot_pos", "ot_neg", "ot_pos_mean", "ot_neg_mean"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := valRef{t: t, sd: sd}
			ds := newRefSet(t, r, p, c.labels)
			m, err := EvaluateTask(context.Background(), p, ds, c.task, EvalOptions{Budget: ds.budget(), Workers: 1})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := slices.Sorted(maps.Keys(m)), slices.Sorted(slices.Values(append([]string{"n"}, c.keys...))); !slices.Equal(got, want) {
				t.Errorf("metrics %v, want %v", got, want)
			}
			pre := "val/" + c.name + "/"
			n := r.ints(pre + "n")[0]
			if m["n"] != float64(n) {
				t.Errorf("n = %v, the original %d", m["n"], n)
			}
			for _, k := range c.keys {
				if k == "acc" {
					// Counts over the same predictions: exactly equal.
					correct := r.ints(pre + "correct")[0]
					if want := float64(correct) / float64(n); m[k] != want {
						t.Errorf("acc = %v, the original %v (%d of %d)", m[k], want, correct, n)
					} else {
						t.Logf("acc = %v (%d of %d)", m[k], correct, n)
					}
					continue
				}
				var want float64
				switch k {
				case "ot_pos_mean", "ot_neg_mean":
					// Ours: the original's sum per example, per pair instead.
					var pairs int
					for _, y := range c.labels {
						if (y == 1) == (k == "ot_pos_mean") {
							pairs++
						}
					}
					want = r.f64(pre+strings.TrimSuffix(k, "_mean")) * float64(n) / float64(pairs)
				default:
					want = r.f64(pre + k)
				}
				got := m[k]
				e := math.Abs(got-want) / math.Max(math.Abs(want), 1e-300)
				if want == 0 {
					e = math.Abs(got)
				}
				e64 := math.NaN()
				if _, ok := sd.Tensors["val64/"+c.name+"/"+k]; ok {
					w64 := r.f64("val64/" + c.name + "/" + k)
					e64 = math.Abs(got-w64) / math.Max(math.Abs(w64), 1e-300)
					if w64 == 0 {
						e64 = math.Abs(got)
					}
				}
				if !(e <= valRefTol) {
					t.Errorf("%s = %.10g, the original %.10g: relative error %.3g > %g (against float64 reductions %.3g)", k, got, want, e, valRefTol, e64)
				} else {
					t.Logf("%s = %.10g, the original %.10g: relative error %.3g (against float64 reductions %.3g)", k, got, want, e, e64)
				}
			}
			if c.name == "itm" && m["ot_neg"] != 0 {
				t.Errorf("ot_neg = %v without negatives, want 0", m["ot_neg"])
			}
		})
	}
}
