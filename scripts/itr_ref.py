#!/usr/bin/python3
"""PyTorch reference of UNITER image-text retrieval (ITR) for the Go port.

Written from the behaviour of the official code (ChenRocks/UNITER:
model/itm.py UniterForImageTextRetrieval and ...HardNeg, train_itm.py,
train_itm_hard_negatives.py), everything fp32:

  head   rank_output = Linear(H, 1) on the pooled [CLS]; init_output copies
         itm_output.weight[1:] / bias[1:] (the "match" row).
  loss   s = sigmoid(rank_scores).view(-1, sample_size); pos = s[:, :1],
         neg = s[:, 1:]; clamp(margin + neg - pos, 0), then .mean() in the
         training loop (train_itm.py: loss.mean()).
  plain  sample_size = 1 + 2*negative_size rows per example: the positive,
         negative_size (text, other image) rows, negative_size (other text,
         image) rows.
  hard   the candidates [positive, negative_size negatives] are scored in
         eval mode without gradient; scores.squeeze(-1)[1:].topk(hard_size,
         sorted=False)[1] + 1 with the positive (index 0) first make the
         hard batch of 1 + hard_size rows, trained with sample_size
         1 + hard_size; the image side's loss.mean() and the text side's
         are backpropagated one after the other (both / train_batch_size).

Writes testdata/finetune/itr.pt (run from anywhere):
  plain/pooled [15, 16]        3 examples of 5 rows (negative_size 2)
  plain/param/rank_output.*    the head
  plain/scores, plain/loss, plain/grad/pooled, plain/grad/rank_output.*
  hard/cand_scores [13]        candidate scores with ties (positive first)
  hard/k                       hard_size 5
  hard/selected_values         the values torch.topk selects (sorted desc)
  hard/selected [6]            0 then the chosen rows (no tie at the boundary
                               in hard/cand_scores2)
  hard/cand_scores2 [13]       distinct scores; hard/selected2 its selection
  hard/img_pooled, hard/txt_pooled [6, 16]  the hard rows of each side
  hard/loss                    img-side mean + txt-side mean
  hard/grad/img_pooled, hard/grad/txt_pooled, hard/grad/rank_output.*
  init/itm_weight [2, 16], init/itm_bias [2]: init_output's source
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from finetune_ref import put  # noqa: E402

OUT = os.path.join(HERE, "..", "testdata", "finetune", "itr.pt")
H = 16
MARGIN = 0.2


def rank_loss(rank_scores, sample_size, margin=MARGIN):
    """model/itm.py's training loss, unreduced, then the loop's mean."""
    s = torch.sigmoid(rank_scores).contiguous().view(-1, sample_size)
    pos, neg = s[:, :1], s[:, 1:]
    return torch.clamp(margin + neg - pos, 0).mean()


def hard_indices(scores, hard_size):
    idx = scores.squeeze(-1)[1:].topk(hard_size, sorted=False)[1] + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), idx])


def main():
    g = torch.Generator().manual_seed(20261201)
    out = {}
    head = nn.Linear(H, 1)
    with torch.no_grad():
        head.weight.copy_(0.8 * torch.randn(1, H, generator=g))
        head.bias.copy_(0.1 * torch.randn(1, generator=g))

    # plain: 3 examples x (1 + 2*2) rows
    pooled = torch.tanh(1.5 * torch.randn(15, H, generator=g)).requires_grad_(True)
    scores = head(pooled)
    loss = rank_loss(scores, 5)
    loss.backward()
    s = torch.sigmoid(scores.detach()).view(-1, 5)
    terms = MARGIN + s[:, 1:] - s[:, :1]
    assert (terms < 0).any() and (terms > 0).any(), "want active and clamped terms"
    assert terms.abs().min() > 1e-4, "a term near the clamp's kink"
    put(out, "plain/pooled", pooled)
    put(out, "plain/scores", scores)
    put(out, "plain/loss", loss)
    put(out, "plain/grad/pooled", pooled.grad)
    for n, p in head.named_parameters():
        put(out, "plain/param/rank_output." + n, p)
        put(out, "plain/grad/rank_output." + n, p.grad)
    head.zero_grad()

    # hard-negative selection: ties (only their values are determined by
    # torch.topk) and an odd candidate count
    cand = torch.tensor([0.3, 0.7, -0.2, 0.7, 1.5, 0.7, 0.1, -1.0, 0.7, 0.05, 2.0, 0.7, -0.3])
    k = 5
    sel = hard_indices(cand.unsqueeze(1), k)
    put(out, "hard/cand_scores", cand)
    put(out, "hard/k", torch.tensor(k))
    put(out, "hard/selected_values", cand[sel[1:]].sort(descending=True).values)
    cand2 = torch.randn(13, generator=g)
    sel2 = hard_indices(cand2.unsqueeze(1), k)
    put(out, "hard/cand_scores2", cand2)
    put(out, "hard/selected2", torch.cat([sel2[:1], sel2[1:].sort().values]))

    # hard-negative training on the selected rows of each side
    img_pooled = torch.tanh(1.5 * torch.randn(1 + k, H, generator=g)).requires_grad_(True)
    txt_pooled = torch.tanh(1.5 * torch.randn(1 + k, H, generator=g)).requires_grad_(True)
    li = rank_loss(head(img_pooled), 1 + k)
    li.backward()
    lt = rank_loss(head(txt_pooled), 1 + k)
    lt.backward()
    put(out, "hard/img_pooled", img_pooled)
    put(out, "hard/txt_pooled", txt_pooled)
    put(out, "hard/loss", li + lt)
    put(out, "hard/grad/img_pooled", img_pooled.grad)
    put(out, "hard/grad/txt_pooled", txt_pooled.grad)
    for n, p in head.named_parameters():
        put(out, "hard/param/rank_output." + n, p)
        put(out, "hard/grad/rank_output." + n, p.grad)

    # init_output: rank_output <- itm_output row 1
    itm = nn.Linear(H, 2)
    with torch.no_grad():
        itm.weight.copy_(torch.randn(2, H, generator=g))
        itm.bias.copy_(torch.randn(2, generator=g))
    put(out, "init/itm_weight", itm.weight)
    put(out, "init/itm_bias", itm.bias)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    torch.save(out, OUT)
    print("wrote", os.path.normpath(OUT), "plain loss %.6f hard loss %.6f" % (loss.item(), (li + lt).item()))


if __name__ == "__main__":
    main()
