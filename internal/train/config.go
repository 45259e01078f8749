package train

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// Config is a training run, pretraining or fine-tuning: the keys of the
// official configs (config/pretrain-*.json, config/train-*.json) plus the
// few this implementation adds (checkpointing, logging, loss-scaler and
// model-size knobs).
type Config struct {
	// Task is what the run trains: "pretrain" or a downstream task (vqa,
	// ve, nlvr2). The command sets it (uniter finetune --task).
	Task string `mapstructure:"task" yaml:"task"`
	// ModelConfig is a preset (base, large, tiny) or an official model JSON.
	ModelConfig string `mapstructure:"model_config" yaml:"model_config"`
	// Model overrides single keys of the model config (zero: keep).
	Model ModelOverrides `mapstructure:"model" yaml:"model"`
	// Checkpoint initialises the weights (official .pt or our checkpoint
	// directory); empty means random initialisation from Seed.
	Checkpoint string `mapstructure:"checkpoint" yaml:"checkpoint"`
	// CheckpointFrom is VCR's checkpoint_from (train_vcr.py): "pretrain"
	// (the default) takes a first-stage checkpoint and grows the token
	// type and word tables after loading it; "vcr_pretrain" takes one with
	// the tables grown (the second-stage pretraining's). A checkpoint of
	// the other kind is refused.
	CheckpointFrom string `mapstructure:"checkpoint_from" yaml:"checkpoint_from,omitempty"`

	// Pretraining data: datasets with their tasks and mix ratios.
	TrainDatasets []DatasetConfig `mapstructure:"train_datasets" yaml:"train_datasets,omitempty"`
	ValDatasets   []DatasetConfig `mapstructure:"val_datasets" yaml:"val_datasets,omitempty"`

	// Fine-tuning data, as the official train-*.json name it: VQA lists
	// train_txt_dbs/train_img_dbs (concatenated), the others one
	// train_txt_db/train_img_db; validation on val_*, and test_* (when
	// given) evaluated alongside.
	TrainTxtDBs []string `mapstructure:"train_txt_dbs" yaml:"train_txt_dbs,omitempty"`
	TrainImgDBs []string `mapstructure:"train_img_dbs" yaml:"train_img_dbs,omitempty"`
	TrainTxtDB  []string `mapstructure:"train_txt_db" yaml:"-"`
	TrainImgDB  []string `mapstructure:"train_img_db" yaml:"-"`
	ValTxtDB    string   `mapstructure:"val_txt_db" yaml:"val_txt_db,omitempty"`
	ValImgDB    string   `mapstructure:"val_img_db" yaml:"val_img_db,omitempty"`
	TestTxtDB   string   `mapstructure:"test_txt_db" yaml:"test_txt_db,omitempty"`
	TestImgDB   string   `mapstructure:"test_img_db" yaml:"test_img_db,omitempty"`
	// Ans2Label is the VQA answer vocabulary file (empty: the one beside
	// the checkpoint, else the official 3129 answers).
	Ans2Label string `mapstructure:"ans2label" yaml:"ans2label,omitempty"`
	// Variant is the NLVR2 model, the official configs' string "model":
	// paired-attn, paired or triplet.
	Variant string `mapstructure:"variant" yaml:"variant,omitempty"`
	// UseImgType gives NLVR2's right image the third token type.
	UseImgType bool `mapstructure:"use_img_type" yaml:"use_img_type"`
	// MLP is the referring-expression head, the official "mlp": 1
	// (re_output Linear(H,1)) or 2 (Linear, GELU, LayerNorm, Linear(H,1)).
	MLP int `mapstructure:"mlp" yaml:"mlp,omitempty"`
	// Decay is train_re.py's "decay" (linear, invsqrt or constant). The
	// original's get_lr_sched never reads it and always decays linearly
	// after warmup, and so does uniter; the value is only checked.
	Decay string `mapstructure:"decay" yaml:"decay,omitempty"`
	// Image-text retrieval (itr, train-itm-*.json). NegativeSize is the
	// negatives per positive (plain: that many images and texts; hard
	// negatives: the candidates of each side); HardNegSize > 0 selects the
	// hard-negative recipe (train_itm_hard_negatives.py) and is the
	// negatives trained on; InfMinibatchSize is the rows per scoring
	// forward and the candidates of the cheap validation; Margin is the
	// hinge margin; FullVal validates by the full ranking instead.
	NegativeSize     int     `mapstructure:"negative_size" yaml:"negative_size,omitempty"`
	HardNegSize      int     `mapstructure:"hard_neg_size" yaml:"hard_neg_size,omitempty"`
	InfMinibatchSize int     `mapstructure:"inf_minibatch_size" yaml:"inf_minibatch_size,omitempty"`
	Margin           float64 `mapstructure:"margin" yaml:"margin,omitempty"`
	FullVal          bool    `mapstructure:"full_val" yaml:"full_val,omitempty"`
	// Optim is the optimizer; the official configs all say adamw, the only
	// one here. (Keys of the official configs that no run reads, pin_mem,
	// compressed_db, rank and mask_dir, are in ignoredKeys.)
	Optim string `mapstructure:"optim" yaml:"optim"`

	// TrainBatchSize and ValBatchSize are token budgets (padded tokens per
	// micro-batch), as the official batch_size of the TokenBucketSampler;
	// for re they count sentences, as train_re.py batches by examples.
	TrainBatchSize            int `mapstructure:"train_batch_size" yaml:"train_batch_size"`
	ValBatchSize              int `mapstructure:"val_batch_size" yaml:"val_batch_size"`
	GradientAccumulationSteps int `mapstructure:"gradient_accumulation_steps" yaml:"gradient_accumulation_steps"`

	LearningRate float64 `mapstructure:"learning_rate" yaml:"learning_rate"`
	// LRMul multiplies the learning rate of head parameters (names outside
	// the uniter. backbone); the official VQA fine-tuning uses 10.
	LRMul         float64   `mapstructure:"lr_mul" yaml:"lr_mul"`
	NumTrainSteps int       `mapstructure:"num_train_steps" yaml:"num_train_steps"`
	WarmupSteps   int       `mapstructure:"warmup_steps" yaml:"warmup_steps"`
	WeightDecay   float64   `mapstructure:"weight_decay" yaml:"weight_decay"`
	GradNorm      float64   `mapstructure:"grad_norm" yaml:"grad_norm"`
	Betas         []float64 `mapstructure:"betas" yaml:"betas"`
	Dropout       float64   `mapstructure:"dropout" yaml:"dropout"`

	MaxTxtLen int     `mapstructure:"max_txt_len" yaml:"max_txt_len"`
	ConfTh    float64 `mapstructure:"conf_th" yaml:"conf_th"`
	MaxBB     int     `mapstructure:"max_bb" yaml:"max_bb"`
	MinBB     int     `mapstructure:"min_bb" yaml:"min_bb"`
	NumBB     int     `mapstructure:"num_bb" yaml:"num_bb"`

	MRMProb     float64 `mapstructure:"mrm_prob" yaml:"mrm_prob"`
	ITMNegProb  float64 `mapstructure:"itm_neg_prob" yaml:"itm_neg_prob"`
	ITMOTLambda float64 `mapstructure:"itm_ot_lambda" yaml:"itm_ot_lambda"`

	FP16 bool `mapstructure:"fp16" yaml:"fp16"`
	// LossScale is the initial dynamic loss scale (apex: 2^16) and
	// LossScaleWindow the clean steps after which it doubles (apex: 2000).
	LossScale       float64 `mapstructure:"loss_scale" yaml:"loss_scale"`
	LossScaleWindow int     `mapstructure:"loss_scale_window" yaml:"loss_scale_window"`

	Seed       uint64 `mapstructure:"seed" yaml:"seed"`
	ValidSteps int    `mapstructure:"valid_steps" yaml:"valid_steps"`
	SaveSteps  int    `mapstructure:"save_steps" yaml:"save_steps"`
	KeepCkpts  int    `mapstructure:"keep_ckpts" yaml:"keep_ckpts"`
	LogSteps   int    `mapstructure:"log_steps" yaml:"log_steps"`
	NWorkers   int    `mapstructure:"n_workers" yaml:"n_workers"`
	// OutputDir holds ckpt/ and log/ (the --output flag overrides it).
	OutputDir string `mapstructure:"output_dir" yaml:"output_dir"`

	// Warnings hold at most one line: the keys of the settings that this
	// run does not read (ignoredKeys, or keys of another task's official
	// config), each with why; the command prints it.
	Warnings []string `mapstructure:"-" yaml:"-"`
}

