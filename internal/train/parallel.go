package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"

	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/tasks"
)

// World is the data-parallel layout of a run: the replicas this process
// drives and the processes it shares the run with. Every process drives
// the same number of replicas; replica i of process p is global replica
// p*Replicas+i.
type World struct {
	// Replicas in this process (0 means 1).
	Replicas int
	// NewBackend returns the backend of local replica i; nil gives
	// Options.Backend to a single replica.
	NewBackend func(i int) (compute.Backend, error)
	// Rank is this process among Procs (0 means 1) processes.
	Rank, Procs int
	// Host is the collective between the processes on host memory; a
	// multi-process run needs it.
	Host HostComm
	// NewCollective, when set, makes the replicas' device collectives
	// (CUDA: NCCL); gradients then go through them instead of host memory.
	NewCollective CollectiveFunc
}

// CollectiveFunc returns the device collective of local replica i, on
// backend be, as global replica rank of world.
type CollectiveFunc func(i int, be compute.Backend, rank, world int) (compute.Collective, error)

func (w World) normal() World {
	w.Replicas = max(w.Replicas, 1)
	w.Procs = max(w.Procs, 1)
	return w
}

// global is the number of replicas in the world.
func (w World) global() int { return w.Replicas * w.Procs }

// multi reports whether other processes take part.
func (w World) multi() bool { return w.Procs > 1 }

// startMsg is what each process tells the others before building: rank 0
// says where the run starts (or why it cannot), every process how many
// replicas it drives.
type startMsg struct {
	Replicas int    `json:"replicas"`
	Resume   string `json:"resume,omitempty"`
	Err      string `json:"err,omitempty"`
}

// agreeStart shares rank 0's start decision (resumeFrom, or its error)
// with every process and checks that they drive the same number of
// replicas.
func (w World) agreeStart(resumeFrom string, err error) (string, error) {
	if !w.multi() {
		return resumeFrom, err
	}
	msg := startMsg{Replicas: w.Replicas, Resume: resumeFrom}
	if err != nil {
		msg.Err = err.Error()
	}
	b, _ := json.Marshal(msg)
	all, gerr := w.Host.AllGather(b)
	if err != nil {
		return "", err
	}
	if gerr != nil {
		return "", fmt.Errorf("rank %d: starting the run: %w", w.Rank, gerr)
	}
	var lead startMsg
	for p, raw := range all {
		var m startMsg
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", fmt.Errorf("rank %d: malformed start message: %w", p, err)
		}
		if p == 0 {
			lead = m
		}
		if m.Replicas != w.Replicas {
			return "", fmt.Errorf("rank %d drives %d replicas and rank %d drives %d: every process needs the same --replicas", p, m.Replicas, w.Rank, w.Replicas)
		}
	}
	if lead.Err != "" {
		return "", fmt.Errorf("rank 0: %s", lead.Err)
	}
	return lead.Resume, nil
}

// onWorker runs f on the replica's thread (inline without one).
func (r *replica) onWorker(f func() error) error {
	if r.work == nil {
		return f()
	}
	return r.work.run(f)
}

// startSync lays out the replicas' gradients for the all-reduce and starts
// the communication workers, when the world has more than one replica.
func (t *Trainer) startSync() error {
	w := t.world
	if w.global() == 1 {
		return nil
	}
	for _, r := range t.reps {
		var err error
		if t.layout, err = flattenGrads(r, BucketBytes); err != nil {
			return err
		}
	}
	if w.NewCollective == nil {
		if w.multi() && w.Host == nil {
			return fmt.Errorf("data parallel: %d processes but no host collective", w.Procs)
		}
		var peers HostComm
		if w.multi() {
			peers = w.Host
		}
		t.gsync = newHostSync(t.reps, peers)
		return nil
	}
	// Every replica joins at once: a communicator's creation waits for all
	// the ranks of the world.
	colls := make([]compute.Collective, len(t.reps))
	if err := onAll(t.reps, func(i int, r *replica) error {
		var err error
		colls[i], err = w.NewCollective(i, r.be, w.Rank*w.Replicas+i, w.global())
		return err
	}); err != nil {
		for _, c := range colls {
			if c != nil {
				_ = c.Close()
			}
		}
		return err
	}
	t.gsync = newDeviceSync(t.reps, colls)
	return nil
}

