#!/usr/bin/python3
"""Reference optimizer data for internal/train tests.

Runs a few optimizer updates of the official UNITER recipe on random
parameters and gradients, exactly as pretrain.py drives them:

  * optim/adamw.py (pytorch-transformers AdamW: bias correction folded into
    the step size, denominator sqrt(v)+eps, decoupled decay p -= lr*wd*p
    AFTER the Adam step), re-typed below with the current torch API;
  * optim/misc.py build_optimizer parameter groups (no decay for names
    containing 'bias', 'LayerNorm.bias' or 'LayerNorm.weight'), plus the
    lr_mul group split used by the VQA fine-tuning (head names get lr*lr_mul);
  * optim/sched.py warmup_linear + get_lr_sched (floor 1e-8 when <= 0);
  * loss-scaled gradients (apex: unscale by 1/scale), then
    torch.nn.utils.clip_grad_norm_, then the step.

Run with the Debian interpreter (torch CPU):

    /usr/bin/python3 scripts/train_ref.py

Writes testdata/train/adamw.pt: one flat dict of tensors (zip format; fp32,
except the float64 hp/ and sched/ scalars):
  param0/<name>          initial parameters
  grad/<t>/<name>        scaled gradients fed before update t (t = 1..STEPS)
  want/<t>/<name>        parameters after update t
  exp_avg/<name>         first moment after the last update
  exp_avg_sq/<name>      second moment after the last update
  lr/<t>                 learning rate of update t (scalar)
  norm/<t>               unscaled gradient norm before clipping (scalar)
  hp/...                 hyperparameters (scalars): base_lr, warmup, total,
                         weight_decay, beta1, beta2, eps, grad_norm, scale,
                         lr_mul, steps
  sched/lr               get_lr_sched for t = 1..SCHED_STEPS+2 (base 1,
                         warmup 3, total SCHED_STEPS: the floor included)
Parameter names outside the uniter. backbone are heads (lr_mul).
"""

import math
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "train")

# Names chosen to cover every branch of the decay rule: img_layer_norm.weight
# IS decayed (the substring rule does not match it), LayerNorm weight/bias
# and biases are not; itm_output.* are heads (lr_mul).
PARAMS = [
    ("uniter.encoder.layer.0.attention.self.query.weight", (6, 5), False),
    ("uniter.encoder.layer.0.attention.self.query.bias", (6,), False),
    ("uniter.encoder.layer.0.output.LayerNorm.weight", (5,), False),
    ("uniter.encoder.layer.0.output.LayerNorm.bias", (5,), False),
    ("uniter.img_embeddings.img_layer_norm.weight", (7,), False),
    ("uniter.embeddings.word_embeddings.weight", (9, 4), False),
    ("itm_output.weight", (2, 4), True),
    ("itm_output.bias", (2,), True),
]

BASE_LR = 1e-3
WARMUP = 2
TOTAL = 6
STEPS = 4
WD = 0.01
BETAS = (0.9, 0.98)
EPS = 1e-6
GRAD_NORM = 5.0
SCALE = 1024.0
LR_MUL = 10.0
SCHED_STEPS = 8


class AdamW(torch.optim.Optimizer):
    """optim/adamw.py of the official repository."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                 weight_decay=0.0, correct_bias=True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p)
                    state['exp_avg_sq'] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                beta1, beta2 = group['betas']
                state['step'] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group['eps'])
                step_size = group['lr']
                if group['correct_bias']:
                    bias_correction1 = 1.0 - beta1 ** state['step']
                    bias_correction2 = 1.0 - beta2 ** state['step']
                    step_size = (step_size * math.sqrt(bias_correction2)
                                 / bias_correction1)
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group['weight_decay'] > 0.0:
                    p.add_(p, alpha=-group['lr'] * group['weight_decay'])


def warmup_linear(step, warmup_step, tot_step):
    if step < warmup_step:
        return step / warmup_step
    return max(0, (tot_step - step) / (tot_step - warmup_step))


def get_lr_sched(global_step, base, warmup, total):
    lr = base * warmup_linear(global_step, warmup, total)
    if lr <= 0:
        lr = 1e-8
    return lr


def main():
    g = torch.Generator().manual_seed(1234)
    named = []
    for name, shape, head in PARAMS:
        p = torch.nn.Parameter(torch.randn(shape, generator=g))
        named.append((name, p, head))
    out = {}
    for name, p, _ in named:
        out[f"param0/{name}"] = p.detach().clone()

    no_decay = ['bias', 'LayerNorm.bias', 'LayerNorm.weight']
    groups = []
    for head in (False, True):
        for decay in (True, False):
            ps = [p for n, p, h in named if h == head and
                  (not any(nd in n for nd in no_decay)) == decay]
            groups.append({'params': ps, 'weight_decay': WD if decay else 0.0,
                           'lr_mul': LR_MUL if head else 1.0})
    opt = AdamW(groups, lr=BASE_LR, betas=BETAS, eps=EPS)

    for t in range(1, STEPS + 1):
        for i, (name, p, _) in enumerate(named):
            # One parameter gets gradients near eps, where the placement of
            # eps in the denominator matters.
            mag = 1e-7 if i == 1 else (3.0 if t == 2 else 0.5)
            gs = (torch.randn(p.shape, generator=g) * mag * SCALE).float()
            out[f"grad/{t}/{name}"] = gs.clone()
            p.grad = gs / SCALE
        params = [p for _, p, _ in named]
        norm = torch.nn.utils.clip_grad_norm_(params, GRAD_NORM)
        lr = get_lr_sched(t, BASE_LR, WARMUP, TOTAL)
        for grp in opt.param_groups:
            grp['lr'] = lr * grp['lr_mul']
        opt.step()
        out[f"lr/{t}"] = torch.tensor(lr, dtype=torch.float32)
        out[f"norm/{t}"] = torch.tensor(float(norm), dtype=torch.float32)
        for name, p, _ in named:
            out[f"want/{t}/{name}"] = p.detach().clone()
    for name, p, _ in named:
        st = opt.state[p]
        out[f"exp_avg/{name}"] = st['exp_avg'].clone()
        out[f"exp_avg_sq/{name}"] = st['exp_avg_sq'].clone()

    hp = dict(base_lr=BASE_LR, warmup=WARMUP, total=TOTAL, weight_decay=WD,
              beta1=BETAS[0], beta2=BETAS[1], eps=EPS, grad_norm=GRAD_NORM,
              scale=SCALE, lr_mul=LR_MUL, steps=STEPS)
    for k, v in hp.items():
        out[f"hp/{k}"] = torch.tensor(float(v), dtype=torch.float64)
    out["sched/lr"] = torch.tensor(
        [get_lr_sched(t, 1.0, 3, SCHED_STEPS) for t in range(1, SCHED_STEPS + 3)],
        dtype=torch.float64)

    os.makedirs(OUT, exist_ok=True)
    torch.save(out, os.path.join(OUT, "adamw.pt"))
    print(f"wrote {len(out)} tensors to {OUT}/adamw.pt")


if __name__ == "__main__":
    main()
