#!/usr/bin/python3
"""Official-layout fine-tuned UNITER checkpoints with their dbs and the
reference's evaluation, for the Go `eval` tests of VQA and NLVR2.

Writes (run from anywhere; Debian python3-torch, python3-lmdb,
python3-msgpack, python3-msgpack-numpy, python3-lz4, python3-numpy):

  testdata/finetune/vqa_official/
      model.json      tiny model config, official keys only (no img_dim:
                      the features are 48-d, pass --img-dim 48)
      model.pt        fp16 state dict (torch.save zip format, a plain dict as
                      utils/save.py ModelSaver writes it) of
                      UniterForVisualQuestionAnswering: `uniter.*` +
                      `vqa_output.*`, num_answer = len(ans2label) = 10
      ans2label.json  {answer: index}, index 0 "net"
      txt.db/         LMDB, lz4(msgpack) values; meta/id2len/txt2img/img2txts
      img.db/         feat_th0.2_max100_min10/ (msgpack-numpy fp16 arrays)
                      + nbb_th0.2_max100_min10.json
      expected.pt     reference eval in fp32 of the fp16-rounded weights
      expected.json   ids (evaluation order = id2len.json order), metrics,
                      predicted answers
  testdata/finetune/nlvr2_official/
      the same for UniterForNlvr2PairedAttn (3-row token_type table in the
      checkpoint, model.json still says type_vocab_size 2), use_img_type:
      left regions type 1, right regions type 2.

Data preparation follows the official data code (data/data.py, data/vqa.py,
data/nlvr2.py): input_ids = [CLS] + ids + [SEP] (text type 0), the fp16
features and norm_bb are read and cast to fp32, the 7-d box is
[x1,y1,x2,y2,w,h,w*h] with w*h taken on the fp32 copies of the fp16 values,
batches are padded (ids 0, features 0) and joined with gather_index, the
attention mask is -10000 on padding, eval mode (dropout off).  All examples
go through the model as one batch (padding is masked, so the numbers do not
depend on the batching); every example is also checked alone.

Metrics as the original validation computes them:
  vqa   score = mean over examples of target[argmax logits] (VQA score),
        loss = BCE-with-logits reduction='sum' / n   (train_vqa.validate)
  nlvr2 acc = mean(argmax == target), loss = CE reduction='sum' / n
        (train_nlvr2.validate), consistency as scripts/eval_nlvr2.py: group
        identifiers with the third dash-separated field blanked, a group
        counts when all its examples are right.
"""
import json
import os
import shutil
import sys

import lmdb
import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np
import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from uniter_ref import UniterConfig, get_gather_index  # noqa: E402
import finetune_ref as fr  # noqa: E402

msgpack_numpy.patch()

OUT = os.path.join(HERE, "..", "testdata", "finetune")
CLS, SEP, MASK, UNK = 101, 102, 103, 100
V_FIRST = 106            # id of '!' in bert-base-cased
CONF_TH, MAX_BB, MIN_BB = 0.2, 100, 10
IMG_DIM = 48

MODEL_JSON = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}

# seeds of the weights and data (chosen so that the predictions are mixed:
# several distinct VQA answers, both NLVR2 classes)
VQA_SEED, NLVR2_SEED = 9, 3

ANSWERS = ["net", "yes", "no", "2", "1", "white", "3", "red", "dog", "blue"]


# --------------------------------------------------------------------------
# db writers (as the official prepro.py / convert_imgdir.py write them)
# --------------------------------------------------------------------------
def write_txt_db(path, examples, meta):
    """examples: ordered {id: dict}; id2len follows that order."""
    os.makedirs(path)
    env = lmdb.open(path, readonly=False, create=True, map_size=1 << 26)
    id2len, txt2img, img2txts = {}, {}, {}
    with env.begin(write=True) as txn:
        for id_, ex in examples.items():
            txn.put(id_.encode("utf-8"), lz4.frame.compress(
                msgpack.dumps(ex, use_bin_type=True)))
            id2len[id_] = len(ex["input_ids"])
            txt2img[id_] = ex["img_fname"]
            names = ex["img_fname"]
            if isinstance(names, str):
                names = [names]
            for n in names:
                img2txts.setdefault(n, []).append(id_)
    env.close()
    for name, obj in (("meta.json", meta), ("id2len.json", id2len),
                      ("txt2img.json", txt2img),
                      ("img2txts.json", img2txts)):
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f)


