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

// TestShippedConfigs loads every pretraining config of configs/ and checks
// the numbers of the official pretraining configs: token budget, gradient
// accumulation, steps, datasets and their mix ratios (see docs/configs.md).
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
		{"model key at the top", map[string]any{"hidden_size": "64"}, []string{"hidden_size", "did you mean model.hidden_size?"}},
		{"model typo", map[string]any{"model.hiden_size": "64"}, []string{"model: unknown key hiden_size, did you mean hidden_size?"}},
		{"model JSON as the config", map[string]any{"hidden_act": "gelu", "type_vocab_size": "2"},
			[]string{"unknown key hidden_act, type_vocab_size", "name that file with model_config"}},
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
// same as JSON: every key loads without a warning, and the numbers are the official
// ones: token budget, accumulation, steps, warmup, learning rate, lr_mul
// and clipping at 2.0 (see docs/configs.md).
func TestFinetuneConfigs(t *testing.T) {
	cases := []struct {
		file, task                   string
		tokens, accum, steps, warmup int
		lr, lrMul                    float64
		variant                      string
		train                        int
		ignored                      string
	}{
		{"finetune-vqa-base-4gpu", "vqa", 5120, 5, 6000, 600, 8e-5, 10, "", 3, ""},
		{"finetune-vqa-large-8gpu", "vqa", 3072, 4, 5000, 500, 5e-5, 10, "", 3, ""},
		{"finetune-ve-base-2gpu", "ve", 4096, 4, 4000, 400, 8e-5, 1, "", 1, ""},
		{"finetune-ve-large-4gpu", "ve", 4096, 2, 4000, 400, 3e-5, 1, "", 1, ""},
		{"finetune-nlvr2-base-1gpu", "nlvr2", 10240, 1, 8000, 800, 3e-5, 1, "paired-attn", 1, ""},
		{"finetune-nlvr2-large-2gpu", "nlvr2", 5120, 2, 5000, 500, 2e-5, 1, "paired-attn", 1, ""},
		// ITR batches count positives; hard negatives accumulate train_batch_size of them.
		{"finetune-itr-flickr-base-8gpu", "itr", 40, 4, 20000, 2000, 5e-5, 1, "", 1, ""},
		{"finetune-itr-flickr-base-16gpu-hn", "itr", 8, 8, 5000, 500, 5e-5, 1, "", 1, ""},
		{"finetune-itr-coco-base-16gpu-hn", "itr", 8, 8, 5000, 500, 5e-5, 1, "", 2, ""},
		{"finetune-vcr-base-4gpu", "vcr", 4000, 5, 8000, 800, 6e-5, 1, "", 1, ""},
		{"finetune-vcr-large-4gpu", "vcr", 4000, 5, 8000, 800, 6e-5, 1, "", 1, ""},
	}
	for _, c := range cases {
		for _, path := range yamlAndJSON(t, c.file, strings.Replace(c.file, "finetune-", "train-", 1)) {
			cfg, err := decodeTask(t, path, c.task)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if got := strings.Join(ignoredIn(t, path, cfg.Warnings), " "); got != c.ignored {
				t.Errorf("%s: ignored %q, want %q", path, got, c.ignored)
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
	if got := strings.Join(ignoredIn(t, "nlvr2 for ve", cfg.Warnings), " "); got != "model use_img_type" {
		t.Errorf("nlvr2 config for ve: ignored %q (warnings %q), want model and use_img_type", got, cfg.Warnings)
	}
}

// originalConfig is one of the reference's config/*.json files, rebuilt
// from its keys and values (paths changed to the test's model configs):
// the task it is loaded for and the keys that run does not read.
type originalConfig struct {
	name, task string
	keys       map[string]any
	ignored    []string
}

// originalConfigs rebuilds every training config of the reference: the
// pretraining ones (pretrain-*), the fine-tuning ones of the tasks uniter
// finetune trains (vqa, ve, nlvr2, vcr, itr), and some loaded for ve to
// show that their keys do not break another task's config; the refcoco
// ones load for re (and one for ve too).
func originalConfigs(base, large string) []originalConfig {
	with := func(m map[string]any, kv ...any) map[string]any {
		out := map[string]any{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(out, kv[i].(string))
				continue
			}
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	common := map[string]any{
		"model_config": base, "checkpoint": "/pretrain/uniter-base.pt", "output_dir": "/storage/x",
		"max_txt_len": 60, "conf_th": 0.2, "max_bb": 100, "min_bb": 10, "num_bb": 36,
		"learning_rate": 5e-05, "valid_steps": 500, "num_train_steps": 5000, "optim": "adamw",
		"betas": []any{0.9, 0.98}, "dropout": 0.1, "weight_decay": 0.01, "grad_norm": 2.0,
		"warmup_steps": 500, "seed": 42, "fp16": true, "n_workers": 4, "pin_mem": true,
	}
	set := func(name string, n int, val bool) map[string]any {
		d := map[string]any{"name": name, "db": []any{"/txt/" + name + ".db/"}, "img": []any{"/img/" + name + "/"}}
		tasks := []any{"itm", "mlm", "mrfr", "mrckl"}
		if n == 3 {
			tasks = tasks[1:]
		}
		d["tasks"] = tasks
		if !val {
			mix := []any{}
			for range tasks {
				mix = append(mix, 2)
			}
			d["mix_ratio"] = mix
		}
		return d
	}
	sets := func(n int, val bool, names ...string) []any {
		var out []any
		for _, name := range names {
			out = append(out, set(name, n, val))
		}
		return out
	}
	pretrain := with(common, "mrm_prob", 0.15, "itm_neg_prob", 0.5, "itm_ot_lambda", 0.1,
		"train_batch_size", 10240, "val_batch_size", 10240, "gradient_accumulation_steps", 6,
		"valid_steps", 5000, "num_train_steps", 200000, "grad_norm", 5.0, "warmup_steps", 10000,
		"checkpoint", "/pretrain/uniter-base-init.pt",
		"train_datasets", sets(4, false, "coco", "vg", "cc", "sbu"), "val_datasets", sets(4, true, "coco", "vg", "cc", "sbu"))
	vcrPretrain := with(pretrain, "itm_neg_prob", nil, "itm_ot_lambda", nil, "max_txt_len", 220,
		"val_batch_size", 8000, "gradient_accumulation_steps", 4, "learning_rate", 3e-05, "grad_norm", -1,
		"num_train_steps", 45000, "warmup_steps", 4500, "rank", 0,
		"train_datasets", sets(3, false, "vcr"), "val_datasets", sets(3, true, "vcr"))
	fine := with(common, "train_batch_size", 4096, "val_batch_size", 4096, "gradient_accumulation_steps", 4,
		"val_txt_db", "/txt/val.db", "val_img_db", "/img/val/", "test_txt_db", "/txt/test.db", "test_img_db", "/img/test/")
	vqa := with(fine, "train_txt_dbs", []any{"/txt/vqa_train.db", "/txt/vqa_trainval.db", "/txt/vqa_vg.db"},
		"train_img_dbs", []any{"/img/coco_train2014/", "/img/coco_val2014", "/img/vg/"}, "lr_mul", 10.0,
		"test_txt_db", nil, "test_img_db", nil)
	ve := with(fine, "train_txt_db", "/txt/ve_train.db/", "train_img_db", "/img/flickr30k/", "compressed_db", false, "pin_mem", false)
	nlvr2 := with(fine, "train_txt_db", "/txt/nlvr2_train.db", "train_img_db", "/img/nlvr2_train/",
		"model", "paired-attn", "use_img_type", true, "seed", 77)
	itm := with(fine, "compressed_db", false, "train_batch_size", 8, "negative_size", 399, "hard_neg_size", 31,
		"inf_minibatch_size", 400, "margin", 0.2, "full_val", true, "val_batch_size", nil, "gradient_accumulation_steps", nil,
		"train_txt_dbs", []any{"/txt/itm_coco_train.db", "/txt/itm_coco_restval.db"},
		"train_img_dbs", []any{"/img/coco_train2014/", "/img/coco_val2014"})
	itm8 := with(itm, "train_batch_size", 40, "negative_size", 1, "hard_neg_size", nil, "inf_minibatch_size", 40,
		"gradient_accumulation_steps", 4)
	re := with(fine, "train_txt_db", "/txt/refcoco_train.db", "train_img_db", "/img/re_coco_gt", "compressed_db", false,
		"conf_th", -1, "num_bb", 100, "max_bb", nil, "min_bb", nil, "train_batch_size", 128, "val_batch_size", 128,
		"lr_mul", 1.0, "decay", "linear", "gradient_accumulation_steps", 1, "valid_steps", nil,
		"test_txt_db", nil, "test_img_db", nil)
	rePlus := with(re, "mask_dir", "/pretrain/ckpt/mask_6.pt", "mlp", 2)
	vcr := with(fine, "train_txt_dbs", []any{"/txt/vcr_train.db/"}, "train_img_dbs", []any{"/img/vcr_gt_train/;/img/vcr_train/"},
		"checkpoint_from", "vcr_pretrain", "max_txt_len", 220, "val_batch_size", 10, "lr_mul", 1.0,
		"test_txt_db", nil, "test_img_db", nil)
	itmIgnored := []string{"compressed_db", "full_val", "hard_neg_size", "inf_minibatch_size", "margin", "negative_size", "pin_mem"}
	return []originalConfig{
		{"pretrain-alldata-base-8gpu", TaskPretrain, pretrain, []string{"pin_mem"}},
		{"pretrain-alldata-large-16gpu", TaskPretrain, with(pretrain, "model_config", large, "rank", 0), []string{"pin_mem", "rank"}},
		{"pretrain-indomain-base-8gpu", TaskPretrain, with(pretrain, "gradient_accumulation_steps", 2,
			"train_datasets", sets(4, false, "coco", "vg"), "val_datasets", sets(4, true, "coco", "vg")), []string{"pin_mem"}},
		{"pretrain-vcr-base-4gpu", TaskPretrain, vcrPretrain, []string{"pin_mem", "rank"}},
		{"pretrain-vcr-large-4gpu", TaskPretrain, with(vcrPretrain, "model_config", large), []string{"pin_mem", "rank"}},
		{"train-vqa-base-4gpu", "vqa", vqa, []string{"pin_mem"}},
		{"train-vqa-large-8gpu", "vqa", with(vqa, "model_config", large), []string{"pin_mem"}},
		{"train-ve-base-2gpu", "ve", ve, []string{"compressed_db", "pin_mem"}},
		{"train-ve-large-4gpu", "ve", with(ve, "model_config", large), []string{"compressed_db", "pin_mem"}},
		{"train-nlvr2-base-1gpu", "nlvr2", nlvr2, []string{"pin_mem"}},
		{"train-nlvr2-large-2gpu", "nlvr2", with(nlvr2, "model_config", large), []string{"pin_mem"}},
		{"train-itm-coco-base-16gpu-hn", "itr", itm, []string{"compressed_db", "pin_mem"}},
		{"train-itm-coco-large-16gpu-hn", "itr", with(itm, "model_config", large, "full_val", false), []string{"compressed_db", "pin_mem"}},
		{"train-itm-flickr-base-16gpu-hn", "itr", itm, []string{"compressed_db", "pin_mem"}},
		{"train-itm-flickr-base-8gpu", "itr", itm8, []string{"compressed_db", "pin_mem"}},
		{"train-itm-flickr-large-16gpu-hn", "itr", with(itm, "model_config", large), []string{"compressed_db", "pin_mem"}},
		{"train-itm-flickr-base-16gpu-hn as ve", "ve", itm, itmIgnored},
		{"train-itm-flickr-base-8gpu as ve", "ve", itm8, []string{"compressed_db", "full_val", "inf_minibatch_size", "margin", "negative_size", "pin_mem"}},
		{"train-refcoco-base-1gpu", "re", re, []string{"compressed_db", "pin_mem"}},
		{"train-refcoco+-base-1gpu", "re", rePlus, []string{"compressed_db", "mask_dir", "pin_mem"}},
		{"train-refcocog-base-1gpu", "re", re, []string{"compressed_db", "pin_mem"}},
		{"train-refcoco+-base-1gpu as ve", "ve", rePlus, []string{"compressed_db", "decay", "mask_dir", "mlp", "pin_mem"}},
		{"train-vcr-base-4gpu", "vcr", vcr, []string{"pin_mem"}},
		{"train-vcr-large-4gpu", "vcr", with(vcr, "model_config", large), []string{"pin_mem"}},
		{"train-vcr-base-4gpu as ve", "ve", vcr, []string{"checkpoint_from", "pin_mem"}},
	}
}

// ignoredIn parses the one ignored-keys warning line, "... ignored: k1
// (why), k2 (why)", into its keys; every key must come with a reason.
func ignoredIn(t *testing.T, name string, warnings []string) []string {
	t.Helper()
	if len(warnings) == 0 {
		return nil
	}
	if len(warnings) != 1 {
		t.Errorf("%s: %d warning lines, want one: %q", name, len(warnings), warnings)
	}
	_, list, ok := strings.Cut(warnings[0], "ignored: ")
	if !ok || strings.Contains(warnings[0], "\n") {
		t.Errorf("%s: warning %q is not one ignored-keys line", name, warnings[0])
		return nil
	}
	var keys []string
	for _, entry := range strings.Split(list, ", ") {
		key, why, ok := strings.Cut(entry, " (")
		if !ok || !strings.HasSuffix(why, ")") || len(why) < 3 {
			t.Errorf("%s: ignored key %q without a reason", name, entry)
		}
		keys = append(keys, key)
	}
	return keys
}

// TestOriginalConfigs: every config/*.json of the reference loads as it
// is (its model_config naming a model JSON with the reference's keys), for
// its own task and, as another task's config, for ve; the keys the run
// does not read are named once, each with why, in one warning line.
func TestOriginalConfigs(t *testing.T) {
	dir := t.TempDir()
	modelJSON := func(name string, hidden, inter, heads, layers int) string {
		b, _ := json.Marshal(map[string]any{
			"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
			"hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": inter,
			"max_position_embeddings": 512, "num_attention_heads": heads, "num_hidden_layers": layers,
			"type_vocab_size": 2, "vocab_size": 28996,
		})
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	base := modelJSON("uniter-base.json", 768, 3072, 12, 12)
	large := modelJSON("uniter-large.json", 1024, 4096, 16, 24)
	for _, c := range originalConfigs(base, large) {
		b, err := json.MarshalIndent(c.keys, "", "    ")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, c.name+".json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := decodeTask(t, path, c.task)
		if err != nil {
			t.Errorf("%s as %s: %v", c.name, c.task, err)
			continue
		}
		if cfg.Task != c.task {
			t.Errorf("%s: task %q, want %q", c.name, cfg.Task, c.task)
		}
		if got := ignoredIn(t, c.name, cfg.Warnings); strings.Join(got, " ") != strings.Join(c.ignored, " ") {
			t.Errorf("%s: ignored %v, want %v (warnings %q)", c.name, got, c.ignored, cfg.Warnings)
		}
		mc, err := cfg.ResolveModel()
		wantHidden := 768
		if c.keys["model_config"] == large {
			wantHidden = 1024
		}
		if err != nil || mc.HiddenSize != wantHidden || mc.VocabSize != 28996 {
			t.Errorf("%s: model %+v, %v", c.name, mc, err)
		}
	}
}

// yamlAndJSON returns the path of configs/file.yaml and of the same
// settings written as the JSON file jsonName+".json" with the official
// keys, so that a test loads both.
func yamlAndJSON(t *testing.T, file, jsonName string) []string {
	t.Helper()
	yamlPath := filepath.Join("..", "..", "configs", file+".yaml")
	v := viper.New()
	if err := ReadConfigFile(v, yamlPath); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(v.AllSettings())
	if err != nil {
		t.Fatal(err)
	}
	jsonPath := filepath.Join(t.TempDir(), jsonName+".json")
	if err := os.WriteFile(jsonPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{yamlPath, jsonPath}
}