// sumHost adds vals over the processes (in place); one process has
// nothing to add.
func (t *Trainer) sumHost(vals []float64) error {
	if !t.world.multi() {
		return nil
	}
	return t.world.Host.AllReduceF64(vals)
}

// agreeStop reports whether any process wants to stop, so that every
// process stops after the same step.
func (t *Trainer) agreeStop(stop bool) (bool, error) {
	if !t.world.multi() {
		return stop, nil
	}
	v := []float64{0}
	if stop {
		v[0] = 1
	}
	if err := t.sumHost(v); err != nil {
		return false, fmt.Errorf("after step %d: %w", t.step, err)
	}
	return v[0] > 0, nil
}

// stepRow is a training step's metrics row and what the progress bar shows.
type stepRow struct {
	row        Row
	key        string
	loss       float64
	parts      map[string]float64
	tokensPerS float64
}

// trainStep runs one optimizer update: the window of the step's task,
// replicas x processes x gradient_accumulation_steps micro-batches, then
// the update. The window is the same whatever the world: replica g of the
// world takes micro-batches g*k .. g*k+k-1, each weighted by its share of
// the whole window's loss units and with the dropout seed of its index in
// the window, so R replicas with accumulation k give the gradient (to
// summation order) of one replica with R*k.
func (t *Trainer) trainStep() (stepRow, error) {
	c := t.cfg
	step := t.step + 1
	key := t.mixer.Task(step)
	task := t.taskOf[key]
	k := c.GradientAccumulationSteps
	w := t.world
	batches := make([]*data.Batch, w.global()*k)
	defer func() {
		for _, b := range batches {
			if b != nil {
				b.Release()
			}
		}
	}()
	var last data.Position
	for i := range batches {
		b, pos, err := t.loader[key].Next()
		if err != nil {
			return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
		}
		batches[i], last = b, pos
	}
	// This process's micro-batches are lo .. lo+Replicas*k-1.
	lo := w.Rank * w.Replicas * k
	units := make([]int, len(batches))
	sum := []float64{0}
	for i := lo; i < lo+w.Replicas*k; i++ {
		units[i] = t.task.LossUnits(task, batches[i])
		sum[0] += float64(units[i])
	}
	if err := t.sumHost(sum); err != nil {
		return stepRow{}, fmt.Errorf("step %d: %w", step, err)
	}
	total := int(sum[0])
	wins := make([]window, len(t.reps))
	ends := make([]time.Time, len(t.reps)) // when each replica's backward ended
	err := onAll(t.reps, func(i int, r *replica) error {
		r.m.Params.ZeroGrad()
		r.m.SetTrain(true)
		first := lo + i*k
		var err error
		wins[i], err = runWindow(r.task, task, batches[first:first+k], units[first:first+k], total, r.upd.Scale(key),
			func(j int) uint64 { return DropoutSeed(c.Seed, step, first+j) }, t.readyHook(i, r))
		ends[i] = time.Now()
		if t.gsync == nil {
			return err
		}
		// A micro-batch without a backward (or a failed one) never reached
		// some buckets; they are final too.
		t.flushReady(i, r)
		if werr := t.gsync.wait(i); err == nil {
			err = werr
		}
		return err
	})
	backwardEnd := slices.MaxFunc(ends, time.Time.Compare)
	if err != nil {
		return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
	}
	win, err := t.reduceWindows(wins)
	if err != nil {
		return stepRow{}, fmt.Errorf("step %d: %w", step, err)
	}
	t.positions[key] = last
	lr := LR(c.LearningRate, step, c.WarmupSteps, c.NumTrainSteps)
	infos := make([]UpdateInfo, len(t.reps))
	if err := onAll(t.reps, func(i int, r *replica) error {
		var err error
		infos[i], err = r.upd.Apply(key, lr)
		return err
	}); err != nil {
		return stepRow{}, fmt.Errorf("step %d: %s: %w", step, key, err)
	}
	info := infos[0]
	t.step = step
	t.tokens += win.tokens
	since := time.Since(t.start).Seconds()
	tps := float64(t.tokens) / max(since, 1e-9)
	row := Row{{"step", step}, {"task", key}, {"loss", win.loss}, {"lr", lr}, {"loss_scale", info.LossScale},
		{"tokens", win.tokens}, {"pad_frac", 1 - float64(win.tokens)/float64(win.slots)}, {"examples", win.examples},
		{"elapsed_s", t.elapsed0 + since}, {"tokens_per_s", tps}, {"grad_norm", info.GradNorm}, {"world_size", w.global()}}
	if t.gsync != nil {
		comm, hidden := t.gsync.stats(backwardEnd)
		row = append(row, Field{"allreduce_ms", comm.Seconds() * 1e3})
		if comm > 0 {
			row = append(row, Field{"allreduce_hidden", hidden.Seconds() / comm.Seconds()})
		}
	}
	if info.Skipped {
		row = append(row, Field{"skipped", true})
	}
	for _, name := range sortedKeys(win.parts) {
		row = append(row, Field{name, win.parts[name]})
	}
	return stepRow{row: row, key: key, loss: win.loss, parts: win.parts, tokensPerS: tps}, nil
}

