package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
)

// TestParamCounts checks the official key set sizes and the backbone size
// of reference section 2.
func TestParamCounts(t *testing.T) {
	for _, tc := range []struct {
		preset   string
		keys     int
		backbone int
	}{
		{"base", 230, 109_898_752},
		{"large", 422, 335_695_872},
	} {
		cfg, err := Preset(tc.preset)
		if err != nil {
			t.Fatal(err)
		}
		if tc.preset == "large" && testing.Short() {
			continue
		}
		m, err := New(compute.NewCPU(1), cfg, 1)
		if err != nil {
			t.Fatal(err)
		}
		NewPretrainHeads(m)
		if got := len(m.Params.Names()); got != tc.keys {
			t.Errorf("%s: %d state-dict keys, want %d", tc.preset, got, tc.keys)
		}
		if got := m.Params.Count("uniter."); got != tc.backbone {
			t.Errorf("%s: %d backbone parameters, want %d", tc.preset, got, tc.backbone)
		}
	}
}

func TestDecayGroups(t *testing.T) {
	for name, want := range map[string]bool{
		"uniter.encoder.layer.0.attention.self.query.weight":   true,
		"uniter.encoder.layer.0.attention.self.query.bias":     false,
		"uniter.embeddings.LayerNorm.weight":                   false,
		"uniter.img_embeddings.img_layer_norm.weight":          true,
		"uniter.img_embeddings.img_layer_norm.bias":            false,
		"cls.predictions.transform.LayerNorm.weight":           false,
		"uniter.img_embeddings.mask_embedding.weight":          true,
		"uniter.encoder.layer.3.output.LayerNorm.weight":       false,
		"uniter.encoder.layer.3.attention.output.dense.weight": true,
	} {
		if got := (&Param{Name: name}).Decay(); got != want {
			t.Errorf("Decay(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestCanonicalKey(t *testing.T) {
	for in, want := range map[string]string{
		"uniter.embeddings.LayerNorm.gamma":          "uniter.embeddings.LayerNorm.weight",
		"bert.encoder.layer.0.output.LayerNorm.beta": "uniter.encoder.layer.0.output.LayerNorm.bias",
		"embeddings.word_embeddings.weight":          "uniter.embeddings.word_embeddings.weight",
		"img_embeddings.img_linear.bias":             "uniter.img_embeddings.img_linear.bias",
		"cls.predictions.decoder.weight":             "cls.predictions.decoder.weight",
		"itm_output.weight":                          "itm_output.weight",
	} {
		if got := CanonicalKey(in); got != want {
			t.Errorf("CanonicalKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateRejectsBadInput(t *testing.T) {
	c := fdConfig()
	m, err := New(compute.NewCPU(1), c, 1)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mutate func(*Input)
		want   string
	}{
		"token id":     {func(in *Input) { in.InputIDs[4] = int32(c.VocabSize) }, "input_ids[0][4] = 40 out of range"},
		"negative id":  {func(in *Input) { in.InputIDs[7] = -1 }, "input_ids[1][1] = -1"},
		"feature size": {func(in *Input) { in.ImgFeat = in.ImgFeat[:len(in.ImgFeat)-1] }, "img_feat has"},
		"mask value":   {func(in *Input) { in.ImgMasks[0] = 2 }, "img_masks[0] = 2"},
		"region count": {func(in *Input) { in.NBB[1] = in.N + 1 }, "region count of example 1"},
		"text length":  {func(in *Input) { in.TxtLens[2] = 0 }, "text length of example 2"},
		"too long":     {func(in *Input) { in.T = 17; in.InputIDs = make([]int32, 3*17) }, "max_position_embeddings"},
		"gather index": {func(in *Input) { in.GatherIndex = make([]int32, in.B*in.SeqLen()); in.GatherIndex[3] = 99 }, "gather_index[0][3] = 99"},
		"no modality":  {func(in *Input) { in.InputIDs, in.ImgFeat = nil, nil }, "neither text nor image"},
		"type id":      {func(in *Input) { in.TxtTypeIDs = make([]int32, in.B*in.T); in.TxtTypeIDs[0] = 5 }, "txt_type_ids[0] = 5"},
	} {
		in := fdInputBatch(c)
		tc.mutate(in)
		err := m.Forward(in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", name, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for js, want := range map[string]string{
		`{"vocab_size": 10, "hidden_size": 10, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 4, "max_position_embeddings": 8}`:                           "not a multiple",
		`{"vocab_size": 0, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 4, "max_position_embeddings": 8}`:                             "vocab_size = 0",
		`{"vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 4, "max_position_embeddings": 8, "hidden_act": "relu"}`:       "hidden_act",
		`{"vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 4, "max_position_embeddings": 8, "hidden_dropout_prob": 1.5}`: "hidden_dropout_prob = 1.5",
		`{"vocab_size": "x"}`: "cannot unmarshal",
	} {
		_, err := ParseConfig([]byte(js))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want error containing %q", js, err, want)
		}
	}
	if _, err := ParseConfig([]byte(`{"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "type_vocab_size": 2, "initializer_range": 0.02}`)); err != nil {
		t.Errorf("official base config rejected: %v", err)
	}
}

// TestSaveLoadRoundTrip writes our checkpoint directory and reads it back
// into a fresh model, config included.
func TestSaveLoadRoundTrip(t *testing.T) {
	be := compute.NewCPU(1)
	c := fdConfig()
	m, _ := New(be, c, 1)
	NewPretrainHeads(m)
	dir := filepath.Join(t.TempDir(), "ckpt", "step_10")
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(dir); err != nil { // replacing an existing checkpoint
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Errorf("checkpoint parent holds %d entries, want only the checkpoint (no temp dirs)", len(entries))
	}
	sd, cfg, err := ReadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil || *cfg != c {
		t.Fatalf("embedded config = %+v, want %+v", cfg, c)
	}
	m2, _ := New(be, *cfg, 2)
	NewPretrainHeads(m2)
	rep, err := m2.LoadStateDict(sd, dir)
	if err != nil || len(rep.Missing)+len(rep.Unexpected) > 0 {
		t.Fatalf("load: %v %s", err, rep)
	}
	for _, p := range m.Params.List() {
		a, b := be.ToF32(p.W), be.ToF32(m2.Params.Get(p.Name).W)
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s[%d]: %g after round trip, want %g", p.Name, i, b[i], a[i])
			}
		}
	}
}

// TestLoadErrors: a shape mismatch and a missing backbone key are fatal and
// name the key; head keys missing and unknown keys are only reported.
func TestLoadErrors(t *testing.T) {
	be := compute.NewCPU(1)
	c := fdConfig()
	src, _ := New(be, c, 1)
	NewPretrainHeads(src)
	full := src.StateDict()

	backboneOnly := func() *Model { m, _ := New(be, c, 2); return m }
	rep, err := backboneOnly().LoadStateDict(full, "x.pt")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.PretrainHeads) == 0 || len(rep.Unexpected) != 0 || !strings.Contains(rep.String(), "pretraining heads") {
		t.Errorf("pretraining heads loaded into a backbone: report %q", rep)
	}

	withHeads, _ := New(be, c, 2)
	NewPretrainHeads(withHeads)
	backbone := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for _, k := range full.Keys {
		if strings.HasPrefix(k, "uniter.") {
			backbone.Keys = append(backbone.Keys, k)
			backbone.Tensors[k] = full.Tensors[k]
		}
	}
	rep, err = withHeads.LoadStateDict(backbone, "x.pt")
	if err != nil || len(rep.Missing) == 0 {
		t.Errorf("heads missing from the file: err %v, report %q", err, rep)
	}

	missing := &ckpt.StateDict{Keys: backbone.Keys[1:], Tensors: backbone.Tensors}
	if _, err := backboneOnly().LoadStateDict(missing, "x.pt"); err == nil || !strings.Contains(err.Error(), backbone.Keys[0]) {
		t.Errorf("missing backbone key: %v", err)
	}

	bad := &ckpt.StateDict{Keys: backbone.Keys, Tensors: map[string]*ckpt.Tensor{}}
	for k, v := range backbone.Tensors {
		bad.Tensors[k] = v
	}
	k := "uniter.pooler.dense.weight"
	bad.Tensors[k] = &ckpt.Tensor{Shape: []int{3, 3}, DType: "float32", Float: make([]float32, 9)}
	if _, err := backboneOnly().LoadStateDict(bad, "x.pt"); err == nil || !strings.Contains(err.Error(), k) || !strings.Contains(err.Error(), "x.pt") {
		t.Errorf("shape mismatch: %v", err)
	}
}

// TestLoadInitStateDict: an init checkpoint lacking part of the backbone
// (BERT without image embeddings) loads, leaves those weights as
// initialised and reports them; the strict load refuses the same file.
func TestLoadInitStateDict(t *testing.T) {
	be := compute.NewCPU(1)
	c := fdConfig()
	src, _ := New(be, c, 1)
	full := src.StateDict()
	bert := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for _, k := range full.Keys {
		if !strings.HasPrefix(k, "uniter.img_embeddings.") {
			bert.Keys = append(bert.Keys, k)
			bert.Tensors[k] = full.Tensors[k]
		}
	}
	if _, err := backbone(t, be, c).LoadStateDict(bert, "bert.pt"); err == nil {
		t.Fatal("strict load accepted a checkpoint without image embeddings")
	}
	m := backbone(t, be, c)
	before := be.ToF32(m.Params.Get("uniter.img_embeddings.img_linear.weight").W)
	rep, err := m.LoadInitStateDict(bert, "bert.pt")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.MissingBackbone) != len(full.Keys)-len(bert.Keys) ||
		!strings.Contains(rep.String(), "backbone parameters not in the checkpoint") {
		t.Errorf("report %q lists %d missing backbone parameters, want %d", rep, len(rep.MissingBackbone), len(full.Keys)-len(bert.Keys))
	}
	after := be.ToF32(m.Params.Get("uniter.img_embeddings.img_linear.weight").W)
	for i := range before {
		if before[i] != after[i] {
			t.Fatal("a parameter missing from the checkpoint changed")
		}
	}
	want := full.Tensors["uniter.pooler.dense.weight"].Float
	for i, v := range be.ToF32(m.Params.Get("uniter.pooler.dense.weight").W) {
		if v != want[i] {
			t.Fatalf("pooler weight [%d] = %g, want the checkpoint's %g", i, v, want[i])
		}
	}
}

func backbone(t *testing.T, be compute.Backend, c Config) *Model {
	t.Helper()
	m, err := New(be, c, 2)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