def make_meta(path, name):
    return {"annotation": ["/ann/%s.jsonl" % name], "missing_imgs": None,
            "output": "/txt/%s.db" % name, "task": name.split("_")[0],
            "toker": "bert-base-cased", "bert": "bert-base-cased",
            "tokenizer": "bert-base-cased",
            "UNK": UNK, "CLS": CLS, "SEP": SEP, "MASK": MASK,
            "v_range": [V_FIRST, MODEL_JSON["vocab_size"]]}


def raw_detection(rng, n_raw, n_high, n_labels):
    """A detector dump (fp32): n_raw regions sorted by confidence, n_high
    of them above CONF_TH (values kept away from the threshold)."""
    conf = np.sort(np.concatenate([
        rng.uniform(0.3, 0.99, n_high),
        rng.uniform(0.0, 0.15, n_raw - n_high)]))[::-1].astype(np.float32)
    xy = rng.uniform(0.0, 0.6, (n_raw, 2))
    wh = rng.uniform(0.05, 0.4, (n_raw, 2))
    norm_bb = np.concatenate([xy, xy + wh, wh], axis=1).astype(np.float32)
    feats = np.maximum(rng.standard_normal((n_raw, IMG_DIM)) * 1.5 + 0.5,
                       0).astype(np.float32)
    soft = rng.uniform(0, 1, (n_raw, n_labels)) ** 4
    soft = (soft / soft.sum(1, keepdims=True)).astype(np.float32)
    return {"features": feats, "norm_bb": norm_bb, "conf": conf[:, None],
            "soft_labels": soft}


def to_db_arrays(dump):
    """convert_imgdir.load_npz: nbb from conf, fp32 -> fp16, rows [:nbb]."""
    nbb = int(min(MAX_BB, max(MIN_BB, int((dump["conf"] > CONF_TH).sum()))))
    return {k: a.astype(np.float16)[:nbb] for k, a in dump.items()}, nbb


def write_img_db(root, images):
    """images: ordered {fname: fp16 arrays}."""
    sub = os.path.join(root, "feat_th%s_max%d_min%d" % (CONF_TH, MAX_BB,
                                                        MIN_BB))
    os.makedirs(sub)
    env = lmdb.open(sub, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for fname, arrays in images.items():
            txn.put(fname.encode("utf-8"),
                    msgpack.dumps(arrays, use_bin_type=True))
        txn.put(b"__keys__", json.dumps(list(images)).encode("utf-8"))
    env.close()
    with open(os.path.join(root, "nbb_th%s_max%d_min%d.json" % (
            CONF_TH, MAX_BB, MIN_BB)), "w") as f:
        json.dump({k: int(v["features"].shape[0]) for k, v in images.items()},
                  f)


def read_back_image(arrays):
    """DetectFeatLmdb.__getitem__ + _get_img_feat: fp16 -> fp32, 7-d box."""
    feat = torch.tensor(arrays["features"]).float()
    bb = torch.tensor(arrays["norm_bb"]).float()
    return feat, torch.cat([bb, bb[:, 4:5] * bb[:, 5:]], dim=-1)


# --------------------------------------------------------------------------
# collate (official data/vqa.py, data/nlvr2.py)
# --------------------------------------------------------------------------
def pad_rows(tensors):
    n = max(t.size(0) for t in tensors)
    out = torch.zeros(len(tensors), n, tensors[0].size(-1),
                      dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, :t.size(0)] = t
    return out


def collate(rows):
    """rows: list of (input_ids incl. CLS/SEP, img_feat, img_pos, type_ids
    or None). Returns the official batch dict."""
    txt_lens = [len(r[0]) for r in rows]
    num_bbs = [r[1].size(0) for r in rows]
    tmax = max(txt_lens)
    input_ids = torch.zeros(len(rows), tmax, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r[0])] = torch.tensor(r[0])
    S = max(t + n for t, n in zip(txt_lens, num_bbs))
    attn = torch.zeros(len(rows), S, dtype=torch.long)
    for i, (t, n) in enumerate(zip(txt_lens, num_bbs)):
        attn[i, :t + n] = 1
    batch = {
        "input_ids": input_ids,
        "position_ids": torch.arange(tmax, dtype=torch.long).unsqueeze(0),
        "img_feat": pad_rows([r[1] for r in rows]),
        "img_pos_feat": pad_rows([r[2] for r in rows]),
        "attn_masks": attn,
        "gather_index": get_gather_index(txt_lens, num_bbs, len(rows), tmax,
                                         S),
    }
    if rows[0][3] is not None:
        nmax = max(num_bbs)
        types = torch.zeros(len(rows), nmax, dtype=torch.long)
        for i, r in enumerate(rows):
            types[i, :len(r[3])] = torch.tensor(r[3])
        batch["img_type_ids"] = types
    return batch


