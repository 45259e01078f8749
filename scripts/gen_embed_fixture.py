#!/usr/bin/env python3
"""Writes an official-format txt_db/img_db pair and the PyTorch reference's
pooled outputs for the `uniter embed` test (run from the repository root with
Debian's python3-torch, python3-lmdb, python3-msgpack, python3-msgpack-numpy,
python3-lz4):

  testdata/embed/txt_db/          LMDB + id2len/txt2img/img2txts/meta.json
  testdata/embed/img_db/feat_th0.2_max100_min10/ + nbb json
  testdata/embed/expected.pt      {"pooled/<id>": [H]} from scripts/uniter_ref.py

The model is the golden tiny backbone (testdata/golden/tiny.pt), which
testdata/golden/tiny_legacy_bert.pt holds in the legacy layout. Inputs are
prepared as the official data code does: fp16 features and boxes cast to
float, the 7-d box [x1,y1,x2,y2,w,h,w*h] with w*h taken after the cast.
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

sys.path.insert(0, os.path.dirname(__file__))
import uniter_ref  # noqa: E402

msgpack_numpy.patch()
OUT = "testdata/embed"
CLS, SEP, MASK, UNK = 101, 102, 103, 100
CONF_TH, MAX_BB, MIN_BB = 0.2, 100, 10


def main():
    cfg = uniter_ref.UniterConfig.from_json_file("testdata/golden/tiny.json")
    golden = torch.load("testdata/golden/tiny.pt")
    model = uniter_ref.UniterModel(cfg, img_dim=cfg.img_dim)
    model.load_state_dict({k[len("param/uniter."):]: v for k, v in golden.items()
                           if k.startswith("param/uniter.")})
    model.eval()

    rng = np.random.default_rng(7)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    n_img, D = 4, cfg.img_dim
    images = {}
    for i in range(n_img):
        nbb = int(rng.integers(2, 7))
        feat = (rng.random((nbb, D)) * 2).astype(np.float16)
        x1, y1 = rng.random(nbb) * 0.6, rng.random(nbb) * 0.6
        w, h = 0.05 + rng.random(nbb) * 0.35, 0.05 + rng.random(nbb) * 0.35
        norm_bb = np.stack([x1, y1, x1 + w, y1 + h, w, h], -1).astype(np.float16)
        conf = np.sort(rng.random((nbb, 1)))[::-1].astype(np.float16)
        soft = rng.random((nbb, 1601)).astype(np.float16)
        images["img%d.npz" % i] = dict(features=feat, norm_bb=norm_bb, conf=conf, soft_labels=soft)

    sub = "feat_th%s_max%d_min%d" % (CONF_TH, MAX_BB, MIN_BB)
    os.makedirs(os.path.join(OUT, "img_db", sub))
    env = lmdb.open(os.path.join(OUT, "img_db", sub), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in images.items():
            txn.put(k.encode(), msgpack.dumps(v, use_bin_type=True))
        txn.put(b"__keys__", json.dumps(sorted(images)).encode())
    env.close()
    with open(os.path.join(OUT, "img_db", "nbb_th%s_max%d_min%d.json" % (CONF_TH, MAX_BB, MIN_BB)), "w") as f:
        json.dump({k: len(v["features"]) for k, v in images.items()}, f)

    texts = {}
    for j in range(6):
        ids = [int(x) for x in rng.integers(104, cfg.vocab_size, int(rng.integers(2, 9)))]
        texts[str(1000 + j)] = dict(input_ids=ids, img_fname="img%d.npz" % (j % n_img))
    env = lmdb.open(os.path.join(OUT, "txt_db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in texts.items():
            txn.put(k.encode(), lz4.frame.compress(msgpack.dumps(v, use_bin_type=True)))
    env.close()
    side = {
        "id2len.json": {k: len(v["input_ids"]) for k, v in texts.items()},
        "txt2img.json": {k: v["img_fname"] for k, v in texts.items()},
        "img2txts.json": {},
        "meta.json": {"CLS": CLS, "SEP": SEP, "MASK": MASK, "UNK": UNK,
                      "v_range": [104, cfg.vocab_size], "bert": "bert-base-cased"},
    }
    for k, v in texts.items():
        side["img2txts.json"].setdefault(v["img_fname"], []).append(k)
    for name, obj in side.items():
        with open(os.path.join(OUT, "txt_db", name), "w") as f:
            json.dump(obj, f)

    expected = {}
    with torch.no_grad():
        for k, v in texts.items():
            ids = torch.tensor([[CLS] + v["input_ids"] + [SEP]])
            im = images[v["img_fname"]]
            feat = torch.tensor(im["features"]).float().unsqueeze(0)
            bb = torch.tensor(im["norm_bb"]).float()
            pos = torch.cat([bb, bb[:, 4:5] * bb[:, 5:]], -1).unsqueeze(0)
            tl, nbb = ids.shape[1], feat.shape[1]
            attn = torch.ones(1, tl + nbb, dtype=torch.long)
            gather = torch.arange(tl + nbb).unsqueeze(0)
            seq = model(ids, torch.arange(tl).unsqueeze(0), feat, pos, attn, gather,
                        output_all_encoded_layers=False)
            expected["pooled/" + k] = model.pooler(seq)[0].clone()
    torch.save(expected, os.path.join(OUT, "expected.pt"))
    for root, _, files in os.walk(OUT):
        for f in files:
            if f == "lock.mdb":
                os.remove(os.path.join(root, f))
    print("wrote %d texts, %d images to %s" % (len(texts), len(images), OUT))


if __name__ == "__main__":
    main()
