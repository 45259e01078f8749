package train

import (
	"context"
	"errors"
	"io"

	"uniter/internal/data"
	"uniter/internal/tasks"
)

// Metrics are one task's evaluation numbers, named as the reference's
// validation logs them.
type Metrics map[string]float64

// EvalOptions configure an evaluation pass.
type EvalOptions struct {
	// Budget is the token budget of a batch (val_batch_size).
	Budget int
	// MaxExamples caps a batch's examples (0: no cap).
	MaxExamples int
	// Workers decode batches ahead of the model.
	Workers int
	// KeepLogits keeps every example's logits on the host (--save-logits).
	KeepLogits bool
	// Progress, when set, is called after each batch with the examples
	// done and the total.
	Progress func(done, total int)
	// Shard of Shards (0 of 0 or 1: everything) is the part of the batches
	// this pass evaluates: the data-parallel replicas split a validation
	// into consecutive runs of batches, so that their results concatenated
	// in shard order are in dataset order.
	Shard, Shards int
}

// evalLoader reads every example of key's epoch 0 once, in dataset order,
// in batches of at most o.Budget padded tokens; total is the number of
// examples.
func evalLoader(ctx context.Context, ds Dataset, key string, o EvalOptions) (_ *data.Loader[*data.Batch], total int, _ error) {
	lens, err := ds.Lens(key, 0)
	if err != nil {
		return nil, 0, err
	}
	batches, err := data.SequentialBatches(lens, o.Budget, o.MaxExamples)
	if err != nil {
		return nil, 0, err
	}
	if o.Shards > 1 {
		n := len(batches)
		batches = batches[o.Shard*n/o.Shards : (o.Shard+1)*n/o.Shards]
		total = 0
		for _, b := range batches {
			total += len(b)
		}
	} else {
		total = len(lens)
	}
	return data.NewLoader(ctx, data.NewSliceSource(batches), ds.Build(key), o.Workers, 2*max(o.Workers, 1)), total, nil
}

// EvaluateDownstream runs a downstream task over every example of ds in
// evaluation mode, in the order of the dataset: uniter eval and the
// validation of uniter finetune are this function.
func EvaluateDownstream(ctx context.Context, task tasks.Downstream, ds Dataset, o EvalOptions) (*tasks.Eval, error) {
	key := task.Name()
	loader, total, err := evalLoader(ctx, ds, key, o)
	if err != nil {
		return nil, err
	}
	defer loader.Close()
	task.Model().SetTrain(false)
	ev := &tasks.Eval{KeepLogits: o.KeepLogits}
	for {
		b, _, err := loader.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		res, err := task.Step(key, b, false, 1)
		if err == nil {
			err = ev.Add(task, b, res)
		}
		b.Release()
		if err != nil {
			return nil, err
		}
		if o.Progress != nil {
			o.Progress(len(ev.IDs), total)
		}
	}
	return ev, nil
}

// EvaluateTask runs task over every example of ds (epoch 0: the masks and
// ITM negatives the seed gives) in evaluation mode and reduces the results
// as the reference's validate_* functions of pretrain.py do, summing over
// the batches and dividing once at the end:
//
//	mlm:   loss (cross-entropy summed over masked tokens / their number),
//	       acc (argmax over the vocabulary, per masked token)
//	mrfr:  loss (squared error summed / (masked regions * img_dim))
//	mrc:   loss (cross-entropy with class 0 ignored, summed / masked
//	       regions), acc (argmax of logits[1:] against argmax of the soft
//	       labels[1:], per masked region)
//	mrckl: loss (KL divergence summed over classes and regions / masked
//	       regions), acc (argmax of the logits over every class, background
//	       included, against argmax of the soft labels, per masked region)
//	itm:   loss (cross-entropy summed / examples), acc, and with WRA
//	       ot_loss ((sum of matched - sum of mismatched distances) /
//	       examples), ot_pos and ot_neg (the sums of matched and of
//	       mismatched distances / examples: 0 without such pairs), and
//	       ours, ot_pos_mean and ot_neg_mean (the mean distance of a matched
//	       and of a mismatched pair, where there are some)
//
// plus n, the number of predictions. The model's train/eval mode is left in
// evaluation mode.
func EvaluateTask(ctx context.Context, p *tasks.Pretrain, ds Dataset, task string, o EvalOptions) (Metrics, error) {
	sums, err := evalSums(ctx, p, ds, task, o)
	if err != nil {
		return nil, err
	}
	return sums.metrics(p, task), nil
}

