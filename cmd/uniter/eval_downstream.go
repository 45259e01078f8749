package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/schollz/progressbar/v3"

	"uniter/internal/atomicfile"
	"uniter/internal/ckpt"
	"uniter/internal/data"
	"uniter/internal/model"
	"uniter/internal/npy"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

// runEvalDownstream evaluates a fine-tuned checkpoint on a downstream task
// with the code the trainer validates with, and writes metrics.json, the
// task's official output file and, with --save-logits, ids.json and
// logits.npy.
func runEvalDownstream(ctx context.Context, o evalOpts, stdout, stderr io.Writer) error {
	m, sd, err := downstreamModel(&o, stderr)
	if err != nil {
		return err
	}
	dopts := tasks.DownstreamOptions{Variant: o.variant, UseImgType: o.useImgType}
	if o.task == "vqa" {
		var src string
		if dopts.Answers, src, err = tasks.LoadAnswers(o.ans2label, o.mf.checkpoint); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "eval: vqa: %d answers from %s\n", len(dopts.Answers), src)
	}
	imgEntry := o.imgDB
	if o.task == "vcr" {
		// inf_vcr.py scores every rationale after every answer.
		dopts.VCRAllRationales = true
		imgEntry = train.VCRImgEntry(o.gtImgDB, o.imgDB)
	}
	task, err := tasks.NewDownstream(o.task, m, dopts)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	rep, err := task.Load(sd, o.mf.checkpoint, false)
	if err != nil {
		return err
	}
	if len(rep.Missing) > 0 && o.initSeed < 0 {
		// Scoring a randomly initialised head would look like a result.
		holds := "it holds " + headKeys(rep.Unexpected) + ": was it fine-tuned for another task or variant?"
		if len(rep.PretrainHeads) > 0 && len(rep.Unexpected) == 0 {
			holds = "it holds the pretraining heads: a pretraining checkpoint, to fine-tune first (uniter finetune)"
		}
		return fmt.Errorf("eval --task %s: checkpoint %s has no %s head (missing %d parameters: %s); %s",
			o.task, o.mf.checkpoint, o.task, len(rep.Missing), strings.Join(rep.Missing[:min(3, len(rep.Missing))], ", "), holds)
	}
	if s := rep.String(); s != "" {
		fmt.Fprintf(stderr, "uniter: checkpoint %s: %s\n", o.mf.checkpoint, s)
	}
	dbs := train.NewDBs(o.imgOpts)
	defer dbs.Close()
	ds, err := train.OpenDownstream(dbs, task, o.txtDB, imgEntry, data.DownstreamOptions{MaxTxtLen: o.maxTxtLen, ImgDim: m.Cfg.ImgDim, MaxWords: m.Cfg.MaxPositionEmbeddings - 2}, m.Cfg.VocabSize)
	if err != nil {
		return err
	}
	eo := train.EvalOptions{Budget: o.batchTokens, Workers: o.workers, KeepLogits: o.saveLogits}
	lens, err := ds.Lens(task.Name(), 0)
	if err != nil {
		return err
	}
	// The bar and its clock start before the first batch (see
	// newProgressBar).
	var bar *progressbar.ProgressBar
	if len(lens) > 0 {
		bar = newProgressBar(stderr, len(lens), "eval "+o.task)
		eo.Progress = func(done, _ int) { _ = bar.Set(done) }
	}
	ev, err := train.EvaluateDownstream(ctx, task, ds, eo)
	if err != nil {
		return err
	}
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	metrics := task.Metrics(ev)
	report := map[string]any{"task": o.task, "checkpoint": o.mf.checkpoint, "txt_db": o.txtDB, "img_db": o.imgDB}
	if o.initSeed >= 0 {
		report["init_seed"] = o.initSeed
	}
	if o.task == "nlvr2" {
		report["variant"] = o.variant
	}
	if o.gtImgDB != "" {
		report["gt_img_db"] = o.gtImgDB
	}
	for k, v := range metrics {
		report[k] = v
	}
	b, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	ext, results, err := task.Results(ev, false)
	if err != nil {
		return err
	}
	type file struct {
		name string
		b    []byte
	}
	files := []file{{"results" + ext, results}}
	if o.task == "vcr" {
		// inf_vcr.py's submission csv beside its json.
		csv, err := tasks.VCRSubmissionCSV(ev)
		if err != nil {
			return err
		}
		files = append(files, file{"results.csv", csv})
	}
	if o.saveLogits {
		path := filepath.Join(o.out, "logits.npy")
		shape, logits := tasks.SavedLogits(task, ev)
		if err := npy.WriteFloat32(path, shape, logits); err != nil {
			return fmt.Errorf("eval: %s: %w", path, err)
		}
	}
	if o.saveLogits {
		ids, _ := json.Marshal(ev.IDs)
		files = append(files, file{"ids.json", ids})
	}
	// metrics.json last: its presence says the evaluation finished.
	files = append(files, file{"metrics.json", append(b, '\n')})
	for _, f := range files {
		path := filepath.Join(o.out, f.name)
		if err := atomicfile.WriteFile(path, f.b); err != nil {
			return fmt.Errorf("eval: %s: %w", path, err)
		}
	}
	if !ev.Labelled() {
		fmt.Fprintf(stdout, "%s: %d examples without targets: predictions only\n", o.task, len(ev.IDs))
	} else {
		fmt.Fprintf(stdout, "%s:", o.task)
		for _, k := range []string{"acc", "acc_qa", "acc_qar", "loss", "consistency", "n"} {
			if v, ok := metrics[k]; ok {
				fmt.Fprintf(stdout, "  %s %.4f", k, v)
			}
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stderr, "eval: wrote %s\n", o.out)
	return nil
}

// downstreamModel resolves --checkpoint (a run's directory to its
// checkpoint), builds the model to evaluate on --device and reads its
// weights: the checkpoint's, or with --init-seed the model a "uniter
// finetune" run with that seed and model config starts from (a fresh head
// on the backbone of --checkpoint when given, else on a fresh backbone):
// the untrained baseline of a run.
func downstreamModel(o *evalOpts, log io.Writer) (*model.Model, *ckpt.StateDict, error) {
	var err error
	if o.mf.checkpoint, err = resolveCheckpoint(o.mf.checkpoint, log); err != nil {
		return nil, nil, fmt.Errorf("eval: %w", err)
	}
	be, err := o.mf.backend()
	if err != nil {
		return nil, nil, err
	}
	if o.initSeed < 0 {
		return o.mf.build(be)
	}
	m, err := initModel(be, *o, nil, log)
	if err != nil || o.mf.checkpoint == "" {
		return m, nil, err
	}
	sd, _, err := model.ReadCheckpoint(o.mf.checkpoint)
	return m, sd, err
}

// headKeys summarises the head parameters of a checkpoint by their first
// name component (vqa_output, nlvr2_output, attn1, ...).
func headKeys(unexpected []string) string {
	var heads []string
	for _, k := range unexpected {
		h, _, _ := strings.Cut(k, ".")
		if !slices.Contains(heads, h) {
			heads = append(heads, h)
		}
	}
	if len(heads) == 0 {
		return "no other head"
	}
	return strings.Join(heads, ", ") + " weights"
}
