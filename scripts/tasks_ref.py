#!/usr/bin/python3
"""PyTorch reference values for the Go pretraining tasks (internal/tasks).

Computes every pretraining loss the way the official UNITER code reduces it
(docs/tasks.md, "Pretraining tasks"; model/pretrain.py,
model/ot.py and pretrain.py of ChenRocks/UNITER) and its gradient, in fp32,
and writes them with torch.save as flat dicts of contiguous tensors (fp32
floats, int64 ints) that the Go reader ckpt.ReadTorch loads:

  testdata/tasks/losses.pt  the losses on random head outputs:
      mlm/    CE over masked tokens, mean; grad w.r.t. the logits
      mrfr/   MSE, mean over all elements; grad w.r.t. the prediction
      mrc/    CE with ignore_index 0 (one row ignored), mean over ALL rows
              as loss.mean() does; grad w.r.t. the logits
      mrckl/  kl_div(log_softmax(logits), soft, reduction='none').mean();
              grad w.r.t. the logits
      itm/    2-way CE, mean; grad w.r.t. the logits
      ot/     WRA on padded text/image rows (garbage in the padding, one
              row below the normalisation eps): cost, IPOT plan, distance,
              ot_loss and its gradient w.r.t. both row sets (plan detached)
  testdata/tasks/steps.pt   one batch through the golden tiny model
      (testdata/golden/tiny.pt, eval mode) for every task: the task loss,
      its parts, the gradient w.r.t. the last layer (heads and pooler) and
      the gradients of selected parameters.

Run from anywhere: python3 scripts/tasks_ref.py
"""
import json
import os
import sys

import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from uniter_ref import (UniterConfig, UniterForPretraining,  # noqa: E402
                        build_joint_layout, state_dict_params)

ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "testdata", "tasks")
GOLDEN = os.path.join(ROOT, "testdata", "golden")

OT_LAMBDA = 0.1
OT_BETA, OT_ITERS, OT_EPS = 0.5, 50, 1e-5


def put(out, key, v):
    v = v.detach()
    v = v.float() if v.is_floating_point() else v.long()
    out[key] = v.clone().contiguous()


def leaf(x):
    return x.clone().detach().requires_grad_(True)


# --------------------------------------------------------------------------
# WRA (docs/tasks.md, "Pretraining tasks"; as model/ot.py computes it)
# --------------------------------------------------------------------------
def ot_cost(txt, img, eps=OT_EPS):
    """1 - cosine similarity of every text row with every region row,
    [B,M,D] x [B,N,D] -> [B,M,N]; rows are normalised by max(norm, eps)."""
    t = F.normalize(txt, p=2, dim=-1, eps=eps)
    i = F.normalize(img, p=2, dim=-1, eps=eps)
    return 1 - t.matmul(i.transpose(1, 2))


@torch.no_grad()
def ipot(C, txt_len, txt_pad, img_len, img_pad, joint_pad):
    """IPOT of the reference (beta 0.5, 50 iterations, k 1) on C [B,M,N];
    returns the plan T [B,N,M], zero at padding."""
    b, m, n = C.shape
    sigma = torch.ones(b, m, dtype=C.dtype) / txt_len.unsqueeze(1)
    T = torch.ones(b, n, m, dtype=C.dtype)
    A = torch.exp(-C.transpose(1, 2) / OT_BETA)
    sigma.masked_fill_(txt_pad, 0)
    pad_nm = joint_pad.transpose(1, 2)
    T.masked_fill_(pad_nm, 0)
    A.masked_fill_(pad_nm, 0)
    m_len = txt_len.view(b, 1, 1)
    n_len = img_len.view(b, 1, 1)
    x_mask = (txt_pad.to(C.dtype) * 1e4).unsqueeze(1)
    y_mask = (img_pad.to(C.dtype) * 1e4).unsqueeze(1)
    for _ in range(OT_ITERS):
        Q = A * T
        sigma = sigma.view(b, m, 1)
        delta = 1 / (n_len * Q.matmul(sigma).view(b, 1, n) + y_mask)
        sigma = 1 / (m_len * delta.matmul(Q) + x_mask)
        T = delta.view(b, n, 1) * Q * sigma
    T.masked_fill_(pad_nm, 0)
    return T


