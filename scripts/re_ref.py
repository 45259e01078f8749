#!/usr/bin/python3
"""PyTorch reference of the UNITER referring-expression head for the Go port.

Written from the behaviour of the official code (ChenRocks/UNITER:
model/re.py, train_re.py, data/re.py), fp32, torch.nn.LayerNorm (eps 1e-12)
standing in for apex FusedLayerNorm.

  re_output  mlp 1: Linear(H,1);  mlp 2: Linear(H,H) -> exact-erf GELU ->
             LN(H) -> Linear(H,1)  (official names re_output.{0,2,3})
  scores     re_output on the region part seq[i, tl_i:tl_i+nbb_i], padded
             with zero rows to the batch's most regions, squeezed, then
             masked_fill(padded slots, -1e4)
  loss       CrossEntropyLoss(reduction='none')(scores, targets).sum()
             (train_re.py: loss = loss.sum())

Run directly: writes testdata/finetune/re_heads.pt.
"""
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from uniter_ref import GELU, LayerNorm  # noqa: E402
from finetune_ref import leaf, put, put_params_grads, randomize_  # noqa: E402

OUT = os.path.join(HERE, "..", "testdata", "finetune")

H = 16
# Rows of the golden batch: text lengths (specials included) and region
# counts, the layout internal/tasks' headBatch builds from joint lengths
# 9, 12, 4, 11 (tl = (l+1)//2).
TL = [5, 6, 2, 6]
NBB = [4, 6, 2, 5]
TARGETS = [3, 0, 1, 4]


class ReHead(nn.Module):
    """The official UniterForReferringExpressionComprehension head."""

    def __init__(self, hidden_size, mlp):
        super().__init__()
        if mlp == 1:
            self.re_output = nn.Linear(hidden_size, 1)
        else:
            self.re_output = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), GELU(),
                LayerNorm(hidden_size, eps=1e-12),
                nn.Linear(hidden_size, 1))

    def forward(self, seq, txt_lens, num_bbs):
        max_bb = max(num_bbs)
        rows = []
        for i, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
            hid = seq[i:i + 1, tl:tl + nbb, :]
            if nbb < max_bb:
                hid = torch.cat([hid, torch.zeros(
                    1, max_bb - nbb, seq.size(-1), dtype=seq.dtype)], dim=1)
            rows.append(hid)
        hidden = torch.cat(rows, dim=0)
        obj_masks = torch.ones(len(num_bbs), max_bb, dtype=torch.bool)
        for i, nbb in enumerate(num_bbs):
            obj_masks[i, :nbb] = False
        scores = self.re_output(hidden).squeeze(2)
        return scores.masked_fill(obj_masks, -1e4)


def golden(out, g, mlp):
    prefix = "re_mlp%d" % mlp
    head = ReHead(H, mlp)
    randomize_(head, g, std=0.3)
    head.eval()
    B, S = len(TL), max(t + n for t, n in zip(TL, NBB))
    seq = torch.randn(B, S, H, generator=g)
    seq_leaf = leaf(seq.view(B * S, H))
    targets = torch.tensor(TARGETS)
    scores = head(seq_leaf.view(B, S, H), TL, NBB)
    loss = F.cross_entropy(scores, targets, reduction='none').sum()
    loss.backward()
    top2 = scores.detach().topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3, "argmax near a tie"
    put(out, prefix + "/seq", seq_leaf)
    put(out, prefix + "/txt_lens", torch.tensor(TL))
    put(out, prefix + "/num_bbs", torch.tensor(NBB))
    put(out, prefix + "/targets", targets)
    put(out, prefix + "/logits", scores)
    put(out, prefix + "/loss", loss)
    put(out, prefix + "/grad/seq", seq_leaf.grad)
    put_params_grads(out, prefix, head)


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(20261201)
    out = {}
    golden(out, g, 1)
    golden(out, g, 2)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "re_heads.pt")
    torch.save(out, path)
    print("wrote %s: %d keys" % (path, len(out)))
    for k, v in out.items():
        print("  %-36s %s %s" % (k, str(v.dtype).replace("torch.", ""),
                                 list(v.shape)))


if __name__ == "__main__":
    main()
