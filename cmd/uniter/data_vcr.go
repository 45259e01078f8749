package main

import (
	"fmt"
	"path"
	"strings"

	"uniter/internal/data"
)

// vcrPersonTags is how many person tags the VCR txt_dbs add after the
// BERT vocabulary (train_vcr.py's NUM_SPECIAL_TOKENS): person_0 ..
// person_80, ids vocab_size + k.
const vcrPersonTags = 81

// vcrExamples reads VCR annotations (JSON lines: annot_id, objects,
// img_fn, question, answer_choices, rationale_choices, answer_label,
// rationale_label; the labels absent on the test split). The texts are
// lists of words and object references (lists of indices into objects);
// a reference to a person k becomes the tag person_k (id vocab + k), one
// to another object its class name, several references joined by "and",
// and the words around them are tokenised as a sentence. Each line becomes
// example annot_id holding the annotation plus input_ids (the question),
// input_ids_as and input_ids_rs (four lists each), qa_target and qar_target
// (-1 without labels) and img_fname [vcr_gt_NAME.npz, vcr_NAME.npz] where
// NAME is img_fn without its extension, "/" turned into "_"; the db gets
// id2len_qa.json and id2len_qar.json (data.VCRTextLens).
func vcrExamples(file string, tok *data.Tokenizer) ([]txtExample, error) {
	vocab := tok.Vocab().Len()
	var out []txtExample
	err := readJSONLines(file, func(where string, obj map[string]any) error {
		id, ok := obj["annot_id"].(string)
		if !ok || id == "" {
			return fmt.Errorf("data txtdb: %s: key %q: %s: want the example id (e.g. val-0)", where, "annot_id", describeJSON(obj["annot_id"]))
		}
		objects, err := vcrObjects(where, obj)
		if err != nil {
			return err
		}
		enc := func(key string, v any) ([]int32, error) {
			return vcrEncode(where, key, v, objects, tok, vocab)
		}
		q, err := enc("question", obj["question"])
		if err != nil {
			return err
		}
		lists := map[string][][]int32{}
		for _, key := range []string{"answer_choices", "rationale_choices"} {
			l, ok := obj[key].([]any)
			if !ok || len(l) != 4 {
				return fmt.Errorf("data txtdb: %s: annot_id %q: key %q: %s: want a list of 4 choices", where, id, key, describeJSON(obj[key]))
			}
			for k, c := range l {
				ids, err := enc(fmt.Sprintf("%s[%d]", key, k), c)
				if err != nil {
					return err
				}
				lists[key] = append(lists[key], ids)
			}
		}
		qa, err := vcrLabel(where, obj, "answer_label")
		if err != nil {
			return err
		}
		qar, err := vcrLabel(where, obj, "rationale_label")
		if err != nil {
			return err
		}
		imgFn, ok := obj["img_fn"].(string)
		if !ok || imgFn == "" {
			return fmt.Errorf("data txtdb: %s: key %q: %s: want the image file name", where, "img_fn", describeJSON(obj["img_fn"]))
		}
		name := strings.ReplaceAll(strings.TrimSuffix(imgFn, path.Ext(imgFn)), "/", "_")
		fields := obj
		fields["input_ids"] = q
		fields["input_ids_as"] = lists["answer_choices"]
		fields["input_ids_rs"] = lists["rationale_choices"]
		fields["qa_target"], fields["qar_target"] = qa, qar
		fields["img_fname"] = []string{"vcr_gt_" + name + ".npz", "vcr_" + name + ".npz"}
		lqa, lqar := data.VCRTextLens(q, lists["answer_choices"], lists["rationale_choices"], qa)
		out = append(out, txtExample{id: id, where: where, fields: fields,
			lens: map[string]int{data.VCRLensQA: lqa, data.VCRLensQAR: lqar}})
		return nil
	})
	return out, err
}

// describeJSON names a JSON value for an error: its length for a list.
func describeJSON(v any) string {
	switch x := v.(type) {
	case nil:
		return "absent"
	case []any:
		return fmt.Sprintf("a list of %d", len(x))
	}
	return fmt.Sprintf("%T %v", v, v)
}

// vcrObjects reads the annotation's object class names.
func vcrObjects(where string, obj map[string]any) ([]string, error) {
	l, ok := obj["objects"].([]any)
	if !ok {
		return nil, fmt.Errorf("data txtdb: %s: key %q: %s: want the list of object class names", where, "objects", describeJSON(obj["objects"]))
	}
	out := make([]string, len(l))
	for i, o := range l {
		if out[i], ok = o.(string); !ok {
			return nil, fmt.Errorf("data txtdb: %s: key %q: element %d is %s, want a class name", where, "objects", i, describeJSON(o))
		}
	}
	return out, nil
}

// vcrLabel reads answer_label or rationale_label: 0..3, or -1 when absent
// (the test split).
func vcrLabel(where string, obj map[string]any, key string) (int, error) {
	v, ok := obj[key]
	if !ok || v == nil {
		return -1, nil
	}
	n, ok := v.(int64)
	if !ok || n < 0 || n > 3 {
		return 0, fmt.Errorf("data txtdb: %s: key %q: %s: want 0 to 3", where, key, describeJSON(v))
	}
	return int(n), nil
}

// vcrEncode tokenises one VCR text: a list of words (strings) and object
// references (lists of indices). Runs of words are tokenised as text;
// each reference contributes its objects' tokens (vcrExamples).
func vcrEncode(where, key string, v any, objects []string, tok *data.Tokenizer, vocab int) ([]int32, error) {
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("data txtdb: %s: key %q: %s: want a list of words and object references", where, key, describeJSON(v))
	}
	var out []int32
	var words []string
	flush := func() {
		if len(words) > 0 {
			out = append(out, tok.Encode(strings.Join(words, " "))...)
			words = words[:0]
		}
	}
	for _, item := range l {
		switch x := item.(type) {
		case string:
			words = append(words, x)
		case []any:
			flush()
			for k, r := range x {
				n, ok := r.(int64)
				i := int(n)
				if !ok || n < 0 || i >= len(objects) {
					return nil, fmt.Errorf("data txtdb: %s: key %q: object reference %s outside the %d objects", where, key, describeJSON(r), len(objects))
				}
				if k > 0 {
					out = append(out, tok.Encode("and")...)
				}
				if objects[i] == "person" {
					if i >= vcrPersonTags {
						return nil, fmt.Errorf("data txtdb: %s: key %q: person %d: only %d person tags exist", where, key, i, vcrPersonTags)
					}
					out = append(out, int32(vocab+i))
				} else {
					out = append(out, tok.Encode(objects[i])...)
				}
			}
		default:
			return nil, fmt.Errorf("data txtdb: %s: key %q: element %s, want a word or an object reference", where, key, describeJSON(item))
		}
	}
	flush()
	return out, nil
}
