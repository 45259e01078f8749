#!/usr/bin/python3
"""PyTorch reference of UNITER's VCR fine-tuning for the Go port.

Written from the behaviour of the official code (ChenRocks/UNITER:
model/vcr.py, data/vcr.py, train_vcr.py): everything fp32, a tiny model.

  surgery   init_type_embedding: a fresh 4-row table, rows 0 and 1 copied,
            rows 2 and 3 copies of row 0; init_word_embedding(81): a fresh
            table of V+81 rows, the first V copied.
  rows      Q->A  [CLS] q [SEP] a [SEP], types 0 (CLS, q), 2 ([SEP] a [SEP]);
            QA->R [CLS] q [SEP] a_gt [SEP] r [SEP], types 0, 2 ([SEP] a_gt),
            3 ([SEP] r [SEP]); regions (gt boxes then detected) type 1.
  head      vcr_output = Linear(H,2H) -> ReLU -> LN(2H) -> Linear(2H,2) on
            the pooled [CLS]; training loss F.cross_entropy(rank_scores,
            targets) mean over rows, target 1 for the right choice.
  eval      score = logits[:, 1] viewed [n, rows]; Q->A = argmax of the first
            4, QA->R = argmax of the 4 after the true answer (scores[4:8] of
            the "val" layout, scores[4+4a:8+4a] of the "test" layout);
            loss = CE(qa scores, qa) + CE(qar scores, qar), summed.

Run from the repository root:
    OMP_NUM_THREADS=2 /usr/bin/python3 scripts/vcr_ref.py
writes testdata/finetune/vcr.pt (one flat dict; see main()).
"""
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from uniter_ref import (LayerNorm, UniterConfig, UniterModel,  # noqa: E402
                        UniterPreTrainedModel, build_joint_layout)
from finetune_ref import put, randomize_  # noqa: E402

OUT = os.path.join(HERE, "..", "testdata", "finetune", "vcr.pt")
CLS, SEP = 1, 2
V, EXTRA = 40, 81
IMG_DIM = 12


class UniterForVCR(UniterPreTrainedModel):
    def __init__(self, config, img_dim):
        super().__init__(config)
        self.uniter = UniterModel(config, img_dim)
        self.vcr_output = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size * 2),
            nn.ReLU(),
            LayerNorm(config.hidden_size * 2, eps=1e-12),
            nn.Linear(config.hidden_size * 2, 2))
        self.apply(self.init_weights)

    def init_type_embedding(self):
        new = nn.Embedding(4, self.uniter.config.hidden_size)
        new.apply(self.init_weights)
        old = self.uniter.embeddings.token_type_embeddings.weight.data
        for i in [0, 1]:
            new.weight.data[i].copy_(old[i])
        new.weight.data[2].copy_(old[0])
        new.weight.data[3].copy_(old[0])
        self.uniter.embeddings.token_type_embeddings = new

    def init_word_embedding(self, n):
        old = self.uniter.embeddings.word_embeddings.weight.data
        new = nn.Embedding(old.size(0) + n, self.uniter.config.hidden_size)
        new.apply(self.init_weights)
        new.weight.data[:old.size(0)].copy_(old)
        self.uniter.embeddings.word_embeddings = new

    def forward(self, batch):
        seq = self.uniter(batch['input_ids'], batch['position_ids'],
                          batch['img_feat'], batch['img_pos_feat'],
                          batch['attn_masks'], batch['gather_index'],
                          output_all_encoded_layers=False,
                          txt_type_ids=batch['txt_type_ids'])
        return self.vcr_output(self.uniter.pooler(seq))


def row(q, a, r=None):
    ids = [CLS] + q + [SEP] + a + [SEP]
    types = [0] + [0] * len(q) + [2] * (len(a) + 2)
    if r is not None:
        types = [0] + [0] * len(q) + [2] * (len(a) + 1)
        ids = ids + r + [SEP]
        types = types + [3] * (len(r) + 2)
    return ids, types


def collate(rows, feat, pos):
    """rows: [(ids, types)]; every row has the same image (feat [n, D])."""
    B = len(rows)
    tl = [len(i) for i, _ in rows]
    T, N = max(tl), feat.size(0)
    ids = torch.zeros(B, T, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long)
    for b, (i, t) in enumerate(rows):
        ids[b, :len(i)] = torch.tensor(i)
        types[b, :len(t)] = torch.tensor(t)
    attn, gi, _ = build_joint_layout(tl, [N] * B)
    return dict(input_ids=ids, txt_type_ids=types,
                position_ids=torch.arange(T).unsqueeze(0),
                img_feat=feat.unsqueeze(0).expand(B, -1, -1).contiguous(),
                img_pos_feat=pos.unsqueeze(0).expand(B, -1, -1).contiguous(),
                attn_masks=attn, gather_index=gi)