// ModelOverrides replace keys of the model config named by ModelConfig, so
// that a config file can shrink a preset (the demo) without a JSON file.
type ModelOverrides struct {
	VocabSize             int      `mapstructure:"vocab_size" yaml:"vocab_size,omitempty"`
	HiddenSize            int      `mapstructure:"hidden_size" yaml:"hidden_size,omitempty"`
	NumHiddenLayers       int      `mapstructure:"num_hidden_layers" yaml:"num_hidden_layers,omitempty"`
	NumAttentionHeads     int      `mapstructure:"num_attention_heads" yaml:"num_attention_heads,omitempty"`
	IntermediateSize      int      `mapstructure:"intermediate_size" yaml:"intermediate_size,omitempty"`
	MaxPositionEmbeddings int      `mapstructure:"max_position_embeddings" yaml:"max_position_embeddings,omitempty"`
	ImgDim                int      `mapstructure:"img_dim" yaml:"img_dim,omitempty"`
	InitializerRange      *float64 `mapstructure:"initializer_range" yaml:"initializer_range,omitempty"`
}

// DatasetConfig is one entry of train_datasets or val_datasets: txt_dbs with their
// img_dbs (pairwise) and the tasks run on them. The official spellings db
// and img are accepted for txt_db and img_db.
type DatasetConfig struct {
	Name     string   `mapstructure:"name" yaml:"name"`
	TxtDB    []string `mapstructure:"txt_db" yaml:"txt_db"`
	ImgDB    []string `mapstructure:"img_db" yaml:"img_db"`
	DB       []string `mapstructure:"db" yaml:"-"`
	Img      []string `mapstructure:"img" yaml:"-"`
	Tasks    []string `mapstructure:"tasks" yaml:"tasks"`
	MixRatio []int    `mapstructure:"mix_ratio" yaml:"mix_ratio,omitempty"`
}

