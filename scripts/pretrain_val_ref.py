#!/usr/bin/python3
"""PyTorch reference of the pretraining validation numbers (Go:
internal/train EvaluateTask, the validation of `uniter pretrain` and
`uniter eval --task pretrain`).

Runs the golden tiny model (testdata/golden/tiny.pt, eval mode) on five
examples in two batches ([0, 1, 2] and [3, 4]) and reduces every number the
way validate_mlm, validate_mrfr, validate_mrc and validate_itm of the
official pretrain.py (ChenRocks/UNITER) do: per batch a float32 sum of the
losses (reduction='sum'), .item() into a Python float, summed over the
batches and divided once by the number of predictions.

  mlm    loss = sum CE over masked tokens / n_word; acc = argmax over the
         vocabulary == label, / n_word
  mrfr   loss = sum_batches(mse(reduction='none').sum() / IMG_DIM) / n_feat
         (IMG_DIM, 2048 in the original, is the model's img_dim, here 48)
  mrc    loss = sum CE(ignore_index=0) with target argmax(soft[:, 1:]) + 1,
         / n_feat; acc = argmax(logits[:, 1:]) == argmax(soft[:, 1:]),
         / n_feat.  (The official validate_mrc reads label_targets only in
         its "kl" branch, so for a plain mrc task it raises
         UnboundLocalError; this is what that branch evidently means.)
  mrckl  loss = sum kl_div(log_softmax(logits), soft, reduction='sum')
         / n_feat; acc = argmax(log_softmax(logits)) == argmax(soft) over
         every class, background included, / n_feat
  itm    loss = sum CE / n_ex; acc / n_ex; with OT (itm_ot_lambda > 0):
         ot_loss = sum(ot_pos - ot_neg) / n_ex, ot_pos = sum of matched
         distances / n_ex, ot_neg = sum of mismatched distances / n_ex
         (0.0 without mismatched pairs)

Region tasks mask every region and the ITM case has no negatives (every
label 1), as when our dbs run through the original with mrm_prob 1 and
itm_neg_prob 0; itm_mixed adds labels 0 to exercise ot_neg. Every other
masked word is set to the model's prediction there, and the soft labels
are built from the model's own MRC logits so that both accuracies are
strictly between 0 and 1 (the rows cycle through: top class = the logits'
argmax; background on top with the non-background prediction second; top
class = the non-background prediction; random).

Values are stored as float64 bit patterns in int64 tensors (the Go reader
rounds float64 tensors to float32):  val/<task>/<name>.  Each number is
also recomputed with float64 reductions of the same float32 model outputs
(val64/<task>/<name>) to show how much of a difference is the original's
float32 summation.  Inputs are under in/.

Run from anywhere: python3 scripts/pretrain_val_ref.py
"""
import os
import struct
import sys

import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tasks_ref import (CLS, SEP, MASK, fp16_soft_labels,  # noqa: E402
                       golden_model, ot_dist, pad_mask, put, save)
from uniter_ref import build_joint_layout  # noqa: E402

TXT_LENS = [6, 9, 4, 7, 5]    # with [CLS] and [SEP]
NUM_BBS = [5, 3, 2, 4, 6]
BATCHES = [[0, 1, 2], [3, 4]]
MLM_POS = [[2, 4], [1, 5, 7], [2], [3], [1, 2, 3]]
ITM_MIXED = [1, 0, 1, 0, 1]


def put64(out, key, x):
    """A Python float, exactly, as the int64 of its bits."""
    bits = struct.unpack('<q', struct.pack('<d', float(x)))[0]
    out[key] = torch.tensor([bits], dtype=torch.long)


def examples(cfg, g):
    """Per-example inputs (unpadded)."""
    exs = []
    for tl, nbb, mp in zip(TXT_LENS, NUM_BBS, MLM_POS):
        ids = torch.zeros(tl, dtype=torch.long)
        ids[0], ids[-1] = CLS, SEP
        ids[1:-1] = torch.randint(5, cfg.vocab_size, (tl - 2,), generator=g)
        mlm_ids, mlm_labels = ids.clone(), torch.full((tl,), -1,
                                                      dtype=torch.long)
        for p in mp:
            mlm_labels[p], mlm_ids[p] = ids[p], MASK
        feat = (torch.rand(nbb, cfg.img_dim, generator=g) * 2).half().float()
        bb = torch.rand(nbb, 6, generator=g).half()
        pos = torch.cat([bb, bb[:, 4:5] * bb[:, 5:6]], -1).float()
        exs.append(dict(ids=ids, mlm_ids=mlm_ids, mlm_labels=mlm_labels,
                        feat=feat, pos=pos))
    return exs


