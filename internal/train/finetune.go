package train

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"uniter/internal/atomicfile"
	"uniter/internal/ckpt"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// ResultsDir of a fine-tuning run holds each validation's predictions in
// the task's official format.
const ResultsDir = "results"

// evalSplit is one fine-tuning validation split ("val", "test").
type evalSplit struct {
	name string
	ds   Dataset
}

// buildDownstream creates r's model with the task's head and loads sd
// (the checkpoint being resumed or the configured initial one, read from
// src) with the task's model surgery; log reports what was loaded.
func (t *Trainer) buildDownstream(r *replica, src string, sd *ckpt.StateDict, log bool) error {
	c := t.cfg
	m, err := model.New(r.be, t.mc, c.Seed)
	if err != nil {
		return err
	}
	o := tasks.DownstreamOptions{Variant: c.Variant, UseImgType: c.UseImgType, FP16: c.FP16, MLP: c.MLP}
	if c.Task == "vqa" {
		// A resumed run keeps the vocabulary it was trained with: the one
		// stored beside its checkpoint.
		var from string
		if o.Answers, from, err = tasks.LoadAnswers(c.Ans2Label, src); err != nil {
			return err
		}
		if log {
			fmt.Fprintf(t.opts.Log, "finetune: vqa: %d answers from %s\n", len(o.Answers), from)
		}
		t.ckptFiles = map[string][]byte{tasks.Ans2LabelFile: tasks.AnswersJSON(o.Answers)}
	}
	if src != "" && src == c.Checkpoint {
		// checkpoint_from describes the configured checkpoint, not a
		// resumed one (always VCR-grown).
		o.CheckpointFrom = c.CheckpointFrom
	}
	o.Margin, o.HardNegSize, o.InfMinibatch = c.Margin, c.HardNegSize, c.InfMinibatchSize
	down, err := tasks.NewDownstream(c.Task, m, o)
	if err != nil {
		return err
	}
	rep, err := down.Load(sd, src, false)
	if err != nil {
		return err
	}
	if log {
		t.logLoad(src, rep)
	}
	r.m, r.down, r.task = m, down, down
	return nil
}

// openDownstreamData opens the training dbs (concatenated, as the
// reference's ConcatDatasetWithLens), the validation splits and the task's
// single loss key.
func (t *Trainer) openDownstreamData() error {
	c := t.cfg
	t.dbs = NewDBs(c.ImgDBOptions())
	if c.Task == "re" {
		if err := t.dbs.OpenREGroundTruth(false, append([]string{c.ValImgDB, c.TestImgDB}, c.TrainImgDBs...)...); err != nil {
			return err
		}
	}
	opts := data.DownstreamOptions{MaxTxtLen: c.MaxTxtLen, ImgDim: t.mc.ImgDim, MaxWords: t.mc.MaxPositionEmbeddings - 2, Train: true}
	opts.Seed, opts.ITR = c.Seed, c.itrOptions()
	ds, err := t.openSplit("train", c.TrainTxtDBs, c.TrainImgDBs, opts)
	if err != nil {
		return err
	}
	if c.Task == "re" && c.ValidSteps == 0 {
		if c.ValidSteps, err = t.epochSteps(ds); err != nil {
			return err
		}
		fmt.Fprintf(t.opts.Log, "finetune: re: validating every epoch, %d steps\n", c.ValidSteps)
	}
	key := c.Task
	t.keys = []string{key}
	t.taskOf[key] = key
	t.train[key] = ds
	if t.mixer, err = data.NewTaskMixer(t.keys, []int{1}, c.Seed); err != nil {
		return err
	}
	// Validation keeps every text, as the reference's TxtTokLmdb(db, -1).
	opts.MaxTxtLen, opts.Train = -1, false
	// Retrieval validation draws no negatives.
	opts.ITR = data.ITROptions{}
	for _, s := range []struct{ name, txt, img string }{{"val", c.ValTxtDB, c.ValImgDB}, {"test", c.TestTxtDB, c.TestImgDB}} {
		if s.txt == "" {
			continue
		}
		ds, err := t.openSplit(s.name, []string{s.txt}, []string{s.img}, opts)
		if err != nil {
			return err
		}
		t.splits = append(t.splits, evalSplit{name: s.name, ds: ds})
	}
	return nil
}