// TaskPretrain is Config.Task of a pretraining run.
const TaskPretrain = "pretrain"

// DefaultConfig holds the official defaults of pretrain.py's arguments and
// of the shipped base configs.
func DefaultConfig() Config { return DefaultConfigFor(TaskPretrain) }

// DefaultConfigFor holds the defaults of task's official training script
// where they differ from pretraining's: fine-tuning clips at 2.0, and VQA
// multiplies the head's learning rate by 10.
func DefaultConfigFor(task string) Config {
	c := defaultPretrain()
	c.Task = task
	if task != TaskPretrain {
		c.GradNorm = 2.0
		c.UseImgType = true
		if task == "vqa" {
			c.LRMul = 10
		}
		if task == "re" {
			// train_re.py's defaults; it validates once per epoch
			// (valid_steps 0).
			c.MLP, c.Decay, c.ValidSteps = 1, "linear", 0
		}
		if task == "itr" {
			// train_itm.py's defaults; train_batch_size counts positives.
			c.NegativeSize, c.InfMinibatchSize, c.Margin = 1, 400, 0.2
			c.TrainBatchSize, c.GradientAccumulationSteps = 128, 16
		}
	}
	return c
}

func defaultPretrain() Config {
	return Config{
		Optim:          "adamw",
		ModelConfig:    "base",
		TrainBatchSize: 4096, ValBatchSize: 4096, GradientAccumulationSteps: 1,
		LearningRate: 5e-5, LRMul: 1, NumTrainSteps: 100000, WarmupSteps: 10000,
		WeightDecay: 0.01, GradNorm: 5.0, Betas: []float64{0.9, 0.98}, Dropout: 0.1,
		MaxTxtLen: data.DefaultMaxTxtLen, ConfTh: 0.2, MaxBB: 100, MinBB: 10, NumBB: 36,
		MRMProb: data.MaskProb, ITMNegProb: data.ITMNegProb, ITMOTLambda: 0.1,
		LossScale: 65536, LossScaleWindow: 2000,
		Seed: 42, ValidSteps: 1000, SaveSteps: 1000, KeepCkpts: 5, LogSteps: 10, NWorkers: 2,
	}
}

// AdamEps is the reference's Adam epsilon (not configurable there either).
const AdamEps = 1e-6

