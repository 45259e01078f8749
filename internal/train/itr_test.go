package train

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/viper"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// TestITRConfig reads the retrieval keys of the official hard-negative
// config and refuses layouts the original's batch layout does not allow
// with one sentence naming the key and value.
func TestITRConfig(t *testing.T) {
	path := filepath.Join("..", "..", "configs", "finetune-itr-coco-base-16gpu-hn.yaml")
	cfg, err := decodeTask(t, path, "itr")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NegativeSize != 399 || cfg.HardNegSize != 31 || cfg.InfMinibatchSize != 400 || cfg.Margin != 0.2 || !cfg.FullVal ||
		cfg.itrBatchExamples() != 1 || cfg.GradientAccumulationSteps != 8 {
		t.Errorf("itr keys: %+v", cfg)
	}
	for _, c := range []struct{ set, want string }{
		{"negative_size=100", "config: negative_size = 100: hard negatives need 1 + negative_size"},
		{"hard_neg_size=20", "config: hard_neg_size = 20: hard negatives need 1 + hard_neg_size"},
		{"hard_neg_size=407", "config: hard_neg_size = 407: exceeds negative_size 399"},
		{"negative_size=0", "config: negative_size = 0: must be at least 1"},
		{"inf_minibatch_size=0", "config: inf_minibatch_size = 0: must be positive"},
		{"margin=-1", "config: margin = -1: must be >= 0"},
	} {
		v := viper.New()
		SetDefaults(v, "itr")
		if err := ReadConfigFile(v, path); err != nil {
			t.Fatal(err)
		}
		k, val, _ := strings.Cut(c.set, "=")
		v.Set(k, val)
		_, err := DecodeConfig(v, "itr")
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want %q...", c.set, err, c.want)
		}
	}
	plain, err := decodeTask(t, filepath.Join("..", "..", "configs", "finetune-itr-flickr-base-8gpu.yaml"), "itr")
	if err != nil {
		t.Fatal(err)
	}
	if plain.itrBatchExamples() != 40 || plain.HardNegSize != 0 || plain.GradientAccumulationSteps != 4 {
		t.Errorf("plain itr: %+v", plain)
	}
	if s := exampleSampler(3, 1); s.SizeMultiple != 1 || !s.DropLast {
		t.Errorf("example sampler %+v", s)
	}
	b, err := exampleSampler(3, 1).Batches([]int{1, 1, 1, 1, 1, 1, 1, 1}, 0)
	if err != nil || len(b) != 2 || len(b[0]) != 3 || len(b[1]) != 3 {
		t.Errorf("8 examples in threes: %v, %v (want two batches, the partial one dropped)", b, err)
	}
}

