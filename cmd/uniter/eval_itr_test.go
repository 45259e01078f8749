package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// itrConfig writes a retrieval config on the world w for a one-layer
// model; extra lines are appended.
func itrConfig(t *testing.T, w, extra string) string {
	t.Helper()
	mc := filepath.Join(t.TempDir(), "model.json")
	if err := os.WriteFile(mc, []byte(`{"vocab_size": 220, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
		"intermediate_size": 64, "max_position_embeddings": 40, "img_dim": 32}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`model_config: %[3]s
train_txt_dbs: [%[1]s/txt/itr_train.db]
train_img_dbs: [%[1]s/img/synth_train]
val_txt_db: %[1]s/txt/itr_val.db
val_img_db: %[1]s/img/synth_val
train_batch_size: 4
negative_size: 1
inf_minibatch_size: 5
gradient_accumulation_steps: 2
learning_rate: 1.0e-3
num_train_steps: 4
warmup_steps: 1
valid_steps: 2
save_steps: 2
dropout: 0.1
seed: 7
log_steps: 1
n_workers: 2
%[2]s
`, w, extra, mc)
	path := filepath.Join(t.TempDir(), "itr.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFinetuneEvalITR trains both retrieval recipes for a few steps
// (cheap validation for plain, the full ranking for hard negatives),
// evaluates the run with eval --task itr, scores a pretraining-style
// checkpoint zero-shot, and refuses a batch layout the original does not
// allow before writing anything.
func TestFinetuneEvalITR(t *testing.T) {
	w := finetuneWorld(t)
	for _, c := range []struct{ name, extra, metric string }{
		{"plain", "", "recall_1"},
		{"hard", "negative_size=7,hard_neg_size=7,full_val=true", "img_r1"},
	} {
		run := t.TempDir()
		args := []string{"finetune", "--task", "itr", "--config", itrConfig(t, w, ""), "--quiet", "--output", run}
		for _, kv := range strings.Split(c.extra, ",") {
			if kv != "" {
				args = append(args, "--set", kv)
			}
		}
		if o, err := runUniter(t, args...); err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, o)
		}
		log, err := os.ReadFile(filepath.Join(run, "log", "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(log), `"`+c.metric+`"`) || !strings.Contains(string(log), `"r_mean"`) {
			t.Errorf("%s: metrics.jsonl has no %s/r_mean validation rows:\n%s", c.name, c.metric, log)
		}
		if _, err := os.Stat(filepath.Join(run, "ckpt", "best", "best.json")); err != nil {
			t.Errorf("%s: no best checkpoint: %v", c.name, err)
		}
		out := t.TempDir()
		o, err := runUniter(t, "eval", "--task", "itr", "--checkpoint", run, "--txt-db", w+"/txt/itr_val.db",
			"--img-db", w+"/img/synth_val", "--out", out, "--save-logits", "--device", "cpu")
		if err != nil {
			t.Fatalf("%s eval: %v\n%s", c.name, err, o)
		}
		m := readJSON(t, filepath.Join(out, "metrics.json"))
		for _, k := range []string{"txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean", "img_r1_official"} {
			if _, ok := m[k]; !ok {
				t.Errorf("%s eval: metrics.json lacks %s: %v", c.name, k, m)
			}
		}
		for _, f := range []string{"logits.npy", "ids.json", "img_ids.json"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Errorf("%s eval: %v", c.name, err)
			}
		}
		for _, f := range []string{"scores.partial.npy", "scores.progress.json"} {
			if _, err := os.Stat(filepath.Join(out, f)); err == nil {
				t.Errorf("%s eval: %s left behind", c.name, f)
			}
		}
	}

	bad := t.TempDir()
	o, err := runUniter(t, "finetune", "--task", "itr", "--config", itrConfig(t, w, "hard_neg_size: 7"), "--quiet",
		"--output", filepath.Join(bad, "run"), "--set", "negative_size=10")
	if err == nil || !strings.Contains(o+err.Error(), "negative_size = 10: hard negatives need 1 + negative_size") {
		t.Errorf("negative_size 10 with hard negatives: %v\n%s", err, o)
	}
	if ents, _ := os.ReadDir(bad); len(ents) != 0 {
		t.Errorf("a refused config wrote %v", ents)
	}
}
