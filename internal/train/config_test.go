package train

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/viper"
)

func decodeWith(t *testing.T, path string, sets map[string]any) (*Config, error) {
	t.Helper()
	v := viper.New()
	SetDefaults(v, TaskPretrain)
	if err := ReadConfigFile(v, path); err != nil {
		t.Fatal(err)
	}
	for k, val := range sets {
		v.Set(k, val)
	}
	return DecodeConfig(v, TaskPretrain)
}

// TestShippedConfigs loads every config of configs/ and checks the numbers
// of the reference's table (UNITER_REFERENCE.md 3.5).
func TestShippedConfigs(t *testing.T) {
	cases := []struct {
		file                 string
		model                string
		tokens, accum, steps int
		datasets, keysPerSet int
		firstMix             []int
	}{
		{"pretrain-alldata-base-8gpu.yaml", "base", 10240, 6, 200000, 4, 4, []int{6, 8, 4, 4}},
		{"pretrain-alldata-large-16gpu.yaml", "large", 6144, 4, 500000, 4, 4, []int{6, 8, 4, 4}},
		{"pretrain-indomain-base-8gpu.yaml", "base", 10240, 2, 200000, 2, 4, []int{2, 2, 1, 1}},
		{"demo.yaml", "tiny", 0, 0, 0, 1, 5, nil},
	}
	for _, c := range cases {
		cfg, err := decodeWith(t, filepath.Join("..", "..", "configs", c.file), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if cfg.ModelConfig != c.model || len(cfg.TrainDatasets) != c.datasets || len(cfg.TrainDatasets[0].Tasks) != c.keysPerSet {
			t.Errorf("%s: model %s, %d datasets of %d tasks", c.file, cfg.ModelConfig, len(cfg.TrainDatasets), len(cfg.TrainDatasets[0].Tasks))
		}
		if c.tokens == 0 {
			continue
		}
		if cfg.TrainBatchSize != c.tokens || cfg.GradientAccumulationSteps != c.accum || cfg.NumTrainSteps != c.steps ||
			cfg.LearningRate != 5e-5 || cfg.WarmupSteps != 10000 || cfg.GradNorm != 5 || !cfg.FP16 ||
			cfg.Betas[0] != 0.9 || cfg.Betas[1] != 0.98 || cfg.WeightDecay != 0.01 || cfg.ITMOTLambda != 0.1 {
			t.Errorf("%s: %+v", c.file, cfg)
		}
		if got := cfg.TrainDatasets[0].MixRatio; len(got) != len(c.firstMix) || got[0] != c.firstMix[0] || got[1] != c.firstMix[1] {
			t.Errorf("%s: first mix ratio %v, want %v", c.file, got, c.firstMix)
		}
		if len(cfg.TrainDatasets[0].TxtDB) != len(cfg.TrainDatasets[0].ImgDB) || !strings.HasPrefix(cfg.TrainDatasets[0].TxtDB[0], "/txt/") {
			t.Errorf("%s: coco dbs %v %v", c.file, cfg.TrainDatasets[0].TxtDB, cfg.TrainDatasets[0].ImgDB)
		}
	}
}

// TestConfigErrors: a bad value is one error naming the key and the value.
func TestConfigErrors(t *testing.T) {
	demo := filepath.Join("..", "..", "configs", "demo.yaml")
	cases := []struct {
		name string
		sets map[string]any
		want []string
	}{
		{"negative lr", map[string]any{"learning_rate": "-1"}, []string{"learning_rate", "-1"}},
		{"not a number", map[string]any{"learning_rate": "fast"}, []string{"learning_rate", "fast"}},
		{"zero accumulation", map[string]any{"gradient_accumulation_steps": "0"}, []string{"gradient_accumulation_steps", "0"}},
		{"warmup past the end", map[string]any{"warmup_steps": "5000", "num_train_steps": "100"}, []string{"warmup_steps", "5000"}},
		{"one beta", map[string]any{"betas": "0.9"}, []string{"betas", "0.9"}},
		{"dropout of 1", map[string]any{"dropout": "1"}, []string{"dropout", "1"}},
		{"clip of 0", map[string]any{"grad_norm": "0"}, []string{"grad_norm", "0"}},
		{"typo", map[string]any{"learning_rat": "1e-4"}, []string{"learning_rat"}},
		{"unknown task", map[string]any{"val_datasets": []any{map[string]any{"name": "v", "txt_db": []any{"a"}, "img_db": []any{"b"}, "tasks": []any{"vqa"}}}},
			[]string{"val_datasets[0].tasks[0]", "vqa"}},
		{"mix ratio count", map[string]any{"train_datasets": []any{map[string]any{"name": "s", "txt_db": []any{"a"}, "img_db": []any{"b"}, "tasks": []any{"mlm", "itm"}, "mix_ratio": []any{1}}}},
			[]string{"train_datasets[0].mix_ratio", "[1]"}},
		{"unpaired dbs", map[string]any{"train_datasets": []any{map[string]any{"name": "s", "txt_db": []any{"a", "c"}, "img_db": []any{"b"}, "tasks": []any{"mlm"}, "mix_ratio": []any{1}}}},
			[]string{"train_datasets[0]", "2 txt_db and 1 img_db"}},
	}
	for _, c := range cases {
		_, err := decodeWith(t, demo, c.sets)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %q", c.name, err, w)
			}
		}
		if strings.Count(err.Error(), "\n") > 2 {
			t.Errorf("%s: error is not one sentence: %q", c.name, err)
		}
	}
}

