package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

func init() { subcommands = append(subcommands, newBenchCmd) }

type benchOpts struct {
	model, device, mode string
	task                string
	cpuProfile          string
	fp16                bool
	batch, txtLen, nbb  int
	steps, warmup       int
	threads             int
	seed                uint64
}

// benchResult is the JSON line bench prints (README, Command line).
type benchResult struct {
	Model      string  `json:"model"`
	Device     string  `json:"device"`
	FP16       bool    `json:"fp16"`
	Batch      int     `json:"batch"`
	TxtLen     int     `json:"txt_len"`
	NBB        int     `json:"nbb"`
	Mode       string  `json:"mode"`
	Task       string  `json:"task,omitempty"`
	MsPerStep  float64 `json:"ms_per_step"`
	TokensPerS float64 `json:"tokens_per_s"`
	GFLOPs     float64 `json:"gflops"`
	TFLOPsPerS float64 `json:"tflops_per_s"`
}

func newBenchCmd() *cobra.Command {
	o := benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Time the model on a synthetic batch and print one JSON line",
		Long: `bench builds a randomly initialised model, runs a few warm-up steps on a
synthetic batch (every example: txt-len tokens including [CLS]/[SEP] and nbb
regions) and prints the median step time as one JSON line. Modes: fwd
(evaluation forward), fwdbwd (training forward with dropout and the backward
of the backbone), train (fwdbwd plus an AdamW update of every parameter).
gflops counts the matmul and attention work of one step.

--task vqa puts the VQA head (vqa_output, the official 3129 answers) on the
pooled output and times a fine-tuning step instead: the forward, the head,
the BCE loss on random soft targets, and (fwdbwd, train) the backward of
head and backbone through tasks.VQA.Step; train adds the trainer's update
(finite check, global-norm clipping at 2.0, AdamW with lr_mul 10 on the
head).`,
		Example: `  uniter bench --model base --device cpu --mode fwdbwd --batch 8 --txt-len 40 --nbb 50
  uniter bench --model tiny --mode train --batch 32 --txt-len 30 --nbb 36 --steps 20
  uniter bench --model base --device cpu --task vqa --mode train --batch 8 --txt-len 40 --nbb 50 --threads 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := runBench(o)
			if err != nil {
				return err
			}
			b, _ := json.Marshal(res)
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "base", "model preset (base, large, tiny) or official model JSON")
	f.StringVar(&o.device, "device", "", deviceHelp)
	f.StringVar(&o.mode, "mode", "fwdbwd", "fwd, fwdbwd or train")
	f.StringVar(&o.task, "task", "", "head to time with the backbone: vqa (default: none, the backbone alone)")
	f.BoolVar(&o.fp16, "fp16", false, "mixed precision (fp16 matmul inputs)")
	f.IntVar(&o.batch, "batch", 8, "examples per batch")
	f.IntVar(&o.txtLen, "txt-len", 40, "text tokens per example, including [CLS] and [SEP]")
	f.IntVar(&o.nbb, "nbb", 50, "regions per example")
	f.IntVar(&o.steps, "steps", 5, "timed steps (the median is reported)")
	f.IntVar(&o.warmup, "warmup", 1, "untimed warm-up steps")
	f.IntVar(&o.threads, "threads", 0, "CPU threads (0: all cores)")
	f.Uint64Var(&o.seed, "seed", 1, "seed of weights and batch")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the timed steps to this file (go tool pprof)")
	return cmd
}

func runBench(o benchOpts) (*benchResult, error) {
	switch o.mode {
	case "fwd", "fwdbwd", "train":
	default:
		return nil, fmt.Errorf("--mode %q: want fwd, fwdbwd or train", o.mode)
	}
	switch o.task {
	case "", "vqa":
	default:
		return nil, fmt.Errorf("--task %q: want vqa or none", o.task)
	}
	if o.batch < 1 || o.txtLen < 2 || o.nbb < 1 || o.steps < 1 || o.warmup < 0 {
		return nil, fmt.Errorf("--batch %d --txt-len %d --nbb %d --steps %d --warmup %d: need batch >= 1, txt-len >= 2, nbb >= 1, steps >= 1, warmup >= 0",
			o.batch, o.txtLen, o.nbb, o.steps, o.warmup)
	}
	if o.fp16 {
		return nil, fmt.Errorf("--fp16: mixed precision needs the CUDA backend, which is not available in this build")
	}
	cfg, err := model.LoadConfig(o.model)
	if err != nil {
		return nil, err
	}
	be, err := openBackend(o.device, o.threads)
	if err != nil {
		return nil, err
	}
	m, err := model.New(be, cfg, o.seed)
	if err != nil {
		return nil, err
	}
	in := model.SyntheticInput(cfg, o.batch, o.txtLen, o.nbb, o.seed)
	var step func() error
	headFLOPs := 0.0
	if o.task == "vqa" {
		var classes int
		step, classes, err = vqaBenchStep(m, in, o)
		headFLOPs = 2 * float64(o.batch) * float64(2*cfg.HiddenSize) * float64(cfg.HiddenSize+classes)
	} else {
		step, err = benchStep(m, in, o.mode)
	}
	if err != nil {
		return nil, err
	}
	for i := 0; i < o.warmup; i++ {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if o.cpuProfile != "" {
		pf, err := os.Create(o.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	times := make([]float64, o.steps)
	for i := range times {
		t0 := time.Now()
		if err := step(); err != nil {
			return nil, err
		}
		be.Sum(m.Pooled()) // synchronise asynchronous backends
		times[i] = float64(time.Since(t0).Microseconds()) / 1e3
	}
	sort.Float64s(times)
	ms := times[len(times)/2]
	flops := forwardFLOPs(cfg, o.batch, o.txtLen, o.nbb) + headFLOPs
	if o.mode != "fwd" {
		flops *= 3
	}
	return &benchResult{
		Model: o.model, Device: be.Name(), FP16: o.fp16, Batch: o.batch, TxtLen: o.txtLen, NBB: o.nbb, Mode: o.mode, Task: o.task,
		MsPerStep:  ms,
		TokensPerS: float64(o.batch*(o.txtLen+o.nbb)) / (ms / 1e3),
		GFLOPs:     flops / 1e9,
		TFLOPsPerS: flops / (ms / 1e3) / 1e12,
	}, nil
}

// benchStep returns one step of the mode. The backward is driven by a fixed
// random gradient on the last layer, so it costs what a loss's would.
func benchStep(m *model.Model, in *model.Input, mode string) (func() error, error) {
	be := m.Backend()
	m.SetTrain(mode != "fwd")
	if mode == "fwd" {
		return func() error { return m.Forward(in) }, nil
	}
	if err := m.Forward(in); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(7, 7))
	dseq := make([]float32, m.GradSeq().Len())
	for i := range dseq {
		dseq[i] = float32(r.NormFloat64())
	}
	dt := be.FromF32(dseq, m.GradSeq().Shape...)
	moments := map[*model.Param][2]*compute.Tensor{}
	var seed uint64
	return func() error {
		seed++
		m.SetStepSeed(seed)
		if err := m.Forward(in); err != nil {
			return err
		}
		be.Copy(m.GradSeq(), dt)
		m.Backward(false)
		if mode == "train" {
			for _, p := range m.Params.List() {
				mv, ok := moments[p]
				if !ok {
					mv = [2]*compute.Tensor{be.Alloc(compute.F32, p.Shape...), be.Alloc(compute.F32, p.Shape...)}
					moments[p] = mv
				}
				be.AdamW(p.W, p.G, mv[0], mv[1], 1, 5e-5, 0.9, 0.98, 1e-6, 0.01, int(seed))
			}
			m.Params.ZeroGrad()
		}
		return nil
	}, nil
}

// vqaBenchStep returns one VQA fine-tuning step on the synthetic batch in:
// tasks.VQA.Step (forward, head, BCE on soft targets, backward unless fwd)
// and in train mode the trainer's update (train.Updater over AdamW with the
// official VQA settings). It also returns the number of answers.
func vqaBenchStep(m *model.Model, in *model.Input, o benchOpts) (func() error, int, error) {
	answers, _, err := tasks.LoadAnswers("", "")
	if err != nil {
		return nil, 0, err
	}
	v, err := tasks.NewVQA(m, "vqa", answers, false)
	if err != nil {
		return nil, 0, err
	}
	b, err := vqaBenchBatch(m.Cfg, in, len(answers), o.seed)
	if err != nil {
		return nil, 0, err
	}
	be, params := m.Backend(), m.Params.List()
	var upd *train.Updater
	if o.mode == "train" {
		// train-vqa-base.json: betas (0.9, 0.98), weight decay 0.01, lr_mul
		// 10, grad_norm 2.0, learning rate 8e-5.
		opt := train.NewAdamW(be, params, train.AdamWOptions{Beta1: 0.9, Beta2: 0.98, Eps: train.AdamEps, WeightDecay: 0.01, LRMul: 10})
		upd = train.NewUpdater(be, params, opt, 2.0, false, 1, 1)
	}
	backward := o.mode != "fwd"
	m.SetTrain(backward)
	var seed uint64
	return func() error {
		seed++
		m.SetStepSeed(seed)
		if backward {
			m.Params.ZeroGrad()
		}
		if _, err := v.Step("vqa", b, backward, 1); err != nil {
			return err
		}
		if upd != nil {
			_, err := upd.Apply("vqa", 8e-5)
			return err
		}
		return nil
	}, len(answers), nil
}

// vqaBenchBatch collates the synthetic input into a VQA batch whose
// examples each have three random answers with VQA soft scores.
func vqaBenchBatch(cfg model.Config, in *model.Input, classes int, seed uint64) (*data.Batch, error) {
	r := rand.New(rand.NewPCG(seed, 3129))
	scores := []float32{0.3, 0.6, 0.9, 1}
	t, n, d := in.T, in.N, cfg.ImgDim
	exs := make([]*data.Example, in.B)
	for i := range exs {
		tg := make([]float32, classes)
		for k := 0; k < 3; k++ {
			tg[r.IntN(classes)] = scores[r.IntN(len(scores))]
		}
		exs[i] = &data.Example{ID: strconv.Itoa(i), InputIDs: in.InputIDs[i*t : (i+1)*t], NBB: n,
			ImgFeat: in.ImgFeat[i*n*d : (i+1)*n*d], ImgPos: in.ImgPos[i*n*data.PosDim : (i+1)*n*data.PosDim],
			NoLabel: true, Targets: tg}
	}
	return data.Collate(exs, d)
}

// forwardFLOPs counts multiply-adds x2 of one forward over a batch of equal
// lengths: region projection, per-layer projections, FFN and attention, and
// the pooler.
func forwardFLOPs(c model.Config, b, t, n int) float64 {
	h, i := float64(c.HiddenSize), float64(c.IntermediateSize)
	s := float64(t + n)
	tokens := float64(b) * s
	f := 2 * float64(b*n) * (float64(c.ImgDim)*h + model.ImgPosDim*h)
	f += float64(c.NumHiddenLayers) * (2*tokens*(4*h*h+2*h*i) + 4*float64(b)*s*s*h)
	f += 2 * float64(b) * h * h
	return f
}
