package tasks

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
)

// The golden tiny model of internal/model (scripts/gen_golden.py); the
// task reference runs it in eval mode on one batch per task.
const goldenDir = "../../testdata/golden/"

var allTasks = []string{data.TaskMLM, data.TaskMRFR, data.TaskMRC, data.TaskMRCKL, data.TaskITM}

// gradKeys are the parameters whose gradients tasks_ref.py records.
var gradKeys = []string{
	"cls.predictions.bias",
	"cls.predictions.transform.dense.bias",
	"feat_regress.bias",
	"feat_regress.net.0.bias",
	"region_classifier.net.0.bias",
	"region_classifier.net.3.bias",
	"itm_output.weight",
	"itm_output.bias",
	"uniter.pooler.dense.bias",
	"uniter.encoder.layer.0.attention.self.query.weight",
	"uniter.embeddings.LayerNorm.weight",
	"uniter.img_embeddings.img_linear.bias",
	"uniter.img_embeddings.mask_embedding.weight",
}

func goldenPretrain(t *testing.T) *Pretrain {
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
	m.SetTrain(false)
	return &Pretrain{M: m, H: h, OTWeight: 0.1}
}

// goldenBatch builds the reference batch of a task through data.Collate,
// as the loader would.
func goldenBatch(t *testing.T, r *ref, task string, imgDim int) *data.Batch {
	t.Helper()
	sh := r.tensor("in/input_ids").Shape
	bsz, tmax := sh[0], sh[1]
	nmax := r.tensor("in/img_masks").Shape[1]
	txtLens, nbb := r.ints("in/txt_lens"), r.ints("in/num_bbs")
	ids, mlmIDs, mlmLabels := r.i32("in/input_ids"), r.i32("in/mlm_ids"), r.i32("in/mlm_labels")
	feat, pos, masks := r.f32("in/img_feat"), r.f32("in/img_pos"), r.i32("in/img_masks")
	soft := r.f32("in/soft")
	labels := r.i32("in/itm_labels")
	classes := len(soft) / r.tensor("in/soft").Shape[0]
	var exs []*data.Example
	k := 0 // masked regions so far
	for i := range bsz {
		tl, n := txtLens[i], nbb[i]
		ex := &data.Example{
			ID: fmt.Sprint(i), NBB: n, Label: labels[i],
			InputIDs: append([]int32(nil), ids[i*tmax:i*tmax+tl]...),
			ImgFeat:  append([]float32(nil), feat[i*nmax*imgDim:(i*nmax+n)*imgDim]...),
			ImgPos:   append([]float32(nil), pos[i*nmax*data.PosDim:(i*nmax+n)*data.PosDim]...),
		}
		switch task {
		case data.TaskMLM:
			ex.InputIDs = append([]int32(nil), mlmIDs[i*tmax:i*tmax+tl]...)
			ex.MLMLabels = append([]int32(nil), mlmLabels[i*tmax:i*tmax+tl]...)
		case data.TaskMRFR, data.TaskMRC, data.TaskMRCKL:
			mask := make([]bool, n)
			for j := range mask {
				mask[j] = masks[i*nmax+j] != 0
			}
			if err := data.ApplyRegionMask(ex, mask, nil, imgDim); err != nil {
				t.Fatal(err)
			}
			for _, m := range mask {
				if m && task == data.TaskMRC {
					ex.MRCLabels = append(ex.MRCLabels, data.MRCLabel(soft[k*classes:(k+1)*classes]))
				}
				if m {
					k++
				}
			}
		}
		exs = append(exs, ex)
	}
	b, err := data.Collate(exs, imgDim)
	if err != nil {
		t.Fatal(err)
	}
	if task == data.TaskMRCKL {
		// The golden model has 31 region classes; Collate only carries the
		// detector's 1601-wide soft labels, so they are set here.
		b.MRCSoft = soft
	}
	return b
}

// TestStepMatchesPyTorch runs every task on the golden model and compares
// the loss, its parts, the correct count, the gradient of the last layer
// and selected parameter gradients with the official computation.
func TestStepMatchesPyTorch(t *testing.T) {
	r := loadRef(t, "steps.pt")
	p := goldenPretrain(t)
	be := p.M.Backend()
	for _, task := range allTasks {
		t.Run(task, func(t *testing.T) {
			b := goldenBatch(t, r, task, p.M.Cfg.ImgDim)
			p.M.Params.ZeroGrad()
			res, err := p.Step(task, b, true, 1)
			if err != nil {
				t.Fatal(err)
			}
			checkScalar(t, "loss", res.Loss, r.scalar(task+"/loss"), refTol)
			for k, v := range res.Parts {
				checkScalar(t, k, v, r.scalar(task+"/part/"+k), refTol)
			}
			if task == data.TaskITM && len(res.Parts) != 4 {
				t.Errorf("ITM parts %v, want itm_loss, ot_loss, ot_pos, ot_neg", res.Parts)
			}
			if want := int(r.scalar(task + "/correct")); res.Correct != want {
				t.Errorf("correct = %d, PyTorch %d", res.Correct, want)
			}
			if res.Examples != b.B || res.Tokens != b.Tokens() {
				t.Errorf("examples %d tokens %d, want %d and %d", res.Examples, res.Tokens, b.B, b.Tokens())
			}
			checkRel(t, "grad last layer", be.ToF32(p.M.GradSeq()), r.f32(task+"/grad_seq"), refTol)
			for _, k := range gradKeys {
				got, want := be.ToF32(p.M.Params.Get(k).G), r.f32(task+"/grad/"+k)
				checkRel(t, "grad "+k, got, want, refTol)
			}

			// A second step adds its gradient (scaled by 2 here) to the
			// first, and an evaluation step measures the same without
			// touching the gradients.
			if _, err := p.Step(task, goldenBatch(t, r, task, p.M.Cfg.ImgDim), true, 2); err != nil {
				t.Fatal(err)
			}
			ev, err := p.Step(task, goldenBatch(t, r, task, p.M.Cfg.ImgDim), false, 1)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Loss != res.Loss || ev.Correct != res.Correct {
				t.Errorf("evaluation step: loss %v correct %d, training step %v %d", ev.Loss, ev.Correct, res.Loss, res.Correct)
			}
			for _, k := range gradKeys {
				want := r.f32(task + "/grad/" + k)
				for i := range want {
					want[i] *= 3
				}
				got := be.ToF32(p.M.Params.Get(k).G)
				checkRel(t, "accumulated grad "+k, got, want, refTol)
			}
		})
	}
}
