package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/train"
)

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// emptyTxtDB writes a txt_db without examples with the world's vocabulary.
func emptyTxtDB(t *testing.T, w string) string {
	t.Helper()
	src, err := db.OpenTxtDB(filepath.Join(w, "txt", "vqa_val.db"))
	if err != nil {
		t.Fatal(err)
	}
	meta := src.Meta()
	src.Close()
	dir := filepath.Join(t.TempDir(), "empty.db")
	wr, err := db.CreateTxtDB(dir, meta)
	if err != nil {
		t.Fatal(err)
	}
	if err := wr.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// finetuneWorld is a small synthetic world shared by the fine-tuning tests.
func finetuneWorld(t *testing.T) string {
	t.Helper()
	w := t.TempDir()
	if _, err := data.Synth(w, data.SynthOptions{Seed: 5, Images: 40, ValImages: 10, ImgDim: 32, Captions: 2, Questions: 2}); err != nil {
		t.Fatal(err)
	}
	return w
}

// finetuneConfig writes a config for task on the world w for a one-layer
// model; extra lines are appended.
func finetuneConfig(t *testing.T, w, task, extra string) string {
	t.Helper()
	dbs := map[string]string{"vqa": "vqa", "ve": "ve", "nlvr2": "nlvr2"}[task]
	img := "synth"
	mc := filepath.Join(t.TempDir(), "model.json")
	if err := os.WriteFile(mc, []byte(`{"vocab_size": 220, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
		"intermediate_size": 64, "max_position_embeddings": 40, "img_dim": 32}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`model_config: %[5]s
train_txt_db: %[1]s/txt/%[2]s_train.db
train_img_db: %[1]s/img/%[3]s_train
val_txt_db: %[1]s/txt/%[2]s_val.db
val_img_db: %[1]s/img/%[3]s_val
train_batch_size: 512
val_batch_size: 2048
gradient_accumulation_steps: 2
learning_rate: 1.0e-3
num_train_steps: 10
warmup_steps: 2
dropout: 0.1
seed: 7
log_steps: 1
n_workers: 2
%[4]s
`, w, dbs, img, extra, mc)
	if task == "vqa" {
		cfg += fmt.Sprintf("ans2label: %s/txt/vqa_train.db/ans2label.json\n", w)
	}
	path := filepath.Join(t.TempDir(), task+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFinetuneResumeExact: for every task, a 10-step `finetune` gives the
// metrics.jsonl of a run stopped at 5 (--steps) and resumed to 10, with dropout,
// accumulation and fp16 loss scaling; the best checkpoint, the results
// files and the final checkpoint exist; eval of the final checkpoint
// equals the last validation row.
func TestFinetuneResumeExact(t *testing.T) {
	w := finetuneWorld(t)
	for _, c := range []struct{ task, extra string }{
		{"vqa", ""},
		{"ve", ""},
		{"nlvr2", "model: paired-attn"},
		{"nlvr2", "model: paired"},
		{"nlvr2", "model: triplet\nuse_img_type: false"},
	} {
		t.Run(c.task+"/"+strings.TrimPrefix(strings.Split(c.extra, "\n")[0], "model: "), func(t *testing.T) {
			cfg := finetuneConfig(t, w, c.task, c.extra+"\nfp16: true\nloss_scale: 67108864\nloss_scale_window: 2\nsave_steps: 3\nvalid_steps: 4")
			full, split := t.TempDir(), t.TempDir()
			args := []string{"finetune", "--task", c.task, "--config", cfg, "--quiet", "--device", "cpu"}
			if out, err := runUniter(t, append(args, "--output", full)...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if out, err := runUniter(t, append(args, "--output", split, "--steps", "5")...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if out, err := runUniter(t, append(args, "--output", split, "--resume")...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			want, got := readRecords(t, full), readRecords(t, split)
			if len(got) != len(want) || len(want) < 10 {
				t.Fatalf("resumed run has %d metrics rows, uninterrupted %d", len(got), len(want))
			}
			vals := 0
			for i := range want {
				for k, v := range want[i] {
					if k == "elapsed_s" || k == "tokens_per_s" {
						continue
					}
					if g := got[i][k]; fmt.Sprint(g) != fmt.Sprint(v) {
						t.Errorf("row %d (step %d) %s: resumed %v, uninterrupted %v", i, want[i].Step(), k, g, v)
					}
				}
				if want[i].String("split") == "val" {
					vals++
					if _, ok := want[i].Float("acc"); !ok {
						t.Errorf("validation row %v has no acc", want[i])
					}
				}
			}
			if vals != 3 { // steps 4, 8 and the end
				t.Errorf("%d validation rows, want 3", vals)
			}
			for _, p := range []string{"ckpt/best/model.safetensors", "ckpt/best/best.json", "ckpt/" + train.CheckpointName(10)} {
				if _, err := os.Stat(filepath.Join(split, p)); err != nil {
					t.Error(err)
				}
			}
			res, _ := filepath.Glob(filepath.Join(split, "results", "val_results_*"))
			if len(res) != 3 {
				t.Errorf("results files %v, want one per validation", res)
			}

			// eval of the last checkpoint is the last validation.
			evalOut := t.TempDir()
			eargs := []string{"eval", "--task", c.task, "--checkpoint", filepath.Join(split, "ckpt", train.CheckpointName(10)),
				"--txt-db", w + "/txt/" + c.task + "_val.db", "--img-db", w + "/img/synth_val", "--batch-tokens", "2048", "--out", evalOut}
			if c.task == "nlvr2" {
				v := strings.TrimPrefix(strings.Split(c.extra, "\n")[0], "model: ")
				eargs = append(eargs, "--variant", v, fmt.Sprintf("--use-img-type=%v", !strings.Contains(c.extra, "use_img_type: false")))
			}
			if out, err := runUniter(t, eargs...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			m := readJSON(t, filepath.Join(evalOut, "metrics.json"))
			last := want[len(want)-1]
			for _, k := range []string{"acc", "loss"} {
				if fmt.Sprint(m[k]) != fmt.Sprint(last[k]) {
					t.Errorf("eval %s %v, last validation %v", k, m[k], last[k])
				}
			}
		})
	}
}

// TestFinetuneRefusals: a changed batch size on --resume, a second run on
// a locked --output, a config typo and bad data each stop with one
// sentence naming what is wrong, and leave no checkpoint behind.
func TestFinetuneRefusals(t *testing.T) {
	w := finetuneWorld(t)
	cfg := finetuneConfig(t, w, "vqa", "save_steps: 2")
	out := t.TempDir()
	args := []string{"finetune", "--task", "vqa", "--config", cfg, "--quiet", "--output", out}
	if o, err := runUniter(t, append(args, "--steps", "2")...); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	if _, err := runUniter(t, append(args, "--steps", "4", "--resume", "--set", "train_batch_size=256")...); err == nil ||
		!strings.Contains(err.Error(), "train_batch_size") {
		t.Errorf("resume with another batch size: err %v, want a refusal naming train_batch_size", err)
	}
	// Another process holding the lock, as a second run would.
	lf, err := os.OpenFile(filepath.Join(out, train.LockFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if _, err := runUniter(t, append(args, "--steps", "4", "--resume")...); err == nil || !strings.Contains(err.Error(), "in use by another run (pid") {
		t.Errorf("locked output: err %v, want the holder named", err)
	}
	lf.Close()

	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "ans2label.json"), []byte(`{"yes": 0, "no": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		task  string
		extra []string
		want  string
	}{
		{"typo", "vqa", []string{"--set", "learnin_rate=1"}, "unknown key learnin_rate, did you mean learning_rate?"},
		{"answers out of range", "vqa", []string{"--set", "ans2label=" + filepath.Join(bad, "ans2label.json")}, "outside the 2 answers of ans2label"},
		{"missing ans2label", "vqa", []string{"--set", "ans2label=" + filepath.Join(bad, "none.json")}, "none.json"},
		{"empty val db", "vqa", []string{"--set", "val_txt_db=" + emptyTxtDB(t, w)}, "no examples"},
		{"vqa checkpoint for nlvr2", "nlvr2", []string{"--set", "checkpoint=" + filepath.Join(out, "ckpt", train.CheckpointName(2))}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := t.TempDir()
			cf := cfg
			if c.task != "vqa" {
				cf = finetuneConfig(t, w, c.task, "")
			}
			a := append([]string{"finetune", "--task", c.task, "--config", cf, "--quiet", "--output", o, "--steps", "1"}, c.extra...)
			_, err := runUniter(t, a...)
			if c.want == "" {
				// A VQA checkpoint starts NLVR2 like a pretrained one: its
				// backbone loads, the head is new. Not an error for
				// finetune (eval refuses it; see TestEvalDownstreamErrors).
				if err != nil {
					t.Fatalf("finetune nlvr2 from a VQA checkpoint: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
			if ck, _ := filepath.Glob(filepath.Join(o, "ckpt", "*")); len(ck) > 0 {
				t.Errorf("failed run left %v", ck)
			}
		})
	}
}

// TestEvalInitSeedIsStepZero: eval --init-seed with a run's seed and
// log/model.json scores the model the run started from. A one-step run at
// the schedule's floor learning rate (1e-8) barely moves it, so its
// validation must give the same numbers to 1e-5.
func TestEvalInitSeedIsStepZero(t *testing.T) {
	w := finetuneWorld(t)
	for _, task := range []string{"vqa", "nlvr2"} {
		cfg := finetuneConfig(t, w, task, "")
		run := t.TempDir()
		if o, err := runUniter(t, "finetune", "--task", task, "--config", cfg, "--quiet", "--output", run, "--set", "learning_rate=1e-30",
			"--set", "weight_decay=0", "--set", "warmup_steps=0", "--set", "num_train_steps=1"); err != nil {
			t.Fatalf("%v\n%s", err, o)
		}
		recs := readRecords(t, run)
		last := recs[len(recs)-1]
		out := t.TempDir()
		args := []string{"eval", "--task", task, "--init-seed", "7", "--model-config", filepath.Join(run, "log", "model.json"),
			"--txt-db", w + "/txt/" + task + "_val.db", "--img-db", w + "/img/synth_val", "--batch-tokens", "2048", "--out", out}
		if task == "vqa" {
			args = append(args, "--ans2label", w+"/txt/vqa_train.db/ans2label.json")
		}
		if o, err := runUniter(t, args...); err != nil {
			t.Fatalf("%v\n%s", err, o)
		}
		m := readJSON(t, filepath.Join(out, "metrics.json"))
		for _, k := range []string{"acc", "loss"} {
			g, v := m[k].(float64), last[k].(float64)
			if math.Abs(g-v) > 1e-5*math.Abs(v) {
				t.Errorf("%s: eval --init-seed %s %v, the run's step-1 validation %v", task, k, g, v)
			}
		}
	}
}

// TestFinetuneSIGTERM: a scheduler's SIGTERM stops the run after the
// current step with a checkpoint of that step and a non-zero exit, and
// --resume continues from it.
func TestFinetuneSIGTERM(t *testing.T) {
	w := finetuneWorld(t)
	cfg := finetuneConfig(t, w, "ve", "")
	out := t.TempDir()
	go func() {
		// Rows are written only inside Run, after the signal handler is
		// installed, so the signal cannot kill the test process.
		for {
			if b, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl")); strings.Count(string(b), "\n") >= 2 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()
	_, err := runUniter(t, "finetune", "--task", "ve", "--config", cfg, "--quiet", "--output", out, "--set", "num_train_steps=100000", "--set", "log_steps=1")
	if err == nil || !strings.Contains(err.Error(), "interrupted at step") {
		t.Fatalf("SIGTERM: err %v, want an interrupted-run error", err)
	}
	latest, err := train.LatestCheckpoint(filepath.Join(out, "ckpt"))
	if err != nil || latest == "" {
		t.Fatalf("no checkpoint after SIGTERM (%v)", err)
	}
	st, err := train.ReadState(latest)
	if err != nil || st.Step < 2 {
		t.Fatalf("checkpoint %s: state %+v %v", latest, st, err)
	}
	if o, err := runUniter(t, "finetune", "--task", "ve", "--config", cfg, "--quiet", "--output", out, "--resume",
		"--set", "num_train_steps=100000", "--set", "log_steps=1", "--steps", fmt.Sprint(st.Step+2)); err != nil {
		t.Fatalf("resume after SIGTERM: %v\n%s", err, o)
	}
}