def collate(cfg, exs, idx, region):
    """The official collate of one batch: padded text, padded regions
    (masked ones zeroed for the region tasks), the compact layout."""
    tls = [TXT_LENS[i] for i in idx]
    nbbs = [NUM_BBS[i] for i in idx]
    B, T, N = len(idx), max(tls), max(nbbs)
    ids = torch.zeros(B, T, dtype=torch.long)
    mlm_ids = torch.zeros(B, T, dtype=torch.long)
    mlm_labels = torch.full((B, T), -1, dtype=torch.long)
    feat = torch.zeros(B, N, cfg.img_dim)
    pos = torch.zeros(B, N, 7)
    masks = torch.zeros(B, N, dtype=torch.long)
    for b, i in enumerate(idx):
        e, tl, nbb = exs[i], tls[b], nbbs[b]
        ids[b, :tl], mlm_ids[b, :tl] = e["ids"], e["mlm_ids"]
        mlm_labels[b, :tl] = e["mlm_labels"]
        feat[b, :nbb], pos[b, :nbb] = e["feat"], e["pos"]
        masks[b, :nbb] = 1  # every region masked
    attn, gather, S = build_joint_layout(tls, nbbs, T)
    img_mask_tgt = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        img_mask_tgt[b, tls[b]:tls[b] + nbbs[b]] = masks[b, :nbbs[b]].bool()
    feat_targets = feat[masks.bool()]
    if region:
        feat = feat.masked_fill(masks.bool().unsqueeze(-1), 0)
    return dict(ids=ids, mlm_ids=mlm_ids, mlm_labels=mlm_labels, feat=feat,
                pos=pos, masks=masks, attn=attn, gather=gather, S=S, T=T,
                N=N, tls=tls, nbbs=nbbs, img_mask_tgt=img_mask_tgt,
                feat_targets=feat_targets)


def encode(model, bt, task):
    region = task in ("mrfr", "mrc", "mrckl")
    ids = bt["mlm_ids"] if task == "mlm" else bt["ids"]
    return model.uniter(ids, torch.arange(bt["T"]).unsqueeze(0), bt["feat"],
                        bt["pos"], bt["attn"], gather_index=bt["gather"],
                        img_masks=bt["masks"] if region else None,
                        output_all_encoded_layers=False)


def itm_dists(cfg, bt, seq):
    """forward_itm's OT distances (ot_scatter undoes the compact layout)."""
    B, S, T, N = seq.size(0), bt["S"], bt["T"], bt["N"]
    scatter = torch.arange(S).unsqueeze(0).repeat(B, 1)
    for b, tl in enumerate(bt["tls"]):
        scatter[b, tl:] = torch.arange(T, T + S - tl)
    width = max(int(scatter.max()) + 1, T + N)
    ctx = torch.zeros(B, width, cfg.hidden_size).scatter(
        1, scatter.unsqueeze(-1).expand(B, S, cfg.hidden_size), seq)
    dist, _, _ = ot_dist(ctx[:, :T].float(), ctx[:, T:T + N].float(),
                         pad_mask(bt["tls"], T), pad_mask(bt["nbbs"], N))
    return dist


def soft_argmax_count(out, labels):
    """pretrain.py compute_accuracy_for_soft_targets."""
    return (out.max(dim=-1)[1] == labels.max(dim=-1)[1]).sum().item()


def design_soft(g, logits, classes):
    """Soft labels (fp16 values) whose argmax agrees with the model for a
    known subset of the rows (see the module doc)."""
    soft = fp16_soft_labels(g, logits.size(0), classes, 4) * 0.2
    for k in range(logits.size(0)):
        top_all = int(logits[k].argmax())
        top_fg = int(logits[k, 1:].argmax()) + 1
        kind = k % 4
        if kind == 0:
            soft[k, top_all] += 0.8
        elif kind == 1:
            soft[k, 0] += 0.5
            soft[k, top_fg] += 0.3
        elif kind == 2:
            soft[k, top_fg] += 0.8
        else:
            soft[k] /= 0.2
    return soft.half().float()