def ot_dist(txt, img, txt_pad, img_pad):
    """Per-example OT distance trace(C T) with the plan detached; also
    returns the masked cost and the plan."""
    cost = ot_cost(txt, img)
    joint_pad = txt_pad.unsqueeze(-1) | img_pad.unsqueeze(-2)
    cost = cost.masked_fill(joint_pad, 0)
    txt_len = (txt_pad.size(1) - txt_pad.sum(1)).to(cost.dtype)
    img_len = (img_pad.size(1) - img_pad.sum(1)).to(cost.dtype)
    T = ipot(cost.detach(), txt_len, txt_pad, img_len, img_pad, joint_pad)
    dist = torch.diagonal(cost.matmul(T.detach()), dim1=1, dim2=2).sum(-1)
    return dist, cost, T


def ot_loss_of(dist, labels):
    """(sum over matched pairs - sum over mismatched) / (n_pos + n_neg)."""
    pos = dist.masked_select(labels == 1)
    neg = dist.masked_select(labels == 0)
    return (pos.sum() - neg.sum()) / (pos.numel() + neg.numel()), pos, neg


def pad_mask(lens, width):
    m = torch.zeros(len(lens), width, dtype=torch.bool)
    for i, n in enumerate(lens):
        m[i, n:] = True
    return m


# --------------------------------------------------------------------------
# losses on random head outputs
# --------------------------------------------------------------------------
def fp16_soft_labels(g, n, c, active):
    """Soft labels like the detector's: a few classes with mass, the rest
    exactly 0, stored in fp16 (rows sum to 1 only approximately)."""
    soft = torch.zeros(n, c)
    for i in range(n):
        idx = torch.randperm(c, generator=g)[:active]
        soft[i, idx] = torch.rand(active, generator=g) ** 3 + 1e-3
        soft[i] /= soft[i].sum()
    return soft.half().float()