// openSplit opens the txt/img db pairs of one split as one dataset.
func (t *Trainer) openSplit(split string, txtDirs, imgDirs []string, o data.DownstreamOptions) (Dataset, error) {
	var sets []member
	var itr []*data.ITRSet
	per := 1
	if t.cfg.Task == "nlvr2" && t.cfg.Variant != tasks.NLVR2Triplet {
		per = 2
	}
	if t.cfg.Task == "vcr" {
		per = data.VCRChoiceRows // only training splits are concatenated
	}
	for i, dir := range txtDirs {
		ds, err := OpenDownstream(t.dbs, t.down, dir, imgDirs[i], o, t.mc.VocabSize)
		if err != nil {
			return nil, fmt.Errorf("%s split: %w", split, err)
		}
		if len(txtDirs) == 1 {
			return ds, nil
		}
		if is, ok := ds.(*data.ITRSet); ok {
			// Retrieval rows depend on the epoch (negatives): the sets
			// concatenate themselves.
			itr = append(itr, is)
			continue
		}
		rs, ok := ds.(rowSet)
		if !ok {
			return nil, fmt.Errorf("%s split: %s datasets cannot be concatenated", split, t.down.Name())
		}
		sets = append(sets, member{Dataset: rs, n: rs.Len(), rows: func(_ string, _, i int) ([]*data.Example, error) { return rs.Rows(i) }})
	}
	if len(itr) > 0 {
		return data.NewITRConcat(itr), nil
	}
	return newConcat(sets, t.mc.ImgDim, per), nil
}

// rowSet is a downstream dataset read one example at a time (as batch
// rows), which concatenation needs.
type rowSet interface {
	Dataset
	Len() int
	Rows(i int) ([]*data.Example, error)
}

// OpenDownstream opens one txt_db/img_db pair as task's dataset, checking
// that the txt_db's vocabulary fits the model.
func OpenDownstream(c *DBs, task tasks.Downstream, txtDir, imgDir string, o data.DownstreamOptions, vocabSize int) (Dataset, error) {
	txt, err := c.Txt(txtDir)
	if err != nil {
		return nil, err
	}
	if err := checkVocab(txt.Meta(), txtDir, vocabSize); err != nil {
		return nil, err
	}
	var ds Dataset
	if v, ok := task.(vcrOpener); ok {
		ds, err = openVCR(c, v, txt, imgDir, o)
	} else {
		var img *db.ImgDB
		if img, err = c.Img(imgDir); err == nil {
			ds, err = task.Open(txt, img, o)
		}
	}
	if err != nil {
		return nil, err
	}
	if n, ok := ds.(interface{ Len() int }); ok && n.Len() == 0 {
		return nil, fmt.Errorf("txt_db %s: no examples", txtDir)
	}
	return ds, nil
}

// validateDownstream evaluates every split with the code of uniter eval,
// logs a row per split, writes the predictions to results/ and keeps the
// best checkpoint by the val split's acc.
func (t *Trainer) validateDownstream() error {
	if it, ok := t.down.(*tasks.ITR); ok {
		return t.validateITR(it)
	}
	var summary []string
	for _, s := range t.splits {
		ev, err := t.shardedEval(s.ds)
		if err != nil {
			return fmt.Errorf("validation at step %d: %s: %w", t.step, s.name, err)
		}
		metrics := t.down.Metrics(ev)
		if err := t.writeValRow(s.name, t.down.Name(), metrics); err != nil {
			return err
		}
		summary = append(summary, fmt.Sprintf("%s %s", s.name, formatMetrics(metrics)))
		if t.world.Rank != 0 {
			// Rank 0 writes the world's predictions and best checkpoint.
			continue
		}
		if err := t.writeResults(s.name, ev); err != nil {
			return err
		}
		if acc, ok := metrics["acc"]; ok && s.name == "val" {
			path, err := t.keepBest("val acc", acc)
			if err != nil {
				return err
			}
			if path != "" {
				summary = append(summary, "new best, saved "+path)
			}
		}
	}
	fmt.Fprintf(t.opts.Log, "\nfinetune: step %d validation: %s\n", t.step, strings.Join(summary, "; "))
	return t.plots()
}

// writeResults stores a split's predictions as results/{split}_results_{step}_rank0
// with the task's extension, the official training scripts' naming.
func (t *Trainer) writeResults(split string, ev *tasks.Eval) error {
	return t.writeResultsAs(fmt.Sprintf("%s_results_%d_rank0", split, t.step), ev)
}

// writeResultsAs stores predictions as results/{name} with the task's
// extension.
func (t *Trainer) writeResultsAs(name string, ev *tasks.Eval) error {
	ext, b, err := t.down.Results(ev, true)
	if err != nil {
		return err
	}
	dir := filepath.Join(t.opts.Output, ResultsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("finetune: %w", err)
	}
	path := filepath.Join(dir, name+ext)
	if err := atomicfile.WriteFile(path, b); err != nil {
		return fmt.Errorf("finetune: %s: %w", path, err)
	}
	return nil
}

// keepBest makes value of metric the best so far when it beats it, saving
// the model as ckpt/best; it returns the path saved, "" when not better.
func (t *Trainer) keepBest(metric string, value float64) (string, error) {
	if t.best.Metric != "" && value <= t.best.Value {
		return "", nil
	}
	t.best = Best{Step: t.step, Metric: metric, Value: value}
	var path string
	err := t.reps[0].onWorker(func() error {
		var err error
		path, err = SaveBest(filepath.Join(t.opts.Output, CkptDir), t.m, t.best, t.ckptFiles)
		return err
	})
	return path, err
}