# --------------------------------------------------------------------------
# model helpers
# --------------------------------------------------------------------------
def randomize_model(model, g):
    fr.randomize_(model, g, std=0.2)
    # fine-tuning never uses img_masks; row 0 stays as pretraining left it
    model.uniter.img_embeddings.mask_embedding.weight.data[0].zero_()


def save_fp16(model, path):
    """ModelSaver.save of an apex O2 model: a plain dict of fp16 tensors."""
    sd = {k: v.detach().cpu().half().clone() for k, v in
          model.state_dict().items()}
    torch.save(sd, path)
    return sd


def load_rounded(model, sd16):
    model.load_state_dict({k: v.float() for k, v in sd16.items()})
    model.eval()


def write_model_json(path):
    with open(path, "w") as f:
        json.dump(MODEL_JSON, f, indent=4)


def put(out, key, v):
    fr.put(out, key, v)


def remove_locks(root):
    for d, _, files in os.walk(root):
        if "lock.mdb" in files:
            os.remove(os.path.join(d, "lock.mdb"))


def check_margin(logits, what):
    top2 = logits.topk(2, dim=1).values
    gap = float((top2[:, 0] - top2[:, 1]).min())
    assert gap > 1e-3, "%s: argmax near a tie (%g); change the seed" % (
        what, gap)
    return gap


# --------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------
VQA_IMAGES = [  # (image_id, regions above threshold -> nbb)
    (139, 7),     # nbb 10 (min_bb)
    (285, 12),
    (632, 14),
    (724, 11),
]
VQA_QUESTIONS = [  # (question_id, image index, number of word pieces)
    (139000, 0, 5), (139001, 0, 3), (285000, 1, 7), (285001, 1, 4),
    (632000, 2, 9), (632001, 2, 6), (724000, 3, 5), (724001, 3, 8),
]


