package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"uniter/internal/train"
)

func init() { subcommands = append(subcommands, newPretrainCmd) }

// trainOpts are the flags of pretrain and finetune.
type trainOpts struct {
	task           string
	config, output string
	resume         bool
	steps          int
	seed           int64
	sets           []string
	device         string
	fp16           bool
	threads        int
	quiet          bool
	overwrite      bool
	world          worldFlags
}

func newPretrainCmd() *cobra.Command {
	o := trainOpts{task: train.TaskPretrain}
	cmd := &cobra.Command{
		Use:   "pretrain --config FILE",
		Short: "Pretrain UNITER (MLM, MRFR, MRC, MRC-kl, ITM+WRA) from a YAML config",
		Long: `pretrain runs UNITER pretraining as the official pretrain.py does: per
optimizer update one task key ({task}_{dataset}) is drawn from the mix-ratio
pool, gradient_accumulation_steps token-bucket micro-batches of it are
accumulated, then the update is unscaled (fp16: one dynamic loss scaler per
task key), clipped to grad_norm and applied by AdamW with the warmup-linear
schedule. Every valid_steps the validation datasets are evaluated (the same
code as "uniter eval --task pretrain"), every save_steps a checkpoint is
written (the newest keep_ckpts are kept).

The config is YAML (the official JSON configs also load) with the keys of
the official pretraining configs; see configs/pretrain-*.yaml. Any key can be
overridden with --set key=value or a UNITER_KEY environment variable
(UNITER_LEARNING_RATE=1e-4). --output holds ckpt/ and log/ (metrics.jsonl,
config.yaml with the resolved config, model.json, loss/lr/loss-scale PNGs).
--steps N stops after optimizer step N while the LR schedule keeps following
num_train_steps, so a run stopped at N and resumed with --resume produces
exactly the losses of an uninterrupted run.`,
		Example: `  uniter data synth --out runs/demo/data
  uniter pretrain --config configs/demo.yaml --output runs/demo/out --steps 1000
  uniter pretrain --config configs/demo.yaml --output runs/demo/out --resume --steps 2000
  uniter pretrain --config configs/demo.yaml --output runs/demo/dp --replicas 2 --threads 2
  uniter pretrain --config configs/pretrain-indomain-base-8gpu.yaml --output /storage/indomain \
      --set train_batch_size=4096 --set n_workers=8 --fp16`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTraining(cmd, o)
		},
	}
	registerTrainFlags(cmd, &o, "YAML (or official JSON) pretraining config")
	return cmd
}

// registerTrainFlags adds the flags pretrain and finetune share.
func registerTrainFlags(cmd *cobra.Command, o *trainOpts, configHelp string) {
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", configHelp)
	f.StringVar(&o.output, "output", "", "output directory (default: the config's output_dir)")
	f.BoolVar(&o.resume, "resume", false, "continue from the newest complete checkpoint in --output")
	f.IntVar(&o.steps, "steps", 0, "stop after this optimizer step (default: num_train_steps)")
	f.Int64Var(&o.seed, "seed", -1, "override the config's seed")
	f.StringArrayVar(&o.sets, "set", nil, "override a config key: --set key=value (repeatable)")
	f.StringVar(&o.device, "device", "", deviceHelp)
	f.BoolVar(&o.fp16, "fp16", false, "mixed precision with dynamic loss scaling (emulated fp16 gradients on the CPU)")
	f.IntVar(&o.threads, "threads", 0, "CPU threads (0: all cores)")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	f.BoolVar(&o.overwrite, "overwrite", false, "start over in an --output that holds an earlier run's logs but no checkpoint")
	registerWorldFlags(cmd, &o.world)
	_ = cmd.MarkFlagRequired("config")
}

// loadTrainConfig merges the config file, UNITER_* environment variables,
// --set overrides and the flags that shadow config keys.
func loadTrainConfig(o trainOpts) (*train.Config, error) {
	v := newConfig()
	train.SetDefaults(v, o.task)
	if err := train.ReadConfigFile(v, o.config); err != nil {
		return nil, err
	}
	if err := applySets(v, o.sets); err != nil {
		return nil, err
	}
	if o.seed >= 0 {
		v.Set("seed", strconv.FormatInt(o.seed, 10))
	}
	if o.fp16 {
		v.Set("fp16", true)
	}
	if o.output != "" {
		v.Set("output_dir", o.output)
	}
	cfg, err := train.DecodeConfig(v, o.task)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.config, err)
	}
	return cfg, nil
}

