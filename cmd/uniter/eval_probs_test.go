package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"uniter/internal/train"
)

// TestITMNegProbZero: itm_neg_prob 0 in a config and --itm-neg-prob 0 in
// eval mean no ITM negatives (not the default 0.5): the validation's ot_neg
// is then exactly 0 and there is no mean mismatched distance, and eval
// with the same settings reports what the validation logged. The default
// does draw negatives.
func TestITMNegProbZero(t *testing.T) {
	cfg, w := pretrainConfig(t, "itm_neg_prob: 0\nvalid_steps: 100\nsave_steps: 100")
	run := t.TempDir()
	if out, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", run, "--set", "num_train_steps=3"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var val map[string]any
	for _, r := range readRecords(t, run) {
		if r.String("split") == "val" && r.String("task") == "itm_synth" {
			val = r
		}
	}
	if val == nil {
		t.Fatal("no itm validation row")
	}
	if val["ot_neg"] != 0.0 || val["ot_neg_mean"] != nil || val["ot_pos_mean"] != val["ot_pos"] {
		t.Errorf("itm_neg_prob 0: validation ot_neg %v, ot_neg_mean %v, ot_pos %v, ot_pos_mean %v; want 0, none and ot_pos_mean = ot_pos",
			val["ot_neg"], val["ot_neg_mean"], val["ot_pos"], val["ot_pos_mean"])
	}

	eval := func(extra ...string) train.Metrics {
		t.Helper()
		out := t.TempDir()
		args := append([]string{"eval", "--task", "pretrain", "--tasks", "itm", "--txt-db", w + "/txt/pretrain_val.db",
			"--img-db", w + "/img/synth_val", "--seed", "7", "--batch-tokens", "2048", "--device", "cpu",
			"--checkpoint", filepath.Join(run, "ckpt", train.CheckpointName(3)), "--out", out}, extra...)
		if stdout, err := runUniter(t, args...); err != nil {
			t.Fatalf("%v\n%s", err, stdout)
		}
		var rep struct {
			Metrics map[string]train.Metrics `json:"metrics"`
		}
		b, err := os.ReadFile(filepath.Join(out, "metrics.json"))
		if err == nil {
			err = json.Unmarshal(b, &rep)
		}
		if err != nil {
			t.Fatal(err)
		}
		return rep.Metrics["itm"]
	}
	m := eval("--itm-neg-prob", "0")
	for k, v := range val {
		if k == "step" || k == "split" || k == "task" {
			continue
		}
		if m[k] != v.(float64) {
			t.Errorf("eval --itm-neg-prob 0: %s %v, validation %v", k, m[k], v)
		}
	}
	if len(m) != len(val)-3 {
		t.Errorf("eval --itm-neg-prob 0: metrics %v, validation %v", m, val)
	}
	if m := eval(); !(m["ot_neg"] > 0) || m["ot_neg_mean"] == 0 {
		t.Errorf("default --itm-neg-prob: ot_neg %v, ot_neg_mean %v; want negatives", m["ot_neg"], m["ot_neg_mean"])
	}
}
