package model

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
)

// Our checkpoint directory holds the weights under their official names
// and the model config, so it loads without --model-config.
const (
	WeightsFile = "model.safetensors"
	ConfigFile  = "model.json"
	metaConfig  = "uniter_model_config"
)

// LoadReport says what a checkpoint load did not match. No list is an
// error: the reference only logs them (task models keep random heads,
// pretraining heads are ignored by task models).
type LoadReport struct {
	// Unexpected are keys in the file the model has no parameter for that
	// are not pretraining-head keys: truly unknown.
	Unexpected []string
	// PretrainHeads are the file's pretraining-head keys (MLM, MRFR, MRC,
	// ITM: see NewPretrainHeads) the model has no parameter for: a
	// pretraining checkpoint loaded for embedding or fine-tuning.
	PretrainHeads []string
	Missing       []string // non-backbone parameters the file lacks (left as initialised)
	// MissingBackbone are backbone parameters the file lacks, left as
	// initialised; only LoadInitStateDict accepts them.
	MissingBackbone []string
}

// pretrainHeadPrefixes are the key prefixes of the pretraining heads that
// NewPretrainHeads registers, with the head's name.
var pretrainHeadPrefixes = []struct{ prefix, head string }{
	{"cls.predictions.", "MLM"},
	{"feat_regress.", "MRFR"},
	{"region_classifier.", "MRC"},
	{"itm_output.", "ITM"},
}

// pretrainHead returns the pretraining head a (canonical) key belongs to,
// or "".
func pretrainHead(key string) string {
	for _, p := range pretrainHeadPrefixes {
		if strings.HasPrefix(key, p.prefix) {
			return p.head
		}
	}
	return ""
}

// String is the one-line summary the CLI prints.
func (r LoadReport) String() string {
	var parts []string
	if n := len(r.PretrainHeads); n > 0 {
		var heads []string
		for _, p := range pretrainHeadPrefixes {
			for _, k := range r.PretrainHeads {
				if pretrainHead(CanonicalKey(k)) == p.head {
					heads = append(heads, p.head)
					break
				}
			}
		}
		parts = append(parts, fmt.Sprintf("the checkpoint's pretraining heads (%s: %d tensors) are not used", strings.Join(heads, ", "), n))
	}
	if n := len(r.Unexpected); n > 0 {
		parts = append(parts, fmt.Sprintf("%d unexpected keys ignored (%s)", n, firstNames(r.Unexpected)))
	}
	if n := len(r.Missing); n > 0 {
		parts = append(parts, fmt.Sprintf("%d head parameters not in the checkpoint, randomly initialised (%s)", n, firstNames(r.Missing)))
	}
	if n := len(r.MissingBackbone); n > 0 {
		parts = append(parts, fmt.Sprintf("%d backbone parameters not in the checkpoint, randomly initialised (%s)", n, firstNames(r.MissingBackbone)))
	}
	return strings.Join(parts, "; ")
}