// TestConfigOverrides: --set values (strings) and UNITER_* variables reach
// typed fields, the official db/img spellings are accepted, and the
// resolved config survives its YAML round trip.
func TestConfigOverrides(t *testing.T) {
	t.Setenv("UNITER_WEIGHT_DECAY", "0.05")
	v := viper.New()
	v.SetEnvPrefix("UNITER")
	v.AutomaticEnv()
	SetDefaults(v, TaskPretrain)
	if err := ReadConfigFile(v, filepath.Join("..", "..", "configs", "demo.yaml")); err != nil {
		t.Fatal(err)
	}
	v.Set("learning_rate", "2e-4")
	v.Set("model.hidden_size", "64")
	v.Set("fp16", "true")
	v.Set("train_datasets", []any{map[string]any{"name": "coco", "db": []any{"/txt/a.db"}, "img": []any{"/img/a"}, "tasks": []any{"mlm"}, "mix_ratio": []any{3}}})
	cfg, err := DecodeConfig(v, TaskPretrain)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LearningRate != 2e-4 || cfg.Model.HiddenSize != 64 || !cfg.FP16 || cfg.WeightDecay != 0.05 {
		t.Errorf("overrides: lr %v hidden %v fp16 %v wd %v", cfg.LearningRate, cfg.Model.HiddenSize, cfg.FP16, cfg.WeightDecay)
	}
	if d := cfg.TrainDatasets[0]; d.TxtDB[0] != "/txt/a.db" || d.ImgDB[0] != "/img/a" {
		t.Errorf("official db/img keys: %+v", d)
	}
	mc, err := cfg.ResolveModel()
	if err != nil || mc.HiddenSize != 64 || mc.VocabSize != 220 || mc.HiddenDropoutProb != cfg.Dropout {
		t.Errorf("resolved model %+v, %v", mc, err)
	}
	back := viper.New()
	SetDefaults(back, TaskPretrain)
	back.SetConfigType("yaml")
	if err := back.ReadConfig(strings.NewReader(string(cfg.YAML()))); err != nil {
		t.Fatal(err)
	}
	again, err := DecodeConfig(back, TaskPretrain)
	if err != nil {
		t.Fatalf("log/config.yaml does not load back: %v", err)
	}
	if string(again.YAML()) != string(cfg.YAML()) {
		t.Errorf("YAML round trip changed the config:\n%s\nvs\n%s", again.YAML(), cfg.YAML())
	}
}

func decodeTask(t *testing.T, path, task string) (*Config, error) {
	t.Helper()
	v := viper.New()
	SetDefaults(v, task)
	if err := ReadConfigFile(v, path); err != nil {
		t.Fatal(err)
	}
	return DecodeConfig(v, task)
}

// TestFinetuneConfigs loads the YAML copies of the official fine-tuning
// configs and, written back as JSON files with the official keys, the
// same as JSON: every key is read, none warned about, and the numbers are
// the official ones (UNITER_REFERENCE.md 6).
func TestFinetuneConfigs(t *testing.T) {
	cases := []struct {
		file, task                   string
		tokens, accum, steps, warmup int
		lr, lrMul                    float64
		variant                      string
		train                        int
	}{
		{"finetune-vqa-base-4gpu", "vqa", 5120, 5, 6000, 600, 8e-5, 10, "", 3},
		{"finetune-vqa-large-8gpu", "vqa", 3072, 4, 5000, 500, 5e-5, 10, "", 3},
		{"finetune-ve-base-2gpu", "ve", 4096, 4, 4000, 400, 8e-5, 1, "", 1},
		{"finetune-ve-large-4gpu", "ve", 4096, 2, 4000, 400, 3e-5, 1, "", 1},
		{"finetune-nlvr2-base-1gpu", "nlvr2", 10240, 1, 8000, 800, 3e-5, 1, "paired-attn", 1},
		{"finetune-nlvr2-large-2gpu", "nlvr2", 5120, 2, 5000, 500, 2e-5, 1, "paired-attn", 1},
	}
	for _, c := range cases {
		yamlPath := filepath.Join("..", "..", "configs", c.file+".yaml")
		v := viper.New()
		if err := ReadConfigFile(v, yamlPath); err != nil {
			t.Fatal(err)
		}
		js, err := json.Marshal(v.AllSettings())
		if err != nil {
			t.Fatal(err)
		}
		jsonPath := filepath.Join(t.TempDir(), strings.Replace(c.file, "finetune-", "train-", 1)+".json")
		if err := os.WriteFile(jsonPath, js, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{yamlPath, jsonPath} {
			cfg, err := decodeTask(t, path, c.task)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if len(cfg.Warnings) > 0 {
				t.Errorf("%s: warnings %v", path, cfg.Warnings)
			}
			if cfg.TrainBatchSize != c.tokens || cfg.GradientAccumulationSteps != c.accum || cfg.NumTrainSteps != c.steps ||
				cfg.WarmupSteps != c.warmup || cfg.LearningRate != c.lr || cfg.LRMul != c.lrMul || cfg.Variant != c.variant ||
				len(cfg.TrainTxtDBs) != c.train || len(cfg.TrainImgDBs) != c.train || cfg.GradNorm != 2 || cfg.ValTxtDB == "" {
				t.Errorf("%s: %+v", path, cfg)
			}
		}
	}
	// Another task's keys: loaded with one warning naming them.
	cfg, err := decodeTask(t, filepath.Join("..", "..", "configs", "finetune-nlvr2-base-1gpu.yaml"), "ve")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "model, use_img_type") {
		t.Errorf("nlvr2 config for ve: warnings %q, want one naming model and use_img_type", cfg.Warnings)
	}
}