def losses(g):
    out = {}

    # MLM: labels of the masked tokens only (txt_labels[txt_labels != -1]).
    n, v = 10, 301
    logits = torch.randn(n, v, generator=g) * 3
    labels = torch.randint(0, v, (n,), generator=g)
    logits[0, labels[0]] += 30  # a confident, correct row
    x = leaf(logits)
    loss = F.cross_entropy(x, labels, reduction='none').mean()
    loss.backward()
    put(out, "mlm/logits", logits)
    put(out, "mlm/labels", labels)
    put(out, "mlm/loss", loss.reshape(1))
    put(out, "mlm/grad", x.grad)
    put(out, "mlm/correct", (logits.argmax(-1) == labels).sum().reshape(1))

    # MRFR: F.mse_loss(reduction='none').mean().
    n, d = 3, 512
    pred = torch.randn(n, d, generator=g)
    target = torch.rand(n, d, generator=g) * 4
    x = leaf(pred)
    loss = F.mse_loss(x, target, reduction='none').mean()
    loss.backward()
    put(out, "mrfr/pred", pred)
    put(out, "mrfr/target", target)
    put(out, "mrfr/loss", loss.reshape(1))
    put(out, "mrfr/grad", x.grad)

    # MRC: target argmax(soft[:, 1:]) + 1, CE ignore_index 0, .mean() over
    # every row (one row's label is forced to 0 to pin the reduction).
    n, c = 5, 1601
    soft = fp16_soft_labels(g, n, c, 6)
    labels = soft[:, 1:].max(dim=-1)[1] + 1
    labels[3] = 0
    logits = torch.randn(n, c, generator=g) * 2
    logits[1, labels[1]] += 12  # a correct row
    x = leaf(logits)
    loss = F.cross_entropy(x, labels, ignore_index=0, reduction='none').mean()
    loss.backward()
    pred = logits[:, 1:].max(dim=-1)[1] + 1
    put(out, "mrc/logits", logits)
    put(out, "mrc/labels", labels)
    put(out, "mrc/loss", loss.reshape(1))
    put(out, "mrc/grad", x.grad)
    put(out, "mrc/correct", ((pred == labels) & (labels != 0)).sum().reshape(1))

    # MRC-kl: kl_div(log_softmax(logits), soft, reduction='none').mean().
    n, c = 3, 1601
    soft = fp16_soft_labels(g, n, c, 9)
    logits = torch.randn(n, c, generator=g) * 2
    x = leaf(logits)
    loss = F.kl_div(F.log_softmax(x, dim=-1), soft, reduction='none').mean()
    loss.backward()
    put(out, "mrckl/logits", logits)
    put(out, "mrckl/soft", soft)
    put(out, "mrckl/loss", loss.reshape(1))
    put(out, "mrckl/grad", x.grad)

    # ITM: 2-way CE, mean.
    logits = torch.randn(7, 2, generator=g) * 2
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    x = leaf(logits)
    loss = F.cross_entropy(x, labels, reduction='none').mean()
    loss.backward()
    put(out, "itm/logits", logits)
    put(out, "itm/labels", labels)
    put(out, "itm/loss", loss.reshape(1))
    put(out, "itm/grad", x.grad)
    put(out, "itm/correct", (logits.argmax(-1) == labels).sum().reshape(1))

    # WRA on padded rows. Padding holds garbage: the masks must remove it.
    txt_lens, nbb = [7, 3, 5, 6], [9, 4, 8, 2]
    labels = torch.tensor([1, 0, 1, 0])
    B, M, N, H = len(txt_lens), max(txt_lens), max(nbb), 32
    txt = torch.randn(B, M, H, generator=g) + 0.3
    img = torch.randn(B, N, H, generator=g) + 0.3
    txt[2, 1] *= 1e-7  # norm below eps: F.normalize's clamp is active
    txt_pad, img_pad = pad_mask(txt_lens, M), pad_mask(nbb, N)
    xt, xi = leaf(txt), leaf(img)
    dist, cost, T = ot_dist(xt, xi, txt_pad, img_pad)
    loss, pos, neg = ot_loss_of(dist, labels)
    loss.backward()
    put(out, "ot/txt", txt)
    put(out, "ot/img", img)
    put(out, "ot/txt_lens", torch.tensor(txt_lens))
    put(out, "ot/nbb", torch.tensor(nbb))
    put(out, "ot/labels", labels)
    put(out, "ot/cost", cost)
    put(out, "ot/plan", T)
    put(out, "ot/dist", dist)
    put(out, "ot/loss", loss.reshape(1))
    put(out, "ot/grad_txt", xt.grad)
    put(out, "ot/grad_img", xi.grad)
    return out


# --------------------------------------------------------------------------
# one batch through the golden tiny model, every task
# --------------------------------------------------------------------------
CLS, SEP, MASK = 1, 2, 3
TXT_LENS = [6, 9, 4]    # with [CLS] and [SEP]
NUM_BBS = [5, 3, 2]
MLM_POS = [[2, 4], [1, 5, 7], [2]]
MASKED = [[1, 3], [0], [1]]
ITM_LABELS = [1, 0, 1]
# Parameters whose gradients are compared, besides the last layer's.
GRAD_KEYS = [
    "cls.predictions.bias",
    "cls.predictions.transform.dense.bias",
    "feat_regress.bias",
    "feat_regress.net.0.bias",
    "region_classifier.net.0.bias",
    "region_classifier.net.3.bias",
    "itm_output.weight",
    "itm_output.bias",
    "uniter.pooler.dense.bias",
    "uniter.encoder.layer.0.attention.self.query.weight",
    "uniter.embeddings.LayerNorm.weight",
    "uniter.img_embeddings.img_linear.bias",
    "uniter.img_embeddings.mask_embedding.weight",
]


