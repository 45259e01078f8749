package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/ckpt"
)

// evalOfficial runs eval --task task on testdata/finetune/<task>_official
// (scripts/gen_finetune_fixtures.py: an fp16 state dict in the original's
// key layout with the official model.json, official-layout dbs, the
// PyTorch reference's logits and metrics) and checks logits.npy against
// the reference's (1e-4) and the metrics named in keys (1e-5). It returns
// the output directory and the reference's expected.json.
func evalOfficial(t *testing.T, task, imgDB string, keys []string, extra ...string) (string, map[string]any) {
	t.Helper()
	dir := officialDir + task + "_official/"
	if imgDB == "" {
		imgDB = "img.db"
	}
	out := t.TempDir()
	args := append([]string{"eval", "--task", task, "--checkpoint", dir + "model.pt", "--model-config", dir + "model.json",
		"--img-dim", "48", "--txt-db", dir + "txt.db", "--img-db", dir + imgDB, "--out", out, "--save-logits", "--device", "cpu"}, extra...)
	if o, err := runUniter(t, args...); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	ref, err := ckpt.ReadTorch(dir + "expected.pt")
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]string{"logits.npy": "logits", "logits_gt.npy": "logits_gt"} {
		rt, ok := ref.Tensors[key]
		if !ok {
			continue
		}
		want := rt.Float
		got := readNpyF32(t, filepath.Join(out, name))
		if len(got) != len(want) {
			t.Fatalf("%s has %d values, reference %d", name, len(got), len(want))
		}
		worst := 0.0
		for i := range want {
			worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
		}
		t.Logf("%s %s: worst difference %.2e over %d values", task, name, worst, len(want))
		if worst > 1e-4 {
			t.Errorf("%s differs from the reference by %g (budget 1e-4)", name, worst)
		}
	}
	var exp map[string]any
	b, _ := os.ReadFile(dir + "expected.json")
	if err := json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	m := readJSON(t, filepath.Join(out, "metrics.json"))
	for _, k := range keys {
		g, ok1 := m[k].(float64)
		w, ok2 := exp[k].(float64)
		if !ok1 || !ok2 {
			t.Errorf("%s: metrics.json %v, reference %v", k, m[k], exp[k])
			continue
		}
		if math.Abs(g-w) > 1e-5*math.Max(1, math.Abs(w)) {
			t.Errorf("%s: %v, reference %v", k, g, w)
		}
	}
	var ids []string
	b, _ = os.ReadFile(filepath.Join(out, "ids.json"))
	if err := json.Unmarshal(b, &ids); err != nil || strings.Join(ids, ",") != joinAny(exp["ids"]) {
		t.Errorf("ids.json %v (%v), reference %v", ids, err, exp["ids"])
	}
	return out, exp
}

// TestEvalOfficialITR: an official-layout UniterForImageTextRetrieval
// checkpoint (uniter, itm_output, rank_output) ranks 12 captions against
// 10 images as the reference: the score matrix [texts, images] in
// ItmEvalDataset's image order (by region count) and every recall, the
// true ones and utils/itm_eval.py's.
func TestEvalOfficialITR(t *testing.T) {
	var keys []string
	for _, side := range []string{"img_", "txt_"} {
		for _, k := range []string{"r1", "r5", "r10", "r_mean"} {
			keys = append(keys, side+k)
		}
	}
	keys = append(keys, "r_mean", "img_r1_official", "img_r5_official", "img_r10_official", "img_r_mean_official", "r_mean_official")
	out, exp := evalOfficial(t, "itr", "", keys)
	var imgs []string
	b, _ := os.ReadFile(filepath.Join(out, "img_ids.json"))
	if err := json.Unmarshal(b, &imgs); err != nil || strings.Join(imgs, ",") != joinAny(exp["img_ids"]) {
		t.Errorf("img_ids.json %v (%v), reference %v", imgs, err, exp["img_ids"])
	}
}

// TestEvalOfficialRE: an official-layout
// UniterForReferringExpressionComprehension checkpoint (mlp 2:
// re_output.{0,2,3}) on an RE txt_db with its side files, scored on the
// detected boxes and the ground-truth ones (feat_numbb100, conf_th -1 as
// the refcoco configs): logits [n, R] padded with -1e4 on both, acc, loss
// on the ground-truth boxes, results.json's boxes.
func TestEvalOfficialRE(t *testing.T) {
	dir := officialDir + "re_official/"
	out, exp := evalOfficial(t, "re", "re_coco_det", []string{"acc", "n", "acc_gt", "n_gt", "loss_gt"},
		"--gt-img-db", dir+"re_coco_gt", "--conf-th", "-1", "--num-bb", "100")
	for _, suffix := range []string{"", "_gt"} {
		var got map[string]map[string][]float64
		b, _ := os.ReadFile(filepath.Join(out, "results"+suffix+".json"))
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		want := exp["results"+suffix].(map[string]any)
		if len(got) != len(want) {
			t.Fatalf("results%s.json: %d sentences, reference %d", suffix, len(got), len(want))
		}
		for id, w := range want {
			for _, k := range []string{"pred_box", "tgt_box"} {
				wb, gb := w.(map[string]any)[k].([]any), got[id][k]
				if len(gb) != len(wb) {
					t.Errorf("results%s.json %s %s: %v, reference %v", suffix, id, k, gb, wb)
					continue
				}
				for i := range wb {
					if math.Abs(gb[i]-wb[i].(float64)) > 1e-3 {
						t.Errorf("results%s.json %s %s: %v, reference %v", suffix, id, k, gb, wb)
						break
					}
				}
			}
		}
	}
}

// TestEvalOfficialVCR: an official-layout
// UniterForVisualCommonsenseReasoning checkpoint with VCR's grown tables
// (4 type rows, vocab_size + 81 word rows, the new rows in use; model.json
// still says type_vocab_size 2 and the base vocab_size), on the
// ground-truth boxes (feat_numbb100) then the detected ones: every
// rationale after every answer scored as inf_vcr.py does, logits.npy the
// four Q->A scores and the four QA->R ones after the true answer,
// results.json the 20 scores, acc/acc_qa/acc_qar/loss as its evaluate.
func TestEvalOfficialVCR(t *testing.T) {
	dir := officialDir + "vcr_official/"
	out, exp := evalOfficial(t, "vcr", "vcr_val", []string{"acc", "acc_qa", "acc_qar", "loss", "n"}, "--gt-img-db", dir+"vcr_gt_val")
	var got map[string][]float64
	b, _ := os.ReadFile(filepath.Join(out, "results.json"))
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := exp["results"].(map[string]any)
	if len(got) != len(want) {
		t.Fatalf("results.json: %d examples, reference %d", len(got), len(want))
	}
	for id, w := range want {
		ws := w.([]any)
		if len(got[id]) != len(ws) {
			t.Fatalf("results.json %s: %d scores, reference %d", id, len(got[id]), len(ws))
		}
		for i := range ws {
			if math.Abs(got[id][i]-ws[i].(float64)) > 1e-4 {
				t.Errorf("results.json %s[%d]: %v, reference %v", id, i, got[id][i], ws[i])
			}
		}
	}
}
