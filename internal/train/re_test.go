package train

import (
	"strings"
	"testing"
)

// TestREConfigs loads the YAML copies of the official RefCOCO, RefCOCO+
// and RefCOCOg configs for re and, written back as JSON files, the same as
// JSON: no warning, the official numbers, the head (mlp), validation every
// epoch (valid_steps 0 until the data is open) and the feat_numbb100
// reading of the RE dbs (conf_th -1, num_bb 100).
func TestREConfigs(t *testing.T) {
	cases := []struct {
		file          string
		steps, warmup int
		lr            float64
		mlp           int
	}{
		{"finetune-re-refcoco-base-1gpu", 24000, 1500, 1e-4, 1},
		{"finetune-re-refcoco+-base-1gpu", 10000, 1000, 6e-5, 2},
		{"finetune-re-refcocog-base-1gpu", 24000, 1500, 1e-4, 1},
	}
	for _, c := range cases {
		for _, path := range yamlAndJSON(t, c.file, strings.Replace(c.file, "finetune-re-", "train-", 1)) {
			cfg, err := decodeTask(t, path, "re")
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if len(cfg.Warnings) != 0 {
				t.Errorf("%s: warnings %q", path, cfg.Warnings)
			}
			if cfg.Task != "re" || cfg.ModelConfig != "base" || cfg.TrainBatchSize != 128 || cfg.ValBatchSize != 128 ||
				cfg.GradientAccumulationSteps != 1 || cfg.NumTrainSteps != c.steps || cfg.WarmupSteps != c.warmup ||
				cfg.LearningRate != c.lr || cfg.LRMul != 1 || cfg.MLP != c.mlp || cfg.Decay != "linear" || cfg.GradNorm != 2 ||
				cfg.ValidSteps != 0 || cfg.ConfTh != -1 || cfg.NumBB != 100 || cfg.Seed != 24 || !cfg.FP16 ||
				len(cfg.TrainTxtDBs) != 1 || !strings.Contains(cfg.TrainImgDBs[0], "re_coco_gt") || !strings.Contains(cfg.ValImgDB, "re_coco_det") {
				t.Errorf("%s: %+v", path, cfg)
			}
		}
	}
}
