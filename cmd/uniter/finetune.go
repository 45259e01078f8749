package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"uniter/internal/train"
)

func init() { subcommands = append(subcommands, newFinetuneCmd) }

func newFinetuneCmd() *cobra.Command {
	o := trainOpts{}
	cmd := &cobra.Command{
		Use:   "finetune --task TASK --config FILE",
		Short: "Fine-tune UNITER on a downstream task (" + strings.Join(train.FinetuneTasks, ", ") + ")",
		Long: `finetune trains a downstream task from a pretrained checkpoint as the
official train_<task>.py does, through the same loop as pretrain: token-bucket
micro-batches, gradient_accumulation_steps of them per update, fp16 loss
scaling, clipping to grad_norm (2.0), AdamW with the warmup-linear schedule
and lr_mul for the task head (VQA: 10).

Tasks:
  vqa    answer head over the pooled [CLS] (ans2label: the file named by the
         config, else the one beside the checkpoint, else the official 3129
         answers); BCE with soft scores; metric acc (VQA score)
  ve     SNLI-VE, the VQA head with 3 labels; metric acc
  nlvr2  image pairs; "model" picks paired-attn (default), paired or triplet,
         use_img_type the third token type for the right image; metrics acc
         and consistency
  vcr    Q->A and QA->R choice rows on the ground-truth then detected boxes
         (img_db "gt_dir;det_dir"); checkpoint_from pretrain (default: a
         first-stage checkpoint, tables grown after loading) or vcr_pretrain
         (the second-stage one); metrics acc_qa, acc_qar, acc (Q->AR)

The config is an official train-*.json (every key it holds loads) or a YAML
copy (configs/finetune-*.yaml); keys of another task's config are ignored
with one warning line, a key no config knows is an error. "checkpoint" is
the initial model (an official .pt or a uniter checkpoint directory).

Every valid_steps the val (and test) split is evaluated with the code of
"uniter eval"; the predictions go to OUTPUT/results/ in the official format,
the metrics to log/metrics.jsonl, and the best val acc so far to
OUTPUT/ckpt/best/. A checkpoint is written every save_steps and at the end;
SIGINT or SIGTERM stops after the current step with a checkpoint, and
--resume continues exactly (it refuses a changed batch size, micro-batches
per step (replicas x accumulation), num_train_steps, task or model).`,
		Example: `  uniter data synth --out runs/demo/data
  uniter finetune --task vqa --config configs/finetune-vqa-synth.yaml --output runs/vqa --steps 500
  uniter finetune --task nlvr2 --config config/train-nlvr2-base-1gpu.json --output /storage/nlvr2 \
      --set checkpoint=/pretrain/uniter-base.pt
  uniter finetune --task vqa --config configs/finetune-vqa-synth.yaml --output runs/vqa --resume`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains(train.FinetuneTasks, o.task) {
				return fmt.Errorf("finetune --task %q: want one of %s", o.task, strings.Join(train.FinetuneTasks, ", "))
			}
			return runTraining(cmd, o)
		},
	}
	cmd.Flags().StringVar(&o.task, "task", "", "downstream task: "+strings.Join(train.FinetuneTasks, ", "))
	_ = cmd.MarkFlagRequired("task")
	registerTrainFlags(cmd, &o, "official train-*.json or YAML fine-tuning config")
	return cmd
}
