// Package db reads and writes the official UNITER data dbs: txt_db (tokenised
// text examples) and img_db (detected-region features), both LMDB
// environments with JSON side files, byte-compatible with the dbs the
// original Python code writes and reads.
package db

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/pierrec/lz4/v4"

	"uniter/internal/lmdb"
)

// maxTxtValue bounds a decompressed txt_db value; real examples are a few
// KB, so anything near this is corrupt and must not exhaust memory.
const maxTxtValue = 64 << 20

// Meta is a txt_db's meta.json: the special token ids and vocabulary range
// of the tokenizer that produced input_ids.
type Meta struct {
	CLS, SEP, MASK, UNK int
	// VRange is [first id of '!', vocabulary size], the ids random-token
	// masking draws from.
	VRange [2]int
	// Tokenizer names the BERT tokenizer ("bert-base-cased"), from the
	// "bert" key, or "toker" in dbs written by later official scripts.
	Tokenizer string
	// Extra holds every other key of meta.json, kept so that a rewrite
	// loses nothing.
	Extra map[string]any
}

// TxtDB is an open txt_db directory. It is safe for concurrent use.
type TxtDB struct {
	dir      string
	env      *lmdb.Env
	meta     Meta
	id2len   map[string]int
	ids      []string // in id2len.json's order
	txt2img  map[string][]string
	img2txts map[string][]string
}

// OpenTxtDB opens the txt_db in dir: the LMDB environment (data.mdb) and the
// side files id2len.json and meta.json (required), txt2img.json and
// img2txts.json (optional; img2txts is derived from txt2img when absent).
func OpenTxtDB(dir string) (*TxtDB, error) {
	t := &TxtDB{dir: dir}
	if err := readJSON(dir, "meta.json", func(b []byte) error { return t.meta.parse(b) }); err != nil {
		return nil, err
	}
	var err error
	if t.ids, t.id2len, err = readLens(dir, "id2len.json"); err != nil {
		return nil, err
	}
	err = readJSON(dir, "txt2img.json", func(b []byte) error {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		t.txt2img = make(map[string][]string, len(raw))
		for id, v := range raw {
			names, err := stringOrList(v)
			if err != nil {
				return fmt.Errorf("id %q: %w", id, err)
			}
			t.txt2img[id] = names
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	err = readJSON(dir, "img2txts.json", func(b []byte) error { return json.Unmarshal(b, &t.img2txts) })
	switch {
	case errors.Is(err, os.ErrNotExist):
		t.img2txts = invert(t.txt2img)
	case err != nil:
		return nil, err
	}
	env, err := lmdb.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("txt_db %s: %w", dir, err)
	}
	t.env = env
	return t, nil
}

// readJSON reads dir/name and hands it to parse, naming the file in errors.
// A missing file gives an error wrapping os.ErrNotExist.
func readJSON(dir, name string, parse func([]byte) error) error {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("txt_db %s: %w", dir, err)
	}
	if err := parse(b); err != nil {
		return fmt.Errorf("txt_db %s: %s: %w", dir, path, err)
	}
	return nil
}

// stringOrList decodes a txt2img value: one image name, or a list of names
// for examples with several images (NLVR2 pairs, VCR [gt, det]).
func stringOrList(v json.RawMessage) ([]string, error) {
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		return []string{s}, nil
	}
	var l []string
	if err := json.Unmarshal(v, &l); err != nil {
		return nil, fmt.Errorf("want an image name or a list of names, got %s", v)
	}
	return l, nil
}

func invert(txt2img map[string][]string) map[string][]string {
	m := make(map[string][]string)
	ids := make([]string, 0, len(txt2img))
	for id := range txt2img {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		for _, f := range txt2img[id] {
			m[f] = append(m[f], id)
		}
	}
	return m
}

func (m *Meta) parse(b []byte) error {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	intKey := func(k string, dst *int, required bool) error {
		v, ok := raw[k]
		if !ok {
			if required {
				return fmt.Errorf("missing key %q", k)
			}
			return nil
		}
		f, ok := v.(float64)
		if !ok || f != float64(int(f)) {
			return fmt.Errorf("key %q: want an integer, got %v", k, v)
		}
		*dst = int(f)
		delete(raw, k)
		return nil
	}
	for _, k := range []struct {
		name string
		dst  *int
		req  bool
	}{{"CLS", &m.CLS, true}, {"SEP", &m.SEP, true}, {"MASK", &m.MASK, true}, {"UNK", &m.UNK, false}} {
		if err := intKey(k.name, k.dst, k.req); err != nil {
			return err
		}
	}
	vr, ok := raw["v_range"].([]any)
	if !ok || len(vr) != 2 {
		return fmt.Errorf("key \"v_range\": want [first, vocab_size], got %v", raw["v_range"])
	}
	for i, v := range vr {
		f, ok := v.(float64)
		if !ok || f != float64(int(f)) {
			return fmt.Errorf("key \"v_range\": want integers, got %v", raw["v_range"])
		}
		m.VRange[i] = int(f)
	}
	delete(raw, "v_range")
	for _, k := range []string{"bert", "toker"} {
		if s, ok := raw[k].(string); ok && m.Tokenizer == "" {
			m.Tokenizer = s
		}
	}
	delete(raw, "bert")
	delete(raw, "toker")
	if len(raw) > 0 {
		m.Extra = raw
	}
	return nil
}

