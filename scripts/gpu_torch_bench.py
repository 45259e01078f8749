#!/usr/bin/python3
"""PyTorch side of scripts/gpu-check.sh, and its report.

  gpu_torch_bench.py kernels         time PyTorch on the shapes of
                                     internal/gpu/bench_test.go
  gpu_torch_bench.py step --batch 8,64
                                     time a UNITER-base step (fwd, fwdbwd,
                                     train) of scripts/uniter_ref.py in fp32
                                     and AMP fp16, as `uniter bench` does
  gpu_torch_bench.py table OUTDIR    join OUTDIR/ours.jsonl (GPUBENCH lines
                                     and `uniter bench` JSON) with
                                     OUTDIR/torch.jsonl and print a table

Every timing is CUDA events around the op, 3 warm-up runs, median of 20
(steps: 2 warm-up, median of 5). Each line printed is JSON with a "name"
that matches the Go benchmark of the same shape and a "variant" naming the
PyTorch implementation, so the table can put them side by side.
"""
import argparse
import json
import os
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table needs no torch
    torch = F = None


def emit(name, variant, ms, flops=0.0, nbytes=0.0, **extra):
    d = {"name": name, "variant": variant, "ms": round(ms, 4)}
    if flops:
        d["tflops"] = round(flops / (ms / 1e3) / 1e12, 2)
    if nbytes:
        d["gbs"] = round(nbytes / (ms / 1e3) / 1e9, 1)
    d.update(extra)
    print("TORCHBENCH " + json.dumps(d), flush=True)


def time_ms(fn, warm=3, reps=20):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def bench_gemm():
    m = 8192
    shapes = [768, 2304, 3072]
    for n in shapes:
        for k in shapes:
            a = torch.randn(m, k, device="cuda", dtype=torch.float16)
            b = torch.randn(k, n, device="cuda", dtype=torch.float16)
            bt = torch.randn(n, k, device="cuda", dtype=torch.float16)
            fl = 2.0 * m * n * k
            tag = f"{m}x{n}x{k}"
            emit(f"gemm_f16_nn {tag}", "torch.matmul", time_ms(lambda: torch.matmul(a, b)), fl)
            emit(f"gemm_f16_nt {tag}", "torch.matmul", time_ms(lambda: torch.matmul(a, bt.t())), fl)
            if n == 3072 and k == 768:
                bias = torch.randn(n, device="cuda", dtype=torch.float16)
                emit(f"gemm_f16_nt_bias_gelu {tag}", "F.linear+F.gelu",
                     time_ms(lambda: F.gelu(F.linear(a, bt, bias))), fl)
    torch.backends.cuda.matmul.allow_tf32 = False
    for n, k in [(2304, 768), (3072, 768), (768, 3072)]:
        a = torch.randn(m, k, device="cuda")
        w = torch.randn(n, k, device="cuda")
        emit(f"gemm_f32_nt {m}x{n}x{k}", "torch.matmul(no tf32)",
             time_ms(lambda: torch.matmul(a, w.t())), 2.0 * m * n * k)


def bench_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    heads, dh = 12, 64
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                ("math", SDPBackend.MATH)]
    for nb, s in [(64, 220), (128, 160), (256, 100)]:
        tag = f"B{nb} H{heads} T{s} dh{dh}"
        fl = 4.0 * nb * heads * s * s * dh
        for dt, dname in [(torch.float16, "f16"), (torch.float32, "f32")]:
            q, k, v = (torch.randn(nb, heads, s, dh, device="cuda", dtype=dt, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(nb, heads, s, dh, device="cuda", dtype=dt)
            for bname, be in backends:
                variant = f"sdpa_{bname}_{dname}"
                try:
                    with sdpa_kernel([be]):
                        emit(f"attn_fwd_f32 {tag}", variant,
                             time_ms(lambda: F.scaled_dot_product_attention(q, k, v)), fl)
                        o = F.scaled_dot_product_attention(q, k, v)
                        emit(f"attn_bwd_f32 {tag}", variant,
                             time_ms(lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)), 2.5 * fl)
                        del o
                except RuntimeError as e:
                    print(f"# {variant} {tag}: {str(e).splitlines()[0]}", file=sys.stderr)
            del q, k, v, dout
            torch.cuda.empty_cache()


def bench_layernorm_and_pointwise():
    m, n = 32768, 768
    x = torch.randn(m, n, device="cuda", requires_grad=True)
    w = torch.randn(n, device="cuda", requires_grad=True)
    b = torch.randn(n, device="cuda", requires_grad=True)
    dy = torch.randn(m, n, device="cuda")
    tag = f"{m}x{n}"
    emit(f"layernorm_fwd_f32 {tag}", "F.layer_norm",
         time_ms(lambda: F.layer_norm(x, (n,), w, b, 1e-12)), 0, 2 * 4 * m * n)
    y = F.layer_norm(x, (n,), w, b, 1e-12)
    emit(f"layernorm_bwd_f32 {tag}", "F.layer_norm",
         time_ms(lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)), 0, 3 * 4 * m * n)
    del x, y, dy
    ne = 8192 * 3072
    x = torch.randn(ne, device="cuda")
    emit("gelu_fwd_f32 25M", "F.gelu", time_ms(lambda: F.gelu(x)), 0, 8 * ne)
    emit("dropout_f32 25M", "F.dropout", time_ms(lambda: F.dropout(x, 0.1, True)), 0, 8 * ne)
    emit("sumsq_f32 25M", "x.square().sum(dtype=f64)",
         time_ms(lambda: x.double().square().sum().item()), 0, 4 * ne)
    del x
    npar = 110_000_000
    p = torch.nn.Parameter(torch.randn(npar, device="cuda"))
    p.grad = torch.randn(npar, device="cuda")
    opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True)
    emit("adamw_f32 110M", "AdamW(fused)", time_ms(opt.step), 0, 28 * npar)