def golden_model():
    with open(os.path.join(GOLDEN, "tiny.json")) as f:
        cfg = UniterConfig.from_dict(json.load(f))
    model = UniterForPretraining(cfg)
    sd = torch.load(os.path.join(GOLDEN, "tiny.pt"))
    params = {k[len("param/"):]: v for k, v in sd.items()
              if k.startswith("param/")}
    model.load_state_dict(params)
    model.eval()
    return cfg, model


def batch_inputs(cfg, g):
    B, T, N = len(TXT_LENS), max(TXT_LENS), max(NUM_BBS)
    ids = torch.zeros(B, T, dtype=torch.long)
    for b, tl in enumerate(TXT_LENS):
        ids[b, 0], ids[b, tl - 1] = CLS, SEP
        ids[b, 1:tl - 1] = torch.randint(5, cfg.vocab_size, (tl - 2,),
                                         generator=g)
    mlm_ids, mlm_labels = ids.clone(), torch.full((B, T), -1,
                                                  dtype=torch.long)
    for b, ps in enumerate(MLM_POS):
        for p in ps:
            mlm_labels[b, p] = ids[b, p]
            mlm_ids[b, p] = MASK
    feat = torch.zeros(B, N, cfg.img_dim)
    pos = torch.zeros(B, N, 7)
    masks = torch.zeros(B, N, dtype=torch.long)
    for b, nbb in enumerate(NUM_BBS):
        feat[b, :nbb] = (torch.rand(nbb, cfg.img_dim, generator=g) * 2
                         ).half().float()
        bb = torch.rand(nbb, 6, generator=g).half()
        pos[b, :nbb] = torch.cat([bb, bb[:, 4:5] * bb[:, 5:6]], -1).float()
        masks[b, MASKED[b]] = 1
    n_masked = int(masks.sum())
    soft = fp16_soft_labels(g, n_masked, cfg.img_label_dim, 4)
    return dict(input_ids=ids, mlm_ids=mlm_ids, mlm_labels=mlm_labels,
                img_feat=feat, img_pos=pos, img_masks=masks, soft=soft,
                itm_labels=torch.tensor(ITM_LABELS))


