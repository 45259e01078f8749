package train

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"

	"uniter/internal/data"
	"uniter/internal/tasks"
)

// validateITR checks the retrieval keys. The hard-negative recipe trains
// one positive per micro-batch and accumulates train_batch_size of them
// per update (the original's loop), so gradient_accumulation_steps
// becomes train_batch_size there.
func (c *Config) validateITR() error {
	bad := func(key string, v any, why string) error {
		return fmt.Errorf("config: %s = %v: %s", key, v, why)
	}
	switch {
	case c.NegativeSize < 1:
		return bad("negative_size", c.NegativeSize, "must be at least 1 (each positive needs a negative)")
	case c.HardNegSize < 0:
		return bad("hard_neg_size", c.HardNegSize, "must be >= 0 (0: the plain recipe)")
	case c.InfMinibatchSize < 1:
		return bad("inf_minibatch_size", c.InfMinibatchSize, "must be positive")
	case !(c.Margin >= 0) || math.IsInf(c.Margin, 0):
		return bad("margin", c.Margin, "must be >= 0")
	}
	if c.HardNegSize == 0 {
		return nil
	}
	switch {
	case c.HardNegSize > c.NegativeSize:
		return bad("hard_neg_size", c.HardNegSize, fmt.Sprintf("exceeds negative_size %d: the hard negatives are picked from the negative_size candidates", c.NegativeSize))
	case (c.NegativeSize+1)%8 != 0:
		return bad("negative_size", c.NegativeSize, "hard negatives need 1 + negative_size candidate rows in a multiple of 8, as the original's batch layout requires (e.g. 399)")
	case (c.HardNegSize+1)%8 != 0:
		return bad("hard_neg_size", c.HardNegSize, "hard negatives need 1 + hard_neg_size trained rows in a multiple of 8, as the original's batch layout requires (e.g. 31)")
	}
	c.GradientAccumulationSteps = c.TrainBatchSize
	return nil
}

// itrBatchExamples is the number of positives of one ITR training
// micro-batch: train_batch_size for the plain recipe, one for hard
// negatives (which accumulate train_batch_size of them).
func (c *Config) itrBatchExamples() int {
	if c.HardNegSize > 0 {
		return 1
	}
	return c.TrainBatchSize
}

// itrOptions are the dataset options of an ITR run.
func (c *Config) itrOptions() data.ITROptions {
	return data.ITROptions{NegSize: c.NegativeSize, HardNeg: c.HardNegSize > 0, BatchExamples: c.itrBatchExamples()}
}

// exampleSampler batches n examples at a time in a shuffled order, the
// last partial batch dropped: the original's DataLoader(shuffle=True,
// drop_last=True) for tasks that batch by examples. The lengths it is
// given must all be 1.
func exampleSampler(n int, seed uint64) data.TokenBucketSampler {
	return data.TokenBucketSampler{MaxTokens: n, BucketSize: 1 << 30, SizeMultiple: 1, DropLast: true, Seed: seed}
}

// ITREvalOptions configure a retrieval evaluation.
type ITREvalOptions struct {
	// Full ranks every text against every image; otherwise each text
	// against its image and the Candidates-1 images after it in the pool
	// (the original's cheap validation, ItmValDataset).
	Full bool
	// Candidates is inf_minibatch_size.
	Candidates int
	// Progress, when set, is called with the texts done and the total
	// (the full ranking: the pairs).
	Progress func(done, total int)
	// Budget is the joint positions per encoder batch of the full
	// ranking (0: 8192).
	Budget int
	// Exact batches only pairs of one joint length (tasks.RankOptions).
	Exact bool
	// Slow scores the full ranking pair by pair in padded chunks, as the
	// cheap validation does (the fast ranking's reference in tests).
	Slow bool
}

// ITRResult is a retrieval evaluation: the metrics and, for the full
// ranking, the score matrix [texts, images] with its row and column ids.
type ITRResult struct {
	Metrics map[string]float64
	Scores  []float32
	TxtIDs  []string
	ImgIDs  []string
}

