#!/usr/bin/env bash
# Full-ranking benchmark on the CPU (not a test): `uniter eval --task itr`
# next to scripts/bench_itr_torch.py, a PyTorch scorer of the same model
# that scores the pairs as the original's evaluation does (per text, the
# images sorted by region count in minibatches of 400, padded to the
# minibatch's largest; the whole encoder on every pair). Same model (base,
# random weights: the time does not depend on them), same pairs, same
# threads; the two alternate, round after round, so that a busy machine
# slows both. Prints one line per round and the ratio ours / PyTorch.
#
#   scripts/bench_itr.sh [--rounds R] [--threads T] [--texts K] [--images N] [--txt-db T --img-db I]
#
# It scores the first K texts (--texts, default 4) of a txt_db against
# every image of its img2txts.json: without --txt-db/--img-db, the
# itr_train split of a synthetic world of N images (--images, default 400:
# 1600 pairs, 10 to 20 regions an image, texts of 8 to 63 tokens), so that
# the PyTorch scorer's minibatches hold 400 pairs as on COCO and Flickr
# (a smaller pool would hand it small, slow products). The K texts go into
# a txt_db next to the original that shares its data.mdb; the recalls of
# such a ranking mean nothing, only its speed counts. About 5 minutes a
# round on 2 cores. Needs `make build` and python3-torch (scripts/setup.sh
# python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=1 THREADS=$(nproc) IMAGES=400 TEXTS=4 TXT="" IMG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --texts) TEXTS=$2; shift 2 ;;
    --txt-db) TXT=$2; shift 2 ;;
    --img-db) IMG=$2; shift 2 ;;
    *) echo "bench_itr.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x bin/uniter ] || { echo "bench_itr.sh: bin/uniter missing: run make build" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
if [ -z "$TXT" ]; then
  bin/uniter data synth --out "$W/world" --images "$IMAGES" --val-images 10 --max-objects 20 >/dev/null
  TXT=$W/world/txt/itr_train.db IMG=$W/world/img/synth_train
fi
mkdir "$W/txt"
ln -s "$(realpath "$TXT")/data.mdb" "$W/txt/data.mdb"
cp "$TXT/meta.json" "$TXT/img2txts.json" "$W/txt/"
/usr/bin/python3 - "$TXT" "$W/txt" "$TEXTS" <<'PY'
import json, os, sys
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
lens = json.load(open(os.path.join(src, "id2len.json")))
keep = list(lens)[:k]
t2i = json.load(open(os.path.join(src, "txt2img.json")))
json.dump({i: lens[i] for i in keep}, open(os.path.join(dst, "id2len.json"), "w"))
json.dump({i: t2i[i] for i in keep}, open(os.path.join(dst, "txt2img.json"), "w"))
PY
TXT=$W/txt
echo "round  uniter_pairs/s  pytorch_pairs/s  ratio  pytorch_padded  uniter_gflop/pair"
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$W/eval"
  bin/uniter eval --task itr --init-seed 1 --model-config base --txt-db "$TXT" --img-db "$IMG" \
    --out "$W/eval" --threads "$THREADS" >/dev/null 2>&1
  /usr/bin/python3 scripts/bench_itr_torch.py --txt-db "$TXT" --img-db "$IMG" --threads "$THREADS" >"$W/torch.json"
  /usr/bin/python3 - "$r" "$W/eval/metrics.json" "$W/torch.json" <<'PY'
import json, sys
ours, ref = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
pairs = ours["n_txt"] * ours["n_img"]
assert pairs == ref["pairs"], (pairs, ref["pairs"])
print("%5s  %14.2f  %15.2f  %5.2fx  %14.3f  %17.2f" % (
    sys.argv[1], ours["pairs_per_s"], ref["pairs_per_s"], ours["pairs_per_s"] / ref["pairs_per_s"],
    ref["padded_frac"], ours["gflop"] / pairs))
PY
done
