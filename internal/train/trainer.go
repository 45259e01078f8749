// Package train is the one training loop of UNITER, for pretraining and
// for every downstream task: the reference's AdamW and warmup-linear
// schedule, dynamic loss scaling (one scaler per task key), gradient
// accumulation with one task per optimizer update, global-norm clipping,
// validation (the code of uniter eval), metrics and plots, the best
// checkpoint by the task's metric, and checkpoints from which a run
// resumes exactly where it stopped.
package train

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// Options are the settings of a run that are not part of its config.
type Options struct {
	// Output holds ckpt/ and log/.
	Output string
	// Resume continues from the newest complete checkpoint in Output (a
	// fresh start when there is none).
	Resume bool
	// Steps is the optimizer step to stop after; 0 means num_train_steps.
	// The learning-rate schedule always follows num_train_steps, so a run
	// cut short and resumed matches an uninterrupted one; a Steps past it
	// is refused (the schedule has ended there).
	Steps int
	// Overwrite lets a fresh run replace the logs of an earlier run in
	// Output that left no checkpoint.
	Overwrite bool
	// Backend runs the model.
	Backend compute.Backend
	// Progress receives the progress bar; nil draws none.
	Progress io.Writer
	// ProgressEvery is the least time between redraws of the bar (0:
	// 200ms). Callers writing to a file or a pipe set seconds, so that a
	// long run's log holds lines, not megabytes of redraws.
	ProgressEvery time.Duration
	// Log receives one-line messages (checkpoint loads, validation,
	// saves); nil discards them.
	Log io.Writer
	// World is the data-parallel layout; the zero value is one replica on
	// Backend.
	World World
}

// Trainer is one training run: pretraining or fine-tuning.
type Trainer struct {
	cfg  *Config
	opts Options
	be   compute.Backend
	mc   model.Config
	lock *dirLock

	// reps are this process's replicas; the fields below are replica 0's,
	// which validates, saves and logs.
	reps   []*replica
	world  World
	gsync  gradSync // nil with one replica in the world
	layout layout   // of every replica's flat gradients, with gsync
	m      *model.Model
	task   tasks.Task
	pt     *tasks.Pretrain  // pretraining runs
	down   tasks.Downstream // fine-tuning runs
	upd    *Updater
	// ckptFiles are written into every checkpoint (VQA: ans2label.json).
	ckptFiles map[string][]byte

	keys   []string          // task keys {task}_{name}, config order
	taskOf map[string]string // key -> task
	mixer  *data.TaskMixer
	dbs    *DBs
	train  map[string]Dataset // key -> dataset
	ctx    context.Context
	cancel context.CancelFunc
	// valCtx is validation's, which Hurry cancels.
	valCtx context.Context
	hurry  context.CancelFunc
	loader map[string]*data.Loader[*data.Batch]
	val    []valSet    // pretraining validation
	splits []evalSplit // fine-tuning validation
	best   Best

	step        int
	positions   map[string]data.Position
	elapsed0    float64 // elapsed_s before this process
	start       time.Time
	tokens      int // real tokens trained on by this process
	metrics     *metricsLog
	lastSave    int
	lastValid   int
	interrupted bool
	window      logWindow // of the steps since the last logged row
}

// valSet is one validation dataset with its tasks.
type valSet struct {
	name  string
	ds    Dataset
	tasks []string
}

// Dirs of a run's output.
const (
	CkptDir = "ckpt"
	LogDir  = "log"
)