// EvaluateITR scores ds's pairs with the task in evaluation mode. The
// full ranking orders the images by region count, as the original's
// ItmEvalDataset (stable), which keeps the padding of a chunk small.
func EvaluateITR(ctx context.Context, task *tasks.ITR, ds *data.ITRSet, o ITREvalOptions) (*ITRResult, error) {
	m := task.Model()
	train := m.Training()
	m.SetTrain(false)
	defer m.SetTrain(train)
	nt, ni := ds.Len(), len(ds.ImgNames())
	if !o.Full {
		if o.Candidates > ni {
			return nil, fmt.Errorf("inf_minibatch_size = %d: the split has only %d images to draw the validation candidates from", o.Candidates, ni)
		}
		hits := [3]int{}
		for i := range nt {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			gt := ds.GT(i)
			imgs := make([]int, o.Candidates)
			for k := range imgs {
				imgs[k] = (gt + k) % ni
			}
			scores, err := scoreText(task, ds, i, imgs)
			if err != nil {
				return nil, err
			}
			r := tasks.RankOf(scores, 0)
			for k, lim := range []int{1, 5, 10} {
				if r < lim {
					hits[k]++
				}
			}
			if o.Progress != nil {
				o.Progress(i+1, nt)
			}
		}
		met := map[string]float64{"n": float64(nt)}
		for k, name := range []string{"recall_1", "recall_5", "recall_10"} {
			met[name] = float64(hits[k]) / float64(nt)
		}
		met["r_mean"] = (met["recall_1"] + met["recall_5"] + met["recall_10"]) / 3
		return &ITRResult{Metrics: met}, nil
	}
	cols := ITRColumns(ds)
	scores := make([]float32, nt*ni)
	if !o.Slow {
		ro := tasks.RankOptions{Budget: o.Budget, Exact: o.Exact, Cols: cols, Sink: func(_, t0, t1 int, s []float32) error {
			copy(scores[t0*ni:t1*ni], s)
			return nil
		}}
		if o.Progress != nil {
			ro.Progress = func(pairs int) { o.Progress(pairs, nt*ni) }
		}
		if err := task.RankAll(ctx, ds, ro); err != nil {
			return nil, err
		}
		return ITRRanking(ds, cols, scores), nil
	}
	for i := range nt {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s, err := scoreText(task, ds, i, cols)
		if err != nil {
			return nil, err
		}
		copy(scores[i*ni:], s)
		if o.Progress != nil {
			o.Progress(i+1, nt)
		}
	}
	return ITRRanking(ds, cols, scores), nil
}

// scoreText scores text i of ds against the images imgs, one row each
// (the pairwise way, without the full ranking's shared embeddings).
func scoreText(task *tasks.ITR, ds *data.ITRSet, i int, imgs []int) ([]float32, error) {
	rows := make([]*data.Example, len(imgs))
	for k, j := range imgs {
		ex, err := ds.Pair(i, j)
		if err != nil {
			return nil, err
		}
		rows[k] = ex
	}
	return task.ScoreRows(rows)
}

// ITRColumns is the image order of the full ranking: by region count,
// stable, as the original's ItmEvalDataset (which keeps a chunk's padding
// small there).
func ITRColumns(ds *data.ITRSet) []int {
	cols := make([]int, len(ds.ImgNames()))
	for j := range cols {
		cols[j] = j
	}
	sort.SliceStable(cols, func(a, b int) bool { return ds.NBB(cols[a]) < ds.NBB(cols[b]) })
	return cols
}

// ITRRanking reduces a full score matrix (rows: ds's texts; columns: its
// images in the order cols) to the retrieval metrics.
func ITRRanking(ds *data.ITRSet, cols []int, scores []float32) *ITRResult {
	nt, ni := ds.Len(), len(cols)
	colOf := make([]int, len(ds.ImgNames()))
	imgIDs := make([]string, ni)
	for c, j := range cols {
		colOf[j] = c
		imgIDs[c] = ds.ImgNames()[j]
	}
	gt := make([]int, nt)
	for i := range gt {
		gt[i] = colOf[ds.GT(i)]
	}
	colTexts := make([][]int, ni)
	for c, j := range cols {
		colTexts[c] = ds.ImageTexts(j)
	}
	met := tasks.ITRMetrics(scores, nt, ni, gt, colTexts)
	return &ITRResult{Metrics: met, Scores: scores, TxtIDs: ds.IDs(), ImgIDs: imgIDs}
}

// validateITR evaluates each split by the cheap validation or, with
// full_val, the full ranking, logs a row per split and keeps the best
// checkpoint by the val split's r_mean. Every process computes the whole
// evaluation (it is deterministic), so no gathering is needed.
func (t *Trainer) validateITR(task *tasks.ITR) error {
	var summary []string
	for _, s := range t.splits {
		ds, ok := s.ds.(*data.ITRSet)
		if !ok {
			return fmt.Errorf("validation: itr %s split: one txt_db with its img_db expected", s.name)
		}
		var res *ITRResult
		err := t.reps[0].onWorker(func() error {
			var err error
			res, err = EvaluateITR(t.valCtx, task, ds, ITREvalOptions{Full: t.cfg.FullVal, Candidates: t.cfg.InfMinibatchSize})
			return err
		})
		if err != nil {
			return fmt.Errorf("validation at step %d: %s: %w", t.step, s.name, err)
		}
		if err := t.writeValRow(s.name, "itr", res.Metrics); err != nil {
			return err
		}
		summary = append(summary, fmt.Sprintf("%s %s", s.name, formatMetrics(res.Metrics)))
		if t.world.Rank != 0 || s.name != "val" {
			continue
		}
		path, err := t.keepBest("val r_mean", res.Metrics["r_mean"])
		if err != nil {
			return err
		}
		if path != "" {
			summary = append(summary, "new best, saved "+path)
		}
	}
	fmt.Fprintf(t.opts.Log, "\nfinetune: step %d validation: %s\n", t.step, strings.Join(summary, "; "))
	return t.plots()
}
