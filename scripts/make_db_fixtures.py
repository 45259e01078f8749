#!/usr/bin/python3
"""Write tiny official-format UNITER dbs for the Go db tests.

The dbs are written exactly the way the official UNITER code writes them
(data/data.py TxtLmdb, scripts/convert_imgdir.py): txt_db values are
lz4.frame.compress(msgpack.dumps(example, use_bin_type=True)); img_db values
are msgpack.dumps(arrays, use_bin_type=True) after msgpack_numpy.patch(), or
np.savez_compressed bytes for the "_compressed" layout. Next to the dbs,
expected.json records what a reader must decode (float arrays as the sha256
of their float32 little-endian bytes plus a few leading values).

Usage: scripts/make_db_fixtures.py [OUT_DIR]   (default internal/db/testdata)
Needs Debian's python3-lmdb python3-msgpack python3-msgpack-numpy python3-lz4
python3-numpy.
"""
import hashlib
import io
import json
import os
import shutil
import sys

import lmdb
import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np

msgpack_numpy.patch()

MAP_SIZE = 1 << 30


def txt_put(txn, key, example):
    txn.put(key.encode('utf-8'),
            lz4.frame.compress(msgpack.dumps(example, use_bin_type=True)))


def jsonable(v):
    """Render a decoded example as JSON; bytes become {"__bytes__": hex} and
    integer lists longer than 64 become {"__ints__": sha256 of the
    comma-joined decimals, "len": n} to keep expected.json small."""
    if isinstance(v, bytes):
        return {'__bytes__': v.hex()}
    if (isinstance(v, (list, tuple)) and len(v) > 64
            and all(type(x) is int for x in v)):
        text = ','.join(str(x) for x in v).encode()
        return {'__ints__': hashlib.sha256(text).hexdigest(), 'len': len(v)}
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def make_txt_db(out):
    path = os.path.join(out, 'txt_db')
    env = lmdb.open(path, readonly=False, create=True, map_size=MAP_SIZE)
    examples = {
        # pretraining caption (COCO)
        '42': {'input_ids': [1109, 3676, 1110, 2033, 1113, 170, 3195, 119],
               'img_fname': 'coco_val2014_000000000042.npz',
               'toked_caption': ['The', 'cat', 'is', 'sitting', 'on', 'a',
                                 'bed', '.'],
               'raw': 'The cat is sitting on a bed.'},
        # VQA: nested target with labels and soft scores
        '262148000': {'input_ids': [1184, 1110, 1103, 1825, 136],
                      'img_fname': 'coco_val2014_000000262148.npz',
                      'question': 'What is the man? \u00e9\u4e2d',
                      'question_id': 262148000,
                      'target': {'labels': [17, 2044], 'scores': [1.0, 0.3]}},
        # NLVR2: a pair of images, target 1/0/None
        'dev-850-0-0': {'input_ids': [1103, 1286, 1937],
                        'img_fname': ('nlvr2_dev-850-0-img0.npz',
                                      'nlvr2_dev-850-0-img1.npz'),
                        'identifier': 'dev-850-0-0',
                        'sentence': 'The left image', 'target': 1},
        'test1-0-1-1': {'input_ids': [1103],
                        'img_fname': ('nlvr2_test1-0-1-img0.npz',
                                      'nlvr2_test1-0-1-img1.npz'),
                        'identifier': 'test1-0-1-1', 'sentence': 'The',
                        'target': None},
        # VCR: answer and rationale lists, [gt, det] images
        'val-0': {'input_ids': [1184, 1674, 28997],
                  'input_ids_as': [[146], [147, 148], [], [149, 150, 151]],
                  'input_ids_rs': [[200], [201], [202, 203], [204]],
                  'img_fname': ['vcr_gt_val_movie-0.npz',
                                'vcr_val_movie-0.npz'],
                  'qa_target': 2, 'qar_target': -1},
        # RefCOCO: xywh box, several ids, negative and large ints
        '1337': {'input_ids': [1639, 1825], 'img_fname':
                 'coco_train2014_000000581857.npz', 'sent_id': 1337,
                 'sent': 'left man', 'ref_id': 7, 'ann_id': 1234567,
                 'image_id': 581857, 'bbox': [103.93, 299.99, 238.15, 77.6],
                 'neg': -70000, 'big': 2**40, 'flag': True,
                 'blob': b'\x00\x01\xff'},
        # a long example: its msgpack spans two lz4 blocks, linked as
        # Python's lz4.frame links them by default
        'long': {'input_ids': [1000 + (i % 997) for i in range(40000)],
                 'img_fname': 'coco_val2014_000000000042.npz'},
    }
    id2len, txt2img, img2txts = {}, {}, {}
    with env.begin(write=True) as txn:
        for id_, ex in examples.items():
            txt_put(txn, id_, ex)
            id2len[id_] = len(ex['input_ids'])
            txt2img[id_] = ex['img_fname']
            names = ex['img_fname']
            if isinstance(names, str):
                names = [names]
            for n in names:
                img2txts.setdefault(n, []).append(id_)
    env.close()
    meta = {'annotation': 'ann.json', 'missing_imgs': None,
            'output': path, 'toker': 'bert-base-cased',
            'UNK': 100, 'CLS': 101, 'SEP': 102, 'MASK': 103,
            'v_range': [999, 28996]}
    for name, v in [('meta.json', meta), ('id2len.json', id2len),
                    ('txt2img.json', txt2img), ('img2txts.json', img2txts)]:
        with open(os.path.join(path, name), 'w') as f:
            json.dump(v, f)
    # What msgpack.loads(raw=False) gives back: tuples become lists.
    expect = {}
    for id_, ex in examples.items():
        back = msgpack.loads(
            lz4.frame.decompress(
                lz4.frame.compress(msgpack.dumps(ex, use_bin_type=True))),
            raw=False)
        expect[id_] = jsonable(back)
    return expect


