#!/usr/bin/python3
"""Write the PyTorch checkpoint fixtures for internal/ckpt tests.

Run with the Debian interpreter (torch 1.13 CPU, numpy):

    /usr/bin/python3 scripts/make_pt_fixtures.py

Outputs go to internal/ckpt/testdata/: a handful of tiny .pt files in the
layouts the reader must accept, plus expected.json holding, for every
fixture, the key order, the skipped (non-tensor) keys and each tensor's
dtype, shape and values in C order. Float values are stored as the bit
patterns of their float32 conversion (fp16/bf16 -> fp32 is exact), so the Go
test compares bit for bit and NaN/inf/-0 survive JSON.
"""

import argparse
import collections
import json
import os
import struct

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "internal", "ckpt", "testdata")

H = 16  # hidden size of the tiny model
VOCAB = 50
IMG_DIM = 24


def randn(*shape, dtype=torch.float16):
    return (torch.randn(*shape) * 0.02).to(dtype)


def specials(dtype):
    # Values whose conversion is easy to get wrong: signed zero, infinities,
    # NaN, the largest fp16 and the smallest fp16 subnormal.
    vals = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 65504.0, 2.0 ** -24, -1.5]
    return torch.tensor(vals, dtype=torch.float32).to(dtype)


def official_state_dict(prefix, dtype):
    """A tiny state dict with UNITER's official key names and ties."""
    sd = collections.OrderedDict()
    word = randn(VOCAB, H, dtype=dtype)
    img_linear = randn(H, IMG_DIM, dtype=dtype)
    sd[prefix + "embeddings.word_embeddings.weight"] = word
    sd[prefix + "embeddings.position_embeddings.weight"] = randn(8, H, dtype=dtype)
    sd[prefix + "embeddings.token_type_embeddings.weight"] = randn(2, H, dtype=dtype)
    sd[prefix + "embeddings.LayerNorm.gamma"] = (1 + randn(H, dtype=torch.float32)).to(dtype)
    sd[prefix + "embeddings.LayerNorm.beta"] = randn(H, dtype=dtype)
    sd[prefix + "img_embeddings.img_linear.weight"] = img_linear
    sd[prefix + "img_embeddings.img_linear.bias"] = randn(H, dtype=dtype)
    sd[prefix + "img_embeddings.pos_linear.weight"] = randn(H, 7, dtype=dtype)
    sd[prefix + "encoder.layer.0.attention.self.query.weight"] = randn(H, H, dtype=dtype)
    sd[prefix + "pooler.dense.weight"] = randn(H, H, dtype=dtype)
    sd[prefix + "pooler.dense.bias"] = randn(H, dtype=dtype)
    # The MLM decoder is the word-embedding tensor itself: pickle memoises
    # the object, so the file holds one tensor referenced under two keys.
    sd["cls.predictions.decoder.weight"] = word
    sd["cls.predictions.bias"] = specials(dtype)
    # feat_regress.weight is a distinct tensor sharing img_linear's storage,
    # which is what state_dict() produces for tied parameters.
    sd["feat_regress.weight"] = img_linear.detach()
    sd["itm_output.weight"] = randn(2, H, dtype=dtype)
    return sd


def noncontig_state_dict():
    sd = collections.OrderedDict()
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) / 8
    sd["transposed"] = base.t()  # stride (1, 8)
    sd["row_slice"] = base[2:5]  # storage offset 16, contiguous
    sd["col_slice"] = base[1:4, 3:7]  # offset 11, stride (8, 1)
    sd["strided"] = base[::2, ::3]  # stride (16, 3)
    cube = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4)
    sd["permuted_fp16"] = cube.permute(2, 0, 1)
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.zeros(0, 4)
    sd["float64"] = torch.tensor([1.0 / 3.0, -2.5e-40, 1e300, float("nan")], dtype=torch.float64)
    # Two views of one storage: the second starts mid-storage.
    flat = torch.arange(10, dtype=torch.float32)
    sd["flat_head"] = flat[:4]
    sd["flat_tail"] = flat[6:]
    return sd


def int_state_dict():
    sd = collections.OrderedDict()
    sd["int64"] = torch.tensor([[0, 1, -1], [2 ** 62, -(2 ** 63), 2 ** 63 - 1]], dtype=torch.int64)
    sd["position_ids"] = torch.arange(12, dtype=torch.int64).unsqueeze(0)
    sd["int32"] = torch.tensor([-(2 ** 31), 2 ** 31 - 1, 7], dtype=torch.int32)
    sd["int16"] = torch.tensor([-(2 ** 15), 2 ** 15 - 1], dtype=torch.int16)
    sd["int8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["int64_transposed"] = torch.arange(6, dtype=torch.int64).reshape(2, 3).t()
    return sd


DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def expected_entry(sd):
    keys, skipped, tensors = [], [], {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            skipped.append(k)
            continue
        keys.append(k)
        t = {"dtype": DTYPE_NAMES[v.dtype], "shape": list(v.shape)}
        flat = v.contiguous().reshape(-1)
        if v.is_floating_point():
            f32 = flat.to(torch.float32).tolist()
            t["float_bits"] = [struct.unpack("<I", struct.pack("<f", x))[0] for x in f32]
        else:
            t["int"] = [int(x) for x in flat.to(torch.int64).tolist()]
        tensors[k] = t
    return {"keys": keys, "skipped": skipped, "tensors": tensors}


def main():
    torch.manual_seed(20240607)
    os.makedirs(OUT, exist_ok=True)
    expected = {}

    def save(name, obj, sd, legacy=False):
        path = os.path.join(OUT, name)
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        expected[name] = expected_entry(sd)

    official = official_state_dict("uniter.", torch.float16)
    # A real state_dict carries _metadata as an instance attribute, which
    # pickle writes as a BUILD on the OrderedDict.
    official._metadata = collections.OrderedDict([("", {"version": 1}), ("uniter", {"version": 1})])
    save("official_layout_fp16.pt", official, official)

    bert = official_state_dict("bert.", torch.float16)
    bert["bert.encoder._extra_state"] = "not a tensor"
    opts = argparse.Namespace(lr=3e-5, fp16=True, train_txt_dbs=["db1"])
    save("bert_prefix_fp16.pt", {"state_dict": bert, "opts": opts, "global_step": 1000}, bert)

    legacy = official_state_dict("uniter.", torch.float32)
    save("legacy_fp32.pt", {"model": legacy, "epoch": 3}, legacy, legacy=True)

    bf16 = collections.OrderedDict()
    bf16["weight"] = torch.randn(5, 7).to(torch.bfloat16)
    bf16["specials"] = specials(torch.bfloat16)
    bf16["transposed"] = bf16["weight"].t()
    save("bf16.pt", bf16, bf16)

    nc = noncontig_state_dict()
    save("noncontig.pt", nc, nc)

    ints = int_state_dict()
    save("int64.pt", ints, ints)

    legacy_nc = noncontig_state_dict()
    save("legacy_noncontig.pt", legacy_nc, legacy_nc, legacy=True)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=None, separators=(",", ":"), sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
