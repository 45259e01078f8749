package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const reFixtures = "../../testdata/re_txtdb"

// readJSONAny decodes a JSON file into plain values (numbers float64).
func readJSONAny(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// TestTxtdbRE builds the val split of a tiny refer-toolkit input (refs
// pickle at protocols 2 and 0) and compares the side files with what
// prepro.py --task re writes, and the examples with its fields.
func TestTxtdbRE(t *testing.T) {
	in := func(name string) string { return filepath.Join(reFixtures, name) }
	want := readJSONAny(t, in("expected_val.json")).(map[string]any)
	for _, refs := range []string{"refs(unc).p", "refs_p0.p"} {
		out := filepath.Join(t.TempDir(), "refcoco_val.db")
		log, err := runCmd(t, "txtdb", "--refs", in(refs), "--instances", in("instances.json"),
			"--iid-to-ann-ids", in("iid_to_ann_ids.json"), "--out", out, "--quiet")
		if err != nil {
			t.Fatalf("%s: %v\n%s", refs, err, log)
		}
		if !strings.Contains(log, "wrote 3 examples to "+out) {
			t.Errorf("%s: summary %s", refs, log)
		}
		for _, name := range []string{"refs", "images", "annotations", "categories"} {
			got := readJSONAny(t, filepath.Join(out, name+".json"))
			if !reflect.DeepEqual(got, want[name]) {
				t.Errorf("%s: %s.json\n got %v\nwant %v", refs, name, got, want[name])
			}
		}
		d := openTxtDB(t, out)
		if ids := d.IDs(-1); !slices.Equal(ids, []string{"10", "11", "13"}) {
			t.Fatalf("%s: ids %v", refs, ids)
		}
		if m := d.Meta(); m.Tokenizer != "bert-base-cased" || m.CLS != 101 {
			t.Errorf("meta %+v", m)
		}
		for _, c := range []struct {
			id, sent      string
			ref, ann, img int64
			bbox          []float64
		}{
			{"10", "the red car", 1, 100, 5, []float64{10.5, 20.25, 30, 40}},
			{"11", "left one", 1, 100, 5, []float64{10.5, 20.25, 30, 40}},
			{"13", "man on right", 3, 102, 7, []float64{5, 6, 7, 8}},
		} {
			ex := getExample(t, d, c.id)
			sent, _ := ex.String("sent")
			ids, _ := ex.InputIDs()
			sid, _ := ex.Int("sent_id")
			ref, _ := ex.Int("ref_id")
			ann, _ := ex.Int("ann_id")
			img, _ := ex.Int("image_id")
			bbox, _ := ex.Floats("bbox")
			fname, _ := ex.String("img_fname")
			if sent != c.sent || !slices.Equal(ids, encodeWith(t, "bert-base-cased", c.sent)) || sid != mustAtoi(t, c.id) ||
				ref != c.ref || ann != c.ann || img != c.img || !slices.Equal(bbox, c.bbox) ||
				fname != fmt.Sprintf("visual_grounding_coco_gt_%012d.npz", c.img) {
				t.Errorf("%s: example %s: %v %v %d %d %d %d %v %s", refs, c.id, sent, ids, sid, ref, ann, img, bbox, fname)
			}
		}
	}

	// Without --iid-to-ann-ids: instances.json's order of the annotations;
	// --split picks another split whatever the name.
	out := filepath.Join(t.TempDir(), "x.db")
	if log, err := runCmd(t, "txtdb", "--refs", in("refs(unc).p"), "--instances", in("instances.json"), "--split", "train", "--out", out, "--quiet"); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	images := readJSONAny(t, filepath.Join(out, "images.json")).([]any)
	if len(images) != 1 || !reflect.DeepEqual(images[0].(map[string]any)["ann_ids"], []any{100.0, 101.0}) {
		t.Errorf("train images %v", images)
	}
}

func mustAtoi(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTxtdbREErrors: each bad input is one sentence naming the file and
// what is wrong.
func TestTxtdbREErrors(t *testing.T) {
	in := func(name string) string { return filepath.Join(reFixtures, name) }
	dir := t.TempDir()
	noAnn := writeFile(t, dir, "instances.json", `{"images": [{"id": 5, "file_name": "a.jpg", "height": 1, "width": 1}], "annotations": [], "categories": []}`)
	badOrder := writeFile(t, dir, "iid.json", `{"iid_to_ann_ids": {"5": [100, 101]}}`)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no split in the name", []string{"--refs", in("refs(unc).p"), "--instances", in("instances.json"), "--out", filepath.Join(dir, "refcoco.db")}, []string{"refcoco.db", "--split"}},
		{"unknown split", []string{"--refs", in("refs(unc).p"), "--instances", in("instances.json"), "--out", filepath.Join(dir, "refcoco_testB.db")}, []string{"refs(unc).p", `"testB"`}},
		{"refs without instances", []string{"--refs", in("refs(unc).p"), "--out", filepath.Join(dir, "a_val.db")}, []string{"--instances"}},
		{"target annotation missing", []string{"--refs", in("refs(unc).p"), "--instances", noAnn, "--out", filepath.Join(dir, "b_val.db")}, []string{"ann_id 100", noAnn}},
		{"image missing from iid_to_ann_ids", []string{"--refs", in("refs(unc).p"), "--instances", in("instances.json"), "--iid-to-ann-ids", badOrder, "--out", filepath.Join(dir, "c_val.db")}, []string{badOrder, `"7"`}},
		{"not a pickle", []string{"--refs", in("instances.json"), "--instances", in("instances.json"), "--out", filepath.Join(dir, "d_val.db")}, []string{"--refs", "instances.json"}},
	}
	for _, c := range cases {
		log, err := runCmd(t, append([]string{"txtdb", "--quiet"}, c.args...)...)
		if err == nil {
			t.Errorf("%s: no error\n%s", c.name, log)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %q", c.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error is not one line: %q", c.name, err)
		}
	}
}

// TestTxtdbREProtocol0Strings reads a protocol-0 refs pickle with Python
// 2's STRING opcodes (repr escapes) and UNICODE ones (raw-unicode-escape,
// latin-1 bytes): the sentences are those Python loads.
func TestTxtdbREProtocol0Strings(t *testing.T) {
	in := func(name string) string { return filepath.Join(reFixtures, name) }
	var want []string
	b, err := os.ReadFile(in("expected_p0_strings.json"))
	if err != nil || json.Unmarshal(b, &want) != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "refcoco_val.db")
	if log, err := runCmd(t, "txtdb", "--refs", in("refs_p0_strings.p"), "--instances", in("instances.json"), "--out", out, "--quiet"); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	d := openTxtDB(t, out)
	for i, id := range []string{"90", "91"} {
		sent, err := getExample(t, d, id).String("sent")
		if err != nil || sent != want[i] {
			t.Errorf("sentence %s: %q (%v), Python loads %q", id, sent, err, want[i])
		}
	}
}