// SetDefaults registers every key's default for task in v so that UNITER_*
// environment variables and --set apply to keys the file does not mention.
func SetDefaults(v *viper.Viper, task string) {
	var m map[string]any
	d := DefaultConfigFor(task)
	_ = mapstructure.Decode(d, &m)
	for k, val := range m {
		if _, list := val.([]string); list || k == "model" || k == "train_datasets" || k == "val_datasets" || k == "task" {
			continue
		}
		// Another task's keys stay unset, so that only a file or --set
		// naming them draws the unused-key warning.
		if len(unusedKeys(task, map[string]any{k: val})) > 0 {
			continue
		}
		v.SetDefault(k, val)
	}
}

// taskKeys are the keys only one kind of run reads. The other kind accepts
// them with a warning, so an official config of another task still loads.
var (
	pretrainKeys = []string{"train_datasets", "val_datasets", "mrm_prob", "itm_neg_prob", "itm_ot_lambda"}
	finetuneKeys = []string{"train_txt_dbs", "train_img_dbs", "train_txt_db", "train_img_db", "val_txt_db",
		"val_img_db", "test_txt_db", "test_img_db", "ans2label", "variant", "use_img_type", "mlp", "decay",
		"negative_size", "hard_neg_size", "inf_minibatch_size", "margin", "full_val", "checkpoint_from"}
	// taskOnlyKeys are used by one downstream task alone.
	taskOnlyKeys = map[string][]string{"vqa": {"ans2label"}, "nlvr2": {"variant", "use_img_type"}, "re": {"mlp", "decay"},
		"itr": {"negative_size", "hard_neg_size", "inf_minibatch_size", "margin", "full_val"}, "vcr": {"checkpoint_from"}}
)

// ignoredKeys are the keys of the official config/*.json files that no run
// here reads, with why (no commas: the warning is a comma-separated list).
// They load with a warning instead of an error, so every official config
// loads as it is; they are no Config fields, so they have no defaults and
// log/config.yaml does not carry them.
var ignoredKeys = map[string]string{
	"pin_mem":       "host memory is not pinned",
	"compressed_db": "img_dbs are read in the layout they have",
	"rank":          "the launcher sets the rank",
	// Referring expressions (train-refcoco*.json).
	"mask_dir": "train_re.py never reads it",
}

// unusedKeys lists the keys of settings that task does not read, each as
// "key (why)", sorted.
func unusedKeys(task string, settings map[string]any) []string {
	var out []string
	foreign, why := finetuneKeys, "finetune only"
	if task != TaskPretrain {
		foreign, why = pretrainKeys, "pretrain only"
	}
	for k := range settings {
		if r, ok := ignoredKeys[k]; ok {
			out = append(out, k+" ("+r+")")
			continue
		}
		owner := ""
		for o, keys := range taskOnlyKeys {
			if o != task && slices.Contains(keys, k) {
				owner = o
			}
		}
		switch {
		case owner != "":
			out = append(out, k+" ("+owner+" only)")
		case slices.Contains(foreign, k):
			out = append(out, k+" ("+why+")")
		}
	}
	slices.Sort(out)
	return out
}

