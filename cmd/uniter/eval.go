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
	"github.com/spf13/cobra"

	"uniter/internal/atomicfile"
	"uniter/internal/compute"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/model"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

func init() { subcommands = append(subcommands, newEvalCmd) }

type evalOpts struct {
	mf           modelFlags
	task         string
	txtDB, imgDB string
	gtImgDB      string // vcr (and re): the ground-truth-box img_db
	out          string
	imgOpts      db.ImgDBOptions
	tasks        []string
	batchTokens  int
	workers      int
	seed         uint64
	seedSet      bool // --seed given: it wins over the run's seed
	initSeed     int64
	maxTxtLen    int
	mrmProb      float64
	itmNegProb   float64
	otLambda     float64
	ans2label    string
	variant      string
	useImgType   bool
	saveLogits   bool
	reMLP        int  // re: the head's layers (0: from the checkpoint)
	batchSet     bool // --batch-tokens given (re: sentences per batch, default 256)
	imgOptsSet   bool // re: an img_db layout flag given (else the run's, as inf_re.py)
}

// evalReport is DIR/metrics.json.
type evalReport struct {
	Task       string                   `json:"task"`
	Checkpoint string                   `json:"checkpoint,omitempty"`
	InitSeed   *int64                   `json:"init_seed,omitempty"`
	TxtDB      string                   `json:"txt_db"`
	ImgDB      string                   `json:"img_db"`
	Seed       uint64                   `json:"seed"`
	Metrics    map[string]train.Metrics `json:"metrics"`
}

