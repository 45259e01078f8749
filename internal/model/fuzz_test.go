package model

import (
	"os"
	"testing"
)

// FuzzParseConfig: any bytes give a valid config or an error, never a
// panic, and an accepted config builds a model description that validates.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile(goldenDir + "tiny.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}`))
	f.Add([]byte(`{"hidden_size": -1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted an invalid config: %v", err)
		}
		if c.HeadDim()*c.NumAttentionHeads != c.HiddenSize {
			t.Fatalf("head dim %d x %d heads != hidden %d", c.HeadDim(), c.NumAttentionHeads, c.HiddenSize)
		}
	})
}