// DecodeConfig reads the merged settings of v (file, environment, --set)
// into a Config of task and validates it. Unknown keys are an error, so a
// typo does not silently fall back to a default; keys of another task's
// official config, and those no run reads (ignoredKeys), are dropped and
// named with why in one warning line (Config.Warnings).
func DecodeConfig(v *viper.Viper, task string) (*Config, error) {
	c := DefaultConfigFor(task)
	dc := &mapstructure.DecoderConfig{
		Result:           &c,
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			stringToList,
			stringToFloatPtr,
		),
	}
	dec, err := mapstructure.NewDecoder(dc)
	if err != nil {
		return nil, err
	}
	settings := v.AllSettings()
	// NLVR2's official configs name the variant "model", which pretraining
	// configs use for model-config overrides (a map).
	foreignModel := false
	if variant, ok := settings["model"].(string); ok {
		delete(settings, "model")
		if foreignModel = task != "nlvr2"; !foreignModel {
			settings["variant"] = variant
		}
	}
	unused := unusedKeys(task, settings)
	if foreignModel {
		unused = append(unused, "model (the nlvr2 variant)")
		slices.Sort(unused)
	}
	for _, u := range unused {
		k, _, _ := strings.Cut(u, " (")
		delete(settings, k)
	}
	if len(unused) > 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("config: keys not used by %s, ignored: %s", taskLabel(task), strings.Join(unused, ", ")))
	}
	settings["task"] = task
	// The file's lists replace the defaults instead of merging into them.
	c.Betas = nil
	if err := dec.Decode(settings); err != nil {
		return nil, decodeError(err)
	}
	c.TrainTxtDBs = append(c.TrainTxtDBs, c.TrainTxtDB...)
	c.TrainImgDBs = append(c.TrainImgDBs, c.TrainImgDB...)
	c.TrainTxtDB, c.TrainImgDB = nil, nil
	if c.Betas == nil {
		c.Betas = DefaultConfig().Betas
	}
	for _, list := range []*[]DatasetConfig{&c.TrainDatasets, &c.ValDatasets} {
		for i := range *list {
			d := &(*list)[i]
			d.TxtDB = append(d.TxtDB, d.DB...)
			d.ImgDB = append(d.ImgDB, d.Img...)
			d.DB, d.Img = nil, nil
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// taskLabel names a run kind in messages.
func taskLabel(task string) string {
	if task == TaskPretrain {
		return "pretrain"
	}
	return "finetune --task " + task
}

// decodeError turns mapstructure's multi-line report into one sentence
// naming the key and value of the first problem.
func decodeError(err error) error {
	var de *mapstructure.DecodeError
	if !errors.As(err, &de) {
		return fmt.Errorf("config: %w", err)
	}
	// Nested fields wrap their own DecodeError; the innermost names the key.
	for {
		var inner *mapstructure.DecodeError
		if !errors.As(de.Unwrap(), &inner) {
			break
		}
		de = inner
	}
	var pe *mapstructure.ParseError
	if errors.As(de, &pe) {
		return fmt.Errorf("config: %s = %v: want %s", de.Name(), pe.Value, typeName(pe.Expected.Type()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(de, &ue) {
		return fmt.Errorf("config: %s = %v: want %s", de.Name(), ue.Value, typeName(ue.Expected.Type()))
	}
	msg := de.Unwrap().Error()
	if keys, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
		switch {
		case de.Name() == "model":
			first, _, _ := strings.Cut(keys, ",")
			if best := NearestKey("model."+first, Keys()); strings.HasPrefix(best, "model.") {
				return fmt.Errorf("config: model: unknown key %s, did you mean %s?", keys, strings.TrimPrefix(best, "model."))
			}
		case de.Name() == "" && allModelJSONKeys(keys):
			return fmt.Errorf("config: unknown key %s: keys of a model config JSON (like uniter-base.json); name that file with model_config", keys)
		case de.Name() == "":
			return fmt.Errorf("config: unknown key %s%s", keys, suggestKey(keys))
		}
		return fmt.Errorf("config: %s: unknown key %s", de.Name(), keys)
	}
	return fmt.Errorf("config: %s: %s", de.Name(), strings.ReplaceAll(msg, "\n", "; "))
}

// Keys are every key a config may hold, for one task or another: the
// Config fields, model.<key> for each model override and the ignoredKeys
// of the official configs; sorted. --set and UNITER_* variables are
// checked against them.
func Keys() []string {
	var keys []string
	tags := func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			if name, _, _ := strings.Cut(t.Field(i).Tag.Get("mapstructure"), ","); name != "-" && name != "" {
				keys = append(keys, prefix+name)
			}
		}
	}
	tags(reflect.TypeFor[Config](), "")
	tags(reflect.TypeFor[ModelOverrides](), "model.")
	for k := range ignoredKeys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// CheckKey reports a key that no config holds (Keys; case does not matter,
// as for viper) as "unknown key k, did you mean x?".
func CheckKey(key string) error {
	key = strings.ToLower(key)
	if slices.Contains(Keys(), key) {
		return nil
	}
	return fmt.Errorf("unknown key %s%s", key, suggestKey(key))
}

// NearestKey is the candidate nearest to a misspelt key (edit distance at
// most 2), or "" when none is that near.
func NearestKey(key string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(key, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// suggestKey proposes the config key nearest to a misspelt one, as ",
// did you mean learning_rate?"; a key of the model JSON at the top level
// of a run config is pointed to model.<key> or to the model_config file.
func suggestKey(key string) string {
	key, _, _ = strings.Cut(key, ",")
	keys := Keys()
	if slices.Contains(keys, "model."+key) {
		return ", did you mean model." + key + "?"
	}
	if slices.Contains(modelJSONKeys(), key) {
		return " (a key of the model JSON that model_config names)"
	}
	if best := NearestKey(key, keys); best != "" {
		return ", did you mean " + best + "?"
	}
	return ""
}

// modelJSONKeys are the keys of a model config JSON (uniter-base.json).
func modelJSONKeys() []string {
	var keys []string
	t := reflect.TypeFor[model.Config]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "-" && name != "" {
			keys = append(keys, name)
		}
	}
	return keys
}

// allModelJSONKeys reports whether a comma-separated list of several
// unknown keys holds only keys of a model config JSON: the file is a model
// config, not a run config.
func allModelJSONKeys(list string) bool {
	keys := strings.Split(list, ", ")
	if len(keys) < 2 {
		return false
	}
	for _, k := range keys {
		if !slices.Contains(modelJSONKeys(), k) {
			return false
		}
	}
	return true
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// typeName says what a config field holds in words.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Uint64:
		return "a non-negative integer"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	}
	return t.String()
}

// stringToList lets --set betas=0.9,0.98 (or [0.9,0.98]) fill a list; the
// elements are then converted like any other value.
func stringToList(from, to reflect.Type, v any) (any, error) {
	str, ok := v.(string)
	if !ok || from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return v, nil
	}
	str = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(str), "["), "]")
	if str == "" {
		return []any{}, nil
	}
	var out []any
	for _, e := range strings.Split(str, ",") {
		out = append(out, strings.TrimSpace(e))
	}
	return out, nil
}

