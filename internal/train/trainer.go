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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"uniter/internal/atomicfile"
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
	// cut short and resumed matches an uninterrupted one.
	Steps int
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
}

// Trainer is one training run: pretraining or fine-tuning.
type Trainer struct {
	cfg  *Config
	opts Options
	be   compute.Backend
	mc   model.Config
	lock *dirLock

	m    *model.Model
	task tasks.Task
	pt   *tasks.Pretrain  // pretraining runs
	down tasks.Downstream // fine-tuning runs
	upd  *Updater
	// ckptFiles are written into every checkpoint (VQA: ans2label.json).
	ckptFiles map[string][]byte

	keys   []string          // task keys {task}_{name}, config order
	taskOf map[string]string // key -> task
	mixer  *data.TaskMixer
	dbs    *DBs
	train  map[string]Dataset // key -> dataset
	ctx    context.Context
	cancel context.CancelFunc
	loader map[string]*data.Loader[*data.Batch]
	val    []valSet    // pretraining validation
	splits []evalSplit // fine-tuning validation
	best   Best

	step      int
	positions map[string]data.Position
	elapsed0  float64 // elapsed_s before this process
	start     time.Time
	tokens    int // real tokens trained on by this process
	metrics   *metricsLog
	lastSave  int
	lastValid int
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
	mc, err := cfg.ResolveModel()
	if err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, opts: o, be: o.Backend, mc: mc, taskOf: map[string]string{},
		train: map[string]Dataset{}, loader: map[string]*data.Loader[*data.Batch]{}, positions: map[string]data.Position{}}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			t.Close()
		}
	}()
	if t.lock, err = lockDir(o.Output, name); err != nil {
		return nil, err
	}

	var resumeFrom string
	ckptDir := filepath.Join(o.Output, CkptDir)
	latest, err := LatestCheckpoint(ckptDir)
	if err != nil {
		return nil, err
	}
	switch {
	case o.Resume && latest != "":
		resumeFrom = latest
	case o.Resume:
		fmt.Fprintf(o.Log, "%s: no checkpoint in %s, starting from step 0\n", name, ckptDir)
	case latest != "":
		return nil, fmt.Errorf("%s: %s already holds checkpoint %s: pass --resume to continue it or choose another --output", name, o.Output, filepath.Base(latest))
	}

	if cfg.Task == TaskPretrain {
		err = t.buildPretrain(resumeFrom)
	} else {
		err = t.buildDownstream(resumeFrom)
	}
	if err != nil {
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
	t.startLoaders()
	logDir := filepath.Join(o.Output, LogDir)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(logDir, "config.yaml"), cfg.YAML()); err != nil {
		return nil, fmt.Errorf("%s: log/config.yaml: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(logDir, "model.json"), mc.JSON()); err != nil {
		return nil, fmt.Errorf("%s: log/model.json: %w", name, err)
	}
	if t.metrics, err = openMetrics(filepath.Join(logDir, "metrics.jsonl"), t.step, resumeFrom != ""); err != nil {
		return nil, err
	}
	t.lastSave, t.lastValid = t.step, t.step
	ok = true
	return t, nil
}

