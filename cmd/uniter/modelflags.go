package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/model"
)

// modelFlags are the model and checkpoint arguments shared by every command
// that loads a model.
type modelFlags struct {
	checkpoint  string
	modelConfig string
	imgDim      int
	device      string
	fp16        bool
	threads     int
}

func (f *modelFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.checkpoint, "checkpoint", "", "official UNITER .pt file or a uniter checkpoint directory")
	fs.StringVar(&f.modelConfig, "model-config", "", "official model JSON or preset (base, large, tiny); optional when the checkpoint carries its config")
	fs.IntVar(&f.imgDim, "img-dim", 0, "region feature size (default: the model config's img_dim, else 2048)")
	fs.StringVar(&f.device, "device", "", deviceHelp)
	fs.BoolVar(&f.fp16, "fp16", false, "mixed precision")
	fs.IntVar(&f.threads, "threads", 0, "CPU threads (0: all cores)")
}

// backend opens the device the flags ask for.
func (f *modelFlags) backend() (compute.Backend, error) {
	if f.fp16 {
		return nil, fmt.Errorf("--fp16: mixed precision needs the CUDA backend, which is not available in this build")
	}
	return openBackend(f.device, f.threads)
}

// load reads the checkpoint, resolves the config (--model-config wins over
// the checkpoint's own), builds the model (plus whatever heads addHeads
// registers) and loads the weights. The load report goes to stderr.
func (f *modelFlags) load(be compute.Backend, addHeads func(*model.Model)) (*model.Model, error) {
	m, sd, err := f.build(be)
	if err != nil {
		return nil, err
	}
	if addHeads != nil {
		addHeads(m)
	}
	rep, err := m.LoadStateDict(sd, f.checkpoint)
	if err != nil {
		return nil, err
	}
	if s := rep.String(); s != "" {
		fmt.Fprintf(os.Stderr, "uniter: checkpoint %s: %s\n", f.checkpoint, s)
	}
	return m, nil
}

// build reads the checkpoint and builds the backbone its config describes,
// leaving the weights to the caller (tasks apply their model surgery
// first).
func (f *modelFlags) build(be compute.Backend) (*model.Model, *ckpt.StateDict, error) {
	if f.checkpoint == "" {
		return nil, nil, fmt.Errorf("--checkpoint is required")
	}
	sd, cfg, err := model.ReadCheckpoint(f.checkpoint)
	if err != nil {
		return nil, nil, err
	}
	if f.modelConfig != "" {
		c, err := model.LoadConfig(f.modelConfig)
		if err != nil {
			return nil, nil, err
		}
		cfg = &c
	}
	if cfg == nil {
		return nil, nil, fmt.Errorf("checkpoint %s carries no model config: pass --model-config (e.g. config/uniter-base.json or base)", f.checkpoint)
	}
	if f.imgDim > 0 {
		cfg.ImgDim = f.imgDim
	}
	m, err := model.New(be, *cfg, 1)
	if err != nil {
		return nil, nil, err
	}
	return m, sd, nil
}
