package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/db"
	"uniter/internal/npy"
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
