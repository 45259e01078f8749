package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/data"
	"uniter/internal/db"
)

// vcrWorld is a small synthetic world in which every image has a VCR
// question; it returns the world and a config for a one-layer model.
func vcrWorld(t *testing.T, extra string) (string, string) {
	t.Helper()
	w := t.TempDir()
	if _, err := data.Synth(w, data.SynthOptions{Seed: 5, Images: 24, ValImages: 8, ImgDim: 32, Captions: 1, Questions: 1, GTFraction: 1}); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`model_config: tiny
model: {vocab_size: 220, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, img_dim: 32}
train_txt_dbs: [%[1]s/txt/vcr_train.db]
train_img_dbs: ["%[1]s/img/vcr_gt_train;%[1]s/img/synth_train"]
val_txt_db: %[1]s/txt/vcr_val.db
val_img_db: "%[1]s/img/synth_val;%[1]s/img/vcr_gt_val"
max_txt_len: 220
train_batch_size: 2048
val_batch_size: 3
learning_rate: 1.0e-3
num_train_steps: 4
warmup_steps: 1
valid_steps: 4
seed: 7
n_workers: 2
%s
`, w, extra)
	path := filepath.Join(t.TempDir(), "vcr.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return w, path
}

// TestVCRFinetuneAndEval fine-tunes VCR for a few steps on the synthetic
// world (gt boxes in feat_numbb100), checks the validation row and the
// results file, evaluates the checkpoint with eval --task vcr (the
// metrics equal the run's last validation; logits [n, 8], the json's 20
// scores an example and the submission csv), and refuses the run's own
// (grown) checkpoint as a first-stage one in one sentence.
func TestVCRFinetuneAndEval(t *testing.T) {
	w, cfg := vcrWorld(t, "")
	out := filepath.Join(t.TempDir(), "run")
	if log, err := runUniter(t, "finetune", "--task", "vcr", "--config", cfg, "--output", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	b, err := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var val, final map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		switch r["split"] {
		case "val":
			val = r
		case "val_final":
			final = r
		}
	}
	// train_vcr.py's final validation: the test layout, 20 scores an
	// example, in results_{step}_final_qa_qar_rank0.json; QA->R after the
	// true answer, so the metrics equal the last validation's.
	if final == nil || final["step"] != 4.0 {
		t.Errorf("no final validation row at step 4: %v", final)
	}
	for _, k := range []string{"acc", "acc_qa", "acc_qar", "n"} {
		if fmt.Sprint(final[k]) != fmt.Sprint(val[k]) {
			t.Errorf("final validation %s = %v, the last validation's %v", k, final[k], val[k])
		}
	}
	fin := readJSON(t, filepath.Join(out, "results", "results_4_final_qa_qar_rank0.json"))
	if len(fin) != int(val["n"].(float64)) {
		t.Errorf("final results: %d examples, want %v", len(fin), val["n"])
	}
	for id, s := range fin {
		if len(s.([]any)) != data.VCRTestRows {
			t.Errorf("final results %s: %d scores, want %d", id, len(s.([]any)), data.VCRTestRows)
		}
	}
	for _, k := range []string{"acc", "acc_qa", "acc_qar", "loss", "n"} {
		if _, ok := val[k]; !ok {
			t.Errorf("validation row %v lacks %s", val, k)
		}
	}
	res := readJSON(t, filepath.Join(out, "results", "val_results_4_rank0.json"))
	for id, s := range res {
		if len(s.([]any)) != data.VCRValRows {
			t.Errorf("results %s: %d scores, want %d", id, len(s.([]any)), data.VCRValRows)
		}
	}
	ckpt := filepath.Join(out, "ckpt", "step_00000004")
	ev := filepath.Join(t.TempDir(), "eval")
	log, err := runUniter(t, "eval", "--task", "vcr", "--checkpoint", ckpt, "--txt-db", filepath.Join(w, "txt", "vcr_val.db"),
		"--gt-img-db", filepath.Join(w, "img", "vcr_gt_val"), "--img-db", filepath.Join(w, "img", "synth_val"), "--out", ev, "--save-logits")
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	m := readJSON(t, filepath.Join(ev, "metrics.json"))
	for _, k := range []string{"acc", "acc_qa", "acc_qar", "n"} {
		if fmt.Sprint(m[k]) != fmt.Sprint(val[k]) {
			t.Errorf("eval %s = %v, the run's validation %v", k, m[k], val[k])
		}
	}
	n := int(m["n"].(float64))
	if got := readNpyF32(t, filepath.Join(ev, "logits.npy")); len(got) != n*data.VCRValRows {
		t.Errorf("logits.npy: %d values for %d examples", len(got), n)
	}
	for id, s := range readJSON(t, filepath.Join(ev, "results.json")) {
		if len(s.([]any)) != data.VCRTestRows {
			t.Errorf("results.json %s: %d scores, want %d", id, len(s.([]any)), data.VCRTestRows)
		}
	}
	csv, err := os.ReadFile(filepath.Join(ev, "results.csv"))
	lines := strings.Split(strings.TrimSpace(string(csv)), "\n")
	if err != nil || len(lines) != n+1 || len(strings.Split(lines[1], ",")) != 21 {
		t.Errorf("results.csv (%v):\n%s", err, csv)
	}

	_, cfg2 := vcrWorld(t, "checkpoint: "+ckpt)
	log, err = runUniter(t, "finetune", "--task", "vcr", "--config", cfg2, "--output", filepath.Join(t.TempDir(), "run2"))
	if err == nil || !strings.Contains(err.Error(), "set checkpoint_from: vcr_pretrain") {
		t.Errorf("a grown checkpoint with checkpoint_from pretrain: %v\n%s", err, log)
	}
	_, cfg3 := vcrWorld(t, "checkpoint: "+ckpt+"\ncheckpoint_from: vcr_pretrain")
	if log, err := runUniter(t, "finetune", "--task", "vcr", "--config", cfg3, "--output", filepath.Join(t.TempDir(), "run3"), "--steps", "1"); err != nil {
		t.Errorf("vcr_pretrain from the grown checkpoint: %v\n%s", err, log)
	}
}

