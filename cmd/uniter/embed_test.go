package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/db"
	"uniter/internal/model"
	"uniter/internal/npy"
	"uniter/internal/train"
)

const embedFixture = "../../testdata/embed/"

func embedTestOpts(out string) embedOpts {
	o := embedOpts{imgOpts: db.DefaultImgDBOptions(), txtDB: embedFixture + "txt_db", imgDB: embedFixture + "img_db",
		out: out, batchTokens: 40, batch: 4, workers: 2, quiet: true}
	o.mf = modelFlags{checkpoint: "../../testdata/golden/tiny_legacy_bert.pt", modelConfig: "../../testdata/golden/tiny.json",
		imgDim: 48, device: "cpu"}
	return o
}

// TestEmbedMatchesPyTorch runs `uniter embed` on official-format dbs
// written by Python and compares each pooled row with the PyTorch
// reference (scripts/gen_embed_fixture.py).
func TestEmbedMatchesPyTorch(t *testing.T) {
	out := t.TempDir()
	if err := runEmbed(context.Background(), embedTestOpts(out)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	b, err := os.ReadFile(filepath.Join(out, "ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ids); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(out, "pooled.npy"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ckpt.ReadTorch(embedFixture + "expected.pt")
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(want.Keys) {
		t.Fatalf("%d ids, reference has %d examples", len(ids), len(want.Keys))
	}
	h := 64
	hdr := len(npy.Header([]int{len(ids), h}))
	if len(raw) != hdr+4*len(ids)*h {
		t.Fatalf("pooled.npy is %d bytes, want %d", len(raw), hdr+4*len(ids)*h)
	}
	worst := 0.0
	for r, id := range ids {
		ref := want.Tensors["pooled/"+id]
		if ref == nil {
			t.Fatalf("id %q not in the reference", id)
		}
		var num, den float64
		for j := 0; j < h; j++ {
			v := math.Float32frombits(binary.LittleEndian.Uint32(raw[hdr+4*(r*h+j):]))
			num = math.Max(num, math.Abs(float64(v-ref.Float[j])))
			den = math.Max(den, math.Abs(float64(ref.Float[j])))
		}
		worst = math.Max(worst, num/den)
	}
	if worst > 1e-4 {
		t.Errorf("pooled rows differ from PyTorch: relative error %.3g > 1e-4", worst)
	}
	t.Logf("pooled vs PyTorch: max relative error %.3g over %d examples", worst, len(ids))
}

func TestEmbedBadInput(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*embedOpts)
		want   string
	}{
		"missing txt_db": {func(o *embedOpts) { o.txtDB = "/nonexistent/txt" }, "/nonexistent/txt"},
		"wrong img dim":  {func(o *embedOpts) { o.mf.imgDim = 2048 }, "2048"},
		"small vocab":    {func(o *embedOpts) { o.mf.checkpoint = "../../testdata/golden/tiny.json" }, "tiny.json"},
		"no config":      {func(o *embedOpts) { o.mf.modelConfig = "" }, "--model-config"},
		"tiny budget":    {func(o *embedOpts) { o.batchTokens = 3 }, "--batch-tokens 3"},
		"no checkpoint":  {func(o *embedOpts) { o.mf.checkpoint = "" }, "--checkpoint"},
		"unknown device": {func(o *embedOpts) { o.mf.device = "tpu" }, `"tpu"`},
	} {
		out := t.TempDir()
		o := embedTestOpts(out)
		tc.mutate(&o)
		err := runEmbed(context.Background(), o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
		if entries, _ := os.ReadDir(out); len(entries) != 0 {
			t.Errorf("%s: a failed run left %d files in --out", name, len(entries))
		}
	}
}

// captureStderr runs f with os.Stderr sent to a file and returns what f
// wrote there (embed reports on os.Stderr).
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	tmp, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = tmp
	defer func() { os.Stderr = old }()
	f()
	b, err := os.ReadFile(tmp.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pretrainingCheckpoint writes a checkpoint directory of the embed
// fixture's model with the pretraining heads (what "uniter pretrain"
// saves) and the extra keys, and returns it.
func pretrainingCheckpoint(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	cfg, err := model.LoadConfig("../../testdata/golden/tiny.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ImgDim = 48
	m, err := model.New(compute.NewCPU(1), cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	model.NewPretrainHeads(m)
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	if len(extra) > 0 {
		sd := m.StateDict()
		for _, k := range extra {
			sd.Keys = append(sd.Keys, k)
			sd.Tensors[k] = &ckpt.Tensor{Shape: []int{2}, DType: "float32", Float: []float32{1, 2}}
		}
		if err := ckpt.WriteSafetensors(filepath.Join(dir, model.WeightsFile), sd, nil); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestEmbedPretrainingCheckpoint: embedding with a pretraining checkpoint
// says its pretraining heads are not used, not that 18 keys are
// unexpected; truly unknown keys are still reported as unexpected.
func TestEmbedPretrainingCheckpoint(t *testing.T) {
	for _, c := range []struct {
		extra      []string
		unexpected string
	}{
		{nil, ""},
		{[]string{"foo.weight"}, "1 unexpected keys ignored (foo.weight)"},
	} {
		o := embedTestOpts(t.TempDir())
		o.mf.checkpoint = pretrainingCheckpoint(t, filepath.Join(t.TempDir(), "ckpt"), c.extra...)
		var err error
		log := captureStderr(t, func() { err = runEmbed(context.Background(), o) })
		if err != nil {
			t.Fatalf("%v\n%s", err, log)
		}
		if want := "the checkpoint's pretraining heads (MLM, MRFR, MRC, ITM: 18 tensors) are not used"; !strings.Contains(log, want) {
			t.Errorf("extra keys %v: log lacks %q:\n%s", c.extra, want, log)
		}
		if got := strings.Contains(log, "unexpected"); got != (c.unexpected != "") || !strings.Contains(log, c.unexpected) {
			t.Errorf("extra keys %v: want the unexpected-keys warning only for them (%q):\n%s", c.extra, c.unexpected, log)
		}
	}
}

// TestEmbedRunDir: embed --checkpoint with a run's output directory takes
// its newest complete checkpoint (not an older one, not one without
// trainer state) and says so; a directory with neither a checkpoint nor a
// run's checkpoints is one error naming what was looked for.
func TestEmbedRunDir(t *testing.T) {
	run := t.TempDir()
	for _, step := range []int{2, 5, 7} {
		dir := pretrainingCheckpoint(t, filepath.Join(run, "ckpt", train.CheckpointName(step)))
		if step == 7 {
			continue // incomplete: no trainer state
		}
		st := fmt.Sprintf(`{"step": %d, "seed": 7}`, step)
		if err := os.WriteFile(filepath.Join(dir, "trainer_state.json"), []byte(st), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o := embedTestOpts(t.TempDir())
	o.mf.checkpoint = run
	var err error
	log := captureStderr(t, func() { err = runEmbed(context.Background(), o) })
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	want := "uniter: --checkpoint " + run + " is a run's output directory: using its newest checkpoint " + filepath.Join(run, "ckpt", train.CheckpointName(5))
	if !strings.Contains(log, want) {
		t.Errorf("log lacks %q:\n%s", want, log)
	}
	if _, err := os.Stat(filepath.Join(o.out, "pooled.npy")); err != nil {
		t.Error(err)
	}

	o = embedTestOpts(t.TempDir())
	o.mf.checkpoint = t.TempDir()
	err = runEmbed(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), o.mf.checkpoint+": no checkpoint there: looked for "+filepath.Join(o.mf.checkpoint, "model.safetensors")) {
		t.Errorf("empty directory: err %v", err)
	}
}

// TestEmbedIDsInDBOrder: ids.json lists the examples in the txt_db's own
// order (id2len.json's), not sorted as strings.
func TestEmbedIDsInDBOrder(t *testing.T) {
	txt := filepath.Join(t.TempDir(), "txt_db")
	if err := os.MkdirAll(txt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"data.mdb", "meta.json", "txt2img.json", "img2txts.json"} {
		b, err := os.ReadFile(filepath.Join(embedFixture, "txt_db", f))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(txt, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	order := []string{"1002", "1000", "1005", "1001", "1004", "1003"}
	lens := `{"1002": 3, "1000": 7, "1005": 5, "1001": 8, "1004": 4, "1003": 5}`
	if err := os.WriteFile(filepath.Join(txt, "id2len.json"), []byte(lens), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	o := embedTestOpts(out)
	o.txtDB = txt
	if err := runEmbed(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, order) {
		t.Errorf("ids.json %v, want the txt_db's order %v", ids, order)
	}
}
