#!/usr/bin/env bash
# Data-parallel benchmark on one machine (CPU, loopback), not a test:
#   1. Gloo all-reduce bandwidth for UNITER-base-sized buffers (a 25 MB
#      bucket and the whole 86M+ float gradient), 2 ranks on loopback;
#   2. a UNITER-base MLM step on 2 processes (torchrun variables, one CPU
#      thread each): step time, all-reduce time and the share of it hidden
#      behind the backward, from log/metrics.jsonl.
#   scripts/dist_bench.sh [STEPS]     (default 6; needs `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT

echo "== Gloo all-reduce, 2 ranks on loopback"
UNITER_REQUIRE_GLOO=1 go test -run '^$' -bench BenchmarkGlooAllReduce -benchtime 3x ./internal/dist/ | grep -E "Benchmark|ok"

echo "== UNITER-base MLM step on 2 processes"
bin/uniter data synth --out "$W/data" --images 60 --val-images 10 --captions 2 --questions 1 >/dev/null
cat > "$W/base.yaml" <<YAML
model_config: base
train_datasets:
  - {name: synth, txt_db: [$W/data/txt/pretrain_train.db], img_db: [$W/data/img/synth_train], tasks: [mlm], mix_ratio: [1]}
val_datasets: []
train_batch_size: 400
val_batch_size: 4096
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
num_train_steps: $STEPS
warmup_steps: 1
valid_steps: 100000
save_steps: 100000
log_steps: 1
n_workers: 1
seed: 1
YAML
PORT=$((20000 + RANDOM % 20000))
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT UNITER_GLOO_HOST=127.0.0.1 \
    bin/uniter pretrain --config "$W/base.yaml" --output "$W/out" --quiet --threads 1 >"$W/rank$r.log" 2>&1 &
done
wait
/usr/bin/python3 - "$W/out/log/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "allreduce_ms" in r]
prev = None
print("step  step_s  allreduce_ms  hidden  tokens")
steps = []
for r in rows:
    dt = r["elapsed_s"] - prev if prev is not None else float("nan")
    prev = r["elapsed_s"]
    print(f'{r["step"]:4d}  {dt:6.2f}  {r["allreduce_ms"]:12.0f}  {r.get("allreduce_hidden", 0):6.2f}  {r["tokens"]}')
    if r["step"] > 1:
        steps.append((dt, r["allreduce_ms"], r.get("allreduce_hidden", 0)))
if steps:
    n = len(steps)
    print(f'mean over steps 2..: step {sum(s[0] for s in steps)/n:.2f} s, all-reduce {sum(s[1] for s in steps)/n:.0f} ms, hidden {sum(s[2] for s in steps)/n:.2f}')
PY