// New prepares a run: locks the output directory, resolves the model,
// opens the data, initialises or restores every piece of state, and writes
// log/config.yaml and log/model.json.
func New(cfg *Config, o Options) (*Trainer, error) {
	name := cmdName(cfg)
	if o.Output == "" {
		return nil, fmt.Errorf("%s: no output directory (--output or output_dir)", name)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Steps > cfg.NumTrainSteps {
		return nil, stepsPastSchedule(name, o, cfg.NumTrainSteps)
	}
	mc, err := cfg.ResolveModel()
	if err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, opts: o, be: o.Backend, mc: mc, taskOf: map[string]string{}, world: o.World.normal(),
		train: map[string]Dataset{}, loader: map[string]*data.Loader[*data.Batch]{}, positions: map[string]data.Position{}}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.valCtx, t.hurry = context.WithCancel(t.ctx)
	ok := false
	defer func() {
		if !ok {
			t.Close()
		}
	}()
	// Rank 0 owns the output directory and decides where the run starts;
	// the other processes follow its decision.
	var resumeFrom string
	if t.world.Rank == 0 {
		resumeFrom, err = t.startPoint(name)
	}
	if resumeFrom, err = t.world.agreeStart(resumeFrom, err); err != nil {
		return nil, err
	}
	if err := t.buildReplicas(resumeFrom); err != nil {
		return nil, err
	}
	if cfg.Task == TaskPretrain {
		err = t.openData()
	} else {
		err = t.openDownstreamData()
	}
	if err != nil {
		return nil, err
	}
	if resumeFrom != "" {
		if err := t.restore(resumeFrom); err != nil {
			return nil, err
		}
	}
	if err := t.startSync(); err != nil {
		return nil, err
	}
	t.startLoaders()
	t.lastSave, t.lastValid = t.step, t.step
	if t.world.Rank != 0 {
		t.metrics = &metricsLog{}
	} else if err := t.openLog(name, resumeFrom != ""); err != nil {
		return nil, err
	}
	ok = true
	return t, nil
}

// stepsPastSchedule is the refusal of a --steps beyond num_train_steps,
// where the learning rate has reached 0: a run with checkpoints extends by
// a new schedule started from its newest one; one without raises
// num_train_steps.
func stepsPastSchedule(name string, o Options, total int) error {
	msg := fmt.Sprintf("%s: --steps %d is past num_train_steps %d, where the learning-rate schedule ends", name, o.Steps, total)
	if latest, _ := LatestCheckpoint(filepath.Join(o.Output, CkptDir)); latest != "" && o.Resume {
		return fmt.Errorf("%s; to train longer, start a new schedule from the newest checkpoint: --set checkpoint=%s --set num_train_steps=%d --output NEW_DIR", msg, latest, o.Steps)
	}
	return fmt.Errorf("%s; to train that long, set --set num_train_steps=%d", msg, o.Steps)
}

// startPoint locks the output directory and returns the checkpoint the
// run resumes from ("" for a fresh start).
func (t *Trainer) startPoint(name string) (string, error) {
	o := t.opts
	var err error
	if t.lock, err = lockDir(o.Output, name); err != nil {
		return "", err
	}
	ckptDir := filepath.Join(o.Output, CkptDir)
	latest, err := LatestCheckpoint(ckptDir)
	if err != nil {
		return "", err
	}
	switch {
	case o.Resume && latest != "":
		return latest, nil
	case o.Resume:
		fmt.Fprintf(o.Log, "%s: no checkpoint in %s, starting from step 0\n", name, ckptDir)
	case latest != "":
		return "", fmt.Errorf("%s: %s already holds checkpoint %s: pass --resume to continue it or choose another --output", name, o.Output, filepath.Base(latest))
	}
	if err := t.checkFreshLog(name); err != nil {
		return "", err
	}
	return "", nil
}

// buildReplicas creates this process's replicas, each with the task's
// head, from the same checkpoint (read once) or seed, and their
// optimizers.
func (t *Trainer) buildReplicas(resumeFrom string) error {
	src, sd, err := t.initCheckpoint(resumeFrom)
	if err != nil {
		return err
	}
	for i := range t.world.Replicas {
		be := t.opts.Backend
		if t.world.NewBackend != nil {
			if be, err = t.world.NewBackend(i); err != nil {
				return fmt.Errorf("replica %d: %w", i, err)
			}
		}
		r := &replica{be: be}
		if t.world.Replicas > 1 {
			r.work = newWorker()
		}
		t.reps = append(t.reps, r)
		if err := r.onWorker(func() error {
			if t.cfg.Task == TaskPretrain {
				return t.buildPretrain(r, src, sd, resumeFrom != "", i == 0)
			}
			return t.buildDownstream(r, src, sd, i == 0)
		}); err != nil {
			return err
		}
		r.upd = t.newUpdater(r)
	}
	r := t.reps[0]
	t.be, t.m, t.task, t.pt, t.down, t.upd = r.be, r.m, r.task, r.pt, r.down, r.upd
	return nil
}