// buildPretrain creates the model with its pretraining heads, from the
// checkpoint being resumed, the configured init checkpoint, or the seed.
func (t *Trainer) buildPretrain(resumeFrom string) error {
	m, err := model.New(t.be, t.mc, t.cfg.Seed)
	if err != nil {
		return err
	}
	heads := model.NewPretrainHeads(m)
	t.m = m
	t.pt = &tasks.Pretrain{M: m, H: heads, OTWeight: t.cfg.ITMOTLambda, FP16: t.cfg.FP16}
	t.task = t.pt
	t.newUpdater()
	src, sd, err := t.initCheckpoint(resumeFrom)
	if err != nil || sd == nil {
		return err
	}
	load := m.LoadStateDict
	if resumeFrom == "" {
		load = m.LoadInitStateDict
	}
	rep, err := load(sd, src)
	if err != nil {
		return err
	}
	t.logLoad(src, rep)
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

// newUpdater creates the optimizer and updater over the model's parameters
// (after any model surgery, so the moments have the final shapes).
func (t *Trainer) newUpdater() {
	c := t.cfg
	opt := NewAdamW(t.be, t.m.Params.List(), AdamWOptions{Beta1: c.Betas[0], Beta2: c.Betas[1], Eps: AdamEps,
		WeightDecay: c.WeightDecay, LRMul: c.LRMul})
	t.upd = NewUpdater(t.be, t.m.Params.List(), opt, c.GradNorm, c.FP16, c.LossScale, c.LossScaleWindow)
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
	if err := checkExact(st.Exact, t.exactKeys(), name, path); err != nil {
		return err
	}
	t.best = st.Best
	if err := LoadOptimizer(path, t.upd.Opt, st.AdamSteps); err != nil {
		return err
	}
	t.upd.SetScalers(st.Scalers)
	t.step, t.elapsed0 = st.Step, st.ElapsedS
	for k, p := range st.Positions {
		t.positions[k] = p
	}
	fmt.Fprintf(t.opts.Log, "%s: resuming from %s (step %d)\n", name, path, st.Step)
	return nil
}

// startLoaders starts one prefetching loader per task key, each stream
// positioned after the last batch the run consumed.
func (t *Trainer) startLoaders() {
	c := t.cfg
	prefetch := max(c.NWorkers, c.GradientAccumulationSteps)
	for _, key := range t.keys {
		ds, task := t.train[key], t.taskOf[key]
		s := data.NewTokenBucketSampler(c.TrainBatchSize, mixSeed(c.Seed, keyHash(key)), true)
		bs := data.NewBatchStream(s, func(epoch int) ([]int, error) { return ds.Lens(task, epoch) }, 0)
		if p, ok := t.positions[key]; ok {
			bs.Seek(p.Next())
		}
		t.loader[key] = data.NewLoader(t.ctx, bs, ds.Build(task), c.NWorkers, prefetch)
	}
}

// Close stops the loaders, closes the dbs and the metrics file and unlocks
// the output directory.
func (t *Trainer) Close() {
	t.cancel()
	for _, l := range t.loader {
		l.Close()
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
	if t.opts.Progress != nil {
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
		if err := ctx.Err(); err != nil {
			// A scheduler's SIGTERM leaves seconds, not a validation pass:
			// the checkpoint comes first and alone.
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
		if t.step%t.cfg.LogSteps == 0 || t.step == stop {
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
				return err
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
			return err
		}
	}
	if t.lastSave != t.step {
		if err := t.save(); err != nil {
			return err
		}
	}
	return WritePlots(filepath.Join(t.opts.Output, LogDir), t.metrics.records)
}

// stepRow is a training step's metrics row and what the progress bar shows.
type stepRow struct {
	row        Row
	key        string
	loss       float64
	tokensPerS float64
}

// trainStep runs one optimizer update: the gradient_accumulation_steps
// micro-batches of the step's task, then the update.
func (t *Trainer) trainStep() (stepRow, error) {
	c := t.cfg
	step := t.step + 1
	key := t.mixer.Task(step)
	task := t.taskOf[key]
	k := c.GradientAccumulationSteps
	batches := make([]*data.Batch, k)
	var last data.Position
	for i := range batches {
		b, pos, err := t.loader[key].Next()
		if err != nil {
			return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
		}
		batches[i], last = b, pos
	}
	t.m.Params.ZeroGrad()
	t.m.SetTrain(true)
	w, err := runWindow(t.task, task, batches, t.upd.Scale(key), func(i int) uint64 { return DropoutSeed(c.Seed, step, i) })
	if err != nil {
		return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
	}
	t.positions[key] = last
	lr := LR(c.LearningRate, step, c.WarmupSteps, c.NumTrainSteps)
	info, err := t.upd.Apply(key, lr)
	if err != nil {
		return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
	}
	t.step = step
	t.tokens += w.tokens
	since := time.Since(t.start).Seconds()
	tps := float64(t.tokens) / max(since, 1e-9)
	row := Row{{"step", step}, {"task", key}, {"loss", w.loss}, {"lr", lr}, {"loss_scale", info.LossScale},
		{"tokens", w.tokens}, {"pad_frac", 1 - float64(w.tokens)/float64(w.slots)}, {"examples", w.examples},
		{"elapsed_s", t.elapsed0 + since}, {"tokens_per_s", tps}, {"grad_norm", info.GradNorm}}
	if info.Skipped {
		row = append(row, Field{"skipped", true})
	}
	for _, name := range sortedKeys(w.parts) {
		row = append(row, Field{name, w.parts[name]})
	}
	return stepRow{row: row, key: key, loss: w.loss, tokensPerS: tps}, nil
}

// window is what one accumulation window measured.
type window struct {
	loss                    float64 // the window's mean loss
	parts                   map[string]float64
	tokens, slots, examples int
}

// runWindow runs the forward and backward of every micro-batch of a window
// of task, accumulating into the parameters' gradients the gradient of the
// window's loss times scale, and releases the batches. seed gives each
// micro-batch's dropout seed.
//
// Each micro-batch's loss is weighted by its share of the window's loss
// units (masked tokens, masked regions or examples), so the accumulated
// gradient is that of the loss averaged over the whole window: the same as
// one batch holding all its examples. The reference instead sums the
// micro-batches' means, which differs by about the accumulation factor;
// AdamW is insensitive to that scale except through eps and the clipping
// threshold.
func runWindow(p tasks.Task, task string, batches []*data.Batch, scale float64, seed func(micro int) uint64) (window, error) {
	units := make([]int, len(batches))
	total := 0
	for i, b := range batches {
		units[i] = p.LossUnits(task, b)
		total += units[i]
	}
	w := window{parts: map[string]float64{}}
	defer func() {
		for _, b := range batches {
			b.Release()
		}
	}()
	for i, b := range batches {
		share := float64(units[i]) / float64(total)
		p.Model().SetStepSeed(seed(i))
		res, err := p.Step(task, b, true, float32(scale*share))
		if err != nil {
			return w, fmt.Errorf("micro-batch %d: %w", i, err)
		}
		w.loss += share * res.Loss
		for name, v := range res.Parts {
			w.parts[name] += share * v
		}
		w.tokens += b.Tokens()
		w.slots += b.B * b.S
		w.examples += res.Examples
	}
	return w, nil
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
	o := EvalOptions{Budget: t.cfg.ValBatchSize, Workers: t.cfg.NWorkers}
	var summary []string
	for _, v := range t.val {
		res, err := Evaluate(t.ctx, t.pt, v.ds, v.tasks, o)
		if err != nil {
			return fmt.Errorf("validation at step %d: %s: %w", t.step, v.name, err)
		}
		for _, task := range v.tasks {
			key := task + "_" + v.name
			row := Row{{"step", t.step}, {"split", "val"}, {"task", key}}
			for _, name := range sortedKeys(res[task]) {
				row = append(row, Field{name, res[task][name]})
			}
			if err := t.metrics.Write(row); err != nil {
				return err
			}
			summary = append(summary, fmt.Sprintf("%s %s", key, formatMetrics(res[task])))
		}
	}
	fmt.Fprintf(t.opts.Log, "\npretrain: step %d validation: %s\n", t.step, strings.Join(summary, "; "))
	return WritePlots(filepath.Join(t.opts.Output, LogDir), t.metrics.records)
}

// save writes a checkpoint of the current step.
func (t *Trainer) save() error {
	if err := t.metrics.Sync(); err != nil {
		return err
	}
	st := &State{Step: t.step, AdamSteps: t.upd.Opt.Steps(), Seed: t.cfg.Seed, TaskKeys: t.keys,
		Scalers: t.upd.Scalers(), Positions: t.positions, ElapsedS: t.elapsed0 + time.Since(t.start).Seconds(),
		Exact: t.exactKeys(), Best: t.best}
	path, err := SaveCheckpoint(filepath.Join(t.opts.Output, CkptDir), t.m, t.upd.Opt, st, t.cfg.KeepCkpts, t.ckptFiles)
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
// to continue exactly: the data order and the schedule depend on them.
func (t *Trainer) exactKeys() map[string]string {
	c := t.cfg
	return map[string]string{
		"task": c.Task, "train_batch_size": fmt.Sprint(c.TrainBatchSize),
		"gradient_accumulation_steps": fmt.Sprint(c.GradientAccumulationSteps),
		"num_train_steps":             fmt.Sprint(c.NumTrainSteps), "model": string(t.mc.JSON()), "variant": c.Variant,
	}
}

// checkExact refuses to resume when a setting in want differs from the
// checkpoint's (saved); checkpoints written before these were recorded
// have none.
func checkExact(saved, want map[string]string, name, path string) error {
	for _, k := range sortedKeys(want) {
		old, ok := saved[k]
		if !ok || old == want[k] {
			continue
		}
		if k == "model" {
			return fmt.Errorf("%s --resume: the model config differs from the one checkpoint %s was trained with; resuming would not continue that run", name, path)
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