// runTraining runs pretrain or finetune. SIGINT and SIGTERM (a scheduler's
// or docker stop's) end the run after the current step with a checkpoint;
// a second one abandons a validation under way.
func runTraining(cmd *cobra.Command, o trainOpts) error {
	if o.steps < 0 {
		return fmt.Errorf("--steps %d: must be positive", o.steps)
	}
	cfg, err := loadTrainConfig(o)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", o.config, w)
	}
	world, peers, err := joinWorld(cmd, o.world, o.device, o.threads)
	if err != nil {
		return err
	}
	ok := false
	defer func() { peers.close(ok) }()
	opts := train.Options{Output: cfg.OutputDir, Resume: o.resume, Steps: o.steps, Overwrite: o.overwrite, Log: cmd.ErrOrStderr(), World: world}
	if world.NewBackend == nil {
		if opts.Backend, err = openBackend(o.device, o.threads); err != nil {
			return err
		}
	}
	if !o.quiet {
		opts.Progress = cmd.ErrOrStderr()
		if f, ok := opts.Progress.(*os.File); !ok || !term.IsTerminal(int(f.Fd())) {
			opts.ProgressEvery = 10 * time.Second
		}
	}
	t, err := train.New(cfg, opts)
	if err != nil {
		return err
	}
	defer t.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := catchInterrupts(cmd, t, cancel)
	defer sigs.stop()
	if err := t.Run(ctx); err != nil {
		return err
	}
	ok = true
	if t.Interrupted() {
		return interrupted(cmd, t.Step(), cfg.OutputDir, sigs.signal())
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: finished at step %d; logs in %s/log, checkpoints in %s/ckpt\n", cmd.Name(), t.Step(), cfg.OutputDir, cfg.OutputDir)
	return nil
}

// interrupts cancels a run at its first SIGINT or SIGTERM and makes it
// hurry at the second.
type interrupts struct {
	sigs  chan os.Signal
	done  chan struct{}
	first atomic.Value
}

func catchInterrupts(cmd *cobra.Command, t *train.Trainer, cancel context.CancelFunc) *interrupts {
	in := &interrupts{sigs: make(chan os.Signal, 2), done: make(chan struct{})}
	signal.Notify(in.sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for n := 0; ; n++ {
			var s os.Signal
			select {
			case s = <-in.sigs:
			case <-in.done:
				return
			}
			if n == 0 {
				in.first.Store(s)
				fmt.Fprintf(cmd.ErrOrStderr(), "\n%s: %v: stopping after this step with a checkpoint (again to skip any validation)\n", cmd.Name(), s)
				cancel()
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "\n%s: %v again: saving the checkpoint and leaving\n", cmd.Name(), s)
				t.Hurry()
			}
		}
	}()
	return in
}

// signal is the first signal caught (nil: none, e.g. another rank of the
// run was stopped).
func (in *interrupts) signal() os.Signal {
	s, _ := in.first.Load().(os.Signal)
	return s
}

// stop hands the signals back to their default handling.
func (in *interrupts) stop() {
	signal.Stop(in.sigs)
	close(in.done)
}

// interrupted is the error of a run stopped by a signal: it says where the
// checkpoint is and the command that continues the run, and exits 128+n.
func interrupted(cmd *cobra.Command, step int, output string, sig os.Signal) error {
	again := append([]string{"uniter"}, os.Args[1:]...)
	if !slices.Contains(again, "--resume") {
		again = append(again, "--resume")
	}
	why, code := "because another rank of the run was stopped", 1
	if s, ok := sig.(syscall.Signal); ok {
		why, code = "by "+unix.SignalName(s), 128+int(s)
	}
	return exitCode{code: code, err: fmt.Errorf("%s: interrupted at step %d %s; checkpoint saved in %s; continue with: %s",
		cmd.Name(), step, why, filepath.Join(output, train.CkptDir), strings.Join(again, " "))}
}
