#!/usr/bin/env bash
# The end-to-end demo behind `make demo`: write the synthetic world,
# pretrain a tiny UNITER on the CPU with every pretraining task
# (configs/demo.yaml), evaluate the trained and the untrained (step-0) model
# on the held-out split with `uniter eval --task pretrain`, then fine-tune
# VQA twice with the same seed, steps and data, from the pretrained
# checkpoint and from scratch (configs/finetune-vqa-synth.yaml), evaluate
# both on the held-out questions, rank the held-out captions against the
# held-out images with the untrained model, zero-shot with the pretrained
# checkpoint and after ITR fine-tuning from it
# (configs/finetune-itr-synth.yaml), and print and write
# runs/demo/summary.json. Needs bin/uniter (make build) and python3 (only
# to tabulate the JSON files).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bin=bin/uniter
demo=runs/demo
data=$demo/data
out=$demo/out
val_txt=$data/txt/pretrain_val.db
val_img=$data/img/synth_val
seed=$(sed -n 's/^seed: *//p' configs/demo.yaml)

# A fresh world (seconds) and run each time: the demo measures learning
# from step 0, and a world left by an older binary may differ.
rm -rf "$data" "$out" "$demo"/eval_* "$demo"/vqa_* "$demo/itr" "$demo/summary.json"
"$bin" data synth --out "$data" --questions 1
"$bin" pretrain --config configs/demo.yaml --output "$out"

ckpt=$(ls -d "$out"/ckpt/step_* | sort | tail -n 1)
"$bin" eval --task pretrain --checkpoint "$ckpt" --txt-db "$val_txt" --img-db "$val_img" \
  --seed "$seed" --batch-tokens 4096 --out "$demo/eval_trained"
"$bin" eval --task pretrain --init-seed "$seed" --model-config "$out/log/model.json" \
  --txt-db "$val_txt" --img-db "$val_img" --seed "$seed" --batch-tokens 4096 --out "$demo/eval_untrained"

# What pretraining buys: VQA from the pretrained checkpoint vs from a
# random init, everything else equal; each final checkpoint is scored on
# the held-out questions (no checkpoint selection on them).
for init in pretrained scratch; do
  from=""
  [ "$init" = pretrained ] && from="$ckpt"
  "$bin" finetune --task vqa --config configs/finetune-vqa-synth.yaml --output "$demo/vqa_$init" \
    --set checkpoint="$from"
  last=$(ls -d "$demo/vqa_$init"/ckpt/step_* | sort | tail -n 1)
  "$bin" eval --task vqa --checkpoint "$last" --txt-db "$data/txt/vqa_val.db" --img-db "$val_img" \
    --batch-tokens 4096 --out "$demo/eval_vqa_$init"
done

# Retrieval: every held-out caption against every held-out image, scored
# by the untrained model, by the pretrained checkpoint zero-shot (its ITM
# "match" row initialises rank_output) and after fine-tuning from it (the
# plain recipe, 400 steps).
itr_val=(--txt-db "$data/txt/itr_val.db" --img-db "$val_img")
"$bin" eval --task itr --init-seed "$seed" --model-config "$out/log/model.json" "${itr_val[@]}" \
  --out "$demo/eval_itr_untrained"
"$bin" eval --task itr --checkpoint "$ckpt" "${itr_val[@]}" --out "$demo/eval_itr_zeroshot"
"$bin" finetune --task itr --config configs/finetune-itr-synth.yaml --output "$demo/itr" --set checkpoint="$ckpt"
last=$(ls -d "$demo/itr"/ckpt/step_* | sort | tail -n 1)
"$bin" eval --task itr --checkpoint "$last" "${itr_val[@]}" --out "$demo/eval_itr_finetuned"

wall=$(( $(date +%s) - start ))
python3 - "$demo" "$wall" <<'EOF'
import json, os, sys

demo, wall = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(os.path.join(demo, "out/log/metrics.jsonl"))]
train = [r for r in rows if "split" not in r]
trained = json.load(open(os.path.join(demo, "eval_trained/metrics.json")))["metrics"]
untrained = json.load(open(os.path.join(demo, "eval_untrained/metrics.json")))["metrics"]

# First and last training loss of each task, each the mean of 20 logged
# steps (single steps are noisy).
N = 20
tasks = {}
for task in trained:
    losses = [r["loss"] for r in train if r["task"].split("_")[0] == task]
    tasks[task] = {
        "train_loss_first": sum(losses[:N]) / len(losses[:N]),
        "train_loss_last": sum(losses[-N:]) / len(losses[-N:]),
        "train_steps": len(losses),
        "heldout_trained": trained[task],
        "heldout_untrained": untrained[task],
    }
def final(name):
    m = json.load(open(os.path.join(demo, name, "metrics.json")))
    return {k: m[k] for k in ("acc", "loss", "n")}

def ranking(name):
    m = json.load(open(os.path.join(demo, name, "metrics.json")))
    return {k: m[k] for k in ("img_r1", "txt_r1", "r_mean", "n_txt", "n_img")}

finetune = {"vqa": {"pretrained": final("eval_vqa_pretrained"), "scratch": final("eval_vqa_scratch")},
            "itr": {"untrained": ranking("eval_itr_untrained"), "zero_shot": ranking("eval_itr_zeroshot"),
                    "finetuned": ranking("eval_itr_finetuned")}}
summary = {
    "wall_s": wall,
    "train_steps": train[-1]["step"],
    "train_elapsed_s": round(train[-1]["elapsed_s"], 1),
    "tokens_per_s": round(train[-1]["tokens_per_s"]),
    "pad_frac_mean": sum(r["pad_frac"] for r in train) / len(train),
    "tasks": tasks,
    "finetune": finetune,
}
with open(os.path.join(demo, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)

print()
print(f"demo: {summary['train_steps']} steps in {summary['train_elapsed_s']}s "
      f"({summary['tokens_per_s']} tokens/s, mean pad_frac {summary['pad_frac_mean']:.4f}); wall {wall}s")
print(f"{'task':6} {'train loss first -> last':>25}   {'held-out metric':16} {'untrained':>10} {'trained':>10}")
for task, t in tasks.items():
    first = f"{t['train_loss_first']:.4f} -> {t['train_loss_last']:.4f}"
    names = [k for k in ("acc", "loss", "ot_loss") if k in t["heldout_trained"]]
    for i, k in enumerate(names):
        lead = f"{task:6} {first:>25}" if i == 0 else " " * 32
        print(f"{lead}   {task + ' ' + k:16} {t['heldout_untrained'][k]:10.4f} {t['heldout_trained'][k]:10.4f}")
v = finetune["vqa"]
print(f"VQA fine-tuned (held-out VQA score): from the pretrained checkpoint {v['pretrained']['acc']:.4f}, "
      f"from scratch {v['scratch']['acc']:.4f}")
r = finetune["itr"]
print(f"ITR ({r['untrained']['n_txt']} held-out captions x {r['untrained']['n_img']} images, r_mean): "
      f"untrained {r['untrained']['r_mean']:.4f}, pretrained zero-shot {r['zero_shot']['r_mean']:.4f}, "
      f"fine-tuned {r['finetuned']['r_mean']:.4f}")
print(f"demo: summary in {os.path.join(demo, 'summary.json')}")
EOF