// buildPretrain creates r's model with its pretraining heads, from sd (the
// checkpoint being resumed or the configured init one, read from src) or
// the seed; resume loads every key (an init checkpoint may lack the
// heads), log reports what was loaded.
func (t *Trainer) buildPretrain(r *replica, src string, sd *ckpt.StateDict, resume, log bool) error {
	m, err := model.New(r.be, t.mc, t.cfg.Seed)
	if err != nil {
		return err
	}
	heads := model.NewPretrainHeads(m)
	r.m = m
	r.pt = &tasks.Pretrain{M: m, H: heads, OTWeight: t.cfg.ITMOTLambda, FP16: t.cfg.FP16}
	r.task = r.pt
	if t.cfg.VCRPretraining() {
		rep, err := tasks.LoadVCRPretrain(m, sd, src, !resume, t.cfg.Seed)
		if err == nil && log {
			t.logLoad(src, rep)
		}
		return err
	}
	if sd == nil {
		return nil
	}
	load := m.LoadStateDict
	if !resume {
		load = m.LoadInitStateDict
	}
	rep, err := load(sd, src)
	if err != nil {
		return err
	}
	if log {
		t.logLoad(src, rep)
	}
	return nil
}

// initCheckpoint reads the weights a run starts from: the checkpoint being
// resumed, else the configured one; nil without either.
func (t *Trainer) initCheckpoint(resumeFrom string) (string, *ckpt.StateDict, error) {
	src := resumeFrom
	if src == "" {
		src = t.cfg.Checkpoint
	}
	if src == "" {
		return "", nil, nil
	}
	sd, _, err := model.ReadCheckpoint(src)
	return src, sd, err
}

func (t *Trainer) logLoad(src string, rep model.LoadReport) {
	if src == "" {
		fmt.Fprintf(t.opts.Log, "uniter: no checkpoint: model initialised from seed %d\n", t.cfg.Seed)
		return
	}
	line := rep.String()
	if line == "" {
		line = "all parameters loaded"
	}
	fmt.Fprintf(t.opts.Log, "uniter: checkpoint %s: %s\n", src, line)
}

// newUpdater creates the optimizer and updater over r's parameters (after
// any model surgery, so the moments have the final shapes).
func (t *Trainer) newUpdater(r *replica) *Updater {
	c := t.cfg
	opt := NewAdamW(r.be, r.m.Params.List(), AdamWOptions{Beta1: c.Betas[0], Beta2: c.Betas[1], Eps: AdamEps,
		WeightDecay: c.WeightDecay, LRMul: c.LRMul})
	return NewUpdater(r.be, r.m.Params.List(), opt, c.GradNorm, c.FP16, c.LossScale, c.LossScaleWindow)
}

// openData opens every training and validation dataset and the task mixer.
func (t *Trainer) openData() error {
	c := t.cfg
	t.dbs = NewDBs(c.ImgDBOptions())
	opts := data.PretrainOptions{MaxTxtLen: c.MaxTxtLen, Seed: c.Seed, ImgDim: t.mc.ImgDim,
		MaskProb: c.MRMProb, ITMNegProb: c.ITMNegProb}
	var ratios []int
	for _, d := range c.TrainDatasets {
		ds, err := OpenDataset(t.dbs, d.TxtDB, d.ImgDB, opts, t.mc.VocabSize)
		if err != nil {
			return fmt.Errorf("train_datasets %s: %w", d.Name, err)
		}
		for i, task := range d.Tasks {
			key := task + "_" + d.Name
			t.keys = append(t.keys, key)
			t.taskOf[key] = task
			t.train[key] = ds
			ratios = append(ratios, d.MixRatio[i])
		}
	}
	var err error
	if t.mixer, err = data.NewTaskMixer(t.keys, ratios, c.Seed); err != nil {
		return err
	}
	// Validation keeps every text, as the reference's TxtTokLmdb(db, -1).
	opts.MaxTxtLen = -1
	for _, d := range c.ValDatasets {
		ds, err := OpenDataset(t.dbs, d.TxtDB, d.ImgDB, opts, t.mc.VocabSize)
		if err != nil {
			return fmt.Errorf("val_datasets %s: %w", d.Name, err)
		}
		t.val = append(t.val, valSet{name: d.Name, ds: ds, tasks: d.Tasks})
	}
	return nil
}

