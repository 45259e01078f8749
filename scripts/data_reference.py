#!/usr/bin/python3
"""Reference computations for the Go data pipeline's interop tests.

Usage:
  data_reference.py sampler  < CASES.json   token-bucket packing per case
  data_reference.py gather   < CASES.json   gather_index per case (torch)
  data_reference.py synth DIR              read a synthetic world the way
                                           the official datasets do

sampler and gather read a JSON list of cases and print a JSON list of
results. The sampler cases carry the already shuffled ids, so the result is
the deterministic part of the official TokenBucketSampler (bucketing,
stable descending sort, packing with a running max, droplast); gather
builds gather_index with torch as the official collate does (arange, then
the region slots pointing past the padded text).

synth opens every txt_db and img_db of a `uniter data synth` world with
lmdb, lz4.frame, msgpack and msgpack_numpy, picks the img_db sub-directory
and nbb as the official DetectFeatLmdb does, and checks what each task's
official dataset relies on: example images present, VQA/VE labels inside
ans2label, NLVR2 image pairs, VCR four answers and rationales with [gt, det]
images, RE images.json ann_ids matching the gt regions one to one. It
prints one line per failure and a closing 'N passed, N failed' line.
"""
import json
import os
import sys


def sampler(cases):
    out = []
    for c in cases:
        lens, ids = c['lens'], c['ids']
        size, budget, mul = c['bucket_size'], c['max_tokens'], c['size_multiple']
        batches = []
        for start in range(0, len(ids), size):
            bucket = sorted(ids[start:start + size], key=lambda i: lens[i], reverse=True)
            running, batch = 0, []
            for k in range(0, len(bucket), mul):
                chunk = bucket[k:k + mul]
                running = max([running] + [lens[i] for i in chunk])
                if running * (len(batch) + mul) > budget:
                    if not batch:
                        raise ValueError('budget too small')
                    batches.append(batch)
                    batch = list(chunk)
                else:
                    batch.extend(chunk)
            if not c['droplast']:
                batches.append(batch)
        out.append(batches)
    return out


def gather(cases):
    import torch
    out = []
    for c in cases:
        tls, nbbs = c['txt_lens'], c['nbbs']
        tmax = max(tls)
        size = max(t + n for t, n in zip(tls, nbbs))
        idx = torch.arange(size, dtype=torch.long).unsqueeze(0).repeat(len(tls), 1)
        for i, (t, n) in enumerate(zip(tls, nbbs)):
            idx[i, t:t + n] = torch.arange(tmax, tmax + n, dtype=torch.long)
        out.append(idx.reshape(-1).tolist())
    return out


class Checker:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print('FAIL:', what)


def open_txt(path):
    import lmdb
    import lz4.frame
    import msgpack
    env = lmdb.open(path, readonly=True, create=False, lock=False)
    txn = env.begin()
    meta = json.load(open(f'{path}/meta.json'))
    id2len = json.load(open(f'{path}/id2len.json'))
    txt2img = json.load(open(f'{path}/txt2img.json'))

    def get(key):
        return msgpack.loads(lz4.frame.decompress(txn.get(key.encode())), raw=False)
    return meta, id2len, txt2img, get


def open_img(path, conf_th=0.2, max_bb=100, min_bb=10, num_bb=100):
    """Sub-directory, nbb and value decoding as the official reader."""
    import lmdb
    import msgpack
    import msgpack_numpy
    import numpy as np
    msgpack_numpy.patch()
    name = f'th{conf_th}_max{max_bb}_min{min_bb}'
    nbb_file = f'{path}/nbb_{name}.json'
    name2nbb = json.load(open(nbb_file)) if os.path.exists(nbb_file) else None
    sub = f'feat_{name}' if name2nbb is not None else 'all'
    if conf_th == -1:
        # feat_numbb{num_bb}: arr[:num_bb], every box of a smaller image
        name2nbb, sub = None, f'feat_numbb{num_bb}'
    env = lmdb.open(f'{path}/{sub}', readonly=True, create=False, lock=False)
    txn = env.begin()

    def get(fname):
        raw = txn.get(fname.encode())
        if raw is None:
            return None
        dump = msgpack.loads(raw, raw=False)
        nbb = name2nbb[fname] if name2nbb is not None else dump['features'].shape[0]
        return {k: np.asarray(v)[:nbb] for k, v in dump.items()}
    return get