// readyHook returns what replica i's last micro-batch calls as each stage
// of its backward ends: the buckets that stage completes go to the
// all-reduce. nil without data parallelism.
func (t *Trainer) readyHook(i int, r *replica) func(stage int) {
	if t.gsync == nil {
		return nil
	}
	r.sent = 0
	return func(stage int) {
		for b := t.layout.first[stage]; b < t.layout.first[stage+1]; b++ {
			t.gsync.ready(i, b)
			r.sent = b + 1
		}
	}
}

// flushReady sends the buckets the backward has not sent, so that the
// window's reduction always completes (a failed backward then fails the
// step as a whole).
func (t *Trainer) flushReady(i int, r *replica) {
	for b := r.sent; b < len(r.buckets); b++ {
		t.gsync.ready(i, b)
	}
	r.sent = len(r.buckets)
}

// window is what one accumulation window measured.
type window struct {
	loss                    float64 // the window's mean loss
	parts                   map[string]float64
	tokens, slots, examples int
}

// runWindow runs the forward and backward of the micro-batches of one
// replica's part of a window of task, accumulating into the parameters'
// gradients the gradient of the window's loss times scale. units are the
// micro-batches' loss units and total those of the whole window (every
// replica's); seed gives each micro-batch's dropout seed; onStage, when
// set, hears the stages of the last micro-batch's backward (the
// all-reduce starts as they end).
//
// Each micro-batch's loss is weighted by its share of the window's loss
// units (masked tokens, masked regions or examples), so the accumulated
// gradient is that of the loss averaged over the whole window: the same as
// one batch holding all its examples. The reference instead sums the
// micro-batches' means, which differs by about the accumulation factor;
// AdamW is insensitive to that scale except through eps and the clipping
// threshold. The returned loss and parts are this replica's share of the
// window's, so that the replicas' sum is the window's.
func runWindow(p tasks.Task, task string, batches []*data.Batch, units []int, total int, scale float64, seed func(micro int) uint64, onStage func(stage int)) (window, error) {
	w := window{parts: map[string]float64{}}
	for i, b := range batches {
		share := float64(units[i]) / float64(total)
		p.Model().SetStepSeed(seed(i))
		if onStage != nil && i == len(batches)-1 {
			p.Model().OnGradStage(onStage)
		}
		res, err := p.Step(task, b, true, float32(scale*share))
		p.Model().OnGradStage(nil)
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

// reduceWindows sums the replicas' window measures over the world.
func (t *Trainer) reduceWindows(ws []window) (window, error) {
	out := window{parts: map[string]float64{}}
	for _, w := range ws {
		out.loss += w.loss
		out.tokens += w.tokens
		out.slots += w.slots
		out.examples += w.examples
		for k, v := range w.parts {
			out.parts[k] += v
		}
	}
	if !t.world.multi() {
		return out, nil
	}
	names := sortedKeys(out.parts)
	vals := []float64{out.loss, float64(out.tokens), float64(out.slots), float64(out.examples), float64(len(names))}
	for _, n := range names {
		vals = append(vals, out.parts[n])
	}
	want := vals[4] * float64(t.world.Procs)
	if err := t.sumHost(vals); err != nil {
		return out, err
	}
	if vals[4] != want {
		return out, fmt.Errorf("the processes' losses have different parts (%v here)", names)
	}
	out.loss, out.tokens, out.slots, out.examples = vals[0], int(math.Round(vals[1])), int(math.Round(vals[2])), int(math.Round(vals[3]))
	for i, n := range names {
		out.parts[n] = vals[5+i]
	}
	return out, nil
}

// share makes a process of a multi-process run build only its own
// micro-batches of a task's stream: every process walks the same sequence
// of jobs (a window is the next global() x k of them), and the others'
// come out as nil batches. A single process builds everything.
func (w World) share(src data.Source, build data.BuildFunc[*data.Batch], k int) (data.Source, data.BuildFunc[*data.Batch]) {
	if !w.multi() {
		return src, build
	}
	lo := w.Rank * w.Replicas * k
	s := &shareSource{Source: src, per: w.global() * k, lo: lo, hi: lo + w.Replicas*k}
	return s, func(ctx context.Context, j data.Job) (*data.Batch, error) {
		if j.Indices == nil {
			return nil, nil
		}
		return build(ctx, j)
	}
}

// shareSource blanks the jobs of a window outside [lo, hi).
type shareSource struct {
	data.Source
	per, lo, hi, n int
}

func (s *shareSource) Next() (data.Job, error) {
	j, err := s.Source.Next()
	if err != nil {
		return j, err
	}
	if i := s.n % s.per; i < s.lo || i >= s.hi {
		j.Indices = nil
	}
	s.n++
	return j, nil
}

// shardOptions are the validation settings of local replica i: its shard
// of the world's.
func (t *Trainer) shardOptions(i int) EvalOptions {
	w := t.world
	o := EvalOptions{Budget: t.cfg.ValBatchSize, Workers: t.cfg.NWorkers, Shard: w.Rank*w.Replicas + i, Shards: w.global()}
	if t.cfg.Task == "vcr" {
		// train_vcr.py validates with a plain DataLoader: val_batch_size
		// counts examples there (10 in the official configs), not tokens.
		o.Budget, o.MaxExamples = math.MaxInt32, t.cfg.ValBatchSize
	}
	return o
}

// shardedSums runs a pretraining validation split across every replica of
// the world and adds up the sums.
func (t *Trainer) shardedSums(eval func(r *replica, o EvalOptions) (taskSums, error)) (taskSums, error) {
	parts := make([]taskSums, len(t.reps))
	var total taskSums
	if err := onAll(t.reps, func(i int, r *replica) error {
		var err error
		parts[i], err = eval(r, t.shardOptions(i))
		return err
	}); err != nil {
		return total, err
	}
	for _, p := range parts {
		total.add(p)
	}
	v := total.vec()
	if err := t.sumHost(v); err != nil {
		return total, err
	}
	total.set(v)
	return total, nil
}

// shardedEval evaluates a fine-tuning split across every replica of the
// world and joins the shards in dataset order.
func (t *Trainer) shardedEval(ds Dataset) (*tasks.Eval, error) {
	parts := make([]*tasks.Eval, len(t.reps))
	if err := onAll(t.reps, func(i int, r *replica) error {
		var err error
		parts[i], err = EvaluateDownstream(t.valCtx, r.down, ds, t.shardOptions(i))
		return err
	}); err != nil {
		return nil, err
	}
	local := parts[0]
	for _, p := range parts[1:] {
		if err := local.Append(p); err != nil {
			return nil, err
		}
	}
	if !t.world.multi() {
		return local, nil
	}
	b, err := json.Marshal(local)
	if err != nil {
		return nil, err
	}
	all, err := t.world.Host.AllGather(b)
	if err != nil {
		return nil, fmt.Errorf("gathering the validation: %w", err)
	}
	out := &tasks.Eval{}
	for p, raw := range all {
		part := &tasks.Eval{}
		if err := json.Unmarshal(raw, part); err != nil {
			return nil, fmt.Errorf("rank %d's validation: %w", p, err)
		}
		if err := out.Append(part); err != nil {
			return nil, err
		}
	}
	return out, nil
}