// restore loads the optimizer and trainer state of a checkpoint (the
// weights were loaded by buildModel).
func (t *Trainer) restore(path string) error {
	st, err := ReadState(path)
	if err != nil {
		return err
	}
	name := cmdName(t.cfg)
	if st.Seed != t.cfg.Seed {
		return fmt.Errorf("%s --resume: config seed = %d, checkpoint %s was trained with seed %d", name, t.cfg.Seed, path, st.Seed)
	}
	if strings.Join(st.TaskKeys, ",") != strings.Join(t.keys, ",") {
		return fmt.Errorf("%s --resume: config task keys %v differ from checkpoint %s's %v", name, t.keys, path, st.TaskKeys)
	}
	if err := checkExact(st.Exact, t.exactKeys(), name, path, t.world.global()); err != nil {
		return err
	}
	t.best = st.Best
	for _, r := range t.reps {
		if err := r.onWorker(func() error { return LoadOptimizer(path, r.upd.Opt, st.AdamSteps) }); err != nil {
			return err
		}
		r.upd.SetScalers(st.Scalers)
	}
	t.step, t.elapsed0 = st.Step, st.ElapsedS
	for k, p := range st.Positions {
		t.positions[k] = p
	}
	fmt.Fprintf(t.opts.Log, "%s: resuming from %s (step %d)\n", name, path, st.Step)
	return nil
}

// startLoaders starts one prefetching loader per task key, each stream
// positioned after the last batch the run consumed (every process reads
// the whole stream, and builds its own micro-batches of it).
func (t *Trainer) startLoaders() {
	c := t.cfg
	prefetch := max(c.NWorkers, c.GradientAccumulationSteps)
	for _, key := range t.keys {
		ds, task := t.train[key], t.taskOf[key]
		s := data.NewTokenBucketSampler(c.TrainBatchSize, mixSeed(c.Seed, keyHash(key)), true)
		if c.Task == "itr" {
			// Retrieval batches count positives (Lens are all 1).
			s = exampleSampler(c.itrBatchExamples(), s.Seed)
		}
		if c.Task == "re" {
			s = reSampler(c)
		}
		bs := data.NewBatchStream(s, func(epoch int) ([]int, error) { return ds.Lens(task, epoch) }, 0)
		if p, ok := t.positions[key]; ok {
			bs.Seek(p.Next())
		}
		src, build := t.world.share(bs, ds.Build(task), c.GradientAccumulationSteps)
		t.loader[key] = data.NewLoader(t.ctx, src, build, c.NWorkers, prefetch)
	}
}

// Close stops the loaders, closes the dbs and the metrics file and unlocks
// the output directory.
func (t *Trainer) Close() {
	t.cancel()
	for _, l := range t.loader {
		l.Close()
	}
	if t.gsync != nil {
		t.gsync.close()
	}
	for _, r := range t.reps {
		if r.work != nil {
			r.work.close()
		}
	}
	if t.dbs != nil {
		t.dbs.Close()
	}
	if t.metrics != nil {
		t.metrics.Close()
	}
	t.lock.release()
}

// Step is the last optimizer step taken.
func (t *Trainer) Step() int { return t.step }

// Hurry makes a run that was told to stop (its Run context cancelled)
// skip everything but its checkpoint: a validation under way is
// abandoned. A second interrupt calls it.
func (t *Trainer) Hurry() { t.hurry() }

// Interrupted reports whether Run stopped early on a cancelled context,
// this process's or, in a multi-process run, another's.
func (t *Trainer) Interrupted() bool { return t.interrupted }

// stopStep is where Run stops.
func (t *Trainer) stopStep() int {
	if t.opts.Steps > 0 {
		return t.opts.Steps
	}
	return t.cfg.NumTrainSteps
}