def f32_digest(arr):
    a = np.ascontiguousarray(arr, dtype='<f4')
    return {'sha256': hashlib.sha256(a.tobytes()).hexdigest(),
            'head': [float(x) for x in a.reshape(-1)[:4]],
            'shape': list(a.shape)}


def make_raw(rng, n, dim, n_labels, n_high, conf_1d=False):
    """A detector dump: n regions sorted by confidence, n_high of them above
    0.2."""
    conf = np.sort(np.concatenate([
        rng.uniform(0.25, 0.99, n_high),
        rng.uniform(0.0, 0.19, n - n_high)]))[::-1].astype(np.float32)
    xy = rng.uniform(0, 0.5, (n, 2))
    wh = rng.uniform(0.05, 0.5, (n, 2))
    norm_bb = np.concatenate([xy, xy + wh, wh], axis=1).astype(np.float32)
    dump = {'norm_bb': norm_bb,
            'features': rng.standard_normal((n, dim)).astype(np.float32) * 3,
            'conf': conf if conf_1d else conf[:, None]}
    if n_labels:
        sl = rng.uniform(0, 1, (n, n_labels))
        dump['soft_labels'] = (sl / sl.sum(1, keepdims=True)).astype(
            np.float32)
    return dump


def compute_nbb(conf, conf_th, max_bb, min_bb):
    num_bb = max(min_bb, (conf > conf_th).sum())
    return int(min(max_bb, num_bb))


def to_db_arrays(dump, nbb):
    """convert_imgdir.load_npz: fp32 -> fp16, keep the first nbb rows."""
    out = {}
    for key, arr in dump.items():
        if arr.dtype == np.float32:
            arr = arr.astype(np.float16)
        out[key] = arr[:nbb, :] if arr.ndim == 2 else arr[:nbb]
    return out


def dumps_npz(dump, compress=False):
    with io.BytesIO() as writer:
        if compress:
            np.savez_compressed(writer, **dump, allow_pickle=True)
        else:
            np.savez(writer, **dump, allow_pickle=True)
        return writer.getvalue()


def write_img_db(path, images, compress):
    """images: {fname: fp16 arrays}; writes values and __keys__."""
    env = lmdb.open(path, map_size=MAP_SIZE)
    with env.begin(write=True) as txn:
        for fname, arrays in images.items():
            if compress:
                dump = dumps_npz(arrays, compress=True)
            else:
                dump = msgpack.dumps(arrays, use_bin_type=True)
            txn.put(key=fname.encode('utf-8'), value=dump)
        txn.put(key=b'__keys__',
                value=json.dumps(list(images.keys())).encode('utf-8'))
    env.close()


def expect_image(arrays, nbb):
    """What DetectFeatLmdb.__getitem__ returns: fp32 of the first nbb rows,
    plus the 7-d box feature of the dataset."""
    f = {k: a[:nbb, ...].astype(np.float32) for k, a in arrays.items()}
    bb = f['norm_bb']
    out = {'nbb': nbb, 'dim': int(f['features'].shape[1]),
           'features': f32_digest(f['features']),
           'norm_bb': f32_digest(bb),
           'box7': f32_digest(np.concatenate([bb, bb[:, 4:5] * bb[:, 5:]],
                                             axis=-1)),
           'conf': f32_digest(f['conf'].reshape(-1))}
    if 'soft_labels' in f:
        out['soft_labels'] = f32_digest(f['soft_labels'])
    return out


