package train

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
)

// TestPadFracDemoData trains a few steps with the demo config's token
// budget on a world of the demo's size (default synth options; small
// region features, which do not change any length) and checks that
// token-bucket batching wastes at most 10% of the [B, S] slots, next to
// what fixed-size batches of the same mean size would waste.
func TestPadFracDemoData(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 1000-image world")
	}
	dir := t.TempDir()
	opts := data.DefaultSynthOptions()
	opts.ImgDim = 8
	if _, err := data.Synth(dir, opts); err != nil {
		t.Fatal(err)
	}
	demo, err := decodeWith(t, filepath.Join("..", "..", "configs", "demo.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Model.ImgDim = 8
	cfg.TrainBatchSize = demo.TrainBatchSize
	cfg.TrainDatasets[0].TxtDB = []string{dir + "/txt/pretrain_train.db"}
	cfg.TrainDatasets[0].ImgDB = []string{dir + "/img/synth_train"}
	cfg.TrainDatasets[0].MixRatio = demo.TrainDatasets[0].MixRatio
	cfg.TrainDatasets[0].Tasks = demo.TrainDatasets[0].Tasks
	cfg.ValDatasets = nil
	out := t.TempDir()
	const steps = 40
	tr, err := New(cfg, Options{Output: out, Steps: steps, Backend: compute.NewCPU(2)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadMetrics(filepath.Join(out, LogDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var pad, examples float64
	for _, r := range recs {
		p, _ := r.Float("pad_frac")
		e, _ := r.Float("examples")
		pad += p
		examples += e
	}
	pad /= float64(len(recs))
	batch := int(examples / float64(len(recs)))

	// Fixed-size batches: the same examples in random order, batch after
	// batch of the mean size, each padded to its longest joint sequence.
	txt, err := db.OpenTxtDB(dir + "/txt/pretrain_train.db")
	if err != nil {
		t.Fatal(err)
	}
	defer txt.Close()
	img, err := db.OpenImgDB(dir+"/img/synth_train", db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	set, err := data.NewPretrainSet(txt, img, data.PretrainOptions{MaxTxtLen: 60, ImgDim: 8, MaskProb: data.MaskProb, ITMNegProb: data.ITMNegProb})
	if err != nil {
		t.Fatal(err)
	}
	lens, err := set.Lens(data.TaskMLM, 0)
	if err != nil {
		t.Fatal(err)
	}
	rand.New(rand.NewPCG(1, 1)).Shuffle(len(lens), func(i, j int) { lens[i], lens[j] = lens[j], lens[i] })
	var real, slots float64
	for s := 0; s+batch <= len(lens); s += batch {
		longest := 0
		for _, l := range lens[s : s+batch] {
			longest = max(longest, l+2) // + [CLS], [SEP]
			real += float64(l + 2)
		}
		slots += float64(batch * longest)
	}
	fixed := 1 - real/slots
	t.Logf("pad_frac with token-bucket batching: %.4f over %d steps (mean batch %d examples, budget %d tokens); fixed-size batches of %d: %.4f",
		pad, len(recs), batch, demo.TrainBatchSize, batch, fixed)
	if pad > 0.10 {
		t.Errorf("mean pad_frac %.4f > 0.10", pad)
	}
	if pad >= fixed {
		t.Errorf("bucket batching pads %.4f, no better than fixed-size batches (%.4f)", pad, fixed)
	}
}