def validation(cfg, model, exs, soft, itm_labels):
    """Every validate_* number, float32 reductions as the original, and the
    same in float64."""
    out, out64 = {}, {}
    dim = cfg.img_dim  # IMG_DIM of the original, which is its img_dim
    with torch.no_grad():
        # validate_mlm
        loss = loss64 = 0.0
        n_correct = n_word = 0
        for idx in BATCHES:
            bt = collate(cfg, exs, idx, False)
            seq = encode(model, bt, "mlm")
            labels = bt["mlm_labels"]
            scores = model.mlm_scores(seq, labels != -1)
            labels = labels[labels != -1]
            loss += F.cross_entropy(scores, labels, reduction='sum').item()
            loss64 += F.cross_entropy(scores.double(), labels,
                                      reduction='sum').item()
            n_correct += (scores.max(dim=-1)[1] == labels).sum().item()
            n_word += labels.numel()
        out["mlm"] = dict(loss=loss / n_word, acc=n_correct / n_word,
                          n=n_word, correct=n_correct)
        out64["mlm"] = dict(loss=loss64 / n_word)

        # validate_mrfr
        loss = loss64 = 0.0
        n_feat = 0
        for idx in BATCHES:
            bt = collate(cfg, exs, idx, True)
            seq = encode(model, bt, "mrfr")
            pred = model.mrfr_pred(seq, bt["img_mask_tgt"])
            tgt = bt["feat_targets"]
            loss += F.mse_loss(pred, tgt, reduction='none').sum().item() / dim
            loss64 += F.mse_loss(pred.double(), tgt.double(),
                                 reduction='none').sum().item() / dim
            n_feat += bt["img_mask_tgt"].sum().item()
        out["mrfr"] = dict(loss=loss / n_feat, n=n_feat)
        out64["mrfr"] = dict(loss=loss64 / n_feat)

        # validate_mrc, both tasks
        for task in ("mrc", "mrckl"):
            loss = loss64 = 0.0
            n_feat = tot_score = 0
            k = 0
            for idx in BATCHES:
                bt = collate(cfg, exs, idx, True)
                seq = encode(model, bt, task)
                scores = model.mrc_scores(seq, bt["img_mask_tgt"])
                n = scores.size(0)
                targets = soft[k:k + n]
                k += n
                if task == "mrckl":
                    lsm = F.log_softmax(scores, dim=-1)
                    loss += F.kl_div(lsm, targets, reduction='sum').item()
                    loss64 += F.kl_div(F.log_softmax(scores.double(), dim=-1),
                                       targets.double(),
                                       reduction='sum').item()
                    tot_score += soft_argmax_count(lsm, targets)
                else:
                    cls = targets[:, 1:].max(dim=-1)[1] + 1
                    loss += F.cross_entropy(scores, cls, ignore_index=0,
                                            reduction='sum').item()
                    loss64 += F.cross_entropy(scores.double(), cls,
                                              ignore_index=0,
                                              reduction='sum').item()
                    tot_score += soft_argmax_count(scores[:, 1:],
                                                   targets[:, 1:])
                n_feat += bt["img_mask_tgt"].sum().item()
            out[task] = dict(loss=loss / n_feat, acc=tot_score / n_feat,
                             n=n_feat, correct=tot_score)
            out64[task] = dict(loss=loss64 / n_feat)

        # validate_itm (with OT: itm_ot_collate)
        for name, lab in (("itm", [1] * len(TXT_LENS)),
                          ("itm_mixed", itm_labels)):
            lab = torch.tensor(lab)
            loss = loss64 = ot = ot_p = ot_n = 0.0
            ot64 = ot_p64 = ot_n64 = 0.0
            tot_score = n_ex = 0
            for idx in BATCHES:
                bt = collate(cfg, exs, idx, False)
                targets = lab[idx]
                seq = encode(model, bt, "itm")
                scores = model.itm_scores(seq)
                dist = itm_dists(cfg, bt, seq)
                pos = dist.masked_select(targets == 1)
                neg = dist.masked_select(targets == 0)
                p, q = pos.sum().item(), neg.sum().item()
                ot_p, ot_n, ot = ot_p + p, ot_n + q, ot + (p - q)
                p, q = pos.double().sum().item(), neg.double().sum().item()
                ot_p64, ot_n64, ot64 = ot_p64 + p, ot_n64 + q, ot64 + (p - q)
                loss += F.cross_entropy(scores, targets,
                                        reduction='sum').item()
                loss64 += F.cross_entropy(scores.double(), targets,
                                          reduction='sum').item()
                tot_score += (scores.max(dim=-1)[1] == targets).sum().item()
                n_ex += len(targets)
            out[name] = dict(loss=loss / n_ex, acc=tot_score / n_ex,
                             ot_loss=ot / n_ex, ot_pos=ot_p / n_ex,
                             ot_neg=ot_n / n_ex, n=n_ex, correct=tot_score)
            out64[name] = dict(loss=loss64 / n_ex, ot_loss=ot64 / n_ex,
                               ot_pos=ot_p64 / n_ex, ot_neg=ot_n64 / n_ex)
    return out, out64


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(7)
    cfg, model = golden_model()
    exs = examples(cfg, g)

    # The MLM scores at a masked position do not depend on its label (the
    # input there is [MASK]): every other masked word becomes the model's
    # prediction, so that the accuracy is not 0.
    with torch.no_grad():
        for idx in BATCHES:
            bt = collate(cfg, exs, idx, False)
            labels = bt["mlm_labels"]
            pred = model.mlm_scores(encode(model, bt, "mlm"),
                                    labels != -1).argmax(-1).tolist()
            k = 0
            for b, i in enumerate(idx):
                for p in MLM_POS[i]:
                    if k % 2 == 0 and pred[k] >= 5:
                        exs[i]["ids"][p] = exs[i]["mlm_labels"][p] = pred[k]
                    k += 1

    # Likewise the MRC logits do not depend on the soft labels: run them
    # first and build soft labels around them.
    logits = []
    with torch.no_grad():
        for idx in BATCHES:
            bt = collate(cfg, exs, idx, True)
            seq = encode(model, bt, "mrc")
            logits.append(model.mrc_scores(seq, bt["img_mask_tgt"]))
    logits = torch.cat(logits)
    soft = design_soft(g, logits, cfg.img_label_dim)
    top2 = logits.topk(2, dim=-1)[0]
    top2fg = logits[:, 1:].topk(2, dim=-1)[0]
    print("MRC logits: smallest top-2 gap %.3g (all classes), %.3g "
          "(non-background)" % ((top2[:, 0] - top2[:, 1]).min(),
                                (top2fg[:, 0] - top2fg[:, 1]).min()))

    out = {}
    for k in ("ids", "mlm_ids", "mlm_labels", "feat", "pos"):
        put(out, "in/" + k, torch.cat([e[k] for e in exs]))
    put(out, "in/soft", soft)
    put(out, "in/txt_lens", torch.tensor(TXT_LENS))
    put(out, "in/num_bbs", torch.tensor(NUM_BBS))
    put(out, "in/batch_sizes", torch.tensor([len(b) for b in BATCHES]))
    put(out, "in/itm_mixed", torch.tensor(ITM_MIXED))
    put(out, "in/mrc_logits", logits)

    val, val64 = validation(cfg, model, exs, soft, ITM_MIXED)
    for task, nums in val.items():
        for k, v in nums.items():
            if k in ("n", "correct"):
                put(out, "val/%s/%s" % (task, k), torch.tensor([v]))
            else:
                put64(out, "val/%s/%s" % (task, k), v)
        for k, v in val64[task].items():
            put64(out, "val64/%s/%s" % (task, k), v)
        print("%-9s %s" % (task, " ".join(
            "%s %.10g" % (k, v) for k, v in nums.items())))
        print("%-9s %s" % ("  (f64)", " ".join(
            "%s %.10g" % (k, v) for k, v in val64[task].items())))
    save("validation.pt", out)


if __name__ == "__main__":
    main()
