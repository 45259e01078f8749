package train

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
)

// runWorld trains cfg with replicas in-process replicas (one CPU thread
// each) into out and returns the metrics rows and the final weights.
func runWorld(t *testing.T, cfg *Config, out string, replicas int, resume bool, steps int) ([]Record, map[string][]float32) {
	t.Helper()
	o := Options{Output: out, Resume: resume, Steps: steps, Backend: compute.NewCPU(1),
		World: World{Replicas: replicas, NewBackend: func(int) (compute.Backend, error) { return compute.NewCPU(1), nil }}}
	tr, err := New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	w := map[string][]float32{}
	for _, r := range tr.reps {
		for _, p := range r.m.Params.List() {
			got := r.be.ToF32(p.W)
			if want, ok := w[p.Name]; ok {
				// Every replica applies the same reduced gradients.
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("%d replicas: %s[%d] differs between replicas: %v vs %v", replicas, p.Name, i, got[i], want[i])
					}
				}
			}
			w[p.Name] = got
		}
	}
	recs, err := ReadMetrics(filepath.Join(out, LogDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return recs, w
}

// sameRun checks that two runs logged the same losses and validation
// metrics step for step and ended with the same weights, to fp32
// summation order (1e-5 relative).
func sameRun(t *testing.T, name string, wantRecs, gotRecs []Record, want, got map[string][]float32) {
	t.Helper()
	if len(gotRecs) != len(wantRecs) {
		t.Fatalf("%s: %d metrics rows, want %d", name, len(gotRecs), len(wantRecs))
	}
	worst := 0.0
	for i, w := range wantRecs {
		g := gotRecs[i]
		if g.Step() != w.Step() || g.String("task") != w.String("task") || g.String("split") != w.String("split") {
			t.Fatalf("%s: row %d is step %d %s %s, want step %d %s %s", name, i, g.Step(), g.String("task"), g.String("split"), w.Step(), g.String("task"), w.String("split"))
		}
		for _, k := range []string{"loss", "acc", "tokens", "examples", "grad_norm", "n"} {
			wv, ok := w.Float(k)
			if !ok {
				continue
			}
			gv, _ := g.Float(k)
			rel := math.Abs(gv-wv) / max(math.Abs(wv), 1e-12)
			worst = max(worst, rel)
			if rel > 1e-5 {
				t.Errorf("%s: step %d %s %s %s = %v, want %v (relative %.2g)", name, w.Step(), w.String("split"), w.String("task"), k, gv, wv, rel)
			}
		}
	}
	var diff2, norm2 float64
	for n, wv := range want {
		gv := got[n]
		for i := range wv {
			d := float64(gv[i]) - float64(wv[i])
			diff2 += d * d
			norm2 += float64(wv[i]) * float64(wv[i])
		}
	}
	rel := math.Sqrt(diff2 / norm2)
	t.Logf("%s: worst metric relative difference %.2g, weights relative L2 %.2g", name, worst, rel)
	if rel > 1e-5 {
		t.Errorf("%s: final weights differ by %.3g relative (L2)", name, rel)
	}
}

// shortRun is a 6-step pretraining config with accumulation k, adjusted by
// set.
func shortRun(t *testing.T, k int, set func(*Config)) *Config {
	c := testConfig(t)
	c.NumTrainSteps, c.WarmupSteps, c.TrainBatchSize, c.GradientAccumulationSteps = 6, 2, 256, k
	set(c)
	return c
}

func TestReplicasEqualAccumulation(t *testing.T) {
	if testing.Short() {
		t.Skip("trains three runs")
	}
	base := func(k int) *Config { return shortRun(t, k, func(c *Config) { c.ValidSteps = 3 }) }
	dir := t.TempDir()
	wantRecs, want := runWorld(t, base(6), filepath.Join(dir, "r1"), 1, false, 0)
	for _, r := range []int{2, 3} {
		recs, got := runWorld(t, base(6/r), filepath.Join(dir, fmt.Sprint("r", r)), r, false, 0)
		for _, rec := range recs {
			if ws, ok := rec.Float("world_size"); ok && int(ws) != r {
				t.Fatalf("%d replicas: world_size %v", r, ws)
			}
		}
		sameRun(t, fmt.Sprint(r, " replicas"), wantRecs, recs, want, got)
	}
}

// TestResumeOnOtherReplicas pauses a 2-replica run and continues it on 1
// replica (accumulation doubled), and the other way round: both equal the
// uninterrupted run.
func TestResumeOnOtherReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("trains several runs")
	}
	base := func(k int) *Config { return shortRun(t, k, func(c *Config) { c.SaveSteps = 3 }) }
	dir := t.TempDir()
	wantRecs, want := runWorld(t, base(2), filepath.Join(dir, "whole"), 1, false, 0)
	for _, c := range []struct {
		name          string
		first, then   int
		kFirst, kThen int
	}{{"2 then 1", 2, 1, 1, 2}, {"1 then 2", 1, 2, 2, 1}} {
		out := filepath.Join(dir, c.name)
		runWorld(t, base(c.kFirst), out, c.first, false, 3)
		recs, got := runWorld(t, base(c.kThen), out, c.then, true, 0)
		sameRun(t, c.name, wantRecs, recs, want, got)
	}
	// The same global window is required, with the accumulation to set.
	out := filepath.Join(dir, "2 then 1")
	_, err := New(base(1), Options{Output: out, Resume: true, Backend: compute.NewCPU(1)})
	if err == nil || !strings.Contains(err.Error(), "set gradient_accumulation_steps=2") {
		t.Fatalf("resume on 1 replica with accumulation 1: %v, want the accumulation to set", err)
	}
}