def synth(root):
    ck = Checker()
    for split in ('train', 'val'):
        det = open_img(f'{root}/img/synth_{split}')
        # train_vcr.py opens the ground-truth db with conf_th -1, num_bb 100
        vcr_gt = open_img(f'{root}/img/vcr_gt_{split}', conf_th=-1)
        # train_re.py opens both RE dbs with conf_th -1, num_bb 100
        re_gt = open_img(f'{root}/img/re_coco_gt_{split}', conf_th=-1)
        re_det = open_img(f'{root}/img/re_coco_det_{split}', conf_th=-1)
        for task in ('pretrain', 'vqa', 've', 'nlvr2', 'itr'):
            path = f'{root}/txt/{task}_{split}.db'
            meta, id2len, txt2img, get = open_txt(path)
            ck(meta['CLS'] == 101 and meta['SEP'] == 102 and meta['MASK'] == 103 and meta['UNK'] == 100,
               f'{path}: meta {meta}')
            labels = None
            if task in ('vqa', 've'):
                labels = json.load(open(f'{path}/ans2label.json'))
            for id_, n in id2len.items():
                ex = get(id_)
                ck(len(ex['input_ids']) == n, f'{path} {id_}: id2len {n}, {len(ex["input_ids"])} ids')
                names = ex['img_fname'] if isinstance(ex['img_fname'], list) else [ex['img_fname']]
                ck(names == (txt2img[id_] if isinstance(txt2img[id_], list) else [txt2img[id_]]),
                   f'{path} {id_}: txt2img')
                for f in names:
                    d = det(f)
                    ck(d is not None and d['features'].shape[0] >= 10 and d['norm_bb'].shape[1] == 6
                       and d['soft_labels'].shape[1] == 1601, f'{path} {id_}: image {f}')
                if task == 'nlvr2':
                    ck(len(names) == 2 and ex['target'] in (0, 1), f'{path} {id_}: pair/target')
                if labels is not None:
                    t = ex['target']
                    ck(len(t['labels']) == len(t['scores']) and all(0 <= l < len(labels) for l in t['labels']),
                       f'{path} {id_}: target {t}')
        path = f'{root}/txt/vcr_{split}.db'
        _, id2len, _, get = open_txt(path)
        for id_ in id2len:
            ex = get(id_)
            gt_name, det_name = ex['img_fname']
            ck(len(ex['input_ids_as']) == 4 and len(ex['input_ids_rs']) == 4
               and 0 <= ex['qa_target'] < 4 and 0 <= ex['qar_target'] < 4, f'{path} {id_}: choices')
            ck(vcr_gt(gt_name) is not None and det(det_name) is not None, f'{path} {id_}: images')
        path = f'{root}/txt/re_{split}.db'
        _, id2len, _, get = open_txt(path)
        refs = {r['ref_id']: r for r in json.load(open(f'{path}/refs.json'))}
        anns = {a['id']: a for a in json.load(open(f'{path}/annotations.json'))}
        cats = {c['id']: c['name'] for c in json.load(open(f'{path}/categories.json'))}
        images = {im['id']: im for im in json.load(open(f'{path}/images.json'))}
        for ref in refs.values():
            for sent_id in ref['sent_ids']:
                ex = get(str(sent_id))
                img = images[ex['image_id']]
                gt = re_gt(f'visual_grounding_coco_gt_{int(ex["image_id"]):012}.npz')
                ck(gt is not None and len(img['ann_ids']) == gt['features'].shape[0],
                   f'{path} {sent_id}: gt regions vs ann_ids')
                target = img['ann_ids'].index(ex['ann_id'])
                cls = int(gt['soft_labels'][target, 1:].argmax()) + 1
                ck(cls == anns[ex['ann_id']]['category_id'] and cats[cls] in ex['sent'],
                   f'{path} {sent_id}: target region class {cls}')
                ck(re_det(f'visual_grounding_det_coco_{int(ex["image_id"]):012}.npz') is not None,
                   f'{path} {sent_id}: detected image')
    print(f'{ck.passed} passed, {ck.failed} failed')
    return ck.failed == 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == 'synth':
        sys.exit(0 if synth(sys.argv[2]) else 1)
    if len(sys.argv) != 2 or sys.argv[1] not in ('sampler', 'gather'):
        sys.exit(__doc__)
    cases = json.load(sys.stdin)
    fn = sampler if sys.argv[1] == 'sampler' else gather
    json.dump(fn(cases), sys.stdout)


if __name__ == '__main__':
    main()