func newEvalCmd() *cobra.Command {
	o := evalOpts{imgOpts: db.DefaultImgDBOptions()}
	cmd := &cobra.Command{
		Use:   "eval --task TASK --checkpoint P --txt-db D --img-db I --out DIR",
		Short: "Evaluate a checkpoint: pretraining tasks (validation losses and accuracies)",
		Long: `eval runs a model in evaluation mode over every example of a txt_db (no
length filter) with its img_db and writes DIR/metrics.json.

--task pretrain evaluates the pretraining tasks exactly as the validation of
"uniter pretrain" does (the same code): per task the reference's validation
numbers, MLM loss and accuracy over masked tokens, MRFR loss per feature
element, MRC loss and accuracy over masked regions (non-background
classes), MRC-kl loss per masked region (KL summed over classes) and
accuracy (argmax over every class against the soft labels' argmax), ITM
loss and accuracy plus the WRA ot_loss, ot_pos and ot_neg (summed
transport distances of matched and of mismatched pairs per example, as the
reference logs them) and ot_pos_mean, ot_neg_mean (mean distance per
matched and per mismatched pair). Masks and ITM negatives are drawn from
--seed, so two checkpoints evaluated with the same seed see the same
inputs; it defaults to the seed of the run that wrote the checkpoint (its
trainer_state.json; for ckpt/best, that of the newest step checkpoint
beside it), which is the seed of that run's validation, and to 42 for a
checkpoint without one (an official .pt). --mrm-prob and --itm-neg-prob are used as given, 0 included
(--itm-neg-prob 0: no negatives; --mrm-prob 0: one region per example). --init-seed evaluates a freshly
initialised model instead of a checkpoint: with the pretraining run's seed
and log/model.json it is that run's step-0 model.

--checkpoint takes an official .pt file, a checkpoint directory
(ckpt/step_NNNNNNNN, ckpt/best) or a run's output directory, which means its
newest complete checkpoint.

Downstream tasks (vqa, ve, nlvr2) evaluate a fine-tuned checkpoint, an
official one (the fp16 state dict of UniterFor... with the official
model.json; NLVR2's third type row is added before loading, as the official
scripts do) or one of ours, exactly as the validation of "uniter finetune"
does, and write DIR/metrics.json (acc, loss; NLVR2 also consistency as the
official eval_nlvr2.py groups identifiers) and the official output file:
vqa and ve results.json [{"answer", "question_id"}], nlvr2 results.csv
(identifier,True|False). --save-logits adds ids.json and logits.npy
(float32 [n, answers] or [n, 2]). A split without targets gives predictions
only. --init-seed N with the run's --model-config evaluates the model a
"uniter finetune" run with seed N starts from (its fresh head on the
backbone of --checkpoint, if given): the untrained baseline.

vcr takes the ground-truth boxes with --gt-img-db (read as feat_numbb100)
and the detected ones with --img-db, and scores, as inf_vcr.py, every
rationale after every answer: metrics acc_qa, acc_qar (after the true
answer), acc (both right), loss; results.json {annot_id: [20 scores]} and
results.csv (the submission table); --save-logits [n, 8] (4 answer
scores, 4 rationale scores after the true answer; [n, 20] without
targets). A VCR checkpoint's grown tables (4 token types, 81 more words)
are set up before loading.

re scores every sentence of an RE txt_db (refs.json's order) on the boxes
of --img-db (detected; ground truth when its path holds "coco_gt") and,
with --gt-img-db, also on the ground-truth boxes (read as feat_numbb100,
every stored box; metrics and files with suffix _gt), as inf_re.py: acc
is the share of sentences whose top region's box (its normalised box
times the image size) has IoU > 0.5 with the target box (the original's
-1 pixel convention); results.json {sent_id: {"pred_box", "tgt_box"}};
--save-logits adds logits.npy [n, R] (pads -1e4); the head's depth
comes from the checkpoint (--mlp sets it) and the img_db layout from the
run's config when no layout flag is given; batches count sentences
(default 256).

itr ranks every text of --txt-db against every image (docs/itr.md):
metrics txt_r1/5/10, img_r1/5/10, their means and r_mean (and the original
itm_eval.py's image recall as img_r*_official); --save-logits writes
logits.npy [texts, images], ids.json and img_ids.json. A pretraining
checkpoint is scored zero-shot by its ITM match row. The scores go to
DIR as they come: rerun the same command to continue a killed ranking.`,
		Example: `  uniter eval --task pretrain --checkpoint runs/demo/out/ckpt/step_00002000 \
      --txt-db runs/demo/data/txt/pretrain_val.db --img-db runs/demo/data/img/synth_val --out runs/demo/eval
  uniter eval --task pretrain --init-seed 42 --model-config runs/demo/out/log/model.json \
      --txt-db runs/demo/data/txt/pretrain_val.db --img-db runs/demo/data/img/synth_val --out runs/demo/eval0
  uniter eval --task pretrain --checkpoint uniter-base.pt --model-config base --tasks mlm,itm \
      --txt-db /txt/pretrain_coco_val.db --img-db /img/coco_val2014 --out runs/coco_val
  uniter eval --task vqa --checkpoint /storage/vqa/default/ckpt/model_step_6000.pt \
      --model-config /storage/vqa/default/log/model.json --ans2label /storage/vqa/default/ckpt/ans2label.json \
      --txt-db /txt/vqa_devval.db --img-db /img/coco_val2014 --out runs/vqa_devval --save-logits
  uniter eval --task nlvr2 --variant paired-attn --checkpoint runs/nlvr2/ckpt/best \
      --txt-db /txt/nlvr2_dev.db --img-db /img/nlvr2_dev --out runs/nlvr2_dev
  uniter eval --task itr --checkpoint uniter-base.pt --model-config base \
      --txt-db /txt/itm_flickr30k_test.db --img-db /img/flickr30k --out runs/flickr_zero_shot --save-logits`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.seedSet = cmd.Flags().Changed("seed")
			o.batchSet = cmd.Flags().Changed("batch-tokens")
			for _, name := range []string{"conf-th", "max-bb", "min-bb", "num-bb"} {
				o.imgOptsSet = o.imgOptsSet || cmd.Flags().Changed(name)
			}
			return runEval(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o.mf.register(f)
	f.StringVar(&o.task, "task", "", "pretrain (or a downstream task: "+strings.Join(tasks.DownstreamTasks, " ")+")")
	f.StringVar(&o.txtDB, "txt-db", "", "official txt_db directory")
	f.StringVar(&o.imgDB, "img-db", "", "official img_db directory")
	f.StringVar(&o.gtImgDB, "gt-img-db", "", "vcr: the ground-truth-box img_db (read as feat_numbb100), its regions before --img-db's; re: also evaluate on these ground-truth boxes (every stored box; _gt outputs)")
	f.StringVar(&o.out, "out", "", "output directory (metrics.json)")
	registerImgDBFlags(f, &o.imgOpts)
	f.StringSliceVar(&o.tasks, "tasks", train.TaskNames, "pretraining tasks to evaluate")
	f.IntVar(&o.batchTokens, "batch-tokens", 8192, "padded tokens per batch (val_batch_size)")
	f.IntVar(&o.workers, "workers", 2, "goroutines decoding examples")
	f.Uint64Var(&o.seed, "seed", defaultEvalSeed, "seed of the masks and ITM negatives (default: the run's seed when the checkpoint has one, else 42)")
	f.Int64Var(&o.initSeed, "init-seed", -1, "evaluate a model freshly initialised from this seed instead of --checkpoint (needs --model-config)")
	f.IntVar(&o.maxTxtLen, "max-txt-len", -1, "drop texts with more word pieces (-1: keep all, as the reference's validation)")
	f.Float64Var(&o.mrmProb, "mrm-prob", data.MaskProb, "probability of masking a region in mrfr, mrc and mrckl, in [0, 1] (mlm masks words with 0.15)")
	f.Float64Var(&o.itmNegProb, "itm-neg-prob", data.ITMNegProb, "probability of a mismatched image in itm, in [0, 1] (0: no negatives)")
	f.Float64Var(&o.otLambda, "itm-ot-lambda", 0.1, "WRA weight (0: no optimal transport term)")
	f.StringVar(&o.ans2label, "ans2label", "", "vqa: answer vocabulary (default: ans2label.json beside the checkpoint, else the official 3129 answers)")
	f.StringVar(&o.variant, "variant", tasks.NLVR2PairedAttn, "nlvr2: "+strings.Join(tasks.NLVR2Variants, ", "))
	f.BoolVar(&o.useImgType, "use-img-type", true, "nlvr2: the right image's regions get token type 2 (the official configs' use_img_type)")
	f.BoolVar(&o.saveLogits, "save-logits", false, "also write ids.json and logits.npy")
	f.IntVar(&o.reMLP, "mlp", 0, "re: layers of re_output, 1 or 2 (default: what the checkpoint holds)")
	for _, name := range []string{"task", "txt-db", "img-db", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runEval(ctx context.Context, o evalOpts, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	switch {
	case o.task == "pretrain":
	case o.task == "re":
		return runEvalRE(ctx, o, stdout, stderr)
	case o.task == "itr":
		return runEvalITR(ctx, o, stdout, stderr)
	case slices.Contains(tasks.DownstreamTasks, o.task):
		return runEvalDownstream(ctx, o, stdout, stderr)
	default:
		return fmt.Errorf("eval: --task %q: want pretrain or one of %s", o.task, strings.Join(tasks.DownstreamTasks, ", "))
	}
	for _, t := range o.tasks {
		if !slices.Contains(train.TaskNames, t) {
			return fmt.Errorf("eval: --tasks %q: want some of %s", t, strings.Join(train.TaskNames, ","))
		}
	}
	if (o.mf.checkpoint == "") == (o.initSeed < 0) {
		return fmt.Errorf("eval: pass exactly one of --checkpoint and --init-seed")
	}
	var err error
	if o.mf.checkpoint, err = resolveCheckpoint(o.mf.checkpoint, stderr); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	if o.seed, err = evalSeed(o, stderr); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	be, err := o.mf.backend()
	if err != nil {
		return err
	}
	var heads *model.PretrainHeads
	addHeads := func(m *model.Model) { heads = model.NewPretrainHeads(m) }
	var m *model.Model
	if o.initSeed >= 0 {
		m, err = initModel(be, o, addHeads, stderr)
	} else {
		m, err = loadPretrainEval(&o.mf, be, addHeads)
	}
	if err != nil {
		return err
	}
	dbs := train.NewDBs(o.imgOpts)
	defer dbs.Close()
	popts := data.PretrainOptions{MaxTxtLen: o.maxTxtLen, Seed: o.seed, ImgDim: m.Cfg.ImgDim, MaskProb: o.mrmProb, ITMNegProb: o.itmNegProb}
	ds, err := train.OpenDataset(dbs, []string{o.txtDB}, []string{o.imgDB}, popts, m.Cfg.VocabSize)
	if err != nil {
		return err
	}
	p := &tasks.Pretrain{M: m, H: heads, OTWeight: o.otLambda}
	res, err := train.Evaluate(ctx, p, ds, o.tasks, train.EvalOptions{Budget: o.batchTokens, Workers: o.workers})
	if err != nil {
		return err
	}
	rep := evalReport{Task: o.task, Checkpoint: o.mf.checkpoint, TxtDB: o.txtDB, ImgDB: o.imgDB, Seed: o.seed, Metrics: res}
	if o.initSeed >= 0 {
		rep.InitSeed = &o.initSeed
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	path := filepath.Join(o.out, "metrics.json")
	if err := atomicfile.WriteFile(path, append(b, '\n')); err != nil {
		return fmt.Errorf("eval: %s: %w", path, err)
	}
	for _, t := range o.tasks {
		fmt.Fprintf(stdout, "%-6s", t)
		for _, k := range []string{"loss", "acc", "ot_loss", "ot_pos", "ot_neg", "n"} {
			if v, ok := res[t][k]; ok {
				fmt.Fprintf(stdout, "  %s %.4f", k, v)
			}
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stderr, "eval: wrote %s\n", path)
	return nil
}

// initModel builds a freshly initialised model with its heads (addHeads
// may be nil), drawn as "uniter pretrain" and "uniter finetune" draw them
// before their first step (model, then heads, from the seed).
func initModel(be compute.Backend, o evalOpts, addHeads func(*model.Model), log io.Writer) (*model.Model, error) {
	if o.mf.modelConfig == "" {
		return nil, fmt.Errorf("eval: --init-seed needs --model-config (e.g. the run's log/model.json)")
	}
	cfg, err := model.LoadConfig(o.mf.modelConfig)
	if err != nil {
		return nil, err
	}
	if o.mf.imgDim > 0 {
		cfg.ImgDim = o.mf.imgDim
	}
	m, err := model.New(be, cfg, uint64(o.initSeed))
	if err != nil {
		return nil, err
	}
	if addHeads != nil {
		addHeads(m)
	}
	if o.mf.checkpoint == "" {
		fmt.Fprintf(log, "uniter: no checkpoint: model %s initialised from seed %d\n", o.mf.modelConfig, o.initSeed)
	}
	return m, nil
}

// defaultEvalSeed is eval's --seed for a checkpoint without a run's seed.
const defaultEvalSeed = 42

// resolveCheckpoint maps --checkpoint to the checkpoint it means: an
// official .pt file or a checkpoint directory (holding model.safetensors:
// ckpt/step_NNNNNNNN, ckpt/best) as given; a run's output directory, or its
// ckpt directory, to its newest complete step checkpoint (else its best);
// what it chose goes to log. A path that does not exist is left to the
// reader's error.
func resolveCheckpoint(path string, log io.Writer) (string, error) {
	if path == "" {
		return "", nil
	}
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		return path, nil
	}
	if _, err := os.Stat(filepath.Join(path, model.WeightsFile)); err == nil {
		return path, nil
	}
	ckptDir := filepath.Join(path, train.CkptDir)
	what := "a run's output directory"
	if st, err := os.Stat(ckptDir); err != nil || !st.IsDir() {
		ckptDir, what = path, "a run's checkpoint directory"
	}
	latest, err := train.LatestCheckpoint(ckptDir)
	if err != nil {
		return "", err
	}
	if latest != "" {
		fmt.Fprintf(log, "uniter: --checkpoint %s is %s: using its newest checkpoint %s\n", path, what, latest)
		return latest, nil
	}
	best := filepath.Join(ckptDir, train.BestDir)
	if _, err := os.Stat(filepath.Join(best, model.WeightsFile)); err == nil {
		fmt.Fprintf(log, "uniter: --checkpoint %s is %s without step checkpoints: using its best checkpoint %s\n", path, what, best)
		return best, nil
	}
	return "", fmt.Errorf("--checkpoint %s: no checkpoint there: looked for %s (a checkpoint directory), a complete %s (step checkpoints of a run's output directory) and %s",
		path, filepath.Join(path, model.WeightsFile), filepath.Join(path, train.CkptDir, "step_NNNNNNNN", "trainer_state.json"), filepath.Join(path, train.CkptDir, train.BestDir, model.WeightsFile))
}

// runSeed returns the seed of the run that wrote checkpoint path and the
// trainer state it read it from: the checkpoint's own state
// (ckpt/step_NNNNNNNN), or for a checkpoint without one (ckpt/best) the
// state of the newest step checkpoint beside it, which the same run wrote
// (a resume must keep the seed). src is "" when there is none: an official
// .pt file, or a directory outside a run's ckpt/.
func runSeed(path string) (seed uint64, src string, err error) {
	if path == "" {
		return 0, "", nil
	}
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		return 0, "", nil
	}
	dir := path
	if !hasTrainerState(dir) {
		sib, err := train.LatestCheckpoint(filepath.Dir(filepath.Clean(path)))
		if err != nil || sib == "" {
			return 0, "", err
		}
		dir = sib
	}
	st, err := train.ReadState(dir)
	if err != nil {
		return 0, "", err
	}
	return st.Seed, filepath.Join(dir, "trainer_state.json"), nil
}

func hasTrainerState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "trainer_state.json"))
	return err == nil
}

// evalSeed is the seed of eval --task pretrain's masks and ITM negatives:
// --seed when given, else the seed of the run that wrote the checkpoint
// (the seed its validation used), else --init-seed's (the run it stands
// for starts from it), else 42. It says which on log.
func evalSeed(o evalOpts, log io.Writer) (uint64, error) {
	const line = "eval: masks and ITM negatives from seed %d%s\n"
	if o.seedSet {
		fmt.Fprintf(log, line, o.seed, " (--seed)")
		return o.seed, nil
	}
	if o.initSeed >= 0 && o.mf.checkpoint == "" {
		fmt.Fprintf(log, line, o.initSeed, " (--init-seed; --seed sets another)")
		return uint64(o.initSeed), nil
	}
	seed, src, err := runSeed(o.mf.checkpoint)
	if err != nil {
		return 0, err
	}
	if src != "" {
		fmt.Fprintf(log, line, seed, ", the run's, as in its validation (from "+src+"); --seed sets another")
		return seed, nil
	}
	fmt.Fprintf(log, line, uint64(defaultEvalSeed), fmt.Sprintf(", the default: checkpoint %s holds no run's seed (no trainer_state.json, e.g. an official checkpoint); --seed sets another", o.mf.checkpoint))
	return defaultEvalSeed, nil
}

// newProgressBar is eval's and embed's progress bar over total examples,
// its clock started now. Left to itself progressbar starts the clock at
// its first render, i.e. after the first batch has been added, and so
// shows that batch done in no time (millions of examples/s).
func newProgressBar(w io.Writer, total int, desc string) *progressbar.ProgressBar {
	bar := progressbar.NewOptions(total, progressbar.OptionSetDescription(desc), progressbar.OptionSetWriter(w),
		progressbar.OptionShowCount(), progressbar.OptionSetItsString("examples"), progressbar.OptionShowIts(), progressbar.OptionSetPredictTime(true))
	bar.StartWithoutRender()
	return bar
}