def make_img_dbs(out):
    rng = np.random.default_rng(7)
    th, mx, mn = 0.2, 100, 10
    raws = {
        'img_a.npz': make_raw(rng, 14, 32, 7, 12),           # nbb 12
        'img_b.npz': make_raw(rng, 16, 32, 7, 3, True),      # nbb 10 (min)
        'img_c.npz': make_raw(rng, 120, 32, 0, 110),         # nbb 100 (max)
    }
    expect = {}

    # feat_th layout, uncompressed and compressed, with the nbb json.
    root = os.path.join(out, 'img_db')
    os.makedirs(root)
    name2nbb, images = {}, {}
    for fname, dump in raws.items():
        nbb = compute_nbb(dump['conf'], th, mx, mn)
        name2nbb[fname] = nbb
        images[fname] = to_db_arrays(dump, nbb)
    for compress in (False, True):
        sub = f'feat_th{th}_max{mx}_min{mn}' + ('_compressed' if compress
                                                else '')
        write_img_db(os.path.join(root, sub), images, compress)
    with open(os.path.join(root, f'nbb_th{th}_max{mx}_min{mn}.json'),
              'w') as f:
        json.dump(name2nbb, f)
    expect['img_db'] = {n: expect_image(a, name2nbb[n])
                        for n, a in images.items()}

    # "all" layout (keep_all): every row stored, nbb computed from conf at
    # read time; no nbb json.
    root = os.path.join(out, 'img_db_all')
    os.makedirs(root)
    images = {n: to_db_arrays(d, None) for n, d in list(raws.items())[:2]}
    write_img_db(os.path.join(root, 'all'), images, False)
    expect['img_db_all'] = {
        n: expect_image(a, compute_nbb(a['conf'], th, mx, mn))
        for n, a in images.items()}

    # feat_numbb4 layout (conf_th -1): a fixed 4 regions.
    root = os.path.join(out, 'img_db_numbb')
    os.makedirs(root)
    images = {n: to_db_arrays(d, 4) for n, d in list(raws.items())[:2]}
    write_img_db(os.path.join(root, 'feat_numbb4_compressed'), images, True)
    expect['img_db_numbb'] = {n: expect_image(a, 4)
                              for n, a in images.items()}

    # Full-size features: one image, 10 regions x 2048 fp16, 1601 labels.
    root = os.path.join(out, 'img_db_2048')
    os.makedirs(root)
    dump = make_raw(rng, 10, 2048, 1601, 6)
    nbb = compute_nbb(dump['conf'], th, mx, mn)
    images = {'coco_val2014_000000000042.npz': to_db_arrays(dump, nbb)}
    write_img_db(os.path.join(root, f'feat_th{th}_max{mx}_min{mn}'),
                 images, False)
    with open(os.path.join(root, f'nbb_th{th}_max{mx}_min{mn}.json'),
              'w') as f:
        json.dump({n: nbb for n in images}, f)
    expect['img_db_2048'] = {n: expect_image(a, nbb)
                             for n, a in images.items()}

    # A raw extractor .npz (float32, 1-d conf) for the imgdb command.
    npz_dir = os.path.join(out, 'npz')
    os.makedirs(npz_dir)
    for fname, dump in list(raws.items())[:2]:
        with open(os.path.join(npz_dir, fname), 'wb') as f:
            f.write(dumps_npz(dump, compress=fname == 'img_a.npz'))
    return expect


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), '..', 'internal', 'db',
        'testdata')
    for name in ['txt_db', 'img_db', 'img_db_all', 'img_db_numbb',
                 'img_db_2048', 'npz', 'expected.json']:
        p = os.path.join(out, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    os.makedirs(out, exist_ok=True)
    expect = {'txt_db': make_txt_db(out)}
    expect.update(make_img_dbs(out))
    # Readers open these read-only without a lock file; keep the tree small.
    for dirpath, _, files in os.walk(out):
        if 'lock.mdb' in files:
            os.remove(os.path.join(dirpath, 'lock.mdb'))
    with open(os.path.join(out, 'expected.json'), 'w') as f:
        json.dump(expect, f, indent=1, sort_keys=True)


if __name__ == '__main__':
    main()