// stringToFloatPtr lets --set model.initializer_range=0.05 reach a *float64.
func stringToFloatPtr(from, to reflect.Type, v any) (any, error) {
	if to != reflect.TypeOf((*float64)(nil)) {
		return v, nil
	}
	var f float64
	switch x := v.(type) {
	case string:
		if _, err := fmt.Sscan(x, &f); err != nil {
			return nil, fmt.Errorf("%q is not a number", x)
		}
	case float64:
		f = x
	case int:
		f = float64(x)
	default:
		return v, nil
	}
	return &f, nil
}

// Validate reports the first invalid value as "key = value: reason".
func (c *Config) Validate() error {
	bad := func(key string, v any, why string) error {
		return fmt.Errorf("config: %s = %v: %s", key, v, why)
	}
	positive := []struct {
		key string
		v   int
	}{
		{"train_batch_size", c.TrainBatchSize}, {"val_batch_size", c.ValBatchSize},
		{"gradient_accumulation_steps", c.GradientAccumulationSteps}, {"num_train_steps", c.NumTrainSteps},
		{"valid_steps", checkedValidSteps(c)}, {"save_steps", c.SaveSteps}, {"keep_ckpts", c.KeepCkpts},
		{"log_steps", c.LogSteps}, {"n_workers", c.NWorkers}, {"loss_scale_window", c.LossScaleWindow},
		{"max_bb", c.MaxBB}, {"min_bb", c.MinBB}, {"num_bb", c.NumBB},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return bad(p.key, p.v, "must be positive")
		}
	}
	switch {
	case c.ModelConfig == "":
		return bad("model_config", `""`, "name a preset (base, large, tiny) or a model JSON")
	case !(c.LearningRate > 0) || math.IsInf(c.LearningRate, 0):
		return bad("learning_rate", c.LearningRate, "must be positive")
	case !(c.LRMul > 0):
		return bad("lr_mul", c.LRMul, "must be positive")
	case c.WarmupSteps < 0 || c.WarmupSteps >= c.NumTrainSteps:
		return bad("warmup_steps", c.WarmupSteps, fmt.Sprintf("must be in [0, num_train_steps %d)", c.NumTrainSteps))
	case !(c.WeightDecay >= 0):
		return bad("weight_decay", c.WeightDecay, "must be >= 0")
	case c.GradNorm != -1 && !(c.GradNorm > 0):
		return bad("grad_norm", c.GradNorm, "must be positive or -1 (no clipping)")
	case len(c.Betas) != 2 || !(c.Betas[0] >= 0 && c.Betas[0] < 1) || !(c.Betas[1] >= 0 && c.Betas[1] < 1):
		return bad("betas", c.Betas, "want two values in [0, 1)")
	case !(c.Dropout >= 0 && c.Dropout < 1):
		return bad("dropout", c.Dropout, "must be in [0, 1)")
	case c.MaxTxtLen == 0 || c.MaxTxtLen < -1:
		return bad("max_txt_len", c.MaxTxtLen, "must be positive or -1 (no limit)")
	case c.ConfTh != -1 && !(c.ConfTh >= 0 && c.ConfTh < 1):
		return bad("conf_th", c.ConfTh, "must be in [0, 1) or -1 (fixed num_bb)")
	case c.MinBB > c.MaxBB:
		return bad("min_bb", c.MinBB, fmt.Sprintf("exceeds max_bb %d", c.MaxBB))
	case !(c.LossScale >= 1) || math.IsInf(c.LossScale, 0):
		return bad("loss_scale", c.LossScale, "must be >= 1")
	case c.Optim != "adamw":
		return bad("optim", c.Optim, "only adamw is implemented (every official config uses it)")
	}
	if c.Task != TaskPretrain {
		return c.validateFinetune()
	}
	switch {
	case !(c.MRMProb > 0 && c.MRMProb < 1):
		return bad("mrm_prob", c.MRMProb, "must be in (0, 1)")
	case !(c.ITMNegProb >= 0 && c.ITMNegProb < 1):
		return bad("itm_neg_prob", c.ITMNegProb, "must be in [0, 1)")
	case !(c.ITMOTLambda >= 0):
		return bad("itm_ot_lambda", c.ITMOTLambda, "must be >= 0")
	case len(c.TrainDatasets) == 0:
		return bad("train_datasets", "[]", "need at least one dataset")
	}
	if err := validateDatasets("train_datasets", c.TrainDatasets, true); err != nil {
		return err
	}
	return validateDatasets("val_datasets", c.ValDatasets, false)
}

