// Package model is UNITER: text and image embeddings, the post-LN BERT
// encoder, the pooler and the pretraining heads, each with an explicit
// forward and backward written against compute.Backend. Parameters carry the
// official checkpoint names so official checkpoints load unchanged.
package model

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Defaults the official config files do not carry.
const (
	// DefaultImgDim is the Faster R-CNN region feature size.
	DefaultImgDim = 2048
	// DefaultImgLabelDim is 1600 Visual Genome classes plus background.
	DefaultImgLabelDim = 1601
	// LayerNormEps is the epsilon of every LayerNorm in UNITER.
	LayerNormEps = 1e-12
	// ImgPosDim is the size of the 7-d box feature.
	ImgPosDim = 7
)

// Config is the model configuration, with the official JSON keys
// (config/uniter-base.json) plus img_dim and img_label_dim, which the
// official code hard-codes.
type Config struct {
	VocabSize                 int     `json:"vocab_size"`
	HiddenSize                int     `json:"hidden_size"`
	NumHiddenLayers           int     `json:"num_hidden_layers"`
	NumAttentionHeads         int     `json:"num_attention_heads"`
	IntermediateSize          int     `json:"intermediate_size"`
	HiddenAct                 string  `json:"hidden_act"`
	HiddenDropoutProb         float64 `json:"hidden_dropout_prob"`
	AttentionProbsDropoutProb float64 `json:"attention_probs_dropout_prob"`
	MaxPositionEmbeddings     int     `json:"max_position_embeddings"`
	TypeVocabSize             int     `json:"type_vocab_size"`
	InitializerRange          float64 `json:"initializer_range"`
	ImgDim                    int     `json:"img_dim,omitempty"`
	ImgLabelDim               int     `json:"img_label_dim,omitempty"`
}

// PresetNames are the names Preset knows.
var PresetNames = []string{"base", "large", "tiny"}

// Preset returns a named configuration: "base" and "large" are the official
// UNITER models, "tiny" is a small model for tests and the CPU demo.
func Preset(name string) (Config, error) {
	c := Config{
		VocabSize: 28996, HiddenAct: "gelu", HiddenDropoutProb: 0.1,
		AttentionProbsDropoutProb: 0.1, MaxPositionEmbeddings: 512,
		TypeVocabSize: 2, InitializerRange: 0.02,
		ImgDim: DefaultImgDim, ImgLabelDim: DefaultImgLabelDim,
	}
	switch name {
	case "base":
		c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.IntermediateSize = 768, 12, 12, 3072
	case "large":
		c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.IntermediateSize = 1024, 24, 16, 4096
	case "tiny":
		c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.IntermediateSize = 128, 2, 4, 512
	default:
		return Config{}, fmt.Errorf("unknown model preset %q (want %s or a JSON file)", name, strings.Join(PresetNames, ", "))
	}
	return c, nil
}

// LoadConfig reads a preset name or an official model JSON file. Keys the
// official file leaves out get the UNITER defaults.
func LoadConfig(nameOrPath string) (Config, error) {
	if !strings.ContainsAny(nameOrPath, "/.") {
		return Preset(nameOrPath)
	}
	b, err := os.ReadFile(nameOrPath)
	if err != nil {
		return Config{}, fmt.Errorf("model config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("model config %s: %w", nameOrPath, err)
	}
	return c, nil
}

// ParseConfig decodes and validates a model JSON.
func ParseConfig(b []byte) (Config, error) {
	c := Config{HiddenAct: "gelu", TypeVocabSize: 2, InitializerRange: 0.02}
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, err
	}
	c.fillDefaults()
	return c, c.Validate()
}

func (c *Config) fillDefaults() {
	if c.ImgDim == 0 {
		c.ImgDim = DefaultImgDim
	}
	if c.ImgLabelDim == 0 {
		c.ImgLabelDim = DefaultImgLabelDim
	}
}

// Validate reports the first invalid value, naming its key.
func (c Config) Validate() error {
	pos := []struct {
		key string
		v   int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"intermediate_size", c.IntermediateSize}, {"max_position_embeddings", c.MaxPositionEmbeddings},
		{"type_vocab_size", c.TypeVocabSize}, {"img_dim", c.ImgDim}, {"img_label_dim", c.ImgLabelDim},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("%s = %d: must be positive", p.key, p.v)
		}
	}
	if c.HiddenSize%c.NumAttentionHeads != 0 {
		return fmt.Errorf("hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
	}
	if c.HiddenAct != "gelu" {
		return fmt.Errorf("hidden_act = %q: only \"gelu\" (exact erf GELU) is supported", c.HiddenAct)
	}
	for key, p := range map[string]float64{"hidden_dropout_prob": c.HiddenDropoutProb, "attention_probs_dropout_prob": c.AttentionProbsDropoutProb} {
		if p < 0 || p >= 1 {
			return fmt.Errorf("%s = %g: must be in [0, 1)", key, p)
		}
	}
	if c.TypeVocabSize < 2 {
		return fmt.Errorf("type_vocab_size = %d: UNITER needs at least 2 (text 0, image 1)", c.TypeVocabSize)
	}
	return nil
}

// HeadDim is the size of one attention head.
func (c Config) HeadDim() int { return c.HiddenSize / c.NumAttentionHeads }

// JSON returns the config as the official model JSON (with our two extra keys).
func (c Config) JSON() []byte {
	b, _ := json.MarshalIndent(c, "", "  ")
	return b
}
