package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"uniter/internal/train"
)

// evalPretrainMetrics reads an eval --task pretrain metrics.json.
func evalPretrainMetrics(t *testing.T, out string) (uint64, map[string]train.Metrics) {
	t.Helper()
	var rep struct {
		Seed    uint64                   `json:"seed"`
		Metrics map[string]train.Metrics `json:"metrics"`
	}
	b, err := os.ReadFile(filepath.Join(out, "metrics.json"))
	if err == nil {
		err = json.Unmarshal(b, &rep)
	}
	if err != nil {
		t.Fatal(err)
	}
	return rep.Seed, rep.Metrics
}

// copyFiles copies the named files of dir src into dir dst.
func copyFiles(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEvalFindsTheRun: eval --task pretrain with --checkpoint a run's
// output directory takes its newest checkpoint and says so; without
// --seed it draws from the run's seed (7, not 42), so it reproduces the
// run's validation rows; a ckpt/best without trainer state takes the seed
// of the step checkpoint beside it; an explicit --seed wins.
func TestEvalFindsTheRun(t *testing.T) {
	cfg, w := pretrainConfig(t, "valid_steps: 100\nsave_steps: 2")
	run := t.TempDir()
	if out, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", run, "--set", "num_train_steps=3"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ckptDir := filepath.Join(run, "ckpt")
	newest := filepath.Join(ckptDir, train.CheckpointName(3))
	if _, err := os.Stat(filepath.Join(ckptDir, train.CheckpointName(2))); err != nil {
		t.Fatalf("the run should leave an older checkpoint too: %v", err)
	}
	eval := func(ckpt string, extra ...string) (string, uint64, map[string]train.Metrics) {
		t.Helper()
		out := t.TempDir()
		args := append([]string{"eval", "--task", "pretrain", "--tasks", "mlm,itm", "--txt-db", w + "/txt/pretrain_val.db",
			"--img-db", w + "/img/synth_val", "--batch-tokens", "2048", "--device", "cpu", "--checkpoint", ckpt, "--out", out}, extra...)
		log, err := runUniter(t, args...)
		if err != nil {
			t.Fatalf("eval --checkpoint %s: %v\n%s", ckpt, err, log)
		}
		seed, m := evalPretrainMetrics(t, out)
		return log, seed, m
	}

	log, seed, m := eval(newest)
	if want := "masks and ITM negatives from seed 7, the run's"; seed != 7 || !strings.Contains(log, want) {
		t.Errorf("eval without --seed: seed %d, want the run's 7 and %q in the log:\n%s", seed, want, log)
	}
	nval := 0
	for _, r := range readRecords(t, run) {
		task := strings.TrimSuffix(r.String("task"), "_synth")
		if r.String("split") != "val" || (task != "mlm" && task != "itm") {
			continue
		}
		nval++
		for k, v := range r {
			if k == "step" || k == "split" || k == "task" {
				continue
			}
			if g := m[task][k]; math.Abs(g-v.(float64)) > 1e-9*math.Abs(v.(float64)) {
				t.Errorf("%s %s: eval %v, the run's validation %v", task, k, g, v)
			}
		}
	}
	if nval != 2 {
		t.Fatalf("%d validation rows of mlm and itm, want 2", nval)
	}

	log, seed, _ = eval(run)
	if want := "--checkpoint " + run + " is a run's output directory: using its newest checkpoint " + newest; !strings.Contains(log, want) || seed != 7 {
		t.Errorf("eval --checkpoint RUN: seed %d, want 7 and %q in the log:\n%s", seed, want, log)
	}

	// ckpt/best holds weights and best.json, no trainer state.
	best := filepath.Join(ckptDir, train.BestDir)
	copyFiles(t, newest, best, "model.safetensors", "model.json")
	if err := os.WriteFile(filepath.Join(best, "best.json"), []byte(`{"step": 3, "metric": "val acc", "value": 0.5}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if log, seed, _ := eval(best); seed != 7 || !strings.Contains(log, filepath.Join(newest, "trainer_state.json")) {
		t.Errorf("eval --checkpoint RUN/ckpt/best: seed %d, want 7 read from %s:\n%s", seed, newest, log)
	}

	if log, seed, _ := eval(newest, "--seed", "9"); seed != 9 || !strings.Contains(log, "from seed 9 (--seed)") {
		t.Errorf("eval --seed 9: seed %d, want 9 and the log to say --seed:\n%s", seed, log)
	}
}

// TestEvalOfficialCheckpointSeed: an official .pt file has no run seed:
// eval keeps 42 and says why.
func TestEvalOfficialCheckpointSeed(t *testing.T) {
	out := t.TempDir()
	log, err := runUniter(t, "eval", "--task", "pretrain", "--tasks", "mlm", "--checkpoint", "../../testdata/golden/tiny_legacy_bert.pt",
		"--model-config", "../../testdata/golden/tiny.json", "--img-dim", "48", "--txt-db", embedFixture+"txt_db", "--img-db", embedFixture+"img_db",
		"--device", "cpu", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	want := "eval: masks and ITM negatives from seed 42, the default: checkpoint ../../testdata/golden/tiny_legacy_bert.pt holds no run's seed"
	if seed, _ := evalPretrainMetrics(t, out); seed != 42 || !strings.Contains(log, want) {
		t.Errorf("official checkpoint: seed %d, want 42 and %q in the log:\n%s", seed, want, log)
	}
}

// TestEvalFinetuneRunDirs: eval --task vqa takes a fine-tuning run's
// output directory (its newest checkpoint, with the ans2label.json beside
// it) and its ckpt/best; a directory with neither is one error naming what
// was looked for.
func TestEvalFinetuneRunDirs(t *testing.T) {
	w := finetuneWorld(t)
	run := t.TempDir()
	if o, err := runUniter(t, "finetune", "--task", "vqa", "--config", finetuneConfig(t, w, "vqa", "valid_steps: 2\nsave_steps: 2"), "--quiet",
		"--output", run, "--set", "num_train_steps=4"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	newest := filepath.Join(run, "ckpt", train.CheckpointName(4))
	base := []string{"eval", "--task", "vqa", "--txt-db", w + "/txt/vqa_val.db", "--img-db", w + "/img/synth_val", "--batch-tokens", "2048", "--device", "cpu"}
	for _, c := range []struct{ arg, want, used string }{
		{run, "--checkpoint " + run + " is a run's output directory: using its newest checkpoint " + newest, newest},
		{filepath.Join(run, "ckpt"), "is a run's checkpoint directory: using its newest checkpoint " + newest, newest},
		{filepath.Join(run, "ckpt", "best"), "", filepath.Join(run, "ckpt", "best")},
	} {
		out := t.TempDir()
		log, err := runUniter(t, append(base, "--checkpoint", c.arg, "--out", out)...)
		if err != nil {
			t.Errorf("eval --checkpoint %s: %v\n%s", c.arg, err, log)
			continue
		}
		if !strings.Contains(log, c.want) || !strings.Contains(log, "answers from "+filepath.Join(c.used, "ans2label.json")) {
			t.Errorf("eval --checkpoint %s: log lacks %q or the answers beside %s:\n%s", c.arg, c.want, c.used, log)
		}
		if m := readJSON(t, filepath.Join(out, "metrics.json")); m["checkpoint"] != c.used {
			t.Errorf("eval --checkpoint %s: metrics.json checkpoint %v, want %s", c.arg, m["checkpoint"], c.used)
		}
	}

	empty := t.TempDir()
	_, err := runUniter(t, append(base, "--checkpoint", empty, "--out", t.TempDir())...)
	for _, want := range []string{"--checkpoint " + empty + ": no checkpoint there", filepath.Join(empty, "model.safetensors"),
		filepath.Join(empty, "ckpt", "step_NNNNNNNN"), filepath.Join(empty, "ckpt", "best")} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("eval --checkpoint EMPTY_DIR: err %v, want %q", err, want)
		}
	}
}

var rateRE = regexp.MustCompile(`([0-9]+) examples/s`)

// TestProgressBarRate: the rate the bar shows counts the time of the first
// batch (it was 17063254 examples/s: progressbar started its clock at the
// first render, after that batch).
func TestProgressBarRate(t *testing.T) {
	var buf bytes.Buffer
	bar := newProgressBar(&buf, 12, "eval")
	time.Sleep(100 * time.Millisecond) // the first batch
	_ = bar.Set(6)
	time.Sleep(100 * time.Millisecond)
	_ = bar.Set(12)
	_ = bar.Finish()
	rates := rateRE.FindAllStringSubmatch(buf.String(), -1)
	if len(rates) == 0 {
		t.Fatalf("no rate in %q", buf.String())
	}
	for _, r := range rates {
		// 6 examples in at least 0.1 s, 12 in at least 0.2 s.
		if v, _ := strconv.Atoi(r[1]); v > 60 {
			t.Errorf("rate %d examples/s, want at most 60: %q", v, buf.String())
		}
	}
}

// TestEvalPretrainingCheckpointForTask: a pretraining checkpoint given to
// a downstream eval is named as such (not as a checkpoint of another task).
func TestEvalPretrainingCheckpointForTask(t *testing.T) {
	ck := pretrainingCheckpoint(t, filepath.Join(t.TempDir(), "ckpt"))
	vqa := officialDir + "vqa_official/"
	out := filepath.Join(t.TempDir(), "out")
	_, err := runUniter(t, "eval", "--task", "vqa", "--checkpoint", ck, "--ans2label", vqa+"ans2label.json", "--txt-db", vqa+"txt.db",
		"--img-db", vqa+"img.db", "--device", "cpu", "--out", out)
	want := "has no vqa head (missing 6 parameters: vqa_output.0.weight, vqa_output.0.bias, vqa_output.2.weight); it holds the pretraining heads: a pretraining checkpoint, to fine-tune first (uniter finetune)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err %v, want %q", err, want)
	}
}