def run_task(task, model, cfg, inp):
    """The official forward_<task> and the training loop's reduction."""
    B, T = inp["input_ids"].shape
    H = cfg.hidden_size
    attn, gather, S = build_joint_layout(TXT_LENS, NUM_BBS, T)
    position_ids = torch.arange(T).unsqueeze(0)
    ids = inp["mlm_ids"] if task == "mlm" else inp["input_ids"]
    region = task in ("mrfr", "mrc", "mrckl")
    masks = inp["img_masks"]
    feat = inp["img_feat"]
    img_masks = None
    if region:
        feat = feat * (1 - masks).unsqueeze(-1).float()  # collate zero-fills
        img_masks = masks
    seq = model.uniter(ids, position_ids, feat, inp["img_pos"], attn,
                       gather_index=gather, img_masks=img_masks,
                       output_all_encoded_layers=False)
    seq.retain_grad()
    parts = {}
    correct = 0
    img_mask_tgt = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        img_mask_tgt[b, TXT_LENS[b]:TXT_LENS[b] + NUM_BBS[b]] = \
            masks[b, :NUM_BBS[b]].bool()
    if task == "mlm":
        labels = inp["mlm_labels"]
        scores = model.mlm_scores(seq, labels != -1)
        tgt = labels[labels != -1]
        loss = F.cross_entropy(scores, tgt, reduction='none').mean()
        correct = int((scores.argmax(-1) == tgt).sum())
    elif task == "mrfr":
        pred = model.mrfr_pred(seq, img_mask_tgt)
        loss = F.mse_loss(pred, inp["img_feat"][masks.bool()],
                          reduction='none').mean()
    elif task == "mrc":
        scores = model.mrc_scores(seq, img_mask_tgt)
        tgt = inp["soft"][:, 1:].max(dim=-1)[1] + 1
        loss = F.cross_entropy(scores, tgt, ignore_index=0,
                               reduction='none').mean()
        correct = int(((scores[:, 1:].argmax(-1) + 1) == tgt).sum())
    elif task == "mrckl":
        scores = model.mrc_scores(seq, img_mask_tgt)
        lsm = F.log_softmax(scores, dim=-1)
        loss = F.kl_div(lsm, inp["soft"], reduction='none').mean()
        # validate_mrc's MRC-kl accuracy: argmax over every class,
        # background included, against the soft labels' argmax.
        correct = int((lsm.argmax(-1) == inp["soft"].argmax(-1)).sum())
    else:
        targets = inp["itm_labels"]
        scores = model.itm_scores(seq)
        itm = F.cross_entropy(scores, targets, reduction='none').mean()
        correct = int((scores.argmax(-1) == targets).sum())
        # ot_scatter puts compact position j of a row at j for text and at
        # Tmax + (j - tl) after it, which undoes the gather of 1.5.
        N = inp["img_feat"].shape[1]
        scatter = torch.arange(S).unsqueeze(0).repeat(B, 1)
        for b, tl in enumerate(TXT_LENS):
            scatter[b, tl:] = torch.arange(T, T + S - tl)
        width = max(int(scatter.max()) + 1, T + N)
        ctx = torch.zeros(B, width, H).scatter(
            1, scatter.unsqueeze(-1).expand(B, S, H), seq)
        dist, _, _ = ot_dist(ctx[:, :T], ctx[:, T:T + N],
                             pad_mask(TXT_LENS, T), pad_mask(NUM_BBS, N))
        ot, pos, neg = ot_loss_of(dist, targets)
        loss = itm + OT_LAMBDA * ot
        parts = {"itm_loss": itm, "ot_loss": ot, "ot_pos": pos.mean(),
                 "ot_neg": neg.mean()}
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss, parts, correct, seq.grad.reshape(B * S, H)


def steps(g):
    cfg, model = golden_model()
    inp = batch_inputs(cfg, g)
    out = {}
    for k, v in inp.items():
        put(out, "in/" + k, v)
    put(out, "in/txt_lens", torch.tensor(TXT_LENS))
    put(out, "in/num_bbs", torch.tensor(NUM_BBS))
    params = state_dict_params(model)
    for task in ("mlm", "mrfr", "mrc", "mrckl", "itm"):
        loss, parts, correct, dseq = run_task(task, model, cfg, inp)
        put(out, task + "/loss", loss.reshape(1))
        put(out, task + "/correct", torch.tensor([correct]))
        put(out, task + "/grad_seq", dseq)
        for k, v in parts.items():
            put(out, task + "/part/" + k, v.reshape(1))
        for k in GRAD_KEYS:
            p = params[k]
            put(out, task + "/grad/" + k,
                p.grad if p.grad is not None else torch.zeros_like(p))
        print("%-5s loss %.6f correct %d %s" % (
            task, loss.item(), correct,
            " ".join("%s %.6f" % (k, v.item()) for k, v in parts.items())))
    return out


def save(name, out):
    path = os.path.join(OUT, name)
    torch.save(out, path)
    back = torch.load(path)
    assert all(torch.equal(back[k], out[k]) for k in out)
    print("wrote %s (%d tensors, %d bytes)" % (path, len(out),
                                              os.path.getsize(path)))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    save("losses.pt", losses(torch.Generator().manual_seed(2024)))
    save("steps.pt", steps(torch.Generator().manual_seed(99)))


if __name__ == "__main__":
    main()