// itrTestSet opens the test world's retrieval val split with a fresh
// one-layer ITR model.
func itrTestSet(t *testing.T) (*tasks.ITR, *data.ITRSet) {
	t.Helper()
	dir := testWorld(t)
	m, err := model.New(compute.NewCPU(0), microModel(), 7)
	if err != nil {
		t.Fatal(err)
	}
	task, err := tasks.NewITR(m, 0.2, 0, 7, false)
	if err != nil {
		t.Fatal(err)
	}
	dc := DefaultConfig()
	dbs := NewDBs(dc.ImgDBOptions())
	t.Cleanup(dbs.Close)
	ds, err := OpenDownstream(dbs, task, dir+"/txt/itr_val.db", dir+"/img/synth_val",
		data.DownstreamOptions{MaxTxtLen: -1, ImgDim: m.Cfg.ImgDim, MaxWords: m.Cfg.MaxPositionEmbeddings - 2}, m.Cfg.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	return task, ds.(*data.ITRSet)
}

// TestITRFastRankingMatchesPairwise: the full ranking from precomputed
// embeddings in unpadded batches gives the scores of scoring each text's
// pairs in padded chunks (the model's ordinary forward), to float
// rounding, and the same recalls.
func TestITRFastRankingMatchesPairwise(t *testing.T) {
	task, ds := itrTestSet(t)
	ctx := context.Background()
	slow, err := EvaluateITR(ctx, task, ds, ITREvalOptions{Full: true, Slow: true})
	if err != nil {
		t.Fatal(err)
	}
	fast, err := EvaluateITR(ctx, task, ds, ITREvalOptions{Full: true, Budget: 300})
	if err != nil {
		t.Fatal(err)
	}
	exact, err := EvaluateITR(ctx, task, ds, ITREvalOptions{Full: true, Budget: 300, Exact: true})
	if err != nil {
		t.Fatal(err)
	}
	worst, scale := 0.0, 0.0
	for i := range slow.Scores {
		worst = math.Max(worst, math.Abs(float64(exact.Scores[i]-slow.Scores[i])))
	}
	if worst > 1e-5*maxAbs(slow.Scores) {
		t.Errorf("unpadded ranking differs by %.3g", worst)
	}
	worst = 0
	for i := range slow.Scores {
		worst = math.Max(worst, math.Abs(float64(fast.Scores[i]-slow.Scores[i])))
		scale = math.Max(scale, math.Abs(float64(slow.Scores[i])))
	}
	if worst > 1e-5*scale {
		t.Errorf("fast ranking differs by %.3g (scores up to %.3g)", worst, scale)
	}
	t.Logf("%d pairs: fast vs pairwise max difference %.3g (scores up to %.3g)", len(slow.Scores), worst, scale)
	for _, k := range []string{"img_r1", "img_r5", "txt_r1", "txt_r5", "r_mean", "img_r1_official"} {
		if fast.Metrics[k] != slow.Metrics[k] {
			t.Errorf("%s: fast %v, pairwise %v", k, fast.Metrics[k], slow.Metrics[k])
		}
	}
	proxy, err := EvaluateITR(ctx, task, ds, ITREvalOptions{Candidates: 5})
	if err != nil {
		t.Fatal(err)
	}
	if r := proxy.Metrics["recall_1"]; !(r >= 0 && r <= proxy.Metrics["recall_5"]) || proxy.Metrics["recall_10"] != 1 {
		t.Errorf("cheap validation of 5 candidates: %v", proxy.Metrics)
	}
	if _, err := EvaluateITR(ctx, task, ds, ITREvalOptions{Candidates: 1000}); err == nil || !strings.Contains(err.Error(), "inf_minibatch_size = 1000") {
		t.Errorf("more candidates than images: %v", err)
	}
}

// TestITRRankResume kills a ranking into a file after some blocks and
// resumes it: the scores file is byte for byte an uninterrupted run's,
// and a ranking of another key starts over.
func TestITRRankResume(t *testing.T) {
	task, ds := itrTestSet(t)
	ni := len(ds.ImgNames())
	full := t.TempDir()
	want, err := RankToFile(context.Background(), task, ds, full, RankToFileOptions{Key: "k", BlockTexts: 3})
	if err != nil {
		t.Fatal(err)
	}
	wantBytes, err := os.ReadFile(filepath.Join(full, ITRScoresPartial))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err = RankToFile(ctx, task, ds, dir, RankToFileOptions{Key: "k", BlockTexts: 3, Progress: func(done, _ int) {
		if done >= 2*3*ni {
			cancel()
		}
	}})
	cancel()
	if err == nil {
		t.Fatal("cancelled ranking: no error")
	}
	var prog itrProgress
	b, err := os.ReadFile(filepath.Join(dir, ITRProgressFile))
	if err != nil || json.Unmarshal(b, &prog) != nil {
		t.Fatalf("progress file: %v", err)
	}
	doneBlocks := 0
	for _, d := range prog.Done {
		if d {
			doneBlocks++
		}
	}
	if doneBlocks < 2 || doneBlocks == len(prog.Done) {
		t.Fatalf("killed after %d of %d blocks, want some but not all", doneBlocks, len(prog.Done))
	}
	var resumed []string
	got, err := RankToFile(context.Background(), task, ds, dir, RankToFileOptions{Key: "k", BlockTexts: 3,
		Log: func(f string, a ...any) { resumed = append(resumed, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	gotBytes, _ := os.ReadFile(filepath.Join(dir, ITRScoresPartial))
	if !bytes.Equal(gotBytes, wantBytes) || len(resumed) != 1 {
		t.Errorf("resumed scores file differs from an uninterrupted run's (resume log %q)", resumed)
	}
	if got.Metrics["r_mean"] != want.Metrics["r_mean"] {
		t.Errorf("resumed r_mean %v, uninterrupted %v", got.Metrics["r_mean"], want.Metrics["r_mean"])
	}
	resumed = nil
	if _, err := RankToFile(context.Background(), task, ds, dir, RankToFileOptions{Key: "other", BlockTexts: 3,
		Log: func(f string, a ...any) { resumed = append(resumed, f) }}); err != nil || len(resumed) != 0 {
		t.Errorf("another ranking's progress was resumed (%v, %q)", err, resumed)
	}
}

func maxAbs(v []float32) float64 {
	m := 0.0
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}
