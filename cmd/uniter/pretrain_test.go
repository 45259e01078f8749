package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/data"
	"uniter/internal/train"
)

// runUniter runs the uniter command line with args and returns its output.
func runUniter(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// pretrainConfig writes a small synthetic world and a config for a
// one-layer model over it; it returns the config's path and the world.
func pretrainConfig(t *testing.T, extra string) (string, string) {
	t.Helper()
	w := t.TempDir()
	if _, err := data.Synth(w, data.SynthOptions{Seed: 5, Images: 40, ValImages: 10, ImgDim: 32, Captions: 2}); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`model_config: tiny
model: {vocab_size: 220, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, img_dim: 32}
train_datasets:
  - {name: synth, txt_db: [%[1]s/txt/pretrain_train.db], img_db: [%[1]s/img/synth_train], tasks: [itm, mlm, mrfr, mrc, mrckl], mix_ratio: [2, 2, 1, 1, 1]}
val_datasets:
  - {name: synth, txt_db: [%[1]s/txt/pretrain_val.db], img_db: [%[1]s/img/synth_val], tasks: [itm, mlm, mrfr, mrc, mrckl]}
train_batch_size: 320
val_batch_size: 2048
gradient_accumulation_steps: 2
learning_rate: 1.0e-3
num_train_steps: 20
warmup_steps: 2
seed: 7
log_steps: 1
n_workers: 2
%[2]s
`, w, extra)
	path := filepath.Join(w, "pretrain.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, w
}

func readRecords(t *testing.T, out string) []train.Record {
	t.Helper()
	recs, err := train.ReadMetrics(filepath.Join(out, "log", "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestPretrainResumeExact: `pretrain --steps 8` gives the same
// metrics.jsonl (every loss, lr, loss scale, token count, validation
// metric) as a run stopped early and resumed with --resume, with dropout,
// gradient accumulation and fp16 loss scaling (overflows and growth) on. The
// stopped run also loses its last checkpoint (a crash before it was
// written), so the resume restarts from an older one and rewrites the
// metrics past it.
func TestPretrainResumeExact(t *testing.T) {
	cfg, _ := pretrainConfig(t, "fp16: true\nloss_scale: 67108864\nloss_scale_window: 2\nsave_steps: 3\nkeep_ckpts: 2\nvalid_steps: 4")
	full, split := t.TempDir(), t.TempDir()
	args := []string{"pretrain", "--config", cfg, "--quiet", "--device", "cpu"}
	if out, err := runUniter(t, append(args, "--output", full, "--steps", "8")...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := runUniter(t, append(args, "--output", split, "--steps", "5")...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := runUniter(t, append(args, "--output", split, "--steps", "8")...); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("a second run into a used --output: err %v, want a hint to --resume", err)
	}
	if err := os.RemoveAll(filepath.Join(split, "ckpt", train.CheckpointName(5))); err != nil {
		t.Fatal(err)
	}
	out, err := runUniter(t, append(args, "--output", split, "--steps", "8", "--resume")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "resuming from") || !strings.Contains(out, train.CheckpointName(3)) {
		t.Errorf("resume did not report step 3:\n%s", out)
	}

	want, got := readRecords(t, full), readRecords(t, split)
	if len(got) != len(want) {
		t.Fatalf("resumed run has %d metrics rows, uninterrupted %d", len(got), len(want))
	}
	skipped, applied := 0, 0
	for i := range want {
		for k, w := range want[i] {
			if k == "elapsed_s" || k == "tokens_per_s" {
				continue
			}
			if g := got[i][k]; fmt.Sprint(g) != fmt.Sprint(w) {
				t.Errorf("row %d (step %d %s) %s: resumed %v, uninterrupted %v", i, want[i].Step(), want[i].String("task"), k, g, w)
			}
		}
		if want[i].String("split") == "" {
			if want[i]["skipped"] == true {
				skipped++
			} else {
				applied++
			}
		}
	}
	if skipped == 0 || applied == 0 {
		t.Errorf("%d skipped and %d applied steps: the test should cross the resume with loss-scaler state of both kinds", skipped, applied)
	}
	t.Logf("%d rows identical (%d skipped overflow steps, %d applied)", len(want), skipped, applied)

	ents, err := os.ReadDir(filepath.Join(split, "ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != train.CheckpointName(6)+" "+train.CheckpointName(8) {
		t.Errorf("ckpt/ holds %v, want the newest 2 checkpoints and nothing else", names)
	}
	for _, f := range []string{"log/config.yaml", "log/model.json", "log/loss.png", "log/lr.png", "log/loss_scale.png",
		"ckpt/" + train.CheckpointName(8) + "/model.safetensors", "ckpt/" + train.CheckpointName(8) + "/optimizer.safetensors"} {
		if _, err := os.Stat(filepath.Join(split, f)); err != nil {
			t.Errorf("output lacks %s", f)
		}
	}
}

// TestEvalMatchesValidation: `uniter eval --task pretrain` on the final
// checkpoint with the run's seed and budget reproduces the run's last
// validation rows (they share the code), and is deterministic.
func TestEvalMatchesValidation(t *testing.T) {
	// The end of training (num_train_steps) validates once more.
	cfg, w := pretrainConfig(t, "valid_steps: 100\nsave_steps: 100")
	run := t.TempDir()
	if out, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", run, "--set", "num_train_steps=3"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	evalArgs := []string{"eval", "--task", "pretrain", "--txt-db", w + "/txt/pretrain_val.db", "--img-db", w + "/img/synth_val",
		"--seed", "7", "--batch-tokens", "2048", "--device", "cpu"}
	out := t.TempDir()
	stdout, err := runUniter(t, append(evalArgs, "--checkpoint", filepath.Join(run, "ckpt", train.CheckpointName(3)), "--out", out)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	var rep struct {
		Metrics map[string]train.Metrics `json:"metrics"`
	}
	b, err := os.ReadFile(filepath.Join(out, "metrics.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	nval := 0
	for _, r := range readRecords(t, run) {
		if r.String("split") != "val" {
			continue
		}
		nval++
		task := strings.TrimSuffix(r.String("task"), "_synth")
		for k, v := range r {
			if k == "step" || k == "split" || k == "task" {
				continue
			}
			if g := rep.Metrics[task][k]; math.Abs(g-v.(float64)) > 1e-9*math.Abs(v.(float64)) {
				t.Errorf("%s %s: eval %v, validation %v", task, k, g, v)
			}
		}
	}
	if nval != 5 {
		t.Fatalf("%d validation rows, want one per task", nval)
	}
	for _, k := range []string{"mlm ", "acc", "itm ", "ot_loss", "mrckl ", "mrfr "} {
		if !strings.Contains(stdout, k) {
			t.Errorf("eval summary lacks %q:\n%s", k, stdout)
		}
	}

	// The untrained model: --init-seed with the run's model.json.
	out0 := t.TempDir()
	if stdout, err := runUniter(t, append(evalArgs, "--init-seed", "7", "--model-config", filepath.Join(run, "log", "model.json"), "--out", out0)...); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if _, err := os.Stat(filepath.Join(out0, "metrics.json")); err != nil {
		t.Fatal(err)
	}
}

func TestEvalErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--task", "vcr"}, "--checkpoint is required"},
		{[]string{"--task", "vqa"}, "--checkpoint is required"},
		{[]string{"--task", "caption"}, `--task "caption"`},
		{[]string{"--task", "pretrain", "--tasks", "mlm,vqa"}, `--tasks "vqa"`},
		{[]string{"--task", "pretrain"}, "exactly one of --checkpoint and --init-seed"},
		{[]string{"--task", "pretrain", "--checkpoint", "x", "--init-seed", "1"}, "exactly one of --checkpoint and --init-seed"},
	}
	for _, c := range cases {
		args := append([]string{"eval", "--txt-db", "t", "--img-db", "i", "--out", t.TempDir()}, c.args...)
		if _, err := runUniter(t, args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("eval %v: err %v, want %q", c.args, err, c.want)
		}
	}
}
