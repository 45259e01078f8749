package main

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/ckpt"
)

// officialDir holds fine-tuned checkpoints in the official layout with
// their dbs and the PyTorch reference's evaluation
// (scripts/gen_finetune_fixtures.py).
const officialDir = "../../testdata/finetune/"

// readNpyF32 reads a float32 .npy file's values.
func readNpyF32(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 10 || string(b[1:6]) != "NUMPY" {
		t.Fatalf("%s: not a .npy file", path)
	}
	body := b[10+int(binary.LittleEndian.Uint16(b[8:10])):]
	out := make([]float32, len(body)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
	}
	return out
}

// TestEvalOfficialCheckpoints evaluates official-layout fine-tuned VQA and
// NLVR2 paired-attn checkpoints (fp16 UniterFor... state dicts with the
// official model.json) and compares logits (1e-4), metrics and the
// official output files with the PyTorch reference.
func TestEvalOfficialCheckpoints(t *testing.T) {
	for _, c := range []struct {
		task    string
		args    []string
		metrics []string
	}{
		{"vqa", []string{"--ans2label", officialDir + "vqa_official/ans2label.json"}, []string{"loss"}},
		{"nlvr2", []string{"--variant", "paired-attn"}, []string{"acc", "loss", "consistency"}},
	} {
		t.Run(c.task, func(t *testing.T) {
			dir := officialDir + c.task + "_official/"
			out := t.TempDir()
			args := append([]string{"eval", "--task", c.task, "--checkpoint", dir + "model.pt", "--model-config", dir + "model.json",
				"--img-dim", "48", "--txt-db", dir + "txt.db", "--img-db", dir + "img.db", "--out", out, "--save-logits", "--device", "cpu"}, c.args...)
			if o, err := runUniter(t, args...); err != nil {
				t.Fatalf("%v\n%s", err, o)
			}
			ref, err := ckpt.ReadTorch(dir + "expected.pt")
			if err != nil {
				t.Fatal(err)
			}
			want := ref.Tensors["logits"].Float
			got := readNpyF32(t, filepath.Join(out, "logits.npy"))
			if len(got) != len(want) {
				t.Fatalf("logits.npy has %d values, reference %d", len(got), len(want))
			}
			worst := 0.0
			for i := range want {
				worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
			}
			t.Logf("%s: worst logit difference %.2e", c.task, worst)
			if worst > 1e-4 {
				t.Errorf("logits differ from the reference by %g (budget 1e-4)", worst)
			}
			var exp map[string]any
			b, _ := os.ReadFile(dir + "expected.json")
			if err := json.Unmarshal(b, &exp); err != nil {
				t.Fatal(err)
			}
			m := readJSON(t, filepath.Join(out, "metrics.json"))
			if c.task == "vqa" {
				exp["acc"] = exp["score"] // the VQA score is the metric acc
				c.metrics = append(c.metrics, "acc")
			}
			for _, k := range c.metrics {
				g, w := m[k].(float64), exp[k].(float64)
				if math.Abs(g-w) > 1e-5*math.Max(1, math.Abs(w)) {
					t.Errorf("%s: %v, reference %v", k, g, w)
				}
			}
			var ids []string
			b, _ = os.ReadFile(filepath.Join(out, "ids.json"))
			if err := json.Unmarshal(b, &ids); err != nil || strings.Join(ids, ",") != joinAny(exp["ids"]) {
				t.Errorf("ids.json %v (%v), reference %v", ids, err, exp["ids"])
			}
			switch c.task {
			case "vqa":
				var answers []map[string]any
				b, _ = os.ReadFile(filepath.Join(out, "results.json"))
				if err := json.Unmarshal(b, &answers); err != nil {
					t.Fatal(err)
				}
				wantAns, _ := json.Marshal(exp["answers"])
				gotAns, _ := json.Marshal(answers)
				if string(gotAns) != string(wantAns) {
					t.Errorf("results.json %s, reference %s", gotAns, wantAns)
				}
			case "nlvr2":
				b, _ = os.ReadFile(filepath.Join(out, "results.csv"))
				if got, want := strings.TrimSpace(string(b)), strings.ReplaceAll(joinAny(exp["predictions"]), ",dev", "\ndev"); got != want {
					t.Errorf("results.csv\n%s\nreference\n%s", got, want)
				}
			}
		})
	}
}

// joinAny joins a JSON list of strings with commas.
func joinAny(v any) string {
	var parts []string
	for _, x := range v.([]any) {
		parts = append(parts, x.(string))
	}
	return strings.Join(parts, ",")
}

// TestEvalDownstreamErrors: a checkpoint of another task, an NLVR2 example
// whose image is missing, an unknown variant: one sentence each, no files.
func TestEvalDownstreamErrors(t *testing.T) {
	vqa, nl := officialDir+"vqa_official/", officialDir+"nlvr2_official/"
	common := []string{"--img-dim", "48", "--device", "cpu"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"vqa checkpoint for nlvr2", []string{"--task", "nlvr2", "--checkpoint", vqa + "model.pt", "--model-config", vqa + "model.json",
			"--txt-db", nl + "txt.db", "--img-db", nl + "img.db"}, "has no nlvr2 head"},
		{"nlvr2 image missing", []string{"--task", "nlvr2", "--checkpoint", nl + "model.pt", "--model-config", nl + "model.json",
			"--txt-db", nl + "txt.db", "--img-db", vqa + "img.db"}, "nlvr2_dev-1-0-img0.npz"},
		{"variant", []string{"--task", "nlvr2", "--variant", "quad", "--checkpoint", nl + "model.pt", "--model-config", nl + "model.json",
			"--txt-db", nl + "txt.db", "--img-db", nl + "img.db"}, `variant "quad"`},
		{"missing ans2label", []string{"--task", "vqa", "--ans2label", vqa + "none.json", "--checkpoint", vqa + "model.pt", "--model-config", vqa + "model.json",
			"--txt-db", vqa + "txt.db", "--img-db", vqa + "img.db"}, "none.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			_, err := runUniter(t, append(append([]string{"eval", "--out", out}, common...), c.args...)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
			if _, err := os.Stat(filepath.Join(out, "metrics.json")); err == nil {
				t.Errorf("a failed eval wrote metrics.json")
			}
		})
	}
}
