#!/usr/bin/python3
"""PyTorch reference of the UNITER fine-tuning heads for the Go port.

Written from docs/tasks.md ("Fine-tuning tasks") and from the
behaviour of the official code (ChenRocks/UNITER: model/vqa.py, model/ve.py,
model/nlvr2.py, model/attention.py, train_vqa.py, train_nlvr2.py).  Module
attribute names are chosen so that state_dict() keys are exactly the official
checkpoint names (`vqa_output.0.weight`, `attn1.in_proj_weight`,
`attn_pool.fc.0.bias`, ...).  Everything is fp32; apex FusedLayerNorm is
torch.nn.LayerNorm (eps 1e-12), as in scripts/uniter_ref.py.

Heads and losses (what the original computes):
  VQA   vqa_output = Linear(H,2H) -> exact-erf GELU -> LN(2H) -> Linear(2H,C)
        on the pooled [CLS].  Training loss
        BCE-with-logits(reduction='none').mean() * C (train_vqa.py);
        validation loss BCE reduction='sum' summed over batches / n_ex;
        score = target[row, argmax(logits[row])], averaged over examples.
  VE    the VQA head with C = 3.
  NLVR2 paired       nlvr2_output Linear(2H,2) on pooled [2n,H] viewed
                     [n,2H] (row 2k = left image, 2k+1 = right image).
        triplet      nlvr2_output Linear(H,2) on pooled [n,H].
        paired-attn  cross attention between the last-layer sequences of the
                     two rows of a pair (see Nlvr2PairedAttnHead), then
                     attention pooling and Linear(2H,2).
        All NLVR2 variants: CE, mean in training, sum / n_ex in validation.
  The NLVR2 models have a 3-row token_type table (row 2 copied from row 1 by
  init_type_embedding); left regions use type 1, right regions type 2
  (use_img_type), text type 0.

MultiheadAttention is written out (same parameters and function as the
torch.nn.MultiheadAttention the official attention.py copies): for query
[L,N,E] and key = value [S,N,E],
  q = (x Wq^T + bq) * dh^-0.5, k = y Wk^T + bk, v = y Wv^T + bv
  (Wq, Wk, Wv = rows [0:E], [E:2E], [2E:3E] of in_proj_weight),
  scores = q k^T per head, masked_fill(key_padding_mask, -inf), softmax,
  dropout on the probabilities, probs v, heads concatenated, out_proj.
Its init is the torch one (xavier_uniform in_proj_weight, zero biases); the
model-level init (N(0, 0.02) for every nn.Linear, hence out_proj.weight)
runs after it, as the official self.apply(self.init_weights) does.

Run directly: self-check against torch.nn.MultiheadAttention and write
testdata/finetune/heads.pt (the golden data of the heads, see write_heads).
"""
import math
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from uniter_ref import (GELU, LayerNorm, UniterModel,  # noqa: E402
                        UniterPreTrainedModel)

ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "testdata", "finetune")


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
def vqa_mlp(hidden_size, num_answer):
    """The VQA/VE answer classifier (indices 0..3 as the official names)."""
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size * 2),
        GELU(),
        LayerNorm(hidden_size * 2, eps=1e-12),
        nn.Linear(hidden_size * 2, num_answer))


class MultiheadAttention(nn.Module):
    """Torch-layout multi-head attention: in_proj_weight [3E,E],
    in_proj_bias [3E], out_proj Linear(E,E). Inputs are sequence-first
    [L,N,E]; key_padding_mask [N,S] bool, True = ignore that key."""

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim,
                                                       embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None):
        L, N, E = query.shape
        S = key.shape[0]
        h, dh = self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:E], b[:E]) * (float(dh) ** -0.5)
        k = F.linear(key, w[E:2 * E], b[E:2 * E])
        v = F.linear(value, w[2 * E:], b[2 * E:])
        # [L,N,E] -> [N*h, L, dh]
        q = q.contiguous().view(L, N * h, dh).transpose(0, 1)
        k = k.contiguous().view(S, N * h, dh).transpose(0, 1)
        v = v.contiguous().view(S, N * h, dh).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2))  # [N*h, L, S]
        if key_padding_mask is not None:
            scores = scores.view(N, h, L, S).masked_fill(
                key_padding_mask.bool().unsqueeze(1).unsqueeze(2),
                float('-inf')).view(N * h, L, S)
        probs = F.softmax(scores, dim=-1)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        ctx = torch.bmm(probs, v)  # [N*h, L, dh]
        ctx = ctx.transpose(0, 1).contiguous().view(L, N, E)
        out = self.out_proj(ctx)
        return out, probs.view(N, h, L, S).sum(dim=1) / h


