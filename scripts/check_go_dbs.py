#!/usr/bin/python3
"""Check dbs written by the Go writer with the official Python read paths.

Usage: scripts/check_go_dbs.py SPEC.json

SPEC.json (written by the Go test TestPythonReadsGoDBs) names a txt_db with
the examples it must hold and img_dbs with what each image must decode to.
The txt_db is read as data/data.py TxtLmdb/TxtTokLmdb do; each img_db as
DetectFeatLmdb does: the sub-directory chosen from conf_th/max_bb/min_bb/
num_bb/compress and the presence of the nbb json, nbb from that json or
computed from conf, values through msgpack_numpy or np.load. Float arrays are
compared through the sha256 of their float32 bytes. Prints one line per
failure and a closing 'N passed, N failed' line; exits non-zero on failure.
"""
import hashlib
import io
import json
import os
import sys

import lmdb
import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np

msgpack_numpy.patch()

failures = []
passed = [0]


def check(cond, what):
    if cond:
        passed[0] += 1
    else:
        if len(what) > 300:
            what = what[:300] + '...'
        failures.append(what)
        print('FAIL:', what)


def jsonable(v):
    if isinstance(v, bytes):
        return {'__bytes__': v.hex()}
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def check_txt_db(spec):
    db_dir = spec['dir']
    env = lmdb.open(db_dir, readonly=True, create=False, readahead=False)
    txn = env.begin(buffers=True)
    examples = spec['examples']
    id2len = json.load(open(f'{db_dir}/id2len.json'))
    txt2img = json.load(open(f'{db_dir}/txt2img.json'))
    img2txts = json.load(open(f'{db_dir}/img2txts.json'))
    meta = json.load(open(f'{db_dir}/meta.json'))
    for k, v in spec['meta'].items():
        check(meta.get(k) == v, f'meta.json {k} = {meta.get(k)!r}, want {v!r}')
    check(sorted(id2len) == sorted(examples),
          f'id2len ids {sorted(id2len)} != {sorted(examples)}')
    with txn.cursor() as cur:
        keys = sorted(bytes(k).decode() for k, _ in cur)
    check(keys == sorted(examples), f'lmdb keys {keys}')
    for id_, want in examples.items():
        got = msgpack.loads(lz4.frame.decompress(txn.get(id_.encode('utf-8'))),
                            raw=False)
        check(jsonable(got) == want, f'txt_db {id_}: {got!r} != {want!r}')
        check(id2len.get(id_) == len(got['input_ids']),
              f'id2len[{id_}] = {id2len.get(id_)}')
        names = got['img_fname']
        check(txt2img.get(id_) == names, f'txt2img[{id_}] = {txt2img.get(id_)}')
        for n in [names] if isinstance(names, str) else names:
            check(id_ in img2txts.get(n, []), f'img2txts[{n}] lacks {id_}')
    env.close()


def digest(arr):
    a = np.ascontiguousarray(arr, dtype='<f4')
    return hashlib.sha256(a.tobytes()).hexdigest()


def check_img_db(spec):
    img_dir, conf_th = spec['dir'], spec['conf_th']
    max_bb, min_bb, num_bb = spec['max_bb'], spec['min_bb'], spec['num_bb']
    compress = spec['compressed']
    # DetectFeatLmdb.__init__
    if conf_th == -1:
        db_name = f'feat_numbb{num_bb}'
        name2nbb = None
    else:
        db_name = f'feat_th{conf_th}_max{max_bb}_min{min_bb}'
        nbb = f'nbb_th{conf_th}_max{max_bb}_min{min_bb}.json'
        if not os.path.exists(f'{img_dir}/{nbb}'):
            name2nbb = None
        else:
            name2nbb = json.load(open(f'{img_dir}/{nbb}'))
    if compress:
        db_name += '_compressed'
    if name2nbb is None and conf_th != -1:
        db_name = 'all_compressed' if compress else 'all'
    check(db_name == spec['sub'], f'{img_dir}: official reader picks {db_name}, '
          f'Go wrote {spec["sub"]}')
    env = lmdb.open(f'{img_dir}/{db_name}', readonly=True, create=False,
                    readahead=False)
    txn = env.begin(buffers=True)
    fnames = json.loads(bytes(txn.get(b'__keys__')).decode('utf-8'))
    check(fnames == list(spec['images']), f'{img_dir}: __keys__ {fnames}')
    for fname, want in spec['images'].items():
        dump = txn.get(fname.encode('utf-8'))
        if compress:
            with io.BytesIO(dump) as reader:
                img_dump = dict(np.load(reader, allow_pickle=True))
        else:
            img_dump = msgpack.loads(dump, raw=False)
        for k, arr in img_dump.items():
            check(arr.dtype == np.float16, f'{fname} {k} dtype {arr.dtype}')
        if conf_th == -1:
            nbb = num_bb
        elif name2nbb is not None:
            nbb = name2nbb[fname]
        else:
            nbb = int(min(max_bb, max(min_bb, (img_dump['conf'] > conf_th).sum())))
        check(nbb == want['nbb'], f'{fname}: nbb {nbb}, want {want["nbb"]}')
        check(img_dump['features'].shape[0] == want['rows'],
              f'{fname}: {img_dump["features"].shape[0]} rows stored, '
              f'want {want["rows"]}')
        f = {k: a[:nbb, ...].astype(np.float32) for k, a in img_dump.items()}
        for k in ('features', 'norm_bb', 'soft_labels'):
            if k not in want:
                check(k not in f, f'{fname}: unexpected {k}')
                continue
            check(k in f and digest(f[k]) == want[k],
                  f'{fname}: {k} differs')
        check(digest(f['conf'].reshape(-1)) == want['conf'], f'{fname}: conf differs')
    env.close()


def main():
    spec = json.load(open(sys.argv[1]))
    check_txt_db(spec['txt_db'])
    for s in spec['img_dbs']:
        check_img_db(s)
    print(f'{passed[0]} passed, {len(failures)} failed')
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