// Run trains until the stop step, validating, logging and checkpointing on
// the way, and finishes with a validation, a checkpoint and the plots. A
// cancelled ctx stops it after the current step with a checkpoint.
func (t *Trainer) Run(ctx context.Context) error {
	stop := t.stopStep()
	t.start = time.Now()
	var bar *progressbar.ProgressBar
	if t.opts.Progress != nil && t.world.Rank == 0 {
		every := t.opts.ProgressEvery
		if every <= 0 {
			every = 200 * time.Millisecond
		}
		bar = progressbar.NewOptions(stop,
			progressbar.OptionSetWriter(t.opts.Progress),
			progressbar.OptionSetItsString("step"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(every),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(t.opts.Progress) }),
		)
		_ = bar.Set(t.step)
	}
	name := cmdName(t.cfg)
	for t.step < stop {
		halt, err := t.agreeStop(ctx.Err() != nil)
		if err != nil {
			return err
		}
		if halt {
			// A scheduler's SIGTERM leaves seconds, not a validation pass:
			// the checkpoint comes first and alone.
			t.interrupted = true
			fmt.Fprintf(t.opts.Log, "\n%s: interrupted after step %d, saving a checkpoint\n", name, t.step)
			if t.lastSave != t.step {
				return t.save()
			}
			return nil
		}
		row, err := t.trainStep()
		if err != nil {
			return err
		}
		t.window.add(row)
		if t.step%t.cfg.LogSteps == 0 || t.step == stop {
			if t.cfg.LogSteps > 1 {
				row.row = append(row.row, t.window.field())
			}
			if err := t.metrics.Write(row.row); err != nil {
				return err
			}
		}
		if bar != nil {
			bar.Describe(fmt.Sprintf("%-12s loss %8.4f %7.0f tok/s", row.key, row.loss, row.tokensPerS))
			_ = bar.Set(t.step)
		}
		if t.step%t.cfg.ValidSteps == 0 {
			if err := t.validate(); err != nil {
				return t.hurried(err)
			}
		}
		if t.step%t.cfg.SaveSteps == 0 {
			if err := t.save(); err != nil {
				return err
			}
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	// The end of training validates once more; a stop at --steps before
	// num_train_steps is a pause, which a resume continues as if it had
	// not happened (the same metrics.jsonl).
	if t.lastValid != t.step && t.step >= t.cfg.NumTrainSteps {
		if err := t.validate(); err != nil {
			return t.hurried(err)
		}
	}
	// VCR ends with train_vcr.py's final validation in the test layout.
	if t.step >= t.cfg.NumTrainSteps && t.down != nil {
		if err := t.validateVCRFinal(); err != nil {
			return t.hurried(err)
		}
	}
	if t.lastSave != t.step {
		if err := t.save(); err != nil {
			return err
		}
	}
	return t.plots()
}

// hurried handles a validation error: after Hurry it is the abandoned
// validation, and the run ends with its checkpoint.
func (t *Trainer) hurried(err error) error {
	if t.valCtx.Err() == nil || t.ctx.Err() != nil {
		return err
	}
	t.interrupted = true
	fmt.Fprintf(t.opts.Log, "\n%s: validation abandoned after step %d, saving a checkpoint\n", cmdName(t.cfg), t.step)
	if t.lastSave != t.step {
		return t.save()
	}
	return nil
}

// validate evaluates the validation data, logs a row per task key or
// split and redraws the plots.
func (t *Trainer) validate() error {
	t.lastValid = t.step
	if t.down != nil {
		return t.validateDownstream()
	}
	if len(t.val) == 0 {
		return nil
	}
	var summary []string
	for _, v := range t.val {
		res := map[string]Metrics{}
		for _, task := range v.tasks {
			sums, err := t.shardedSums(func(r *replica, o EvalOptions) (taskSums, error) { return evalSums(t.valCtx, r.pt, v.ds, task, o) })
			if err != nil {
				return fmt.Errorf("validation at step %d: %s: %w", t.step, v.name, err)
			}
			res[task] = sums.metrics(t.pt, task)
		}
		for _, task := range v.tasks {
			key := task + "_" + v.name
			if err := t.writeValRow("val", key, res[task]); err != nil {
				return err
			}
			summary = append(summary, fmt.Sprintf("%s %s", key, formatMetrics(res[task])))
		}
	}
	fmt.Fprintf(t.opts.Log, "\npretrain: step %d validation: %s\n", t.step, strings.Join(summary, "; "))
	return t.plots()
}

// save writes a checkpoint of the current step.
func (t *Trainer) save() error {
	if t.world.Rank != 0 {
		// Rank 0 writes the one checkpoint of the world.
		t.lastSave = t.step
		return nil
	}
	if err := t.metrics.Sync(); err != nil {
		return err
	}
	st := &State{Step: t.step, AdamSteps: t.upd.Opt.Steps(), Seed: t.cfg.Seed, TaskKeys: t.keys,
		Scalers: t.upd.Scalers(), Positions: t.positions, ElapsedS: t.elapsed0 + time.Since(t.start).Seconds(),
		Exact: t.exactKeys(), Best: t.best}
	var path string
	err := t.reps[0].onWorker(func() error {
		var err error
		path, err = SaveCheckpoint(filepath.Join(t.opts.Output, CkptDir), t.m, t.upd.Opt, st, t.cfg.KeepCkpts, t.ckptFiles)
		return err
	})
	if err != nil {
		return err
	}
	t.lastSave = t.step
	fmt.Fprintf(t.opts.Log, "\n%s: saved %s\n", cmdName(t.cfg), path)
	return nil
}

// cmdName is the command a run belongs to, for messages.
func cmdName(c *Config) string {
	if c.Task == TaskPretrain || c.Task == "" {
		return "pretrain"
	}
	return "finetune"
}

// exactKeys are the settings a resumed run must share with its checkpoint
// to continue exactly: the data order and the schedule depend on them. The
// window is recorded as its global micro-batch count, so that a run may
// resume on another number of replicas.
func (t *Trainer) exactKeys() map[string]string {
	c := t.cfg
	return map[string]string{
		"task": c.Task, "train_batch_size": fmt.Sprint(c.TrainBatchSize),
		microBatchesKey:   fmt.Sprint(t.world.global() * c.GradientAccumulationSteps),
		"num_train_steps": fmt.Sprint(c.NumTrainSteps), "model": string(t.mc.JSON()), "variant": c.Variant,
	}
}

// microBatchesKey records a step's micro-batches over the world (replicas
// x gradient_accumulation_steps); checkpoints of single-replica runs from
// before data parallelism record gradient_accumulation_steps instead.
const microBatchesKey = "micro_batches_per_step"

// checkExact refuses to resume when a setting in want differs from the
// checkpoint's (saved); checkpoints written before these were recorded
// have none. world is the number of replicas of the resuming run, for
// the message that says how to keep the window.
func checkExact(saved, want map[string]string, name, path string, world int) error {
	if old, ok := saved["gradient_accumulation_steps"]; ok {
		if _, ok := saved[microBatchesKey]; !ok {
			saved = maps.Clone(saved)
			saved[microBatchesKey] = old
		}
	}
	for _, k := range sortedKeys(want) {
		old, ok := saved[k]
		if !ok || old == want[k] {
			continue
		}
		switch k {
		case "model":
			return fmt.Errorf("%s --resume: the model config differs from the one checkpoint %s was trained with; resuming would not continue that run", name, path)
		case microBatchesKey:
			n, _ := strconv.Atoi(old)
			hint := fmt.Sprintf("no whole gradient_accumulation_steps gives %d with %d replicas", n, world)
			if n%world == 0 {
				hint = fmt.Sprintf("with %d replicas set gradient_accumulation_steps=%d", world, n/world)
			}
			return fmt.Errorf("%s --resume: checkpoint %s was trained with %s micro-batches per step (replicas x gradient_accumulation_steps), this run has %s: %s to continue it", name, path, old, want[k], hint)
		}
		return fmt.Errorf("%s --resume: config %s = %q but checkpoint %s was trained with %q; resuming would not continue that run (start a new --output instead)", name, k, want[k], path, old)
	}
	return nil
}

// DropoutSeed is the dropout seed of micro-batch micro of optimizer step
// step, so a resumed run draws the masks an uninterrupted one draws.
func DropoutSeed(seed uint64, step, micro int) uint64 {
	return mixSeed(seed, uint64(step), uint64(micro))
}

// mixSeed hashes values into a seed with the splitmix64 finaliser.
func mixSeed(vals ...uint64) uint64 {
	h := uint64(0x9E3779B97F4A7C15)
	for _, v := range vals {
		h ^= v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)
		h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
		h = (h ^ (h >> 27)) * 0x94D049BB133111EB
		h ^= h >> 31
	}
	return h
}

func keyHash(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// writeValRow appends a validation's metrics to log/metrics.jsonl: the
// step, split and task, then the metrics by name.
func (t *Trainer) writeValRow(split, task string, metrics map[string]float64) error {
	row := Row{{"step", t.step}, {"split", split}, {"task", task}}
	for _, name := range sortedKeys(metrics) {
		row = append(row, Field{name, metrics[name]})
	}
	return t.metrics.Write(row)
}

// formatMetrics renders metrics as "name value" pairs, n last.
func formatMetrics(m Metrics) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		if k != "n" {
			parts = append(parts, fmt.Sprintf("%s %.4f", k, m[k]))
		}
	}
	return strings.Join(parts, " ")
}

// plots redraws the curves (rank 0 alone holds the metrics).
func (t *Trainer) plots() error {
	if t.world.Rank != 0 {
		return nil
	}
	return WritePlots(filepath.Join(t.opts.Output, LogDir), t.metrics.records)
}