class AttentionPool(nn.Module):
    """score = ReLU(Linear(H,1)(x)) - 1e4 * pad; softmax over positions;
    dropout; weighted sum of x."""

    def __init__(self, hidden_size, drop=0.0):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(hidden_size, 1), nn.ReLU())
        self.dropout = nn.Dropout(drop)

    def forward(self, x, pad=None):
        """x [B,T,D]; pad [B,T] bool (True on padding)."""
        score = self.fc(x).squeeze(-1)
        if pad is not None:
            score = score + pad.to(dtype=x.dtype) * -1e4
        weight = self.dropout(F.softmax(score, dim=1))
        return weight.unsqueeze(1).matmul(x).squeeze(1)


def paired_attn_forward(mod, seq, attn_masks):
    """The paired-attn head. seq [2n,S,H] (last layer), attn_masks [2n,S]
    (1 on valid positions). mod holds attn1, attn2, fc, attn_pool,
    nlvr2_output. Returns logits [n,2]."""
    bs, s, d = seq.shape
    left, right = seq.contiguous().view(bs // 2, s * 2, d).chunk(2, dim=1)
    pad = attn_masks == 0
    left_pad, right_pad = pad.contiguous().view(bs // 2, s * 2).chunk(2,
                                                                      dim=1)
    left = left.transpose(0, 1)    # [S, n, H]
    right = right.transpose(0, 1)
    l2r, _ = mod.attn1(left, right, right, key_padding_mask=right_pad)
    r2l, _ = mod.attn2(right, left, left, key_padding_mask=left_pad)
    left = mod.fc(torch.cat([l2r, left], dim=-1)).transpose(0, 1)
    right = mod.fc(torch.cat([r2l, right], dim=-1)).transpose(0, 1)
    left = mod.attn_pool(left, left_pad)
    right = mod.attn_pool(right, right_pad)
    return mod.nlvr2_output(torch.cat([left, right], dim=-1))


def init_like_official(module, std=0.02):
    """UniterPreTrainedModel.init_weights on every sub-module."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(0.0, std)
        elif isinstance(m, LayerNorm):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()


# --------------------------------------------------------------------------
# stand-alone heads (official parameter names, no backbone)
# --------------------------------------------------------------------------
class VqaHead(nn.Module):
    def __init__(self, hidden_size, num_answer):
        super().__init__()
        self.vqa_output = vqa_mlp(hidden_size, num_answer)
        init_like_official(self)

    def forward(self, pooled):
        return self.vqa_output(pooled)


class Nlvr2PairedHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.nlvr2_output = nn.Linear(hidden_size * 2, 2)
        init_like_official(self)

    def forward(self, pooled):
        return self.nlvr2_output(pooled.contiguous().view(
            pooled.size(0) // 2, -1))


class Nlvr2TripletHead(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.nlvr2_output = nn.Linear(hidden_size, 2)
        init_like_official(self)

    def forward(self, pooled):
        return self.nlvr2_output(pooled)


class Nlvr2PairedAttnHead(nn.Module):
    def __init__(self, hidden_size, num_heads, attn_drop=0.1, hid_drop=0.1):
        super().__init__()
        self.attn1 = MultiheadAttention(hidden_size, num_heads, attn_drop)
        self.attn2 = MultiheadAttention(hidden_size, num_heads, attn_drop)
        self.fc = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size),
                                nn.ReLU(), nn.Dropout(hid_drop))
        self.attn_pool = AttentionPool(hidden_size, attn_drop)
        self.nlvr2_output = nn.Linear(2 * hidden_size, 2)
        init_like_official(self)

    def forward(self, seq, attn_masks):
        return paired_attn_forward(self, seq, attn_masks)


# --------------------------------------------------------------------------
# full fine-tuning models (backbone `uniter` + head)
# --------------------------------------------------------------------------
def _backbone(model, batch, img_type_ids=None):
    seq = model.uniter(batch['input_ids'], batch['position_ids'],
                       batch['img_feat'], batch['img_pos_feat'],
                       batch['attn_masks'], batch['gather_index'],
                       output_all_encoded_layers=False,
                       img_type_ids=img_type_ids)
    return seq


class UniterForVisualQuestionAnswering(UniterPreTrainedModel):
    def __init__(self, config, img_dim, num_answer):
        super().__init__(config)
        self.uniter = UniterModel(config, img_dim)
        self.vqa_output = vqa_mlp(config.hidden_size, num_answer)
        self.apply(self.init_weights)

    def forward(self, batch, compute_loss=True):
        seq = _backbone(self, batch)
        scores = self.vqa_output(self.uniter.pooler(seq))
        if compute_loss:
            return F.binary_cross_entropy_with_logits(
                scores, batch['targets'], reduction='none')
        return scores


class UniterForVisualEntailment(UniterForVisualQuestionAnswering):
    def __init__(self, config, img_dim):
        super().__init__(config, img_dim, 3)


class _Nlvr2Base(UniterPreTrainedModel):
    def init_type_embedding(self):
        """Grow the type table to 3 rows: rows 0,1 kept, row 2 = row 1."""
        old = self.uniter.embeddings.token_type_embeddings.weight.data
        new = nn.Embedding(3, self.uniter.config.hidden_size)
        new.apply(self.init_weights)
        new.weight.data[0].copy_(old[0])
        new.weight.data[1].copy_(old[1])
        new.weight.data[2].copy_(old[1])
        self.uniter.embeddings.token_type_embeddings = new


class UniterForNlvr2Paired(_Nlvr2Base):
    def __init__(self, config, img_dim):
        super().__init__(config)
        self.uniter = UniterModel(config, img_dim)
        self.nlvr2_output = nn.Linear(config.hidden_size * 2, 2)
        self.apply(self.init_weights)

    def forward(self, batch, compute_loss=True):
        seq = _backbone(self, batch, batch.get('img_type_ids'))
        pooled = self.uniter.pooler(seq)
        scores = self.nlvr2_output(pooled.contiguous().view(
            pooled.size(0) // 2, -1))
        if compute_loss:
            return F.cross_entropy(scores, batch['targets'], reduction='none')
        return scores


class UniterForNlvr2Triplet(_Nlvr2Base):
    def __init__(self, config, img_dim):
        super().__init__(config)
        self.uniter = UniterModel(config, img_dim)
        self.nlvr2_output = nn.Linear(config.hidden_size, 2)
        self.apply(self.init_weights)

    def forward(self, batch, compute_loss=True):
        seq = _backbone(self, batch, batch.get('img_type_ids'))
        scores = self.nlvr2_output(self.uniter.pooler(seq))
        if compute_loss:
            return F.cross_entropy(scores, batch['targets'], reduction='none')
        return scores


class UniterForNlvr2PairedAttn(_Nlvr2Base):
    def __init__(self, config, img_dim):
        super().__init__(config)
        self.uniter = UniterModel(config, img_dim)
        H, A = config.hidden_size, config.num_attention_heads
        self.attn1 = MultiheadAttention(H, A,
                                        config.attention_probs_dropout_prob)
        self.attn2 = MultiheadAttention(H, A,
                                        config.attention_probs_dropout_prob)
        self.fc = nn.Sequential(nn.Linear(2 * H, H), nn.ReLU(),
                                nn.Dropout(config.hidden_dropout_prob))
        self.attn_pool = AttentionPool(H, config.attention_probs_dropout_prob)
        self.nlvr2_output = nn.Linear(2 * H, 2)
        self.apply(self.init_weights)

    def forward(self, batch, compute_loss=True):
        seq = _backbone(self, batch, batch.get('img_type_ids'))
        scores = paired_attn_forward(self, seq, batch['attn_masks'])
        if compute_loss:
            return F.cross_entropy(scores, batch['targets'], reduction='none')
        return scores


# --------------------------------------------------------------------------
# losses and metrics
# --------------------------------------------------------------------------
def vqa_train_loss(logits, targets):
    """train_vqa.py: per-element BCE, mean, times the number of answers."""
    return F.binary_cross_entropy_with_logits(
        logits, targets, reduction='none').mean() * targets.size(1)


def vqa_val_loss_sum(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets,
                                              reduction='sum')


def vqa_score_sum(logits, targets):
    """Sum over rows of targets[row, argmax logits[row]]."""
    idx = logits.argmax(dim=1, keepdim=True)
    return targets.gather(1, idx).sum()


def nlvr2_train_loss(logits, labels):
    return F.cross_entropy(logits, labels, reduction='none').mean()


def nlvr2_consistency(identifiers, correct):
    """scripts/eval_nlvr2.py: group by the identifier with its third
    dash-separated field blanked; a group is consistent when every member
    is right. Returns (consistency, groups in first-seen order)."""
    groups = {}
    for ident, ok in zip(identifiers, correct):
        parts = ident.split('-')
        parts[2] = ''
        key = '-'.join(parts)
        groups[key] = groups.get(key, True) and bool(ok)
    return sum(groups.values()) / len(groups), groups


# --------------------------------------------------------------------------
# golden data of the heads
# --------------------------------------------------------------------------
def randomize_(module, g, std=0.2):
    """Non-trivial weights: Linear/Embedding/in_proj weights N(0, std),
    biases N(0, 0.1), LayerNorm weight 1 + N(0, 0.2), LN bias N(0, 0.1)."""
    for mname, m in module.named_modules():
        for pname, p in m._parameters.items():
            if p is None:
                continue
            if isinstance(m, LayerNorm):
                if pname == 'weight':
                    p.data.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.data.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif 'bias' in pname:
                p.data.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.data.copy_(std * torch.randn(p.shape, generator=g))


def put(out, key, v):
    v = v.detach()
    v = v.float() if v.is_floating_point() else v.long()
    if v.dim() == 0:
        v = v.reshape(1)
    out[key] = v.clone().contiguous()


def put_params_grads(out, prefix, module):
    for name, p in module.named_parameters():
        put(out, "%s/param/%s" % (prefix, name), p)
        assert p.grad is not None, name
        put(out, "%s/grad/%s" % (prefix, name), p.grad)


def leaf(x):
    return x.clone().detach().requires_grad_(True)


H_GOLD, A_GOLD = 16, 4


def golden_vqa(out, g):
    B, C = 5, 7
    head = VqaHead(H_GOLD, C)
    randomize_(head, g)
    head.eval()
    pooled = leaf(torch.tanh(1.5 * torch.randn(B, H_GOLD, generator=g)))
    logits = head(pooled)
    am = logits.detach().argmax(1).tolist()
    top2 = logits.detach().topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3, "argmax near a tie"
    # soft scores as in VQA (0.3, 0.6, 0.9, 1.0); rows 0 and 3 all-zero;
    # rows 1, 2 score through their argmax, row 4 does not.
    targets = torch.zeros(B, C)
    targets[1, am[1]] = 1.0
    targets[2, am[2]] = 0.6
    targets[2, (am[2] + 1) % C] = 0.3
    targets[2, (am[2] + 3) % C] = 1.0
    targets[4, (am[4] + 2) % C] = 0.9
    targets[4, (am[4] + 5) % C] = 0.3
    loss = vqa_train_loss(logits, targets)
    loss.backward()
    with torch.no_grad():
        val_sum = vqa_val_loss_sum(logits, targets)
        score = vqa_score_sum(logits, targets)
    put(out, "vqa/pooled", pooled)
    put(out, "vqa/targets", targets)
    put(out, "vqa/logits", logits)
    put(out, "vqa/loss", loss)
    put(out, "vqa/val_loss_sum", val_sum)
    put(out, "vqa/score", score)
    put(out, "vqa/grad/pooled", pooled.grad)
    put_params_grads(out, "vqa", head)


def golden_nlvr2_pooled(out, g, prefix, head, rows):
    n = 3
    randomize_(head, g)
    head.eval()
    pooled = leaf(torch.tanh(1.5 * torch.randn(rows, H_GOLD, generator=g)))
    labels = torch.tensor([1, 0, 1])
    logits = head(pooled)
    assert logits.shape == (n, 2)
    loss = nlvr2_train_loss(logits, labels)
    loss.backward()
    put(out, prefix + "/pooled", pooled)
    put(out, prefix + "/labels", labels)
    put(out, prefix + "/logits", logits)
    put(out, prefix + "/loss", loss)
    put(out, prefix + "/grad/pooled", pooled.grad)
    put_params_grads(out, prefix, head)


ATTN_LENS = [9, 5,    # left longer than right, left full length
             4, 7,    # right longer
             6, 6]    # equal
ATTN_S = 9


def golden_nlvr2_attn(out, g):
    n, S = 3, ATTN_S
    head = Nlvr2PairedAttnHead(H_GOLD, A_GOLD)
    randomize_(head, g)
    head.eval()
    lens = torch.tensor(ATTN_LENS)
    mask = torch.zeros(2 * n, S, dtype=torch.long)
    for i, l in enumerate(ATTN_LENS):
        mask[i, :l] = 1
    seq = torch.randn(2 * n, S, H_GOLD, generator=g)
    garbage = 4.0 * torch.randn(2 * n, S, H_GOLD, generator=g) + 2.0
    seq = torch.where(mask.bool().unsqueeze(-1), seq, garbage)
    seq_leaf = leaf(seq.view(2 * n * S, H_GOLD))
    labels = torch.tensor([0, 1, 1])
    logits = head(seq_leaf.view(2 * n, S, H_GOLD), mask)
    loss = nlvr2_train_loss(logits, labels)
    loss.backward()
    # masking check: changing the padding must not change the logits
    with torch.no_grad():
        other = torch.where(mask.bool().unsqueeze(-1), seq,
                            -3.0 * garbage)
        assert torch.equal(head(other, mask), logits.detach())
    pad_grad = seq_leaf.grad.view(2 * n, S, H_GOLD)[~mask.bool()]
    put(out, "nlvr2_attn/seq", seq_leaf)
    put(out, "nlvr2_attn/lens", lens)
    put(out, "nlvr2_attn/labels", labels)
    put(out, "nlvr2_attn/logits", logits)
    put(out, "nlvr2_attn/loss", loss)
    put(out, "nlvr2_attn/grad/seq", seq_leaf.grad)
    put_params_grads(out, "nlvr2_attn", head)
    return float(pad_grad.abs().max())


def write_heads(path=None):
    if path is None:
        path = os.path.join(OUT, "heads.pt")
    g = torch.Generator().manual_seed(20240611)
    out = {}
    golden_vqa(out, g)
    golden_nlvr2_pooled(out, g, "nlvr2_paired", Nlvr2PairedHead(H_GOLD),
                        6)
    golden_nlvr2_pooled(out, g, "nlvr2_triplet", Nlvr2TripletHead(H_GOLD),
                        3)
    pad_grad = golden_nlvr2_attn(out, g)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(out, path)
    return out, pad_grad


# --------------------------------------------------------------------------
# self-check
# --------------------------------------------------------------------------
def _check_mha():
    """Our MultiheadAttention equals torch.nn.MultiheadAttention."""
    g = torch.Generator().manual_seed(1)
    E, A, L, S, N = 16, 4, 5, 7, 3
    ours = MultiheadAttention(E, A)
    ref = nn.MultiheadAttention(E, A)
    randomize_(ours, g)
    ref.load_state_dict(ours.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.eval()
    ref.eval()
    q = torch.randn(L, N, E, generator=g)
    kv = torch.randn(S, N, E, generator=g)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, 5:] = True
    kpm[2, 2:] = True
    a, wa = ours(q, kv, kv, key_padding_mask=kpm)
    b, wb = ref(q, kv, kv, key_padding_mask=kpm)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    assert torch.allclose(wa, wb, atol=1e-6)


def _check_keys():
    from uniter_ref import UniterConfig
    cfg = UniterConfig.from_dict(dict(
        vocab_size=50, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=32, hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=20, type_vocab_size=2,
        initializer_range=0.02))
    m = UniterForNlvr2PairedAttn(cfg, 8)
    m.init_type_embedding()
    heads = sorted(k for k in m.state_dict() if not k.startswith("uniter."))
    assert heads == sorted([
        "attn1.in_proj_weight", "attn1.in_proj_bias",
        "attn1.out_proj.weight", "attn1.out_proj.bias",
        "attn2.in_proj_weight", "attn2.in_proj_bias",
        "attn2.out_proj.weight", "attn2.out_proj.bias",
        "fc.0.weight", "fc.0.bias", "attn_pool.fc.0.weight",
        "attn_pool.fc.0.bias", "nlvr2_output.weight",
        "nlvr2_output.bias"]), heads
    assert m.uniter.embeddings.token_type_embeddings.weight.shape == (3, 16)
    v = UniterForVisualQuestionAnswering(cfg, 8, 10)
    heads = sorted(k for k in v.state_dict() if not k.startswith("uniter."))
    assert heads == ["vqa_output.0.bias", "vqa_output.0.weight",
                     "vqa_output.2.bias", "vqa_output.2.weight",
                     "vqa_output.3.bias", "vqa_output.3.weight"], heads


def main():
    torch.set_num_threads(2)
    _check_mha()
    _check_keys()
    out, pad_grad = write_heads()
    print("wrote %s: %d keys; max |grad/seq| at padded positions %g" % (
        os.path.join(OUT, "heads.pt"), len(out), pad_grad))
    for k, v in out.items():
        print("  %-45s %s %s" % (k, str(v.dtype).replace("torch.", ""),
                                 list(v.shape)))


if __name__ == "__main__":
    main()
