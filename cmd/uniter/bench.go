package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"uniter/internal/compute"
	"uniter/internal/model"
)

func init() { subcommands = append(subcommands, newBenchCmd) }

type benchOpts struct {
	model, device, mode string
	fp16                bool
	batch, txtLen, nbb  int
	steps, warmup       int
	threads             int
	seed                uint64
}

// benchResult is the JSON line of CLI.md.
type benchResult struct {
	Model      string  `json:"model"`
	Device     string  `json:"device"`
	FP16       bool    `json:"fp16"`
	Batch      int     `json:"batch"`
	TxtLen     int     `json:"txt_len"`
	NBB        int     `json:"nbb"`
	Mode       string  `json:"mode"`
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
gflops counts the matmul and attention work of one step.`,
		Example: `  uniter bench --model base --device cpu --mode fwdbwd --batch 8 --txt-len 40 --nbb 50
  uniter bench --model tiny --mode train --batch 32 --txt-len 30 --nbb 36 --steps 20`,
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
	f.StringVar(&o.device, "device", "", "cpu or cuda (default: cuda when built in and present, else cpu)")
	f.StringVar(&o.mode, "mode", "fwdbwd", "fwd, fwdbwd or train")
	f.BoolVar(&o.fp16, "fp16", false, "mixed precision (fp16 matmul inputs)")
	f.IntVar(&o.batch, "batch", 8, "examples per batch")
	f.IntVar(&o.txtLen, "txt-len", 40, "text tokens per example, including [CLS] and [SEP]")
	f.IntVar(&o.nbb, "nbb", 50, "regions per example")
	f.IntVar(&o.steps, "steps", 5, "timed steps (the median is reported)")
	f.IntVar(&o.warmup, "warmup", 1, "untimed warm-up steps")
	f.IntVar(&o.threads, "threads", 0, "CPU threads (0: all cores)")
	f.Uint64Var(&o.seed, "seed", 1, "seed of weights and batch")
	return cmd
}

func runBench(o benchOpts) (*benchResult, error) {
	switch o.mode {
	case "fwd", "fwdbwd", "train":
	default:
		return nil, fmt.Errorf("--mode %q: want fwd, fwdbwd or train", o.mode)
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
	step, err := benchStep(m, in, o.mode)
	if err != nil {
		return nil, err
	}
	for i := 0; i < o.warmup; i++ {
		if err := step(); err != nil {
			return nil, err
		}
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
	flops := forwardFLOPs(cfg, o.batch, o.txtLen, o.nbb)
	if o.mode != "fwd" {
		flops *= 3
	}
	return &benchResult{
		Model: o.model, Device: be.Name(), FP16: o.fp16, Batch: o.batch, TxtLen: o.txtLen, NBB: o.nbb, Mode: o.mode,
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
