#!/usr/bin/python3
"""Time full image-text retrieval scoring with the PyTorch reference model,
scored the way the original does (utils/itm_eval.py inference with
data/itm.py ItmEvalDataset): the images sorted by region count, and per
text the images in minibatches of --minibatch (400), the text expanded to
every row, the regions padded to the minibatch's largest, embeddings and
encoder run for every pair, rank_output on the pooled [CLS]; eval mode,
no_grad, fp32 on the CPU.  The counterpart of

  uniter eval --task itr --init-seed 1 --model-config base --txt-db T --img-db I --out DIR

(whose metrics.json has pairs_per_s).  The shapes are the dbs' own: the
text lengths from T/id2len.json (+2 for [CLS]/[SEP]) and the region counts
from I/nbb_th0.2_max100_min10.json for the images T/img2txts.json names;
the values are random (the time does not depend on them).  The model is
UniterModel of scripts/uniter_ref.py (--preset base) plus Linear(H, 1).

Threads and BLAS, PyTorch's best settings as scripts/bench_torch.py: set
before torch is imported, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS =
--threads (and torch.set_num_threads), OMP_WAIT_POLICY PASSIVE,
OPENBLAS_THREAD_TIMEOUT 20, where OpenBLAS 0.3.21 would fall back to its
SSE3 kernels (a recent Xeon) OPENBLAS_CORETYPE SkylakeX / Haswell, and
glibc malloc keeping freed memory (MALLOC_MMAP_MAX_ 0, a large
MALLOC_TRIM_THRESHOLD_; scripts/torch_env.py), each unless the environment
sets it.

Prints one JSON line: texts, images, pairs, seconds, pairs_per_s,
padded_frac (the share of the encoder's positions that are padding).
"""
import argparse
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

ap = argparse.ArgumentParser()
ap.add_argument("--txt-db", required=True)
ap.add_argument("--img-db", required=True)
ap.add_argument("--preset", default="base", choices=["base", "large"])
ap.add_argument("--minibatch", type=int, default=400)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--texts", type=int, default=0, help="score only the first N texts (0: all)")
ARGS = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


sys.path.insert(0, HERE)
from torch_env import coretype, loaded_core, use_retained_malloc  # noqa: E402

use_retained_malloc()

if "OPENBLAS_CORETYPE" not in os.environ and coretype():
    os.environ["OPENBLAS_CORETYPE"] = coretype()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from uniter_ref import UniterConfig, UniterModel, get_gather_index  # noqa: E402


def main():
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    id2len = json.load(open(os.path.join(ARGS.txt_db, "id2len.json")))
    img2txts = json.load(open(os.path.join(ARGS.txt_db, "img2txts.json")))
    nbb_file = glob.glob(os.path.join(ARGS.img_db, "nbb_th0.2_max100_min10.json"))[0]
    name2nbb = json.load(open(nbb_file))
    txt_lens = [n + 2 for n in id2len.values()]
    if ARGS.texts:
        txt_lens = txt_lens[:ARGS.texts]
    # ItmEvalDataset: the images sorted by region count.
    nbbs = sorted(name2nbb[name] for name in img2txts)
    cfg = UniterConfig.base() if ARGS.preset == "base" else UniterConfig.large()
    model = UniterModel(cfg, cfg.img_dim).eval()
    rank = nn.Linear(cfg.hidden_size, 1).eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.rand(n, cfg.img_dim, generator=g) for n in nbbs]
    boxes = [torch.rand(n, 7, generator=g) for n in nbbs]
    real = padded = 0
    st = time.time()
    with torch.no_grad():
        for tl in txt_lens:
            ids = torch.randint(1000, cfg.vocab_size, (1, tl), generator=g)
            for s in range(0, len(nbbs), ARGS.minibatch):
                nb = nbbs[s:s + ARGS.minibatch]
                b, n = len(nb), max(nb)
                img_feat = torch.zeros(b, n, cfg.img_dim)
                img_pos = torch.zeros(b, n, 7)
                attn = torch.zeros(b, tl + n, dtype=torch.long)
                for k, m in enumerate(nb):
                    img_feat[k, :m] = feats[s + k]
                    img_pos[k, :m] = boxes[s + k]
                    attn[k, :tl + m] = 1
                gi = get_gather_index([tl] * b, nb, b, tl, tl + n)
                seq = model(ids.expand(b, -1).clone(), torch.arange(tl).unsqueeze(0), img_feat, img_pos,
                            attn, gi, output_all_encoded_layers=False)
                rank(model.pooler(seq))
                real += sum(tl + m for m in nb)
                padded += b * (tl + n)
    sec = time.time() - st
    pairs = len(txt_lens) * len(nbbs)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": ARGS.threads,
                      "blas_core": loaded_core(),
                      "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_", ""), "texts": len(txt_lens),
                      "images": len(nbbs), "pairs": pairs, "seconds": round(sec, 3),
                      "pairs_per_s": pairs / sec, "padded_frac": 1 - real / padded}))


if __name__ == "__main__":
    main()
