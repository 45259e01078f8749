package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"uniter/internal/atomicfile"
	"uniter/internal/data"
	"uniter/internal/npy"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

// reDefaultBatch is inf_re.py's default batch size, in sentences.
const reDefaultBatch = 256

// rePass is one img_db an RE checkpoint is evaluated on.
type rePass struct {
	suffix string // of the metric and file names: "" or "_gt"
	dir    string
	gt     bool
	ds     *data.RESet
	ev     *tasks.Eval
}

// runEvalRE evaluates an RE checkpoint as inf_re.py does: every sentence
// of the txt_db on the boxes of --img-db (detected, or ground truth when
// its path has "coco_gt", as the original decides) and, with --gt-img-db,
// also on the ground-truth boxes (suffix _gt in metrics and file names).
// Every output is written only after every pass has succeeded.
func runEvalRE(ctx context.Context, o evalOpts, stdout, stderr io.Writer) error {
	m, sd, err := downstreamModel(&o, stderr)
	if err != nil {
		return err
	}
	mlp := o.reMLP
	if mlp == 0 {
		mlp = tasks.REMLPOf(sd)
	}
	task, err := tasks.NewRE(m, mlp, false)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	rep, err := task.Load(sd, o.mf.checkpoint, false)
	if err != nil {
		return err
	}
	if len(rep.Missing) > 0 && o.initSeed < 0 {
		return fmt.Errorf("eval --task re: checkpoint %s has no re head with %d layer(s) (missing %d parameters: %s); it holds %s",
			o.mf.checkpoint, mlp, len(rep.Missing), strings.Join(rep.Missing[:min(3, len(rep.Missing))], ", "), headKeys(rep.Unexpected))
	}
	if s := rep.String(); s != "" {
		fmt.Fprintf(stderr, "uniter: checkpoint %s: %s\n", o.mf.checkpoint, s)
	}
	if !o.imgOptsSet {
		if err := runImgOptions(&o, stderr); err != nil {
			return err
		}
	}
	passes := []*rePass{{dir: o.imgDB, gt: data.IsREGroundTruth(o.imgDB)}}
	if o.gtImgDB != "" {
		passes = append(passes, &rePass{suffix: "_gt", dir: o.gtImgDB, gt: true})
	}
	budget := o.batchTokens
	if !o.batchSet {
		budget = reDefaultBatch
	}
	for _, p := range passes {
		dbs := train.NewDBs(o.imgOpts)
		defer dbs.Close()
		if p.gt {
			if err := dbs.OpenREGroundTruth(true, p.dir); err != nil {
				return err
			}
		}
		dopts := data.DownstreamOptions{MaxTxtLen: o.maxTxtLen, ImgDim: m.Cfg.ImgDim, MaxWords: m.Cfg.MaxPositionEmbeddings - 2, GTBoxes: p.gt}
		ds, err := train.OpenDownstream(dbs, task, o.txtDB, p.dir, dopts, m.Cfg.VocabSize)
		if err != nil {
			return err
		}
		p.ds = ds.(*data.RESet)
		task.SetWidth(p.ds.MaxNBB())
		kind := "detected"
		if p.gt {
			kind = "ground-truth"
		}
		bar := newProgressBar(stderr, p.ds.Len(), fmt.Sprintf("eval re (%s boxes)", kind))
		eo := train.EvalOptions{Budget: budget, Workers: o.workers, KeepLogits: o.saveLogits,
			Progress: func(done, _ int) { _ = bar.Set(done) }}
		if p.ev, err = train.EvaluateDownstream(ctx, task, ds, eo); err != nil {
			return err
		}
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	report := map[string]any{"task": o.task, "checkpoint": o.mf.checkpoint, "txt_db": o.txtDB, "img_db": o.imgDB, "mlp": mlp}
	if o.gtImgDB != "" {
		report["gt_img_db"] = o.gtImgDB
	}
	if o.initSeed >= 0 {
		report["init_seed"] = o.initSeed
	}
	type file struct {
		name string
		b    []byte
	}
	var files []file
	for _, p := range passes {
		for k, v := range task.Metrics(p.ev) {
			report[k+p.suffix] = v
		}
		ext, results, err := task.Results(p.ev, false)
		if err != nil {
			return err
		}
		files = append(files, file{"results" + p.suffix + ext, results})
		if o.saveLogits {
			width := p.ds.MaxNBB()
			if len(p.ev.Logits) != len(p.ev.IDs)*width {
				return fmt.Errorf("eval: re: %d logits for %d sentences of %d regions", len(p.ev.Logits), len(p.ev.IDs), width)
			}
			files = append(files, file{"logits" + p.suffix + ".npy", npyBytes([]int{len(p.ev.IDs), width}, p.ev.Logits)})
		}
	}
	if o.saveLogits {
		ids, _ := json.Marshal(passes[0].ev.IDs)
		files = append(files, file{"ids.json", ids})
	}
	b, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	// metrics.json last: its presence says the evaluation finished.
	files = append(files, file{"metrics.json", append(b, '\n')})
	for _, f := range files {
		path := filepath.Join(o.out, f.name)
		if err := atomicfile.WriteFile(path, f.b); err != nil {
			return fmt.Errorf("eval: %s: %w", path, err)
		}
	}
	for _, p := range passes {
		fmt.Fprintf(stdout, "re (%s):", p.dir)
		for _, k := range []string{"acc", "loss", "n"} {
			if v, ok := report[k+p.suffix]; ok {
				fmt.Fprintf(stdout, "  %s %.4f", k, v)
			}
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stderr, "eval: wrote %s\n", o.out)
	return nil
}

// runImgOptions takes the img_db layout (conf_th, max_bb, min_bb,
// num_bb) of the run that wrote the checkpoint, from its log/config.yaml,
// as inf_re.py reads the detected boxes with the training run's hps.json;
// a checkpoint without one (an official .pt) keeps the flags' defaults.
func runImgOptions(o *evalOpts, stderr io.Writer) error {
	ck := filepath.Clean(o.mf.checkpoint)
	path := filepath.Join(filepath.Dir(filepath.Dir(ck)), train.LogDir, "config.yaml")
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	var run struct {
		ConfTh *float64 `yaml:"conf_th"`
		MaxBB  *int     `yaml:"max_bb"`
		MinBB  *int     `yaml:"min_bb"`
		NumBB  *int     `yaml:"num_bb"`
	}
	if err := yaml.Unmarshal(b, &run); err != nil {
		return fmt.Errorf("eval: %s: %w", path, err)
	}
	if run.ConfTh != nil {
		o.imgOpts.ConfTh = *run.ConfTh
	}
	if run.MaxBB != nil {
		o.imgOpts.MaxBB = *run.MaxBB
	}
	if run.MinBB != nil {
		o.imgOpts.MinBB = *run.MinBB
	}
	if run.NumBB != nil {
		o.imgOpts.NumBB = *run.NumBB
	}
	fmt.Fprintf(stderr, "eval: re: img_db layout of the run (%s): conf_th %g max_bb %d min_bb %d num_bb %d (--conf-th, --max-bb, --min-bb, --num-bb set others)\n",
		path, o.imgOpts.ConfTh, o.imgOpts.MaxBB, o.imgOpts.MinBB, o.imgOpts.NumBB)
	return nil
}

// npyBytes is a float32 .npy file in memory, so that it is written with
// the other outputs only once everything has been computed.
func npyBytes(shape []int, data []float32) []byte {
	b := npy.Header(shape)
	for _, v := range data {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}