def forward_flops(cfg, b, t, n):
    """cmd/uniter/bench.go forwardFLOPs."""
    h, i = float(cfg.hidden_size), float(cfg.intermediate_size)
    s = float(t + n)
    tokens = b * s
    f = 2.0 * b * n * (cfg.img_dim * h + 7 * h)
    f += cfg.num_hidden_layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * b * s * s * h)
    f += 2.0 * b * h * h
    return f


def bench_step(batches, txt_len, nbb):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from uniter_ref import UniterConfig, UniterModel, boxes_7d, build_joint_layout
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = UniterConfig.base()
    model = UniterModel(cfg, cfg.img_dim).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                            fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16)
    for B in batches:
        T, N = txt_len, nbb
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1000, cfg.vocab_size, (B, T), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        pos = torch.arange(T).unsqueeze(0)
        feat = torch.rand(B, N, cfg.img_dim, generator=g)
        xy = torch.rand(B, N, 2, generator=g) * 0.6
        wh = 0.05 + torch.rand(B, N, 2, generator=g) * 0.35
        bb = boxes_7d(torch.cat([xy, xy + wh, wh], dim=-1))
        attn, gi, S = build_joint_layout([T] * B, [N] * B, T)
        ids, pos, feat, bb, attn, gi = (x.cuda() for x in (ids, pos, feat, bb, attn, gi))
        R = torch.randn(B, S, cfg.hidden_size, device="cuda")
        flops1 = forward_flops(cfg, B, T, N)
        for amp in (False, True):
            for mode in ("fwd", "fwdbwd", "train"):
                def step():
                    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                        if mode == "fwd":
                            with torch.no_grad():
                                model(ids, pos, feat, bb, attn, gi, output_all_encoded_layers=False)
                            return
                        model.zero_grad(set_to_none=True)
                        seq = model(ids, pos, feat, bb, attn, gi, output_all_encoded_layers=False)
                        loss = (seq.float() * R).sum()
                    if amp:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    if mode == "train":
                        if amp:
                            scaler.step(opt)
                            scaler.update()
                        else:
                            opt.step()
                model.train(mode != "fwd")
                ms = time_ms(step, warm=2, reps=5)
                fl = flops1 * (1 if mode == "fwd" else 3)
                emit(f"step_{mode}_base B{B}", "uniter_ref " + ("amp_f16" if amp else "fp32"), ms, fl,
                     tokens_per_s=round(B * (T + N) / (ms / 1e3)))
        torch.cuda.empty_cache()


def read_lines(path, prefix):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if prefix and line.startswith(prefix):
                line = line[len(prefix):].strip()
            elif prefix:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def table(outdir):
    ours = read_lines(os.path.join(outdir, "gpubench.log"), "GPUBENCH")
    for d in read_lines(os.path.join(outdir, "uniter_bench.jsonl"), ""):
        ours.append({"name": f"step_{d['mode']}_base B{d['batch']}", "ms": d["ms_per_step"],
                     "tflops": d.get("tflops_per_s"), "variant": "uniter fp16" if d.get("fp16") else "uniter fp32"})
    theirs = read_lines(os.path.join(outdir, "torch_kernels.log"), "TORCHBENCH")
    theirs += read_lines(os.path.join(outdir, "torch_step.log"), "TORCHBENCH")
    by_name = {}
    for t in theirs:
        by_name.setdefault(t["name"], []).append(t)
    w = 44
    print(f"{'op / shape':<{w}} {'ours ms':>9} {'TF/s|GB/s':>10}  {'torch variant':<26} {'torch ms':>9} {'ours/torch':>10}")
    print("-" * (w + 72))
    for o in ours:
        rate = o.get("tflops") or o.get("gbs") or ""
        rate = f"{rate:.1f}" if isinstance(rate, (int, float)) else ""
        name = o["name"] + ("" if o.get("variant", "uniter fp32") == "uniter fp32" or "variant" not in o
                            else " [" + o["variant"] + "]")
        ts = by_name.get(o["name"], [])
        if not ts:
            print(f"{name:<{w}} {o['ms']:>9.3f} {rate:>10}  {'-':<26} {'-':>9} {'-':>10}")
            continue
        for i, t in enumerate(sorted(ts, key=lambda t: t["ms"])):
            first = name if i == 0 else ""
            oms = f"{o['ms']:>9.3f}" if i == 0 else " " * 9
            orate = rate if i == 0 else ""
            print(f"{first:<{w}} {oms} {orate:>10}  {t['variant']:<26} {t['ms']:>9.3f} {o['ms'] / t['ms']:>10.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["kernels", "step", "table"])
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--batch", default="8,64")
    ap.add_argument("--txt-len", type=int, default=40)
    ap.add_argument("--nbb", type=int, default=50)
    args = ap.parse_args()
    if args.what == "table":
        table(args.outdir)
        return
    print(f"# torch {torch.__version__} cuda {torch.version.cuda} {torch.cuda.get_device_name()}", file=sys.stderr)
    torch.manual_seed(0)
    if args.what == "kernels":
        for f in (bench_gemm, bench_attention, bench_layernorm_and_pointwise):
            try:
                f()
            except Exception as e:  # one family failing must not hide the others
                print(f"# {f.__name__} failed: {e}", file=sys.stderr)
            torch.cuda.empty_cache()
    else:
        bench_step([int(b) for b in args.batch.split(",")], args.txt_len, args.nbb)


if __name__ == "__main__":
    main()
