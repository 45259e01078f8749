package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"

	"uniter/internal/data"
	"uniter/internal/train"
)

// jsonObject is a JSON object that keeps its keys' order, as Python's
// json.dump writes a dict (a pickled ref's keys, the fields of
// images.json): the ordered row the metrics log writes.
type jsonObject = train.Row

// fromPickle turns an unpickled value into plain JSON-able Go values:
// dicts become jsonObjects (string keys, pickled order), lists and tuples
// []any, integers int64 (json.Number past int64).
func fromPickle(v any, where string) (any, error) {
	switch x := v.(type) {
	case nil, bool, string, float64, int64:
		return x, nil
	case int:
		return int64(x), nil
	case *big.Int:
		return json.Number(x.String()), nil
	case []byte:
		return string(x), nil
	case *types.Dict:
		out := make(jsonObject, 0, x.Len())
		for _, e := range *x {
			k, ok := e.Key.(string)
			if !ok {
				return nil, fmt.Errorf("%s: dict key %v (%T), want a string", where, e.Key, e.Key)
			}
			val, err := fromPickle(e.Value, where+"."+k)
			if err != nil {
				return nil, err
			}
			out = append(out, train.Field{Key: k, Value: val})
		}
		return out, nil
	case *types.List:
		return fromPickleList([]any(*x), where)
	case *types.Tuple:
		return fromPickleList([]any(*x), where)
	}
	return nil, fmt.Errorf("%s: a %T, which a refer toolkit refs pickle does not hold", where, v)
}

func fromPickleList(items []any, where string) ([]any, error) {
	out := make([]any, len(items))
	for i, it := range items {
		v, err := fromPickle(it, fmt.Sprintf("%s[%d]", where, i))
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// pyNumber is a JSON number as Python's json.load gives it: an int
// without a fraction or exponent, else a float.
func pyNumber(n json.Number) any {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return i
	}
	if f, err := n.Float64(); err == nil {
		return f
	}
	return n
}

// pyValue converts json.Numbers (a UseNumber decode) the way pyNumber does.
func pyValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		return pyNumber(x)
	case []any:
		out := make([]any, len(x))
		for i, it := range x {
			out[i] = pyValue(it)
		}
		return out
	case map[string]any:
		for k, it := range x {
			x[k] = pyValue(it)
		}
		return x
	}
	return v
}

// intOf is an integer field of a pickled ref or sentence.
func intOf(o jsonObject, key, where string) (int64, error) {
	v, ok := o.Get(key)
	if !ok {
		return 0, fmt.Errorf("%s: no %q", where, key)
	}
	i, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("%s: %q is %v, want an integer", where, key, v)
	}
	return i, nil
}

// reSplitOf is the split prepro.py takes from the output name:
// txt_db/refcoco_testA_bert-base-cased.db -> testA.
func reSplitOf(out string) (string, error) {
	name := strings.SplitN(filepath.Base(filepath.Clean(out)), ".", 2)[0]
	parts := strings.Split(name, "_")
	if len(parts) < 2 || parts[1] == "" {
		return "", fmt.Errorf("data txtdb: --out %s: cannot tell the split from the name (prepro.py reads it after the first underscore: refcoco_testA.db is testA); give --split", out)
	}
	return parts[1], nil
}

// rawObject is a JSON object of instances.json, values kept as written.
type rawObject map[string]json.RawMessage

func (o rawObject) int(key, where string) (int64, error) {
	raw, ok := o[key]
	if !ok {
		return 0, fmt.Errorf("%s: no %q", where, key)
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("%s: %q is %s, want an integer", where, key, raw)
	}
	return n, nil
}

// pick is the fields keys of o, in that order (absent ones as null, as
// prepro.py would fail on them: checked by the caller where it matters).
func (o rawObject) pick(keys ...string) jsonObject {
	out := make(jsonObject, 0, len(keys))
	for _, k := range keys {
		v, ok := o[k]
		if !ok {
			v = json.RawMessage("null")
		}
		out = append(out, train.Field{Key: k, Value: v})
	}
	return out
}

