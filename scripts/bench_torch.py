#!/usr/bin/python3
"""Time the PyTorch reference UNITER backbone (scripts/uniter_ref.py) on CPU.

This is the counterpart of `uniter bench`:
  * backbone only (UniterModel: embeddings + encoder, no pretraining heads,
    no pooler), fp32;
  * synthetic batch: every example has the same text length --txt-len
    (counting [CLS]/[SEP]) and --nbb regions, so S = txt_len + nbb and
    gather_index is the compact joint layout of spec 1.5 (here an identity);
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
ms_per_step is the median over --steps timed steps after --warmup steps;
gflops / tflops_per_s use the FLOP count of cmd/uniter/bench.go
(forwardFLOPs, x3 for fwdbwd).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uniter_ref import (UniterConfig, UniterModel, boxes_7d,  # noqa: E402
                        build_joint_layout)


def forward_flops(cfg, b, t, n):
    """Matmul + attention FLOPs of one forward, as forwardFLOPs in
    cmd/uniter/bench.go (fwdbwd counts 3x)."""
    h, i = float(cfg.hidden_size), float(cfg.intermediate_size)
    s = float(t + n)
    tokens = b * s
    f = 2.0 * b * n * (cfg.img_dim * h + 7 * h)
    f += cfg.num_hidden_layers * (2 * tokens * (4 * h * h + 2 * h * i)
                                  + 4 * b * s * s * h)
    f += 2.0 * b * h * h
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base", choices=["base", "large"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--txt-len", type=int, default=40)
    ap.add_argument("--nbb", type=int, default=50)
    ap.add_argument("--mode", default="fwdbwd", choices=["fwd", "fwdbwd"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = (UniterConfig.base() if args.preset == "base"
           else UniterConfig.large())
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

    def step():
        if args.mode == "fwd":
            with torch.no_grad():
                seq = model(input_ids, position_ids, img_feat, img_pos_feat,
                            attn_masks, gather_index,
                            output_all_encoded_layers=False)
                model.pooler(seq)
        else:
            model.zero_grad(set_to_none=True)
            seq = model(input_ids, position_ids, img_feat, img_pos_feat,
                        attn_masks, gather_index,
                        output_all_encoded_layers=False)
            (seq * R).sum().backward()

    model.train(args.mode == "fwdbwd")
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    flops = forward_flops(cfg, B, T, N) * (1 if args.mode == "fwd" else 3)
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mode": args.mode,
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
    }))


if __name__ == "__main__":
    main()