var (
	ftOnce sync.Once
	ftDir  string
	ftErr  error
)

// ftConfig is a VQA fine-tuning config over a small world with questions.
func ftConfig(t *testing.T) *Config {
	ftOnce.Do(func() {
		if ftDir, ftErr = os.MkdirTemp("", "uniter-train-ft-"); ftErr == nil {
			_, ftErr = data.Synth(ftDir, data.SynthOptions{Seed: 5, Images: 30, ValImages: 8, ImgDim: 32, Captions: 1, Questions: 2})
		}
	})
	if ftErr != nil {
		t.Fatal(ftErr)
	}
	c := DefaultConfigFor("vqa")
	c.ModelConfig, c.Model = "tiny", microOverrides()
	c.Ans2Label = ftDir + "/txt/vqa_train.db/ans2label.json"
	c.TrainTxtDBs, c.TrainImgDBs = []string{ftDir + "/txt/vqa_train.db"}, []string{ftDir + "/img/synth_train"}
	c.ValTxtDB, c.ValImgDB = ftDir+"/txt/vqa_val.db", ftDir+"/img/synth_val"
	c.TrainBatchSize, c.ValBatchSize = 256, 1024
	c.LearningRate, c.NumTrainSteps, c.WarmupSteps = 1e-3, 6, 2
	c.ValidSteps, c.SaveSteps, c.LogSteps, c.NWorkers = 3, 1000, 1, 1
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestReplicasEqualAccumulationFinetune(t *testing.T) {
	if testing.Short() {
		t.Skip("trains two runs")
	}
	base := func(k int) *Config {
		c := ftConfig(t)
		c.GradientAccumulationSteps = k
		return c
	}
	dir := t.TempDir()
	wantRecs, want := runWorld(t, base(2), filepath.Join(dir, "r1"), 1, false, 0)
	recs, got := runWorld(t, base(1), filepath.Join(dir, "r2"), 2, false, 0)
	sameRun(t, "vqa 2 replicas", wantRecs, recs, want, got)
	// Validation was split across the replicas and joined in order: the
	// predictions file is the single replica's.
	a, err := os.ReadFile(filepath.Join(dir, "r1", ResultsDir, "val_results_6_rank0.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "r2", ResultsDir, "val_results_6_rank0.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Errorf("2-replica validation predictions differ from 1 replica's")
	}
}

// TestLogWindowMeans: with log_steps 5 every logged row carries each task
// key's mean loss over the 5 steps, equal to the means of a log_steps 1
// run's rows.
func TestLogWindowMeans(t *testing.T) {
	dir := t.TempDir()
	every, _ := runWorld(t, shortRun(t, 1, func(c *Config) { c.NumTrainSteps, c.ValidSteps = 10, 1000 }), filepath.Join(dir, "every"), 1, false, 0)
	all, _ := runWorld(t, shortRun(t, 1, func(c *Config) { c.NumTrainSteps, c.ValidSteps, c.LogSteps = 10, 1000, 5 }), filepath.Join(dir, "sparse"), 1, false, 0)
	var sparse []Record
	for _, r := range all {
		if r.String("split") == "" {
			sparse = append(sparse, r)
		}
	}
	if len(sparse) != 2 {
		t.Fatalf("%d rows with log_steps 5 over 10 steps, want 2", len(sparse))
	}
	for _, r := range sparse {
		win, ok := r["window"].(map[string]any)
		if !ok {
			t.Fatalf("step %d: no window field: %v", r.Step(), r)
		}
		want := map[string][]float64{}
		for _, e := range every {
			if e.String("split") == "" && e.Step() > r.Step()-5 && e.Step() <= r.Step() {
				l, _ := e.Float("loss")
				want[e.String("task")] = append(want[e.String("task")], l)
			}
		}
		if len(win) != len(want) {
			t.Errorf("step %d: window has keys %v, the steps had %v", r.Step(), win, want)
		}
		for key, losses := range want {
			m, _ := win[key].(map[string]any)
			mean := 0.0
			for _, l := range losses {
				mean += l / float64(len(losses))
			}
			if got, _ := m["loss"].(float64); math.Abs(got-mean) > 1e-9*math.Abs(mean) || int(m["steps"].(float64)) != len(losses) {
				t.Errorf("step %d %s: window %v, want loss %v over %d steps", r.Step(), key, m, mean, len(losses))
			}
		}
	}
}

// TestHurrySkipsValidation: a run told to hurry (a second interrupt)
// abandons its validation, saves the step it reached and reports itself
// interrupted.
func TestHurrySkipsValidation(t *testing.T) {
	cfg := shortRun(t, 1, func(c *Config) { c.ValidSteps = 1 })
	out := t.TempDir()
	tr, err := New(cfg, Options{Output: out, Backend: compute.NewCPU(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.Hurry()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !tr.Interrupted() || tr.Step() != 1 {
		t.Fatalf("hurried run: interrupted %v at step %d, want true at 1", tr.Interrupted(), tr.Step())
	}
	if latest, err := LatestCheckpoint(filepath.Join(out, CkptDir)); err != nil || filepath.Base(latest) != CheckpointName(1) {
		t.Fatalf("checkpoint %q (%v), want step 1's", latest, err)
	}
	recs, err := ReadMetrics(filepath.Join(out, LogDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.String("split") != "" {
			t.Errorf("a validation row was written: %v", r)
		}
	}
}
