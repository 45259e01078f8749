package train

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"uniter/internal/data"
	"uniter/internal/model"
)

// The tests share one small synthetic world (32-d regions), written once.
var (
	worldOnce sync.Once
	worldDir  string
	worldErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{worldDir, ftDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	os.Exit(code)
}

// testWorld returns the directory of the shared synthetic world.
func testWorld(t *testing.T) string {
	t.Helper()
	worldOnce.Do(func() {
		worldDir, worldErr = os.MkdirTemp("", "uniter-train-world-")
		if worldErr != nil {
			return
		}
		_, worldErr = data.Synth(worldDir, data.SynthOptions{Seed: 3, Images: 60, ValImages: 12, ImgDim: 32, Captions: 3})
	})
	if worldErr != nil {
		t.Fatal(worldErr)
	}
	return worldDir
}

// microModel is a one-layer model sized for the test world.
func microModel() model.Config {
	c, err := model.Preset("tiny")
	if err != nil {
		panic(err)
	}
	c.VocabSize, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.IntermediateSize, c.ImgDim = 220, 32, 1, 2, 64, 32
	return c
}

// microOverrides are the config keys that make the tiny preset microModel.
func microOverrides() ModelOverrides {
	m := microModel()
	return ModelOverrides{VocabSize: m.VocabSize, HiddenSize: m.HiddenSize, NumHiddenLayers: m.NumHiddenLayers,
		NumAttentionHeads: m.NumAttentionHeads, IntermediateSize: m.IntermediateSize, ImgDim: m.ImgDim}
}

// testConfig is a pretraining config over the test world with every task.
func testConfig(t *testing.T) *Config {
	dir := testWorld(t)
	c := DefaultConfig()
	c.ModelConfig, c.Model = "tiny", microOverrides()
	c.TrainDatasets = []DatasetConfig{{Name: "synth", TxtDB: []string{dir + "/txt/pretrain_train.db"},
		ImgDB: []string{dir + "/img/synth_train"}, Tasks: TaskNames, MixRatio: []int{2, 2, 1, 1, 1}}}
	c.ValDatasets = []DatasetConfig{{Name: "synth", TxtDB: []string{dir + "/txt/pretrain_val.db"},
		ImgDB: []string{dir + "/img/synth_val"}, Tasks: TaskNames}}
	c.TrainBatchSize, c.ValBatchSize = 512, 2048
	c.LearningRate, c.NumTrainSteps, c.WarmupSteps = 1e-3, 100, 5
	c.ValidSteps, c.SaveSteps, c.LogSteps, c.NWorkers = 1000, 1000, 1, 1
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

func world(t *testing.T, rel string) string { return fmt.Sprintf("%s/%s", testWorld(t), rel) }