func firstNames(names []string) string {
	if len(names) > 3 {
		return strings.Join(names[:3], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}

// CanonicalKey maps the spellings found in official and older checkpoints
// onto our parameter names: gamma/beta -> weight/bias, the legacy "bert."
// prefix and prefix-less backbone keys -> "uniter.".
func CanonicalKey(k string) string {
	if strings.HasSuffix(k, ".gamma") {
		k = strings.TrimSuffix(k, ".gamma") + ".weight"
	} else if strings.HasSuffix(k, ".beta") {
		k = strings.TrimSuffix(k, ".beta") + ".bias"
	}
	if rest, ok := strings.CutPrefix(k, "bert."); ok {
		k = "uniter." + rest
	}
	for _, p := range []string{"embeddings.", "img_embeddings.", "encoder.", "pooler."} {
		if strings.HasPrefix(k, p) {
			return "uniter." + k
		}
	}
	return k
}

// LoadStateDict copies a checkpoint's tensors into the model's parameters
// (backbone and any registered heads). A shape mismatch or a missing
// backbone parameter is an error naming source and key.
func (m *Model) LoadStateDict(sd *ckpt.StateDict, source string) (LoadReport, error) {
	return m.loadStateDict(sd, source, false)
}

// LoadInitStateDict is LoadStateDict for the checkpoint a pretraining run
// starts from, which may hold only part of the backbone (the official
// uniter-base-init.pt is BERT: no image embeddings). As in the reference,
// the missing parameters keep their initialisation and are reported.
func (m *Model) LoadInitStateDict(sd *ckpt.StateDict, source string) (LoadReport, error) {
	return m.loadStateDict(sd, source, true)
}

func (m *Model) loadStateDict(sd *ckpt.StateDict, source string, partial bool) (LoadReport, error) {
	var rep LoadReport
	loaded := map[*Param]string{}
	for _, key := range sd.Keys {
		t := sd.Tensors[key]
		name := CanonicalKey(key)
		p := m.Params.Get(name)
		if p == nil {
			if pretrainHead(name) != "" {
				rep.PretrainHeads = append(rep.PretrainHeads, key)
			} else {
				rep.Unexpected = append(rep.Unexpected, key)
			}
			continue
		}
		if t.Float == nil {
			return rep, fmt.Errorf("checkpoint %s: key %q: dtype %s, want a floating-point tensor", source, key, t.DType)
		}
		if !compute.SameShape(t.Shape, p.Shape) {
			return rep, fmt.Errorf("checkpoint %s: key %q: shape %v, model expects %v", source, key, t.Shape, p.Shape)
		}
		// A tied weight is stored twice; the canonical name wins.
		if prev, done := loaded[p]; done && prev == p.Name {
			continue
		}
		m.be.Copy(p.W, m.be.FromF32(t.Float, p.Shape...))
		loaded[p] = name
	}
	for _, p := range m.Params.List() {
		if _, ok := loaded[p]; ok {
			continue
		}
		switch {
		case !strings.HasPrefix(p.Name, "uniter."):
			rep.Missing = append(rep.Missing, p.Name)
		case partial:
			rep.MissingBackbone = append(rep.MissingBackbone, p.Name)
		default:
			return rep, fmt.Errorf("checkpoint %s: missing backbone parameter %q", source, p.Name)
		}
	}
	return rep, nil
}

// StateDict returns the model's weights under their canonical names, each
// tied weight once (our format; the loader restores the aliases).
func (m *Model) StateDict() *ckpt.StateDict {
	sd := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for _, p := range m.Params.List() {
		sd.Keys = append(sd.Keys, p.Name)
		sd.Tensors[p.Name] = &ckpt.Tensor{Shape: append([]int(nil), p.Shape...), DType: "float32", Float: m.be.ToF32(p.W)}
	}
	return sd
}

// Save writes a checkpoint directory (weights + config) atomically: it is
// built beside dir under a temporary name and renamed into place, so a crash
// never leaves a directory that looks complete but is not.
func (m *Model) Save(dir string) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	cfg := m.Cfg.JSON()
	if err := ckpt.WriteSafetensors(filepath.Join(tmp, WeightsFile), m.StateDict(), map[string]string{metaConfig: string(cfg)}); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ConfigFile), cfg, 0o644); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", dir, err)
	}
	// An existing checkpoint is moved aside, not deleted, until the new one
	// is in place.
	old := tmp + ".old"
	if err := os.Rename(dir, old); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("save checkpoint %s: replace old: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", dir, err)
	}
	return os.RemoveAll(old)
}

// ReadCheckpointConfig returns the model config a checkpoint carries
// without reading its weights: our directories hold it in model.json;
// official .pt files carry none (nil).
func ReadCheckpointConfig(path string) (*Config, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if !st.IsDir() {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(path, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %s: %w", path, ConfigFile, err)
	}
	return &c, nil
}

// ReadCheckpoint reads an official PyTorch checkpoint file or one of our
// checkpoint directories. The config is returned when the checkpoint
// carries one (our directories do; official .pt files do not).
func ReadCheckpoint(path string) (*ckpt.StateDict, *Config, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: %w", err)
	}
	if !st.IsDir() {
		sd, err := ckpt.ReadTorch(path)
		return sd, nil, err
	}
	sd, meta, err := ckpt.ReadSafetensors(filepath.Join(path, WeightsFile))
	if err != nil {
		return nil, nil, err
	}
	js, ok := meta[metaConfig]
	if !ok {
		return sd, nil, nil
	}
	c, err := ParseConfig([]byte(js))
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint %s: embedded model config: %w", path, err)
	}
	return sd, &c, nil
}