// reExamples builds an RE txt_db the way prepro.py --task re does from the
// refer toolkit's refs(*).p, COCO's instances.json and, optionally, the
// image_id -> ann_ids order of the ground-truth img_db's boxes: the
// sentences of the refs of one split, each example {sent_id, sent, ref_id,
// ann_id, image_id, bbox, input_ids, img_fname}, and the side files
// refs.json, images.json, annotations.json and categories.json.
func reExamples(o txtdbOpts, tok *data.Tokenizer, sideFiles map[string]any) ([]txtExample, string, error) {
	split := o.split
	if split == "" {
		var err error
		if split, err = reSplitOf(o.out); err != nil {
			return nil, "", err
		}
	}
	raw, err := os.ReadFile(o.refs)
	if err != nil {
		return nil, "", fmt.Errorf("data txtdb: %w", err)
	}
	loaded, err := pickle.Loads(string(raw))
	if err != nil {
		return nil, "", fmt.Errorf("data txtdb: --refs %s: %w", o.refs, err)
	}
	if len(raw) > 0 && raw[0] != 0x80 {
		// Protocol 0 (the refer toolkit's Python 2 default): gopickle
		// leaves STRING and UNICODE arguments as written.
		loaded = mapStrings(loaded, protocol0String)
	}
	all, err := fromPickle(loaded, filepath.Base(o.refs))
	if err != nil {
		return nil, "", fmt.Errorf("data txtdb: %w", err)
	}
	list, ok := all.([]any)
	if !ok {
		return nil, "", fmt.Errorf("data txtdb: --refs %s holds a %T, want the refer toolkit's list of refs", o.refs, all)
	}
	var refs []jsonObject
	imageSet := map[int64]bool{}
	splits := map[string]int{}
	for i, r := range list {
		ref, ok := r.(jsonObject)
		where := fmt.Sprintf("%s: refs[%d]", o.refs, i)
		if !ok {
			return nil, "", fmt.Errorf("data txtdb: %s is a %T, want a dict", where, r)
		}
		s, _ := ref.Get("split")
		sp, _ := s.(string)
		splits[sp]++
		if sp != split {
			continue
		}
		img, err := intOf(ref, "image_id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		imageSet[img] = true
		refs = append(refs, ref)
	}
	if len(refs) == 0 {
		return nil, "", fmt.Errorf("data txtdb: --refs %s has no ref of split %q (it has %v)", o.refs, split, splits)
	}

	f, err := os.Open(o.instances)
	if err != nil {
		return nil, "", fmt.Errorf("data txtdb: %w", err)
	}
	var inst struct {
		Images      []rawObject     `json:"images"`
		Annotations []rawObject     `json:"annotations"`
		Categories  json.RawMessage `json:"categories"`
	}
	err = json.NewDecoder(f).Decode(&inst)
	f.Close()
	if err != nil {
		return nil, "", fmt.Errorf("data txtdb: --instances %s: %w", o.instances, err)
	}
	if len(inst.Categories) == 0 {
		return nil, "", fmt.Errorf("data txtdb: --instances %s has no \"categories\"", o.instances)
	}
	var order map[string][]int64
	if o.iidToAnnIDs != "" {
		var v struct {
			IIDToAnnIDs map[string][]int64 `json:"iid_to_ann_ids"`
		}
		if err := readJSONFile(o.iidToAnnIDs, &v); err != nil {
			return nil, "", err
		}
		if v.IIDToAnnIDs == nil {
			return nil, "", fmt.Errorf("data txtdb: --iid-to-ann-ids %s has no \"iid_to_ann_ids\" object", o.iidToAnnIDs)
		}
		order = v.IIDToAnnIDs
	}

	// Annotations of the split's images, in instances.json's order.
	var anns []jsonObject
	annBBox := map[int64]any{}
	imgAnns := map[int64][]int64{}
	for i, a := range inst.Annotations {
		where := fmt.Sprintf("%s: annotations[%d]", o.instances, i)
		img, err := a.int("image_id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		if !imageSet[img] {
			continue
		}
		id, err := a.int("id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(a["bbox"]))
		dec.UseNumber()
		var bbox []any
		if err := dec.Decode(&bbox); err != nil || len(bbox) != 4 {
			return nil, "", fmt.Errorf("data txtdb: %s (id %d): bbox %s, want [x, y, w, h]", where, id, a["bbox"])
		}
		annBBox[id] = pyValue(bbox)
		imgAnns[img] = append(imgAnns[img], id)
		anns = append(anns, a.pick("id", "area", "bbox", "image_id", "category_id", "iscrowd"))
	}
	var images []jsonObject
	for i, im := range inst.Images {
		where := fmt.Sprintf("%s: images[%d]", o.instances, i)
		id, err := im.int("id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		if !imageSet[id] {
			continue
		}
		annIDs, ok := imgAnns[id]
		if order != nil {
			if annIDs, ok = order[strconv.FormatInt(id, 10)]; !ok {
				return nil, "", fmt.Errorf("data txtdb: --iid-to-ann-ids %s: iid_to_ann_ids has no key %q, an image of split %s", o.iidToAnnIDs, strconv.FormatInt(id, 10), split)
			}
		}
		if annIDs == nil {
			annIDs = []int64{}
		}
		obj := im.pick("id", "file_name")
		obj = append(obj, train.Field{Key: "ann_ids", Value: annIDs})
		obj = append(obj, im.pick("height", "width")...)
		images = append(images, obj)
	}

	var out []txtExample
	for _, ref := range refs {
		rid, _ := ref.Get("ref_id")
		where := fmt.Sprintf("%s: ref_id %v", o.refs, rid)
		refID, err := intOf(ref, "ref_id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		annID, err := intOf(ref, "ann_id", where)
		if err != nil {
			return nil, "", fmt.Errorf("data txtdb: %w", err)
		}
		imageID, _ := intOf(ref, "image_id", where)
		bbox, ok := annBBox[annID]
		if !ok {
			return nil, "", fmt.Errorf("data txtdb: %s: ann_id %d is not an annotation of image %d in %s", where, annID, imageID, o.instances)
		}
		sv, _ := ref.Get("sentences")
		sents, ok := sv.([]any)
		if !ok {
			return nil, "", fmt.Errorf("data txtdb: %s: \"sentences\" is %v, want a list", where, sv)
		}
		for j, s := range sents {
			sw := fmt.Sprintf("%s sentences[%d]", where, j)
			sent, ok := s.(jsonObject)
			if !ok {
				return nil, "", fmt.Errorf("data txtdb: %s is a %T, want a dict", sw, s)
			}
			sentID, err := intOf(sent, "sent_id", sw)
			if err != nil {
				return nil, "", fmt.Errorf("data txtdb: %w", err)
			}
			tv, _ := sent.Get("sent")
			text, ok := tv.(string)
			if !ok {
				return nil, "", fmt.Errorf("data txtdb: %s: \"sent\" is %v, want a string", sw, tv)
			}
			id := strconv.FormatInt(sentID, 10)
			out = append(out, txtExample{id: id, where: sw, fields: map[string]any{
				"sent_id": sentID, "sent": text, "ref_id": refID, "ann_id": annID, "image_id": imageID,
				"bbox": bbox, "input_ids": tok.Encode(text), "img_fname": data.REImageName(imageID, true),
			}})
		}
	}
	sideFiles["refs.json"] = refs
	sideFiles["images.json"] = orEmpty(images)
	sideFiles["annotations.json"] = orEmpty(anns)
	sideFiles["categories.json"] = inst.Categories
	return out, split, nil
}

// mapStrings applies f to every string of an unpickled value.
func mapStrings(v any, f func(string) string) any {
	switch x := v.(type) {
	case string:
		return f(x)
	case *types.Dict:
		for i := range *x {
			e := &(*x)[i]
			e.Key, e.Value = mapStrings(e.Key, f), mapStrings(e.Value, f)
		}
	case *types.List:
		for i := range *x {
			(*x)[i] = mapStrings((*x)[i], f)
		}
	case *types.Tuple:
		for i := range *x {
			(*x)[i] = mapStrings((*x)[i], f)
		}
	}
	return v
}

// protocol0String decodes a protocol-0 STRING or UNICODE argument as
// Python does: the bytes are latin-1 (UNICODE's raw-unicode-escape writes
// characters below 256 as they are; STRING's repr is ASCII), then the
// escapes: \uXXXX and \UXXXXXXXX (UNICODE escapes every other character,
// backslashes included, so), and repr's \xNN, \\, \', \", \n, \r, \t.
func protocol0String(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteRune(rune(c))
			continue
		}
		n := 0
		switch s[i+1] {
		case 'u':
			n = 4
		case 'U':
			n = 8
		case 'x':
			n = 2
		}
		if n > 0 && i+2+n <= len(s) {
			if r, err := strconv.ParseUint(s[i+2:i+2+n], 16, 32); err == nil {
				b.WriteRune(rune(r))
				i += 1 + n
				continue
			}
		}
		if r, ok := map[byte]rune{'\\': '\\', '\'': '\'', '"': '"', 'n': '\n', 'r': '\r', 't': '\t'}[s[i+1]]; ok {
			b.WriteRune(r)
			i++
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func orEmpty(v []jsonObject) []jsonObject {
	if v == nil {
		return []jsonObject{}
	}
	return v
}
