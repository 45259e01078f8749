#!/usr/bin/python3
"""Time the PyTorch reference UNITER backbone (scripts/uniter_ref.py) on CPU.

This is the counterpart of `uniter bench`:
  * backbone only (UniterModel: embeddings + encoder, no pretraining heads,
    no pooler), fp32;
  * synthetic batch: every example has the same text length --txt-len
    (counting [CLS]/[SEP]) and --nbb regions, so S = txt_len + nbb and
    gather_index is the compact joint layout of docs/data.md, "Batches"
    (here an identity);
    image inputs without img_masks;
  * --mode fwd: eval mode (dropout off) under torch.no_grad(), plus the
    pooler (negligible; the Go forward computes it too);
  * --mode fwdbwd: train mode (dropout on), forward + backward of
    sum(sequence_output * R) with a fixed random R [B,S,H] -- the same work
    as `uniter bench --mode fwdbwd` (gradients of all backbone parameters and
    no optimizer step).
Config preset base: H 768, L 12, A 12, I 3072, vocab 28996, img_dim 2048.

Prints one JSON line, e.g.
  {"impl":"pytorch","torch":"1.13.0","threads":2,"mode":"fwdbwd","batch":8,
   "txt_len":40,"nbb":50,"ms_per_step":...,...}
  * --mode train: fwdbwd plus an AdamW step over every parameter (as
    `uniter bench --mode train`).
  * --task vqa: the counterpart of `uniter bench --task vqa`, one VQA
    fine-tuning step of UniterForVisualQuestionAnswering
    (scripts/finetune_ref.py: the backbone, the pooler and vqa_output =
    Linear(H,2H) -> GELU -> LayerNorm(2H) -> Linear(2H, 3129)) on the same
    batch shape with random soft targets (three answers per example,
    scores 0.3/0.6/0.9/1.0).  fwd: eval mode, no_grad, logits and the
    training loss; fwdbwd: train mode (dropout on), the loss
    BCE-with-logits mean * 3129 (train_vqa.py) and its backward; train:
    fwdbwd plus clip_grad_norm_(2.0) and AdamW (betas 0.9/0.98, eps 1e-6,
    weight decay 0.01 except biases and LayerNorm weights, lr 8e-5, head
    lr x10: train-vqa-base.json), all fp32.

Threads and BLAS (set before torch is imported, so OpenBLAS and OpenMP
see them): OMP_NUM_THREADS and OPENBLAS_NUM_THREADS = --threads, and
torch.set_num_threads(--threads).  OpenBLAS 0.3.21 does not recognise recent
Xeons and falls back to its SSE3 "Prescott" kernels (README, Benchmarks);
--coretype auto (default) then sets OPENBLAS_CORETYPE to SkylakeX on an
AVX-512 CPU, Haswell on an AVX2 one, and otherwise keeps OpenBLAS's own
choice (Cooperlake on a Zen 4, faster there than SkylakeX;
scripts/torch_env.py), unless the environment already sets it;
--coretype default always leaves OpenBLAS's own choice.  The kernel family in use
is reported as "blas_core".

Idle threads: torch runs its elementwise operations on OpenMP threads and
its products on OpenBLAS's own worker threads.  By default a libgomp thread
spins after each parallel region and an OpenBLAS worker busy-waits 2^28
cycles (about 0.1 s) after each product, so on a small machine the two
pools take cores from each other.  --omp-wait-policy passive (default) sets
OMP_WAIT_POLICY=PASSIVE and --blas-thread-timeout 20 (default) sets
OPENBLAS_THREAD_TIMEOUT=20 (a 2^20-cycle spin, what the Go CPU backend
sets for itself); either is left alone when the environment already sets
it, and "default" / 0 leave the libraries' own behaviour.

Memory: glibc malloc keeps the memory torch frees (MALLOC_MMAP_MAX_=0 and
a large MALLOC_TRIM_THRESHOLD_, as jemalloc or tcmalloc would;
scripts/torch_env.py) unless the environment sets either; otherwise every
step faults its activations in anew. Reported as "malloc_mmap_max".

ms_per_step is the median over --steps timed steps after --warmup steps;
gflops / tflops_per_s use the FLOP count of cmd/uniter/bench.go
(forwardFLOPs plus the VQA head, x3 unless fwd).
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VQA_ANSWERS = 3129


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base", choices=["base", "large"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--txt-len", type=int, default=40)
    ap.add_argument("--nbb", type=int, default=50)
    ap.add_argument("--mode", default="fwdbwd",
                    choices=["fwd", "fwdbwd", "train"])
    ap.add_argument("--task", default="", choices=["", "vqa"],
                    help="vqa: the VQA head, loss and fine-tuning step")
    ap.add_argument("--optim", default="torch",
                    choices=["torch", "foreach", "official"],
                    help="train: torch.optim.AdamW's per-tensor loop "
                    "(default, the fastest here), the same with "
                    "foreach=True, or the official optim/adamw.py "
                    "(scripts/train_ref.py)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch default)")
    ap.add_argument("--coretype", default="auto",
                    help="OPENBLAS_CORETYPE: auto (the CPU's family unless "
                    "the environment sets one), default (OpenBLAS's own "
                    "choice) or a name (SkylakeX, Haswell, ...)")
    ap.add_argument("--omp-wait-policy", default="passive",
                    help="OMP_WAIT_POLICY: passive (default), active, or "
                    "default (libgomp's own)")
    ap.add_argument("--blas-thread-timeout", type=int, default=20,
                    help="OPENBLAS_THREAD_TIMEOUT: workers spin 2^N cycles "
                    "after a product (default 20; 0: OpenBLAS's 2^28)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


ARGS = parse_args()
sys.path.insert(0, HERE)
from torch_env import coretype, loaded_core, use_retained_malloc  # noqa: E402

use_retained_malloc()
# Before torch (and the OpenBLAS it loads) is imported.
if ARGS.threads > 0:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
if ARGS.coretype == "auto":
    if "OPENBLAS_CORETYPE" not in os.environ and coretype():
        os.environ["OPENBLAS_CORETYPE"] = coretype()
elif ARGS.coretype != "default":
    os.environ["OPENBLAS_CORETYPE"] = ARGS.coretype
if ARGS.omp_wait_policy != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", ARGS.omp_wait_policy.upper())
if ARGS.blas_thread_timeout > 0:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT",
                          str(ARGS.blas_thread_timeout))

import torch  # noqa: E402

from uniter_ref import (UniterConfig, UniterModel, boxes_7d,  # noqa: E402
                        build_joint_layout)


def forward_flops(cfg, b, t, n):
    """Matmul + attention FLOPs of one forward, as forwardFLOPs in
    cmd/uniter/bench.go (fwdbwd and train count 3x)."""
    h, i = float(cfg.hidden_size), float(cfg.intermediate_size)
    s = float(t + n)
    tokens = b * s
    f = 2.0 * b * n * (cfg.img_dim * h + 7 * h)
    f += cfg.num_hidden_layers * (2 * tokens * (4 * h * h + 2 * h * i)
                                  + 4 * b * s * s * h)
    f += 2.0 * b * h * h
    return f


def make_optimizer(model, head_prefix):
    """AdamW as train_vqa.py builds it: decay / no-decay groups, the head's
    learning rate times 10 (head_prefix None: no head)."""
    no_decay = ("bias", "LayerNorm.weight")
    lr, groups = 8e-5, {}
    for name, p in model.named_parameters():
        head = head_prefix is not None and name.startswith(head_prefix)
        decay = not any(nd in name for nd in no_decay)
        groups.setdefault((head, decay), []).append(p)
    pg = [{"params": ps, "lr": lr * (10 if head else 1),
           "weight_decay": 0.01 if decay else 0.0}
          for (head, decay), ps in sorted(groups.items())]
    if ARGS.optim == "official":
        from train_ref import AdamW
        return AdamW(pg, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    return torch.optim.AdamW(pg, lr=lr, betas=(0.9, 0.98), eps=1e-6,
                             foreach=ARGS.optim == "foreach")


def main():
    args = ARGS
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = (UniterConfig.base() if args.preset == "base"
           else UniterConfig.large())
    vqa = args.task == "vqa"
    if vqa:
        from finetune_ref import (UniterForVisualQuestionAnswering,
                                  vqa_train_loss)
        model = UniterForVisualQuestionAnswering(cfg, cfg.img_dim,
                                                 VQA_ANSWERS)
    else:
        model = UniterModel(cfg, cfg.img_dim)
    B, T, N, H = args.batch, args.txt_len, args.nbb, cfg.hidden_size

    g = torch.Generator().manual_seed(args.seed + 1)
    input_ids = torch.randint(1000, cfg.vocab_size, (B, T), generator=g)
    input_ids[:, 0] = 101
    input_ids[:, -1] = 102
    position_ids = torch.arange(T).unsqueeze(0)
    img_feat = torch.rand(B, N, cfg.img_dim, generator=g)
    xy = torch.rand(B, N, 2, generator=g) * 0.6
    wh = 0.05 + torch.rand(B, N, 2, generator=g) * 0.35
    norm_bb = torch.cat([xy, xy + wh, wh], dim=-1)
    img_pos_feat = boxes_7d(norm_bb)
    attn_masks, gather_index, S = build_joint_layout([T] * B, [N] * B, T)
    R = torch.randn(B, S, H, generator=g)
    targets = torch.zeros(B, VQA_ANSWERS)
    scores = torch.tensor([0.3, 0.6, 0.9, 1.0])
    for i in range(B):
        idx = torch.randint(VQA_ANSWERS, (3,), generator=g)
        targets[i, idx] = scores[torch.randint(4, (3,), generator=g)]
    batch = {"input_ids": input_ids, "position_ids": position_ids,
             "img_feat": img_feat, "img_pos_feat": img_pos_feat,
             "attn_masks": attn_masks, "gather_index": gather_index,
             "targets": targets}

    train = args.mode == "train"
    opt = make_optimizer(model, "vqa_output." if vqa else None) \
        if train else None
    params = [p for p in model.parameters()]

    def loss_of():
        if vqa:
            logits = model(batch, compute_loss=False)
            logits.argmax(dim=1)  # the predictions (and score) Step returns
            return vqa_train_loss(logits, targets)
        seq = model(input_ids, position_ids, img_feat, img_pos_feat,
                    attn_masks, gather_index,
                    output_all_encoded_layers=False)
        if args.mode == "fwd":
            model.pooler(seq)
            return None
        return (seq * R).sum()

    def step():
        if args.mode == "fwd":
            with torch.no_grad():
                loss = loss_of()
                if loss is not None:
                    loss.item()
            return
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        loss.item()
        if train:
            if vqa:
                torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()

    model.train(args.mode != "fwd")
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    flops = forward_flops(cfg, B, T, N)
    if vqa:
        flops += 2.0 * B * 2 * H * (H + VQA_ANSWERS)
    flops *= 1 if args.mode == "fwd" else 3
    out = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas_core": loaded_core(),
        "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "blas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", ""),
        "mode": args.mode,
    }
    if vqa:
        out["task"] = "vqa"
    if train:
        out["optim"] = args.optim
    out.update({
        "preset": args.preset,
        "batch": B,
        "txt_len": T,
        "nbb": N,
        "seq_len": S,
        "steps": args.steps,
        "warmup": args.warmup,
        "ms_per_step": round(med, 3),
        "ms_min": round(min(times), 3),
        "ms_mean": round(statistics.mean(times), 3),
        "tokens_per_s": round(B * S / (med / 1e3), 1),
        "gflops": round(flops / 1e9, 3),
        "tflops_per_s": round(flops / (med / 1e3) / 1e12, 5),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