// TestTxtdbVCR builds a VCR txt_db from VCR's JSON lines: person
// references become the person tags (ids 28996 + k), other objects their
// class name, several joined by "and"; the db has id2len_qa.json and
// id2len_qar.json, the [gt, detected] image names and -1 targets without
// labels. A short rationale list is refused naming the file, line, key
// and value, and nothing is written.
func TestTxtdbVCR(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "val.jsonl")
	lines := `{"annot_id": "val-0", "img_fn": "lsmdc_x/y@1.jpg", "objects": ["person", "car", "person"], "question": ["Why", "is", [0], "near", [1], "?"], "answer_choices": [[[0, 2], "are", "friends", "."], ["No", "."], ["Yes", "."], [[2], "drives", "."]], "rationale_choices": [["A", "."], ["B", "."], ["C", "."], ["D", "."]], "answer_label": 3, "rationale_label": 1}
{"annot_id": "test-1", "img_fn": "movie/z.jpg", "objects": ["dog"], "question": ["What", "is", [0], "?"], "answer_choices": [["a"], ["b"], ["c"], ["d", "e"]], "rationale_choices": [["r"], ["s"], ["t"], ["u"]]}
`
	if err := os.WriteFile(in, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "vcr_val.db")
	if log, err := runCmd(t, "txtdb", "--vcr", in, "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	txt, err := db.OpenTxtDB(out)
	if err != nil {
		t.Fatal(err)
	}
	defer txt.Close()
	ex, err := txt.Get("val-0")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := data.BertTokenizer("bert-base-cased", "")
	q, _ := ex.InputIDs()
	want := append(append(tok.Encode("Why is"), 28996), append(tok.Encode("near"), append(tok.Encode("car"), tok.Encode("?")...)...)...)
	if fmt.Sprint(q) != fmt.Sprint(want) {
		t.Errorf("question ids %v, want %v", q, want)
	}
	as, _ := ex.IntLists("input_ids_as")
	if len(as) != 4 || as[0][0] != 28996 || as[0][len(tok.Encode("and"))+1] != 28998 || as[3][0] != 28998 {
		t.Errorf("answers %v", as)
	}
	qa, _ := ex.Int("qa_target")
	qar, _ := ex.Int("qar_target")
	names, _ := txt.Images("val-0")
	if qa != 3 || qar != 1 || fmt.Sprint(names) != "[vcr_gt_lsmdc_x_y@1.npz vcr_lsmdc_x_y@1.npz]" {
		t.Errorf("targets %d %d images %v", qa, qar, names)
	}
	unl, _ := txt.Get("test-1")
	if n, _ := unl.Int("qa_target"); n != -1 {
		t.Errorf("test qa_target %d, want -1", n)
	}
	for _, f := range []string{data.VCRLensQA, data.VCRLensQAR} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if !data.IsVCRTxtDB(out) {
		t.Error("not recognised as a VCR txt_db")
	}

	bad := strings.Replace(lines, `["C", "."], ["D", "."]]`, `["C", "."]]`, 1)
	if err := os.WriteFile(in, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(t.TempDir(), "bad.db")
	_, err = runCmd(t, "txtdb", "--vcr", in, "--out", out2)
	if err == nil || !strings.Contains(err.Error(), in+":1") || !strings.Contains(err.Error(), `"rationale_choices"`) || !strings.Contains(err.Error(), "a list of 3") {
		t.Errorf("3 rationales: %v", err)
	}
	if _, serr := os.Stat(out2); !os.IsNotExist(serr) {
		t.Errorf("%s written after the error", out2)
	}
}

// TestVCRPretrainThenFinetune runs the second-stage pretraining (the VCR
// txt_db is what selects it) for a few steps, resumes it, and fine-tunes
// VCR from its checkpoint with checkpoint_from vcr_pretrain.
func TestVCRPretrainThenFinetune(t *testing.T) {
	w := t.TempDir()
	if _, err := data.Synth(w, data.SynthOptions{Seed: 5, Images: 24, ValImages: 8, ImgDim: 32, Captions: 1, Questions: 1, GTFraction: 1}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "pvcr.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`model_config: tiny
model: {vocab_size: 220, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, img_dim: 32}
train_datasets:
  - {name: vcr, txt_db: [%[1]s/txt/vcr_train.db], img_db: ["%[1]s/img/vcr_gt_train;%[1]s/img/synth_train"], tasks: [mlm, mrfr, mrckl], mix_ratio: [2, 1, 1]}
val_datasets:
  - {name: vcr, txt_db: [%[1]s/txt/vcr_val.db], img_db: ["%[1]s/img/vcr_gt_val;%[1]s/img/synth_val"], tasks: [mlm, mrfr, mrckl]}
max_txt_len: 220
train_batch_size: 2048
val_batch_size: 8000
learning_rate: 1.0e-3
num_train_steps: 6
warmup_steps: 1
valid_steps: 6
save_steps: 3
seed: 3
n_workers: 2
`, w)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "pvcr")
	if log, err := runUniter(t, "pretrain", "--config", cfg, "--output", out, "--steps", "3"); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	if log, err := runUniter(t, "pretrain", "--config", cfg, "--output", out, "--resume"); err != nil {
		t.Fatalf("resume: %v\n%s", err, log)
	}
	mc := readJSON(t, filepath.Join(out, "ckpt", "step_00000006", "model.json"))
	if mc["vocab_size"] != 220.0+81 || mc["type_vocab_size"] != 4.0 {
		t.Errorf("second-stage model.json: vocab %v types %v, want 301 and 4", mc["vocab_size"], mc["type_vocab_size"])
	}
	b, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl"))
	for _, task := range []string{"mlm_vcr", "mrfr_vcr", "mrckl_vcr"} {
		if !strings.Contains(string(b), `"split":"val","task":"`+task+`"`) {
			t.Errorf("no validation of %s", task)
		}
	}
	// eval --task pretrain on the grown checkpoint with the base (ungrown)
	// model config, as on an official second-stage .pt with config base:
	// the tables grow to the checkpoint's before loading, and the metrics
	// repeat the run's last validation (the run's seed).
	base := map[string]any{}
	for k, v := range mc {
		base[k] = v
	}
	base["vocab_size"], base["type_vocab_size"] = 220, 2
	bb, _ := json.Marshal(base)
	baseCfg := filepath.Join(t.TempDir(), "base.json")
	if err := os.WriteFile(baseCfg, bb, 0o644); err != nil {
		t.Fatal(err)
	}
	ev := filepath.Join(t.TempDir(), "ev")
	if log, err := runUniter(t, "eval", "--task", "pretrain", "--tasks", "mlm,mrfr,mrckl", "--checkpoint", filepath.Join(out, "ckpt", "step_00000006"),
		"--model-config", baseCfg, "--txt-db", w+"/txt/vcr_val.db", "--img-db", w+"/img/vcr_gt_val;"+w+"/img/synth_val", "--out", ev); err != nil {
		t.Fatalf("eval --task pretrain on the second-stage checkpoint with the base config: %v\n%s", err, log)
	}
	_, em := evalPretrainMetrics(t, ev)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r["split"] != "val" || r["step"] != 6.0 {
			continue
		}
		task := strings.TrimSuffix(r["task"].(string), "_vcr")
		if fmt.Sprint(em[task]["loss"]) != fmt.Sprint(r["loss"]) {
			t.Errorf("eval %s loss %v, the run's validation %v", task, em[task]["loss"], r["loss"])
		}
	}
	_, fcfg := vcrWorld(t, "checkpoint: "+filepath.Join(out, "ckpt", "step_00000006")+"\ncheckpoint_from: vcr_pretrain")
	if log, err := runUniter(t, "finetune", "--task", "vcr", "--config", fcfg, "--output", filepath.Join(t.TempDir(), "ft"), "--steps", "1"); err != nil {
		t.Errorf("fine-tuning from the second stage: %v\n%s", err, log)
	}
}