// FinetuneTasks are the downstream tasks uniter finetune trains.
var FinetuneTasks = tasks.DownstreamTasks

// validateFinetune checks the keys of a fine-tuning run.
func (c *Config) validateFinetune() error {
	bad := func(key string, v any, why string) error {
		return fmt.Errorf("config: %s = %v: %s", key, v, why)
	}
	switch {
	case !slices.Contains(FinetuneTasks, c.Task):
		return bad("task", c.Task, "want one of "+strings.Join(FinetuneTasks, ", "))
	case len(c.TrainTxtDBs) == 0:
		return bad("train_txt_db", "[]", "name the training txt_db (train_txt_dbs for several)")
	case len(c.TrainTxtDBs) != len(c.TrainImgDBs):
		return bad("train_img_db", c.TrainImgDBs, fmt.Sprintf("want one img_db per txt_db (%d)", len(c.TrainTxtDBs)))
	case (c.ValTxtDB == "") != (c.ValImgDB == ""):
		return bad("val_img_db", c.ValImgDB, "val_txt_db and val_img_db go together")
	case (c.TestTxtDB == "") != (c.TestImgDB == ""):
		return bad("test_img_db", c.TestImgDB, "test_txt_db and test_img_db go together")
	}
	if c.Task == "nlvr2" && c.Variant == "" {
		c.Variant = "paired-attn"
	}
	if c.Task == "vcr" {
		if c.CheckpointFrom == "" {
			c.CheckpointFrom = "pretrain"
		}
		if c.CheckpointFrom != "pretrain" && c.CheckpointFrom != "vcr_pretrain" {
			return bad("checkpoint_from", c.CheckpointFrom, "want pretrain or vcr_pretrain (train_vcr.py's choices)")
		}
	}
	if c.Task == "itr" {
		if err := c.validateITR(); err != nil {
			return err
		}
	}
	if c.Task == "re" && c.MLP != 1 && c.MLP != 2 {
		return bad("mlp", c.MLP, "want 1 or 2 (the re_output layers)")
	}
	if c.Task == "re" && !slices.Contains([]string{"linear", "invsqrt", "constant"}, c.Decay) {
		return bad("decay", c.Decay, "want linear, invsqrt or constant (train_re.py's choices; each decays linearly, as there)")
	}
	if c.Task == "nlvr2" && !slices.Contains([]string{"paired-attn", "paired", "triplet"}, c.Variant) {
		return bad("model", c.Variant, "want paired-attn, paired or triplet")
	}
	return nil
}