def words(g, n):
    # ids over the whole grown vocabulary: the 81 new rows are used too.
    return torch.randint(5, V + EXTRA, (n,), generator=g).tolist()


def example(g):
    q = words(g, 3)
    as_ = [words(g, 1 + k % 3) for k in range(4)]
    rs = [words(g, 2 + (k + 1) % 3) for k in range(4)]
    return q, as_, rs


def flat(rows):
    ids = [x for i, _ in rows for x in i]
    types = [x for _, t in rows for x in t]
    lens = [len(i) for i, _ in rows]
    return torch.tensor(ids), torch.tensor(types), torch.tensor(lens)


def main():
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(20240612)
    cfg = UniterConfig.from_dict(dict(
        vocab_size=V, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=24, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=32, type_vocab_size=2,
        initializer_range=0.02))
    model = UniterForVCR(cfg, IMG_DIM)
    randomize_(model, g)
    out = {}
    put(out, "grow/type_before",
        model.uniter.embeddings.token_type_embeddings.weight)
    put(out, "grow/word_before",
        model.uniter.embeddings.word_embeddings.weight)
    model.init_type_embedding()
    model.init_word_embedding(EXTRA)
    put(out, "grow/type_after",
        model.uniter.embeddings.token_type_embeddings.weight)
    put(out, "grow/word_after_old_rows",
        model.uniter.embeddings.word_embeddings.weight[:V])
    # Non-trivial values in the new rows for the gradient check.
    with torch.no_grad():
        w = model.uniter.embeddings.word_embeddings.weight
        w[V:].copy_(0.2 * torch.randn(EXTRA, 16, generator=g))
    model.eval()

    feat = torch.randn(5, IMG_DIM, generator=g)   # 2 gt + 3 detected boxes
    bb = torch.rand(5, 6, generator=g)
    pos = torch.cat([bb, bb[:, 4:5] * bb[:, 5:6]], -1)
    put(out, "img_feat", feat)
    put(out, "img_pos", pos)

    # training batch: example 0 Q->A (label 2), example 1 QA->R (qa 1, qar 3)
    q0, as0, rs0 = example(g)
    q1, as1, rs1 = example(g)
    train_rows = [row(q0, a) for a in as0] + [row(q1, as1[1], r) for r in rs1]
    labels = [2, 3]
    targets = torch.zeros(8, dtype=torch.long)
    targets[labels[0]] = 1
    targets[4 + labels[1]] = 1
    batch = collate(train_rows, feat, pos)
    logits = model(batch)
    loss = F.cross_entropy(logits, targets, reduction='mean')
    loss.backward()
    ids, types, lens = flat(train_rows)
    put(out, "train/ids", ids)
    put(out, "train/types", types)
    put(out, "train/lens", lens)
    put(out, "train/labels", torch.tensor(labels))
    put(out, "train/logits", logits)
    put(out, "train/loss", loss)
    for name, p in model.named_parameters():
        put(out, "param/" + name, p)
        # unused parameters (the region mask embedding) have no gradient
        put(out, "grad/" + name,
            p.grad if p.grad is not None else torch.zeros_like(p))

    # evaluation: example 1 with qa 1, qar 3, in both layouts
    with torch.no_grad():
        qa, qar = 1, 3
        val_rows = [row(q1, a) for a in as1] + [row(q1, as1[qa], r)
                                                 for r in rs1]
        test_rows = [row(q1, a) for a in as1] + [row(q1, a, r)
                                                  for a in as1 for r in rs1]
        for name, rows in (("val", val_rows), ("test", test_rows)):
            s = model(collate(rows, feat, pos))[:, 1].view(1, -1)
            qar_s = s[:, 4:8] if name == "val" else s[:, 4 + 4 * qa:8 + 4 * qa]
            lsum = (F.cross_entropy(s[:, :4], torch.tensor([qa]),
                                    reduction='sum') +
                    F.cross_entropy(qar_s, torch.tensor([qar]),
                                    reduction='sum'))
            ids, types, lens = flat(rows)
            put(out, name + "/ids", ids)
            put(out, name + "/types", types)
            put(out, name + "/lens", lens)
            put(out, name + "/scores", s)
            put(out, name + "/loss_sum", lsum)
            put(out, name + "/pred",
                torch.tensor([4 * int(s[0, :4].argmax()) +
                              int(qar_s[0].argmax())]))
    # the example's token ids, for the row builder
    put(out, "ex/q", torch.tensor(q1))
    put(out, "ex/as", torch.tensor([x for a in as1 for x in a]))
    put(out, "ex/as_lens", torch.tensor([len(a) for a in as1]))
    put(out, "ex/rs", torch.tensor([x for r in rs1 for x in r]))
    put(out, "ex/rs_lens", torch.tensor([len(r) for r in rs1]))
    torch.save(out, OUT)
    print("wrote %s: %d keys" % (OUT, len(out)))


if __name__ == "__main__":
    main()