// taskSums are what a pretraining task's validation sums over batches
// before dividing once: shards of a validation add up.
type taskSums struct {
	loss, xe, ot, pos, neg float64
	correct, count         float64
	nPos, nNeg             float64
}

func (s *taskSums) add(o taskSums) {
	v, w := s.vec(), o.vec()
	for i := range v {
		v[i] += w[i]
	}
	s.set(v)
}

func (s *taskSums) vec() []float64 {
	return []float64{s.loss, s.xe, s.ot, s.pos, s.neg, s.correct, s.count, s.nPos, s.nNeg}
}

func (s *taskSums) set(v []float64) {
	s.loss, s.xe, s.ot, s.pos, s.neg, s.correct, s.count, s.nPos, s.nNeg = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
}

// evalSums runs task over ds (o's shard of it) and returns its sums.
func evalSums(ctx context.Context, p *tasks.Pretrain, ds Dataset, task string, o EvalOptions) (taskSums, error) {
	var s taskSums
	loader, _, err := evalLoader(ctx, ds, task, o)
	if err != nil {
		return s, err
	}
	defer loader.Close()
	p.M.SetTrain(false)
	for {
		b, _, err := loader.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return s, err
		}
		res, err := p.Step(task, b, false, 1)
		if err != nil {
			return s, err
		}
		s.correct += float64(res.Correct)
		s.count += float64(res.Count)
		if task == data.TaskITM {
			s.xe += res.Parts["itm_loss"] * float64(res.Count)
			s.ot += res.Parts["ot_loss"] * float64(res.Count)
			pos := 0
			for _, y := range b.Labels {
				pos += int(y)
			}
			// Parts hold the batch's mean distances (absent without such
			// pairs); the reference sums the distances themselves.
			s.pos += res.Parts["ot_pos"] * float64(pos)
			s.neg += res.Parts["ot_neg"] * float64(b.B-pos)
			s.nPos += float64(pos)
			s.nNeg += float64(b.B - pos)
		} else {
			s.loss += res.Loss * float64(res.Count)
		}
		b.Release()
	}
	return s, nil
}

// metrics divides the sums as the reference's validate_* functions do.
func (s taskSums) metrics(p *tasks.Pretrain, task string) Metrics {
	m := Metrics{"n": s.count}
	if s.count == 0 {
		return m
	}
	n := s.count
	switch task {
	case data.TaskMLM, data.TaskMRC:
		m["loss"], m["acc"] = s.loss/n, s.correct/n
	case data.TaskMRFR:
		// Training averages over every feature element; the reference's
		// validation sums and divides by img_dim and the masked regions.
		m["loss"] = s.loss / n
	case data.TaskMRCKL:
		// Training averages over every class of every region; the
		// reference's validation sums over classes (reduction='sum' / n_feat).
		m["loss"] = s.loss / n * float64(p.M.Cfg.ImgLabelDim)
		m["acc"] = s.correct / n
	case data.TaskITM:
		m["loss"], m["acc"] = s.xe/n, s.correct/n
		if p.OTWeight != 0 {
			// validate_itm divides every OT sum by the examples.
			m["ot_loss"] = s.ot / n
			m["ot_pos"], m["ot_neg"] = s.pos/n, s.neg/n
			if s.nPos > 0 {
				m["ot_pos_mean"] = s.pos / s.nPos
			}
			if s.nNeg > 0 {
				m["ot_neg_mean"] = s.neg / s.nNeg
			}
		}
	}
	return m
}

// Evaluate runs EvaluateTask for each task, keyed by task.
func Evaluate(ctx context.Context, p *tasks.Pretrain, ds Dataset, taskNames []string, o EvalOptions) (map[string]Metrics, error) {
	out := map[string]Metrics{}
	for _, t := range taskNames {
		m, err := EvaluateTask(ctx, p, ds, t, o)
		if err != nil {
			return nil, err
		}
		out[t] = m
	}
	return out, nil
}