// TaskNames are the pretraining tasks a dataset may list.
var TaskNames = []string{data.TaskMLM, data.TaskMRFR, data.TaskMRC, data.TaskMRCKL, data.TaskITM}

func validateDatasets(key string, ds []DatasetConfig, train bool) error {
	seen := map[string]bool{}
	for i, d := range ds {
		at := fmt.Sprintf("%s[%d]", key, i)
		switch {
		case d.Name == "" || strings.Contains(d.Name, "_"):
			return fmt.Errorf("config: %s.name = %q: need a name without '_' (task keys are {task}_{name})", at, d.Name)
		case seen[d.Name]:
			return fmt.Errorf("config: %s.name = %q: used twice", at, d.Name)
		case len(d.TxtDB) == 0:
			return fmt.Errorf("config: %s.txt_db: empty", at)
		case len(d.TxtDB) != len(d.ImgDB):
			return fmt.Errorf("config: %s: %d txt_db and %d img_db entries, want pairs", at, len(d.TxtDB), len(d.ImgDB))
		case len(d.Tasks) == 0:
			return fmt.Errorf("config: %s.tasks: empty", at)
		case train && len(d.MixRatio) != len(d.Tasks):
			return fmt.Errorf("config: %s.mix_ratio = %v: want one ratio per task %v", at, d.MixRatio, d.Tasks)
		}
		seen[d.Name] = true
		for j, t := range d.Tasks {
			if !slices.Contains(TaskNames, t) {
				return fmt.Errorf("config: %s.tasks[%d] = %q: want one of %s", at, j, t, strings.Join(TaskNames, ", "))
			}
			if train && d.MixRatio[j] <= 0 {
				return fmt.Errorf("config: %s.mix_ratio[%d] = %d: must be positive", at, j, d.MixRatio[j])
			}
		}
	}
	return nil
}

// ImgDBOptions are the img_db layout options of the config.
func (c *Config) ImgDBOptions() db.ImgDBOptions {
	o := db.DefaultImgDBOptions()
	o.ConfTh, o.MaxBB, o.MinBB, o.NumBB = c.ConfTh, c.MaxBB, c.MinBB, c.NumBB
	return o
}

// ResolveModel returns the model config: ModelConfig (or the config embedded
// in Checkpoint when ModelConfig is "checkpoint"), then the overrides, then
// the dropout of the run.
func (c *Config) ResolveModel() (model.Config, error) {
	var mc model.Config
	if c.ModelConfig == "checkpoint" {
		embedded, err := model.ReadCheckpointConfig(c.Checkpoint)
		if err != nil {
			return mc, err
		}
		if embedded == nil {
			return mc, fmt.Errorf("config: model_config = checkpoint: checkpoint %q carries no model config", c.Checkpoint)
		}
		mc = *embedded
	} else {
		var err error
		if mc, err = model.LoadConfig(c.ModelConfig); err != nil {
			return mc, fmt.Errorf("config: model_config = %q: %w", c.ModelConfig, err)
		}
	}
	o := c.Model
	for _, f := range []struct {
		dst *int
		v   int
	}{
		{&mc.VocabSize, o.VocabSize}, {&mc.HiddenSize, o.HiddenSize}, {&mc.NumHiddenLayers, o.NumHiddenLayers},
		{&mc.NumAttentionHeads, o.NumAttentionHeads}, {&mc.IntermediateSize, o.IntermediateSize},
		{&mc.MaxPositionEmbeddings, o.MaxPositionEmbeddings}, {&mc.ImgDim, o.ImgDim},
	} {
		if f.v != 0 {
			*f.dst = f.v
		}
	}
	if o.InitializerRange != nil {
		mc.InitializerRange = *o.InitializerRange
	}
	// set_dropout of the reference: one probability for every dropout.
	mc.HiddenDropoutProb, mc.AttentionProbsDropoutProb = c.Dropout, c.Dropout
	if err := mc.Validate(); err != nil {
		return mc, fmt.Errorf("config: model: %w", err)
	}
	return mc, nil
}

// YAML is the fully resolved config as written to log/config.yaml.
func (c *Config) YAML() []byte {
	b, err := yaml.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("train: config does not marshal: %v", err))
	}
	return b
}

// ReadConfigFile loads a YAML (or JSON) config file into v.
func ReadConfigFile(v *viper.Viper, path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}
