#!/usr/bin/env bash
# Fine-tunes every downstream task of this issue on the synthetic world from
# the demo's pretrained checkpoint (run `make demo` first) and prints the
# README's table: each task's held-out metric before fine-tuning (the
# run's step-0 model, `eval --init-seed`) and after (its final checkpoint).
# Usage: scripts/finetune_table.sh [PRETRAINED_CKPT]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/uniter
demo=runs/demo
data=$demo/data
ckpt=${1:-$(ls -d "$demo"/out/ckpt/step_* | sort | tail -n 1)}
out=$demo/table
rm -rf "$out"
mkdir -p "$out"
rows=()
for spec in vqa: ve: nlvr2:paired-attn nlvr2:paired nlvr2:triplet; do
  task=${spec%%:*}
  variant=${spec#*:}
  name=$task${variant:+-$variant}
  run=$out/$name
  sets=(--set checkpoint="$ckpt")
  evalx=()
  if [ -n "$variant" ]; then
    sets+=(--set variant="$variant")
    evalx+=(--variant "$variant")
  fi
  "$bin" finetune --task "$task" --config "configs/finetune-$task-synth.yaml" --output "$run" --quiet "${sets[@]}"
  seed=$(sed -n 's/^seed: *//p' "configs/finetune-$task-synth.yaml")
  last=$(ls -d "$run"/ckpt/step_* | sort | tail -n 1)
  "$bin" eval --task "$task" --init-seed "$seed" --model-config "$run/log/model.json" --checkpoint "$ckpt" \
    --txt-db "$data/txt/${task}_val.db" --img-db "$data/img/synth_val" --out "$run/eval_untrained" "${evalx[@]}" \
    $( [ "$task" = vqa ] && echo --ans2label "$data/txt/vqa_train.db/ans2label.json" )
  "$bin" eval --task "$task" --checkpoint "$last" \
    --txt-db "$data/txt/${task}_val.db" --img-db "$data/img/synth_val" --out "$run/eval_trained" "${evalx[@]}"
  rows+=("$name")
done
/usr/bin/env python3 - "$out" "${rows[@]}" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
print("| task | steps | held-out metric | untrained | trained |")
print("|---|---|---|---|---|")
for n in names:
    u = json.load(open(os.path.join(out, n, "eval_untrained", "metrics.json")))
    t = json.load(open(os.path.join(out, n, "eval_trained", "metrics.json")))
    steps = [json.loads(l) for l in open(os.path.join(out, n, "log", "metrics.jsonl"))][-1]["step"]
    for k in ("acc", "consistency", "loss"):
        if k in t:
            print(f"| {n} | {steps} | {k} | {u[k]:.4f} | {t[k]:.4f} |")
PY