// MarshalJSON writes meta.json the way the official preprocessing does: the
// special ids, v_range, "bert" (the tokenizer name) and any extra keys.
func (m Meta) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(m.Extra)+6)
	for k, v := range m.Extra {
		out[k] = v
	}
	out["CLS"], out["SEP"], out["MASK"], out["UNK"] = m.CLS, m.SEP, m.MASK, m.UNK
	out["v_range"] = m.VRange
	if m.Tokenizer != "" {
		// Both spellings: most official readers take "bert", train_re.py
		// and later prepro.py dbs "toker".
		out["bert"], out["toker"] = m.Tokenizer, m.Tokenizer
	}
	return json.Marshal(out)
}

// Dir returns the txt_db directory.
func (t *TxtDB) Dir() string { return t.dir }

// Meta returns the parsed meta.json.
func (t *TxtDB) Meta() Meta { return t.meta }

// IDs returns, in id2len.json's order, the ids whose length there is at
// most maxTxtLen; maxTxtLen <= 0 keeps every id (the official -1). The
// original indexes its datasets by that order (Python keeps a JSON
// object's key order), so example i is the same example on both sides.
func (t *TxtDB) IDs(maxTxtLen int) []string {
	if maxTxtLen <= 0 {
		return append([]string(nil), t.ids...)
	}
	var out []string
	for _, id := range t.ids {
		if t.id2len[id] <= maxTxtLen {
			out = append(out, id)
		}
	}
	return out
}

// Len returns id's text length (input_ids without specials) from
// id2len.json.
func (t *TxtDB) Len(id string) (int, bool) {
	n, ok := t.id2len[id]
	return n, ok
}

// Images returns the image names of example id from txt2img.json: one name,
// or several for NLVR2 pairs and VCR [gt, det].
func (t *TxtDB) Images(id string) ([]string, bool) {
	f, ok := t.txt2img[id]
	return f, ok
}

// Texts returns the ids of the examples on image fname (img2txts.json).
func (t *TxtDB) Texts(fname string) []string { return t.img2txts[fname] }

// ImageNames returns, sorted, every image name in img2txts.json.
func (t *TxtDB) ImageNames() []string {
	out := make([]string, 0, len(t.img2txts))
	for f := range t.img2txts {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// Get reads and decodes example id.
func (t *TxtDB) Get(id string) (Example, error) {
	where := fmt.Sprintf("txt_db %s: key %q", t.dir, id)
	if id == "" {
		return Example{}, fmt.Errorf("%s: empty id", where)
	}
	b, err := t.env.Get([]byte(id))
	if err != nil {
		return Example{}, fmt.Errorf("txt_db %s: %w", t.dir, err)
	}
	fields, err := DecodeTxtValue(b)
	if err != nil {
		return Example{}, fmt.Errorf("%s: %w", where, err)
	}
	return Example{Fields: fields, where: where}, nil
}

// Close closes the LMDB environment; no Get may be in flight.
func (t *TxtDB) Close() error { return t.env.Close() }

// DecodeTxtValue decodes a raw txt_db value, lz4.frame(msgpack(dict)), into
// the example's fields.
func DecodeTxtValue(b []byte) (map[string]any, error) {
	raw, err := io.ReadAll(io.LimitReader(lz4.NewReader(bytes.NewReader(b)), maxTxtValue+1))
	if err != nil {
		return nil, fmt.Errorf("corrupt value: lz4 frame: %w", err)
	}
	if len(raw) > maxTxtValue {
		return nil, fmt.Errorf("corrupt value: decompresses to more than %d bytes", maxTxtValue)
	}
	v, err := decodeMsgpack(raw)
	if err != nil {
		return nil, fmt.Errorf("corrupt value: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("corrupt value: msgpack holds %T, want a map", v)
	}
	return m, nil
}

// ReadLens reads one of the txt_db's {id: length} side files (VCR's
// id2len_qa.json, id2len_qar.json) keeping its key order, the order the
// original indexes the examples by.
func (t *TxtDB) ReadLens(name string) ([]string, map[string]int, error) {
	return readLens(t.dir, name)
}

// readLens reads dir/name as an {id: length} object in key order; a
// negative length is an error naming the id.
func readLens(dir, name string) (ids []string, lens map[string]int, err error) {
	err = readJSON(dir, name, func(b []byte) error {
		if ids, lens, err = orderedLens(b); err != nil {
			return err
		}
		for _, id := range ids {
			if n := lens[id]; n < 0 {
				return fmt.Errorf("id %q has negative length %d", id, n)
			}
		}
		return nil
	})
	return ids, lens, err
}

// orderedLens decodes an {id: length} object keeping its key order.
func orderedLens(b []byte) ([]string, map[string]int, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("not a JSON object of id: length")
	}
	var ids []string
	lens := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		id, _ := tok.(string)
		var n int
		if err := dec.Decode(&n); err != nil {
			return nil, nil, fmt.Errorf("id %q: %w", id, err)
		}
		if _, dup := lens[id]; dup {
			return nil, nil, fmt.Errorf("id %q appears twice", id)
		}
		ids = append(ids, id)
		lens[id] = n
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, err
	}
	return ids, lens, nil
}
