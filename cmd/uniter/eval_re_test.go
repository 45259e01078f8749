package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"uniter/internal/tasks"
)

// reConfig writes an RE config on the world w for a one-layer model,
// trained on the ground-truth boxes and validated on the detected ones as
// the official refcoco configs (conf_th -1, num_bb 100, no valid_steps).
func reConfig(t *testing.T, w string, mlp int) string {
	t.Helper()
	mc := filepath.Join(t.TempDir(), "model.json")
	if err := os.WriteFile(mc, []byte(`{"vocab_size": 220, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
		"intermediate_size": 64, "max_position_embeddings": 40, "img_dim": 32}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`model_config: %[2]s
train_txt_db: %[1]s/txt/re_train.db
train_img_db: %[1]s/img/re_coco_gt_train
val_txt_db: %[1]s/txt/re_val.db
val_img_db: %[1]s/img/re_coco_det_val
conf_th: -1
num_bb: 100
train_batch_size: 4
val_batch_size: 16
learning_rate: 1.0e-3
lr_mul: 1.0
decay: linear
num_train_steps: 6
warmup_steps: 1
save_steps: 3
mlp: %[3]d
seed: 7
log_steps: 1
n_workers: 1
`, w, mc, mlp)
	path := filepath.Join(t.TempDir(), "re.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFinetuneEvalRE trains both RE heads for a few steps (validation per
// epoch on the detected boxes, ckpt/best by acc), then evaluates the run
// with eval --task re on the detected boxes (the run's img_db layout) and
// the ground-truth ones: metrics, results {sent_id: {pred_box, tgt_box}},
// logits [n, R] padded with -1e4.
func TestFinetuneEvalRE(t *testing.T) {
	w := finetuneWorld(t)
	// Training on the detected boxes is refused, as train_re.py's dataset
	// reads only ground-truth ones.
	o, err := runUniter(t, "finetune", "--task", "re", "--config", reConfig(t, w, 1), "--quiet", "--output", t.TempDir(), "--device", "cpu",
		"--set", "train_img_db="+w+"/img/re_coco_det_train")
	if err == nil || !strings.Contains(err.Error(), "re_coco_det_train: training needs the ground-truth boxes") {
		t.Errorf("training on detected boxes: %v\n%s", err, o)
	}
	for _, mlp := range []int{1, 2} {
		run := t.TempDir()
		o, err := runUniter(t, "finetune", "--task", "re", "--config", reConfig(t, w, mlp), "--quiet", "--output", run, "--device", "cpu")
		if err != nil {
			t.Fatalf("mlp %d: %v\n%s", mlp, err, o)
		}
		if !strings.Contains(o, "validating every epoch") {
			t.Errorf("mlp %d: no per-epoch validation:\n%s", mlp, o)
		}
		if _, err := os.Stat(filepath.Join(run, "ckpt", "best", "best.json")); err != nil {
			t.Errorf("mlp %d: no best checkpoint: %v", mlp, err)
		}
		out := t.TempDir()
		o, err = runUniter(t, "eval", "--task", "re", "--checkpoint", filepath.Join(run, "ckpt", "best"), "--txt-db", w+"/txt/re_val.db",
			"--img-db", w+"/img/re_coco_det_val", "--gt-img-db", w+"/img/re_coco_gt_val", "--out", out, "--save-logits", "--device", "cpu")
		if err != nil {
			t.Fatalf("mlp %d eval: %v\n%s", mlp, err, o)
		}
		if !strings.Contains(o, "img_db layout of the run") {
			t.Errorf("mlp %d eval: the run's conf_th/num_bb not taken:\n%s", mlp, o)
		}
		m := readJSON(t, filepath.Join(out, "metrics.json"))
		for _, k := range []string{"acc", "n", "acc_gt", "loss_gt", "n_gt"} {
			if _, ok := m[k]; !ok {
				t.Errorf("mlp %d eval: metrics.json lacks %s: %v", mlp, k, m)
			}
		}
		if m["mlp"] != float64(mlp) {
			t.Errorf("eval mlp %v, want %d (from the checkpoint)", m["mlp"], mlp)
		}
		var ids []string
		b, err := os.ReadFile(filepath.Join(out, "ids.json"))
		if err != nil || json.Unmarshal(b, &ids) != nil || len(ids) != int(m["n"].(float64)) {
			t.Fatalf("ids.json %s: %v", b, err)
		}
		var results map[string]map[string][]float64
		b, _ = os.ReadFile(filepath.Join(out, "results.json"))
		if err := json.Unmarshal(b, &results); err != nil || len(results) != len(ids) {
			t.Fatalf("results.json: %v (%d entries for %d sentences)", err, len(results), len(ids))
		}
		if r := results[ids[0]]; len(r["pred_box"]) != 4 || len(r["tgt_box"]) != 4 {
			t.Errorf("results %s: %v", ids[0], r)
		}
		for _, name := range []string{"logits.npy", "logits_gt.npy"} {
			lg := readNpyF32(t, filepath.Join(out, name))
			if len(lg)%len(ids) != 0 {
				t.Fatalf("%s: %d values for %d sentences", name, len(lg), len(ids))
			}
			// Pads only at a row's end, after the image's regions.
			width := len(lg) / len(ids)
			for i := range ids {
				row := lg[i*width : (i+1)*width]
				k := slices.Index(row, float32(tasks.REPad))
				if k == 0 || (k > 0 && slices.ContainsFunc(row[k:], func(v float32) bool { return v != tasks.REPad })) {
					t.Errorf("%s row %d: %v, want scores then pads", name, i, row)
				}
			}
		}
	}
}
