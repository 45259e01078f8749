#!/usr/bin/python3
"""Generate golden test data for the Go UNITER port from scripts/uniter_ref.py.

Writes
  testdata/golden/tiny.json  model config (official keys + img_dim, img_label_dim)
  testdata/golden/tiny.pt    torch.save (zip format) of ONE flat dict of
                             tensors: fp32 floats, int64 ints; every tensor
                             has its own contiguous storage (no sharing).

Key prefixes (B=3, tl=[7,4,9] incl. [CLS]/[SEP], nbb=[6,3,2], Tmax=9, Nmax=6,
S=13, H=64):
  param/<official key>   every state_dict key (tied weights under both names)
  in/...                 batch inputs (see below)
  out/...                case 1: joint forward WITH img_masks (MRFR/MRC style)
  rand/...               random weights of the scalar test loss
  grad/<official key>    dL/dparam (tied: the same total grad under both names)
  grad/img_feat          dL/d in/img_feat
  out2/...               case 2: same inputs, img_masks=None (ITM style)
  out3/layer_1           text-only forward (img_feat None), mask from tl
  out4/layer_1           image-only forward (input_ids None), mask from nbb,
                         img_masks=None

Loss of case 1 (eval mode, dropout off):
  L = sum(out/layer_1 * rand/seq) + sum(out/pooled * rand/pool)
    + sum(out/mlm_logits * rand/mlm) + sum(out/mrfr * rand/mrfr)
    + sum(out/mrc_logits * rand/mrc) + sum(out/itm_logits * rand/itm)
rand/seq is zero at padded joint positions (s >= tl_b + nbb_b).

Head rows: in/mlm_index and in/mrm_index are flat indices into the B*S joint
rows (row = b*S + s); MLM selects text positions s < tl_b, MRM selects the
masked regions at s = tl_b + r.  Both are in ascending order, which is the
order the official boolean-mask selection (_compute_masked_hidden) produces.

Notes for the Go side:
  * word_embeddings and mask_embedding have padding_idx=0 in the official
    code: their row 0 gets NO gradient (grad row 0 is exactly 0 here).
  * mask_embedding row 0 is 0 in param/ (the forward with img_masks forces it).
  * img_feat and norm_bb are fp16-quantised (as on disk); the 7th box column
    w*h is computed in fp16 (as the official numpy code does), then cast.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uniter_ref import (UniterConfig, UniterForPretraining, boxes_7d,  # noqa
                        build_joint_layout, lengths_to_mask,
                        state_dict_params)

TINY = {
    "vocab_size": 120,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "img_dim": 48,
    "img_label_dim": 31,
}

CLS, SEP, PAD = 1, 2, 0
TXT_LENS = [7, 4, 9]
NUM_BBS = [6, 3, 2]
# masked regions per example (region indices r < nbb_b)
MASKED = [[1, 4], [0, 2], [1]]
# MLM text positions per example (1 <= t <= tl_b - 2, i.e. not CLS/SEP)
MLM_POS = [[2, 5], [1], [3, 7]]


def perturb(model, g):
    """Make every weight non-trivial: LN weight 1+0.1*randn, every bias
    0.05*randn, mask_embedding row 1 random and row 0 zero."""
    with torch.no_grad():
        for mname, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(
                    mod.weight.shape, generator=g))
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape,
                                                  generator=g))
            for pname, p in mod._parameters.items():
                if (p is not None and pname == 'bias'
                        and not isinstance(mod, torch.nn.LayerNorm)):
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        me = model.uniter.img_embeddings.mask_embedding.weight
        me[0].zero_()
        me[1].copy_(0.5 * torch.randn(me.shape[1], generator=g))


def make_inputs(cfg, g):
    B = len(TXT_LENS)
    T, N = max(TXT_LENS), max(NUM_BBS)
    D = cfg.img_dim
    input_ids = torch.zeros(B, T, dtype=torch.long)
    for b, tl in enumerate(TXT_LENS):
        input_ids[b, 0] = CLS
        input_ids[b, 1:tl - 1] = torch.randint(5, cfg.vocab_size,
                                               (tl - 2,), generator=g)
        input_ids[b, tl - 1] = SEP
    position_ids = torch.arange(T, dtype=torch.long).unsqueeze(0)
    txt_type_ids = torch.zeros(B, T, dtype=torch.long)

    img_feat = torch.zeros(B, N, D)
    norm_bb = torch.zeros(B, N, 6, dtype=torch.float16)
    img_masks = torch.zeros(B, N, dtype=torch.long)
    for b, nbb in enumerate(NUM_BBS):
        # non-negative features (like BUTD pooled features), fp16-quantised
        f = (torch.rand(nbb, D, generator=g) * 2.0
             + 0.3 * torch.randn(nbb, D, generator=g)).clamp_min(0)
        img_feat[b, :nbb] = f.half().float()
        x1 = torch.rand(nbb, generator=g) * 0.6
        y1 = torch.rand(nbb, generator=g) * 0.6
        w = 0.05 + torch.rand(nbb, generator=g) * 0.35
        h = 0.05 + torch.rand(nbb, generator=g) * 0.35
        bb = torch.stack([x1, y1, x1 + w, y1 + h, w, h], dim=-1)
        norm_bb[b, :nbb] = bb.half()
        for r in MASKED[b]:
            assert r < nbb
            img_masks[b, r] = 1
    feat_targets_full = img_feat.clone()
    # the collate zero-fills masked regions
    img_feat = img_feat * (1 - img_masks).unsqueeze(-1).float()
    img_pos_feat = boxes_7d(norm_bb).float()  # w*h taken in fp16
    for b, nbb in enumerate(NUM_BBS):
        img_pos_feat[b, nbb:] = 0
    img_type_ids = torch.ones(B, N, dtype=torch.long)

    attn_masks, gather_index, S = build_joint_layout(TXT_LENS, NUM_BBS, T)

    mlm_index = []
    for b, ps in enumerate(MLM_POS):
        for t in ps:
            assert 1 <= t <= TXT_LENS[b] - 2
            mlm_index.append(b * S + t)
    mrm_index = []
    for b, rs in enumerate(MASKED):
        for r in rs:
            mrm_index.append(b * S + TXT_LENS[b] + r)
    return dict(
        input_ids=input_ids, position_ids=position_ids,
        txt_type_ids=txt_type_ids, img_feat=img_feat,
        img_pos_feat=img_pos_feat, img_type_ids=img_type_ids,
        img_masks=img_masks, attn_masks=attn_masks,
        gather_index=gather_index,
        txt_lens=torch.tensor(TXT_LENS, dtype=torch.long),
        num_bbs=torch.tensor(NUM_BBS, dtype=torch.long),
        mlm_index=torch.tensor(mlm_index, dtype=torch.long),
        mrm_index=torch.tensor(mrm_index, dtype=torch.long),
    ), feat_targets_full, S


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "testdata",
                                                  "golden"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    g = torch.Generator().manual_seed(4321)

    cfg = UniterConfig.from_dict(TINY)
    model = UniterForPretraining(cfg)
    perturb(model, g)
    model.eval()

    inp, _, S = make_inputs(cfg, g)
    B, T = inp["input_ids"].shape
    N = inp["img_feat"].shape[1]
    H = cfg.hidden_size

    out = {}

    def put(k, v):
        v = v.detach()
        if v.is_floating_point():
            v = v.float()
        else:
            v = v.long()
        out[k] = v.clone().contiguous()

    # ---------------- case 1: joint forward with img_masks ----------------
    img_feat = inp["img_feat"].clone().requires_grad_(True)
    captured = {}
    hooks = [
        model.uniter.embeddings.register_forward_hook(
            lambda m, i, o: captured.__setitem__("txt_emb", o)),
        model.uniter.img_embeddings.register_forward_hook(
            lambda m, i, o: captured.__setitem__("img_emb", o)),
        model.uniter.encoder.register_forward_pre_hook(
            lambda m, i: captured.__setitem__("emb", i[0])),
    ]
    layers = model.uniter(inp["input_ids"], inp["position_ids"],
                          img_feat, inp["img_pos_feat"], inp["attn_masks"],
                          gather_index=inp["gather_index"],
                          img_masks=inp["img_masks"],
                          output_all_encoded_layers=True,
                          txt_type_ids=inp["txt_type_ids"],
                          img_type_ids=inp["img_type_ids"])
    for h in hooks:
        h.remove()
    seq = layers[-1]
    pooled = model.uniter.pooler(seq)
    flat = seq.reshape(B * S, H)
    mlm_logits = model.cls(flat[inp["mlm_index"]])
    mrm_hidden = flat[inp["mrm_index"]]
    mrfr = model.feat_regress(mrm_hidden)
    mrc_logits = model.region_classifier(mrm_hidden)
    itm_logits = model.itm_output(pooled)

    # cross-check the head rows against the official boolean-mask selection
    txt_mask = torch.zeros(B, T, dtype=torch.bool)
    for b, ps in enumerate(MLM_POS):
        txt_mask[b, ps] = True
    img_mask_tgt = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        nbb = NUM_BBS[b]
        img_mask_tgt[b, TXT_LENS[b]:TXT_LENS[b] + nbb] = \
            inp["img_masks"][b, :nbb].bool()
    with torch.no_grad():
        assert torch.equal(model.mlm_scores(seq, txt_mask), mlm_logits)
        assert torch.equal(model.mrfr_pred(seq, img_mask_tgt), mrfr)
        assert torch.equal(model.mrc_scores(seq, img_mask_tgt), mrc_logits)
        assert torch.equal(model.itm_scores(seq), itm_logits)

    rg = torch.Generator().manual_seed(777)
    r_seq = torch.randn(B, S, H, generator=rg)
    r_seq = r_seq * inp["attn_masks"].unsqueeze(-1).float()
    r_pool = torch.randn(pooled.shape, generator=rg)
    r_mlm = torch.randn(mlm_logits.shape, generator=rg)
    r_mrfr = torch.randn(mrfr.shape, generator=rg)
    r_mrc = torch.randn(mrc_logits.shape, generator=rg)
    r_itm = torch.randn(itm_logits.shape, generator=rg)
    loss = ((seq * r_seq).sum() + (pooled * r_pool).sum()
            + (mlm_logits * r_mlm).sum() + (mrfr * r_mrfr).sum()
            + (mrc_logits * r_mrc).sum() + (itm_logits * r_itm).sum())
    model.zero_grad(set_to_none=True)
    loss.backward()

    params = state_dict_params(model)
    sd = model.state_dict()
    assert list(params.keys()) == list(sd.keys()), "key order mismatch"
    for k, v in sd.items():
        put("param/" + k, v)
    for k in ("input_ids", "position_ids", "txt_type_ids", "img_feat",
              "img_pos_feat", "img_type_ids", "img_masks", "attn_masks",
              "gather_index", "txt_lens", "num_bbs", "mlm_index",
              "mrm_index"):
        put("in/" + k, inp[k])
    put("out/txt_emb", captured["txt_emb"])
    put("out/img_emb", captured["img_emb"])
    put("out/emb", captured["emb"])
    for i, l in enumerate(layers):
        put("out/layer_%d" % i, l)
    put("out/pooled", pooled)
    put("out/mlm_logits", mlm_logits)
    put("out/mrfr", mrfr)
    put("out/mrc_logits", mrc_logits)
    put("out/itm_logits", itm_logits)
    put("out/loss", loss.reshape(1))
    for k, v in (("seq", r_seq), ("pool", r_pool), ("mlm", r_mlm),
                 ("mrfr", r_mrfr), ("mrc", r_mrc), ("itm", r_itm)):
        put("rand/" + k, v)
    for k, p in params.items():
        assert p.grad is not None, k
        put("grad/" + k, p.grad)
    put("grad/img_feat", img_feat.grad)

    # ---------------- case 2: no img_masks (ITM style) ----------------
    with torch.no_grad():
        layers2 = model.uniter(inp["input_ids"], inp["position_ids"],
                               inp["img_feat"], inp["img_pos_feat"],
                               inp["attn_masks"],
                               gather_index=inp["gather_index"],
                               img_masks=None,
                               txt_type_ids=inp["txt_type_ids"],
                               img_type_ids=inp["img_type_ids"])
        put("out2/layer_1", layers2[-1])
        put("out2/pooled", model.uniter.pooler(layers2[-1]))

        # ---------------- case 3: text only ----------------
        tmask = lengths_to_mask(TXT_LENS, T)
        layers3 = model.uniter(inp["input_ids"], inp["position_ids"],
                               None, None, tmask,
                               txt_type_ids=inp["txt_type_ids"])
        put("out3/layer_1", layers3[-1])

        # ---------------- case 4: image only ----------------
        imask = lengths_to_mask(NUM_BBS, N)
        layers4 = model.uniter(None, None, inp["img_feat"],
                               inp["img_pos_feat"], imask,
                               img_masks=None,
                               img_type_ids=inp["img_type_ids"])
        put("out4/layer_1", layers4[-1])

    # sanity: nothing in param/ is exactly 0 or 1 except the forced zeros
    for k, v in out.items():
        if k.startswith("param/") and v.dtype == torch.float32:
            n1 = int((v == 1).sum())
            assert n1 == 0, (k, n1)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tiny.json"), "w") as f:
        json.dump(TINY, f, indent=2)
        f.write("\n")
    pt = os.path.join(args.out, "tiny.pt")
    torch.save(out, pt)

    # re-load check
    back = torch.load(pt)
    assert list(back.keys()) == list(out.keys())
    for k in out:
        assert torch.equal(back[k], out[k]), k

    prefixes = {}
    for k in out:
        prefixes.setdefault(k.split("/")[0], []).append(k)
    for p, ks in prefixes.items():
        print("%s: %d tensors" % (p, len(ks)))
        if p != "param" and p != "grad":
            for k in ks:
                print("   %-22s %-6s %s" % (k, str(out[k].dtype)[6:],
                                            list(out[k].shape)))
    print("loss = %.6f" % loss.item())
    print("wrote %s (%d bytes), tiny.json" % (pt, os.path.getsize(pt)))


if __name__ == "__main__":
    main()
