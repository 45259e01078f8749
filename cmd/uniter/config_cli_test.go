package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIOriginalPretrainConfig: the reference's pretraining JSON (its
// keys, the paths changed) loads; the keys no run reads are named in one
// warning line, before the run stops on the dbs that are not there.
func TestCLIOriginalPretrainConfig(t *testing.T) {
	dir := t.TempDir()
	dataset := func(name string, val bool) map[string]any {
		d := map[string]any{"name": name, "db": []any{filepath.Join(dir, "txt", name+".db")},
			"img": []any{filepath.Join(dir, "img", name)}, "tasks": []any{"itm", "mlm", "mrfr", "mrckl"}}
		if !val {
			d["mix_ratio"] = []any{2, 2, 1, 1}
		}
		return d
	}
	cfg := map[string]any{
		"output_dir": "/storage/pretrain/indomain", "model_config": "tiny", "checkpoint": "",
		"mrm_prob": 0.15, "itm_neg_prob": 0.5, "itm_ot_lambda": 0.1, "max_txt_len": 60,
		"conf_th": 0.2, "max_bb": 100, "min_bb": 10, "num_bb": 36,
		"train_batch_size": 10240, "val_batch_size": 10240, "gradient_accumulation_steps": 2,
		"learning_rate": 5e-05, "valid_steps": 5000, "num_train_steps": 200000, "optim": "adamw",
		"betas": []any{0.9, 0.98}, "dropout": 0.1, "weight_decay": 0.01, "grad_norm": 5.0,
		"warmup_steps": 10000, "seed": 42, "fp16": true, "n_workers": 4, "pin_mem": true, "rank": 0,
		"train_datasets": []any{dataset("coco", false), dataset("vg", false)},
		"val_datasets":   []any{dataset("coco", true), dataset("vg", true)},
	}
	b, err := json.MarshalIndent(cfg, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pretrain-indomain-base-8gpu.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runUniter(t, "pretrain", "--config", path, "--output", filepath.Join(dir, "out"), "--device", "cpu", "--quiet")
	if err == nil {
		t.Fatalf("run over missing dbs succeeded:\n%s", out)
	}
	if strings.Contains(err.Error(), "unknown key") || strings.Contains(err.Error(), "config:") {
		t.Fatalf("config did not load: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "ignored") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "ignored: pin_mem (") || !strings.Contains(lines[0], "), rank (") {
		t.Errorf("want one line naming pin_mem and rank with reasons, got %q in\n%s", lines, out)
	}
}

// TestCLISetTypo: a misspelt --set key is reported against --set, not
// against the config file, with the nearest key.
func TestCLISetTypo(t *testing.T) {
	path, _ := pretrainConfig(t, "")
	for _, c := range []struct{ set, want string }{
		{"learning_rte=1e-4", "--set learning_rte: unknown key learning_rte, did you mean learning_rate?"},
		{"model.hiden_size=64", "--set model.hiden_size: unknown key model.hiden_size, did you mean model.hidden_size?"},
	} {
		_, err := runUniter(t, "pretrain", "--config", path, "--output", t.TempDir(), "--set", c.set, "--steps", "1")
		if err == nil || err.Error() != c.want {
			t.Errorf("--set %s: error %v, want %q", c.set, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), path) {
			t.Errorf("--set %s: error %q blames the config file", c.set, err)
		}
	}
}

// TestCLIEnvUnknown: an UNITER_* variable that is no config key is named
// in a warning with the nearest key's variable; the program's own
// variables and real keys draw none, and a model key reaches the config
// even when the file has no model section.
func TestCLIEnvUnknown(t *testing.T) {
	path, _ := pretrainConfig(t, "")
	t.Setenv("UNITER_LEARNING_RTE", "1")
	t.Setenv("UNITER_WEIGHT_DECAY", "0.02")
	t.Setenv("UNITER_CUDA_SYNC", "0")
	t.Setenv("UNITER_GLOO_HOST", "127.0.0.1")
	// warmup_steps past num_train_steps stops the run once the config is read.
	out, err := runUniter(t, "pretrain", "--config", path, "--output", t.TempDir(), "--set", "warmup_steps=100")
	if err == nil || !strings.Contains(err.Error(), "warmup_steps") {
		t.Fatalf("error %v, want the warmup_steps one", err)
	}
	want := "UNITER_LEARNING_RTE is not a config key (did you mean UNITER_LEARNING_RATE?); ignored"
	if strings.Count(out, want) != 1 {
		t.Errorf("output %q lacks %q once", out, want)
	}
	for _, v := range []string{"UNITER_WEIGHT_DECAY", "UNITER_CUDA_SYNC", "UNITER_GLOO_HOST"} {
		if strings.Contains(out, v) {
			t.Errorf("%s warned about: %q", v, out)
		}
	}

	bare := filepath.Join(t.TempDir(), "bare.yaml")
	yaml := "model_config: tiny\ntrain_datasets:\n  - {name: s, txt_db: [/txt/s.db], img_db: [/img/s], tasks: [mlm], mix_ratio: [1]}\n"
	if err := os.WriteFile(bare, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("UNITER_MODEL_NUM_HIDDEN_LAYERS", "3")
	cfg, err := loadTrainConfig(trainOpts{task: "pretrain", config: bare, seed: -1})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Model.NumHiddenLayers != 3 || cfg.WeightDecay != 0.02 {
		t.Errorf("UNITER_MODEL_NUM_HIDDEN_LAYERS=3, UNITER_WEIGHT_DECAY=0.02: got %d layers, weight decay %v", cfg.Model.NumHiddenLayers, cfg.WeightDecay)
	}
}
