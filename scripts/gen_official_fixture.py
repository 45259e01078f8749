#!/usr/bin/env python3
"""Writes official-layout checkpoints of the tiny golden model for the Go
loader tests (run from the repository root with Debian's python3-torch):

  testdata/golden/tiny_official_fp16.pt  zip format, fp16 tensors, the
      official key set with tied weights stored twice (decoder and
      feat_regress share storage with their embeddings, as state_dict()
      of the apex O2 model writes them).
  testdata/golden/tiny_legacy_bert.pt    legacy (pre-1.6) format, fp32,
      backbone only, older spellings: "bert." prefix and LayerNorm
      gamma/beta.

The weights are the golden model's (testdata/golden/tiny.pt, param/*).
"""
import collections
import torch

SRC = "testdata/golden/tiny.pt"


def main():
    golden = torch.load(SRC)
    params = collections.OrderedDict(
        (k[len("param/"):], v) for k, v in golden.items() if k.startswith("param/"))

    half = collections.OrderedDict()
    for k, v in params.items():
        half[k] = v.half()
    # Tied weights: one storage, two names.
    half["cls.predictions.decoder.weight"] = half["uniter.embeddings.word_embeddings.weight"]
    half["feat_regress.weight"] = half["uniter.img_embeddings.img_linear.weight"]
    torch.save(half, "testdata/golden/tiny_official_fp16.pt")

    legacy = collections.OrderedDict()
    for k, v in params.items():
        if not k.startswith("uniter."):
            continue
        k = "bert." + k[len("uniter."):]
        if k.endswith("LayerNorm.weight"):
            k = k[:-len("weight")] + "gamma"
        elif k.endswith("LayerNorm.bias"):
            k = k[:-len("bias")] + "beta"
        legacy[k] = v.clone()
    torch.save(legacy, "testdata/golden/tiny_legacy_bert.pt", _use_new_zipfile_serialization=False)
    print("wrote %d fp16 keys, %d legacy keys" % (len(half), len(legacy)))


if __name__ == "__main__":
    main()
