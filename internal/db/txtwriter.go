package db

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/pierrec/lz4/v4"
	"github.com/vmihailenco/msgpack/v5"

	"uniter/internal/atomicfile"
	"uniter/internal/lmdb"
)

// TxtWriter builds a txt_db directory. It is not safe for concurrent use.
type TxtWriter struct {
	dir      string
	env      *lmdb.Env
	meta     Meta
	id2len   map[string]int
	order    []string       // ids in Put order, id2len.json's order
	txt2img  map[string]any // a name, or a list of names
	img2txts map[string][]string
	// lensFiles are further {id: len} side files (VCR's id2len_qa.json
	// and id2len_qar.json), by name, in the order PutLen first named them.
	lensFiles map[string]*orderedLensJSON
	lensNames []string
	closed    bool
}

// CreateTxtDB creates a txt_db in dir, which must not hold one already (the
// side files describe exactly the examples put through this writer).
// meta.json and the other side files are written by Close.
func CreateTxtDB(dir string, meta Meta) (*TxtWriter, error) {
	if _, err := os.Stat(filepath.Join(dir, "data.mdb")); err == nil {
		return nil, fmt.Errorf("txt_db %s: already holds a db (data.mdb)", dir)
	}
	env, err := lmdb.Create(dir, lmdb.Options{})
	if err != nil {
		return nil, fmt.Errorf("txt_db %s: %w", dir, err)
	}
	return &TxtWriter{
		dir:      dir,
		env:      env,
		meta:     meta,
		id2len:   map[string]int{},
		txt2img:  map[string]any{},
		img2txts: map[string][]string{},
	}, nil
}

// Put stores example id. The example must carry input_ids (a list of
// integers, without special tokens) and img_fname (a name or a list of
// names); other fields are stored as given. Go strings become msgpack str
// and []byte becomes bin, as Python's msgpack with use_bin_type=True does.
func (w *TxtWriter) Put(id string, example map[string]any) error {
	where := fmt.Sprintf("txt_db %s: key %q", w.dir, id)
	if w.closed {
		return fmt.Errorf("%s: writer closed", where)
	}
	if _, dup := w.id2len[id]; dup {
		return fmt.Errorf("%s: duplicate example id", where)
	}
	val, err := EncodeTxtValue(example)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	// Check the fields on the encoded form so that what the side files say is
	// exactly what a reader decodes.
	fields, err := DecodeTxtValue(val)
	if err != nil {
		return fmt.Errorf("%s: re-decoding the encoded value: %w", where, err)
	}
	ex := NewExample(fields, where)
	ids, err := ex.InputIDs()
	if err != nil {
		return err
	}
	fnames, err := ex.ImgFnames()
	if err != nil {
		return err
	}
	if err := w.env.Put([]byte(id), val); err != nil {
		return fmt.Errorf("txt_db %s: %w", w.dir, err)
	}
	w.id2len[id] = len(ids)
	w.order = append(w.order, id)
	if _, single := fields["img_fname"].(string); single {
		w.txt2img[id] = fnames[0]
	} else {
		w.txt2img[id] = fnames
	}
	for _, f := range fnames {
		w.img2txts[f] = append(w.img2txts[f], id)
	}
	return nil
}

// EncodeTxtValue encodes example as a txt_db value: lz4.frame(msgpack(dict))
// with Python's msgpack conventions (compact integers, str for strings, bin
// for bytes) and Python lz4.frame's defaults (64 KB blocks, content size
// stored, no checksums). Map keys are sorted so that the bytes are
// deterministic.
func EncodeTxtValue(example map[string]any) ([]byte, error) {
	var mp bytes.Buffer
	enc := msgpack.NewEncoder(&mp)
	enc.UseCompactInts(true)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(example); err != nil {
		return nil, fmt.Errorf("msgpack encode: %w", err)
	}
	var out bytes.Buffer
	zw := lz4.NewWriter(&out)
	if err := zw.Apply(
		lz4.BlockSizeOption(lz4.Block64Kb),
		lz4.ChecksumOption(false),
		lz4.SizeOption(uint64(mp.Len())),
	); err != nil {
		return nil, fmt.Errorf("lz4 options: %w", err)
	}
	if _, err := zw.Write(mp.Bytes()); err != nil {
		return nil, fmt.Errorf("lz4 compress: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("lz4 compress: %w", err)
	}
	return out.Bytes(), nil
}

// Close commits the LMDB environment and writes meta.json, id2len.json,
// txt2img.json and img2txts.json, each atomically.
func (w *TxtWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.env.Close(); err != nil {
		return fmt.Errorf("txt_db %s: %w", w.dir, err)
	}
	for f := range w.img2txts {
		sort.Strings(w.img2txts[f])
	}
	for _, side := range []struct {
		name string
		v    any
	}{{"meta.json", w.meta}, {"id2len.json", orderedLensJSON{w.order, w.id2len}}, {"txt2img.json", w.txt2img}, {"img2txts.json", w.img2txts}} {
		if err := writeJSONAtomic(filepath.Join(w.dir, side.name), side.v); err != nil {
			return fmt.Errorf("txt_db %s: %w", w.dir, err)
		}
	}
	for _, name := range w.lensNames {
		if err := writeJSONAtomic(filepath.Join(w.dir, name), *w.lensFiles[name]); err != nil {
			return fmt.Errorf("txt_db %s: %w", w.dir, err)
		}
	}
	return nil
}

// writeJSONAtomic writes v as JSON to path through a temporary file and a
// rename, so that readers never see a half-written side file.
func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.WriteFile(path, b)
}

// orderedLensJSON writes id2len.json in the order the examples were put:
// the order readers (ours and the original's) index the examples by.
type orderedLensJSON struct {
	ids  []string
	lens map[string]int
}

func (o orderedLensJSON) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, id := range o.ids {
		if i > 0 {
			b = append(b, ',')
		}
		k, err := json.Marshal(id)
		if err != nil {
			return nil, err
		}
		b = append(append(b, k...), ':')
		b = strconv.AppendInt(b, int64(o.lens[id]), 10)
	}
	return append(b, '}'), nil
}