def gen_vqa(root, seed=VQA_SEED):
    out_dir = os.path.join(root, "vqa_official")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    ans2label = {a: i for i, a in enumerate(ANSWERS)}
    label2ans = {i: a for a, i in ans2label.items()}

    cfg = UniterConfig.from_dict(dict(MODEL_JSON))
    model = fr.UniterForVisualQuestionAnswering(cfg, IMG_DIM,
                                                len(ans2label))
    randomize_model(model, g)
    sd16 = save_fp16(model, os.path.join(out_dir, "model.pt"))
    load_rounded(model, sd16)
    write_model_json(os.path.join(out_dir, "model.json"))
    with open(os.path.join(out_dir, "ans2label.json"), "w") as f:
        json.dump(ans2label, f)

    images = {}
    for image_id, n_high in VQA_IMAGES:
        fname = "coco_val2014_%012d.npz" % image_id
        images[fname], _ = to_db_arrays(raw_detection(rng, 16, n_high, 1601))
    fnames = list(images)

    # questions (ids sorted as strings = the id2len order)
    qs = []
    for qid, img, n in VQA_QUESTIONS:
        ids = [int(x) for x in rng.integers(V_FIRST, MODEL_JSON["vocab_size"],
                                            n)]
        qs.append((str(qid), img, ids))
    assert [q[0] for q in qs] == sorted(q[0] for q in qs)

    rows = []
    for qid, img, ids in qs:
        feat, pos = read_back_image(images[fnames[img]])
        rows.append(([CLS] + ids + [SEP], feat, pos, None))
    batch = collate(rows)
    with torch.no_grad():
        logits = model(batch, compute_loss=False)
        pooled = model.uniter.pooler(model.uniter(
            batch["input_ids"], batch["position_ids"], batch["img_feat"],
            batch["img_pos_feat"], batch["attn_masks"],
            batch["gather_index"], output_all_encoded_layers=False))
        for i, r in enumerate(rows):
            one = model(collate([r]), compute_loss=False)
            assert torch.allclose(one[0], logits[i], atol=1e-5), i
    gap = check_margin(logits, "vqa")
    am = logits.argmax(1).tolist()
    assert len(set(am)) >= 3, "vqa: too few distinct answers %s" % am

    # targets {labels, scores}: several answers, one empty, some through
    # the argmax (so the score is neither 0 nor 1)
    C = len(ans2label)
    tgt = [
        ([am[0]], [1.0]),
        ([(am[1] + 1) % C, am[1]], [1.0, 0.3]),
        ([], []),
        ([(am[3] + 2) % C], [0.6]),
        ([am[4], (am[4] + 4) % C, (am[4] + 7) % C], [0.6, 0.3, 0.3]),
        ([(am[5] + 3) % C, (am[5] + 1) % C], [0.9, 0.3]),
        ([am[6]], [0.9]),
        ([(am[7] + 5) % C], [1.0]),
    ]
    targets = torch.zeros(len(qs), C)
    for i, (labels, scores) in enumerate(tgt):
        if labels and scores:
            targets[i].scatter_(0, torch.tensor(labels), torch.tensor(scores))
    n = len(qs)
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(logits, targets,
                                                  reduction="sum") / n
        score = fr.vqa_score_sum(logits, targets) / n

    # txt_db
    qtypes = ["what is", "how many", "is the", "what color"]
    examples = {}
    for i, (qid, img, ids) in enumerate(qs):
        labels, scores = tgt[i]
        image_id = VQA_IMAGES[img][0]
        examples[qid] = {
            "question_id": int(qid), "image_id": image_id,
            "question": "question %s about image %d?" % (qid, image_id),
            "question_type": qtypes[i % 4],
            "answer_type": "other",
            "answers": [label2ans[a] for a in labels],
            "target": {"labels": labels, "scores": scores},
            "input_ids": ids, "img_fname": fnames[img]}
    write_txt_db(os.path.join(out_dir, "txt.db"), examples,
                 make_meta(out_dir, "vqa_devval"))
    write_img_db(os.path.join(out_dir, "img.db"), images)
    remove_locks(out_dir)

    exp = {}
    put(exp, "logits", logits)
    put(exp, "targets", targets)
    put(exp, "pooled", pooled)
    put(exp, "score", score)
    put(exp, "loss", loss)
    torch.save(exp, os.path.join(out_dir, "expected.pt"))
    meta = {
        "task": "vqa", "ids": [q[0] for q in qs],
        "img_dim": IMG_DIM, "num_answers": C,
        "score": float(score), "loss": float(loss),
        "answers": [{"answer": label2ans[a], "question_id": int(q[0])}
                    for a, q in zip(am, qs)],
        "nbb": {k: int(v["features"].shape[0]) for k, v in images.items()},
        "min_top2_logit_gap": gap,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# --------------------------------------------------------------------------
# NLVR2 (paired-attn)
# --------------------------------------------------------------------------
NLVR2_IDS = [  # (identifier, number of word pieces)
    ("dev-1-0-0", 6), ("dev-1-0-1", 4), ("dev-1-1-0", 6),
    ("dev-1-2-0", 6), ("dev-2-0-0", 8), ("dev-2-1-0", 8),
]
# regions above threshold per image pair (left, right): nbb 10..14,
# left longer, right longer and equal
NLVR2_NBB = {"dev-1-0": (14, 10), "dev-1-1": (11, 13), "dev-1-2": (12, 12),
             "dev-2-0": (7, 13), "dev-2-1": (13, 11)}
# examples the model should get wrong (targets set against its prediction):
# acc 4/6; groups dev-1--0 and dev-1--1 consistent, dev-2--0 not -> 2/3
NLVR2_WRONG = {"dev-2-0-0", "dev-2-1-0"}


def gen_nlvr2(root, seed=NLVR2_SEED):
    out_dir = os.path.join(root, "nlvr2_official")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    cfg = UniterConfig.from_dict(dict(MODEL_JSON))
    model = fr.UniterForNlvr2PairedAttn(cfg, IMG_DIM)
    model.init_type_embedding()
    randomize_model(model, g)
    sd16 = save_fp16(model, os.path.join(out_dir, "model.pt"))
    assert sd16["uniter.embeddings.token_type_embeddings.weight"].shape[0] == 3
    load_rounded(model, sd16)
    write_model_json(os.path.join(out_dir, "model.json"))

    images = {}
    for pair, (n0, n1) in NLVR2_NBB.items():
        for k, nh in ((0, n0), (1, n1)):
            fname = "nlvr2_%s-img%d.npz" % (pair, k)
            images[fname], _ = to_db_arrays(raw_detection(rng, 16, nh, 31))

    sentences = {}
    exs = []
    for ident, n in NLVR2_IDS:
        pair = "-".join(ident.split("-")[:-1])
        ids = [int(x) for x in rng.integers(V_FIRST, MODEL_JSON["vocab_size"],
                                            n)]
        fn = ("nlvr2_%s-img0.npz" % pair, "nlvr2_%s-img1.npz" % pair)
        exs.append((ident, ids, fn))
        sentences[ident] = "sentence of %s" % ident
    assert [e[0] for e in exs] == sorted(e[0] for e in exs)

    def example_rows(ids, fn):
        rows = []
        for k, name in enumerate(fn):
            feat, pos = read_back_image(images[name])
            rows.append(([CLS] + ids + [SEP], feat, pos,
                         [k + 1] * feat.size(0)))
        return rows

    rows = [r for _, ids, fn in exs for r in example_rows(ids, fn)]
    batch = collate(rows)
    with torch.no_grad():
        logits = model(batch, compute_loss=False)
        for i, (_, ids, fn) in enumerate(exs):
            one = model(collate(example_rows(ids, fn)), compute_loss=False)
            assert torch.allclose(one[0], logits[i], atol=1e-5), i
    gap = check_margin(logits, "nlvr2")
    pred = logits.argmax(1).tolist()
    assert 2 <= sum(pred) <= len(pred) - 2, "nlvr2: one-sided %s" % pred
    targets = torch.tensor([(1 - p) if e[0] in NLVR2_WRONG else p
                            for p, e in zip(pred, exs)])
    n = len(exs)
    with torch.no_grad():
        loss = F.cross_entropy(logits, targets, reduction="sum") / n
    correct = [p == int(t) for p, t in zip(pred, targets)]
    acc = sum(correct) / n
    consistency, groups = fr.nlvr2_consistency([e[0] for e in exs], correct)

    examples = {}
    for (ident, ids, fn), t in zip(exs, targets.tolist()):
        examples[ident] = {
            "identifier": ident, "sentence": sentences[ident],
            "label": "True" if t == 1 else "False",
            "left_url": "http://example.invalid/%s-img0.png" % ident,
            "right_url": "http://example.invalid/%s-img1.png" % ident,
            "writer": 0, "synset": "dog", "query": "dogs",
            "input_ids": ids, "img_fname": fn, "target": int(t)}
    write_txt_db(os.path.join(out_dir, "txt.db"), examples,
                 make_meta(out_dir, "nlvr2_dev"))
    write_img_db(os.path.join(out_dir, "img.db"), images)
    remove_locks(out_dir)

    exp = {}
    put(exp, "logits", logits)
    put(exp, "targets", targets)
    put(exp, "acc", torch.tensor(acc))
    put(exp, "loss", loss)
    put(exp, "consistency", torch.tensor(consistency))
    torch.save(exp, os.path.join(out_dir, "expected.pt"))
    meta = {
        "task": "nlvr2", "model": "paired-attn", "use_img_type": True,
        "ids": [e[0] for e in exs], "img_dim": IMG_DIM,
        "acc": acc, "loss": float(loss), "consistency": consistency,
        "consistency_groups": groups,
        "predictions": ["%s,%s" % (e[0], "True" if p == 1 else "False")
                        for e, p in zip(exs, pred)],
        "nbb": {k: int(v["features"].shape[0]) for k, v in images.items()},
        "min_top2_logit_gap": gap,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    for meta in (gen_vqa(OUT), gen_nlvr2(OUT)):
        print(json.dumps({k: v for k, v in meta.items()
                          if k not in ("answers", "predictions")}))


if __name__ == "__main__":
    main()
