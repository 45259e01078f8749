package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"uniter/internal/data"
	"uniter/internal/db"
)

// encodeWith is what the built-in tokenizer name makes of text.
func encodeWith(t *testing.T, toker, text string) []int32 {
	t.Helper()
	tok, err := data.BertTokenizer(toker, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok.Encode(text)
}

// openTxtDB opens a built txt_db and closes it with the test.
func openTxtDB(t *testing.T, dir string) *db.TxtDB {
	t.Helper()
	d, err := db.OpenTxtDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func getExample(t *testing.T, d *db.TxtDB, id string) db.Example {
	t.Helper()
	ex, err := d.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// nlvr2Lines are NLVR2 annotation lines as lil-lab's train/dev/test1.json
// hold them (shortened), one of them unlabelled like test1's.
const nlvr2Lines = `{"validation": {"3GA6AFUKO": "True"}, "sentence": "Hello, world!", "left_url": "https://a/l.jpg", "writer": "103", "label": "True", "right_url": "https://a/r.jpg", "synset": "n02114855 coyote", "query": "coyote in the wild70", "identifier": "dev-850-0-0", "extra_validations": {}, "directory": 42}
{"sentence": "There are two dogs.", "label": "False", "identifier": "dev-850-0-1", "left_url": "https://a/l.jpg", "right_url": "https://a/r.jpg", "score": 0.5}

{"sentence": "One image shows exactly two cats.", "identifier": "test1-7-1-0"}
{"sentence": "A dog.", "label": "True", "identifier": "dev-9-3-2"}
`

func TestTxtdbNLVR2(t *testing.T) {
	dir := t.TempDir()
	ann := writeFile(t, dir, "dev.json", nlvr2Lines)
	missing := writeFile(t, dir, "missing.json", `["nlvr2_dev-9-3-img1.npz", "nlvr2_other-img0.npz"]`)
	out := filepath.Join(dir, "nlvr2_dev.db")
	log, err := runCmd(t, "txtdb", "--nlvr2", ann, "--missing-imgs", missing, "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	if !strings.Contains(log, "wrote 3 examples to "+out+" (left out 1 with an image in "+missing+")") {
		t.Errorf("summary: %s", log)
	}
	d := openTxtDB(t, out)
	// The built-in bert-base-cased vocabulary, as the official meta.json.
	if m := d.Meta(); m.UNK != 100 || m.CLS != 101 || m.SEP != 102 || m.MASK != 103 || m.VRange != [2]int{106, 28996} || m.Tokenizer != "bert-base-cased" {
		t.Errorf("meta %+v", m)
	}
	if ids := d.IDs(-1); !reflect.DeepEqual(ids, []string{"dev-850-0-0", "dev-850-0-1", "test1-7-1-0"}) {
		t.Fatalf("ids %v", ids)
	}
	for _, c := range []struct {
		id, sentence, img string
		target            any
	}{
		{"dev-850-0-0", "Hello, world!", "nlvr2_dev-850-0", int64(1)},
		{"dev-850-0-1", "There are two dogs.", "nlvr2_dev-850-0", int64(0)},
		{"test1-7-1-0", "One image shows exactly two cats.", "nlvr2_test1-7-1", nil},
	} {
		ex := getExample(t, d, c.id)
		ids, err := ex.InputIDs()
		if want := encodeWith(t, "bert-base-cased", c.sentence); err != nil || !reflect.DeepEqual(ids, want) {
			t.Errorf("%s: input_ids %v, want %v (%v)", c.id, ids, want, err)
		}
		pair := []string{c.img + "-img0.npz", c.img + "-img1.npz"}
		if f, err := ex.ImgFnames(); err != nil || !reflect.DeepEqual(f, pair) {
			t.Errorf("%s: img_fname %v (%v)", c.id, f, err)
		}
		if got, ok := ex.Fields["target"]; !ok || got != c.target {
			t.Errorf("%s: target %#v (present %v), want %#v", c.id, got, ok, c.target)
		}
		if s, _ := ex.String("sentence"); s != c.sentence {
			t.Errorf("%s: sentence %q", c.id, s)
		}
		if imgs, _ := d.Images(c.id); !reflect.DeepEqual(imgs, pair) {
			t.Errorf("%s: txt2img %v", c.id, imgs)
		}
		if n, _ := d.Len(c.id); n != len(ids) {
			t.Errorf("%s: id2len %d, want %d", c.id, n, len(ids))
		}
	}
	if got := encodeWith(t, "bert-base-cased", "Hello, world!"); !reflect.DeepEqual(got, []int32{8667, 117, 1362, 106}) {
		t.Errorf("Hello, world! = %v", got)
	}
	// The rest of the annotation is kept, typed as Python's json reads it.
	ex := getExample(t, d, "dev-850-0-0")
	if v := ex.Fields["directory"]; v != int64(42) {
		t.Errorf("directory %#v, want int 42", v)
	}
	if v, _ := ex.Map("validation"); v.Fields["3GA6AFUKO"] != "True" {
		t.Errorf("validation %v", ex.Fields["validation"])
	}
	if u, _ := ex.String("left_url"); u != "https://a/l.jpg" {
		t.Errorf("left_url %q", u)
	}
	if v := getExample(t, d, "dev-850-0-1").Fields["score"]; v != 0.5 {
		t.Errorf("score %#v", v)
	}
	if got := d.Texts("nlvr2_dev-850-0-img1.npz"); !reflect.DeepEqual(got, []string{"dev-850-0-0", "dev-850-0-1"}) {
		t.Errorf("img2txts %v", got)
	}
	for _, side := range []string{"meta.json", "id2len.json", "txt2img.json", "img2txts.json"} {
		if _, err := os.Stat(filepath.Join(out, side)); err != nil {
			t.Error(err)
		}
	}
}

func TestTxtdbSNLIVE(t *testing.T) {
	dir := t.TempDir()
	ann := writeFile(t, dir, "snli_ve_dev.jsonl", `{"Flikr30kID": "3416050480.jpg", "sentence1": "A man rides a bike.", "sentence2": "Hello, world!", "gold_label": "entailment", "pairID": "3416050480.jpg#4r1e", "captionID": "3416050480.jpg#4", "annotator_labels": ["entailment", "neutral"]}
{"Flikr30kID": "3416050480.jpg", "sentence2": "Nobody is outside.", "gold_label": "contradiction", "pairID": "3416050480.jpg#4r1c"}
{"Flickr30kID": "9", "sentence2": "Two dogs play in the snow.", "gold_label": "neutral", "pairID": "9.jpg#0r1n"}
`)
	out := filepath.Join(dir, "ve_dev.db")
	if log, err := runCmd(t, "txtdb", "--snli-ve", ann, "--toker", "bert-base-uncased", "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	d := openTxtDB(t, out)
	if m := d.Meta(); m.CLS != 101 || m.VRange != [2]int{999, 30522} || m.Tokenizer != "bert-base-uncased" {
		t.Errorf("meta %+v", m)
	}
	// In the annotation file's order, as prepro.py writes id2len.json.
	if ids := d.IDs(-1); !reflect.DeepEqual(ids, []string{"3416050480.jpg#4r1e", "3416050480.jpg#4r1c", "9.jpg#0r1n"}) {
		t.Fatalf("ids %v", ids)
	}
	for _, c := range []struct {
		id, sentence, img string
		imageID           int64
		label             int32
	}{
		{"3416050480.jpg#4r1e", "Hello, world!", "flickr30k_003416050480.npz", 3416050480, 1},
		{"3416050480.jpg#4r1c", "Nobody is outside.", "flickr30k_003416050480.npz", 3416050480, 0},
		{"9.jpg#0r1n", "Two dogs play in the snow.", "flickr30k_000000000009.npz", 9, 2},
	} {
		ex := getExample(t, d, c.id)
		ids, err := ex.InputIDs()
		if want := encodeWith(t, "bert-base-uncased", c.sentence); err != nil || !reflect.DeepEqual(ids, want) {
			t.Errorf("%s: input_ids %v, want %v (%v)", c.id, ids, want, err)
		}
		if f, _ := ex.String("img_fname"); f != c.img {
			t.Errorf("%s: img_fname %q, want %q", c.id, f, c.img)
		}
		if n, _ := ex.Int("image_id"); n != c.imageID {
			t.Errorf("%s: image_id %d", c.id, n)
		}
		tgt, err := ex.Map("target")
		if err != nil {
			t.Fatal(err)
		}
		l, _ := tgt.Ints("labels")
		s, _ := tgt.Floats("scores")
		if !reflect.DeepEqual(l, []int32{c.label}) || !reflect.DeepEqual(s, []float64{1}) {
			t.Errorf("%s: target labels %v scores %v", c.id, l, s)
		}
		if p, _ := ex.String("pairID"); p != c.id {
			t.Errorf("%s: pairID %q", c.id, p)
		}
	}
	if got := encodeWith(t, "bert-base-uncased", "Hello, world!"); !reflect.DeepEqual(got, []int32{7592, 1010, 2088, 999}) {
		t.Errorf("uncased Hello, world! = %v", got)
	}
	if got := d.Texts("flickr30k_003416050480.npz"); !reflect.DeepEqual(got, []string{"3416050480.jpg#4r1c", "3416050480.jpg#4r1e"}) {
		t.Errorf("img2txts %v", got)
	}
	if s, _ := getExample(t, d, "3416050480.jpg#4r1e").Strings("annotator_labels"); !reflect.DeepEqual(s, []string{"entailment", "neutral"}) {
		t.Errorf("annotator_labels %v", s)
	}
	b, err := os.ReadFile(filepath.Join(out, "ans2label.json"))
	if err != nil || string(b) != `{"contradiction":0,"entailment":1,"neutral":2}` {
		t.Errorf("ans2label.json %s (%v)", b, err)
	}
}

// TestTxtdbBuildErrors: every failure names the file, line and value at
// fault, and leaves nothing at --out.
func TestTxtdbBuildErrors(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.json", nlvr2Lines)
	file := func(name, content string) string { return writeFile(t, dir, name, content) }
	badJSON := file("bad.json", `{"identifier": "dev-1-0-0", "sentence": "a", "label": "True"}`+"\n"+`{"identifier": "dev-1-0-1", "sentence": `+"\n")
	maybe := file("maybe.json", `{"identifier": "dev-1-0-0", "sentence": "a", "label": "maybe"}`)
	boolLabel := file("bool.json", `{"identifier": "dev-1-0-0", "sentence": "a", "label": true}`)
	noDash := file("nodash.json", `{"identifier": "dev", "sentence": "a"}`)
	noSentence := file("nosent.json", `{"identifier": "dev-1-0-0"}`)
	twice := file("twice.json", `{"identifier": "dev-1-0-0", "sentence": "a"}`+"\n\n"+`{"identifier": "dev-1-0-0", "sentence": "b"}`)
	notObject := file("array.json", `["dev-1-0-0"]`)
	twoObjects := file("two.json", `{"identifier": "dev-1-0-0", "sentence": "a"} {}`)
	empty := file("empty.json", "\n \n")
	dash := file("dash.jsonl", `{"Flikr30kID": "1.jpg", "sentence2": "a", "gold_label": "-", "pairID": "1.jpg#0r1n"}`)
	noImage := file("noimg.jsonl", `{"sentence2": "a", "gold_label": "neutral", "pairID": "1.jpg#0r1n"}`)
	badImage := file("badimg.jsonl", `{"Flikr30kID": "abc.jpg", "sentence2": "a", "gold_label": "neutral", "pairID": "p"}`)
	full := filepath.Join(dir, "full")
	if err := os.Mkdir(full, 0o755); err != nil {
		t.Fatal(err)
	}
	file("full/x", "")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--nlvr2", badJSON}, []string{badJSON + ":2:", "not a JSON object"}},
		{[]string{"--nlvr2", maybe}, []string{maybe + ":1:", `identifier "dev-1-0-0"`, `label "maybe", want "True" or "False"`}},
		{[]string{"--nlvr2", boolLabel}, []string{boolLabel + ":1:", "label true"}},
		{[]string{"--nlvr2", noDash}, []string{noDash + ":1:", `identifier "dev" has no dash`}},
		{[]string{"--nlvr2", noSentence}, []string{noSentence + ":1:", `"sentence" string, got none`}},
		{[]string{"--nlvr2", twice}, []string{twice + ":3:", `example id "dev-1-0-0" already given at ` + twice + ":1"}},
		{[]string{"--nlvr2", notObject}, []string{notObject + ":1:", "not a JSON object"}},
		{[]string{"--nlvr2", twoObjects}, []string{twoObjects + ":1:", "one JSON object"}},
		{[]string{"--nlvr2", empty}, []string{empty, "no JSON lines"}},
		{[]string{"--nlvr2", filepath.Join(dir, "absent.json")}, []string{"absent.json"}},
		{[]string{"--snli-ve", dash}, []string{dash + ":1:", `pairID "1.jpg#0r1n"`, `gold_label "-", want contradiction, entailment or neutral`}},
		{[]string{"--snli-ve", noImage}, []string{noImage + ":1:", `no "Flikr30kID"`}},
		{[]string{"--snli-ve", badImage}, []string{badImage + ":1:", `Flikr30kID "abc.jpg" is not a Flickr30k image id`}},
		{[]string{"--nlvr2", good, "--missing-imgs", filepath.Join(dir, "nomissing.json")}, []string{"nomissing.json"}},
		{[]string{"--nlvr2", good, "--img-prefix", "coco"}, []string{"--img-prefix coco goes with --captions and --questions"}},
		{[]string{"--nlvr2", good, "--snli-ve", dash}, []string{"exactly one of --captions, --questions, --nlvr2, --snli-ve"}},
		{[]string{"--captions", good}, []string{"--img-prefix is required"}},
		{[]string{"--nlvr2", good, "--toker", "bert-large-cased"}, []string{`tokenizer "bert-large-cased"`, "bert-base-cased, bert-base-uncased", "--vocab"}},
		{[]string{"--nlvr2", good, "--out", full}, []string{full, "already exists and is not empty"}},
	} {
		out := filepath.Join(t.TempDir(), "db")
		args := append([]string{"txtdb", "--out", out}, tc.args...)
		_, err := runCmd(t, args...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %v, want %q", tc.args, err, w)
			}
		}
		if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
			t.Errorf("%v: a failed build left %v", tc.args, ents)
		}
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Errorf("a refused --out was changed: %v", ents)
	}
}

// TestTxtdbVocabOverride: --vocab replaces the built-in vocabulary and an
// empty --out directory is taken over.
func TestTxtdbVocabOverride(t *testing.T) {
	dir := t.TempDir()
	ann := writeFile(t, dir, "ann.json", `{"identifier": "dev-1-0-0", "sentence": "the cat", "label": "False"}`)
	out := filepath.Join(dir, "db")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if log, err := runCmd(t, "txtdb", "--nlvr2", ann, "--vocab", testVocab(t, dir), "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	d := openTxtDB(t, out)
	if m := d.Meta(); m.VRange != [2]int{104, 118} || m.Tokenizer != "bert-base-cased" {
		t.Errorf("meta %+v", m)
	}
	if ids, _ := getExample(t, d, "dev-1-0-0").InputIDs(); !reflect.DeepEqual(ids, []int32{111, 108}) {
		t.Errorf("input_ids %v", ids)
	}
}

// TestDataTxtdbSummaryAndQuiet: txtdb ends with one summary line naming
// the count, the db and the tokenizer; --quiet leaves out the progress bar.
func TestDataTxtdbSummaryAndQuiet(t *testing.T) {
	dir := t.TempDir()
	vocab := testVocab(t, dir)
	caps := writeFile(t, dir, "captions.json", `{"annotations": [
		{"id": 1, "image_id": 9, "caption": "a cat"}, {"id": 2, "image_id": 9, "caption": "the mat"}]}`)
	for _, quiet := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "txt_db")
		args := []string{"txtdb", "--captions", caps, "--vocab", vocab, "--img-prefix", "coco_val2014", "--out", out}
		if quiet {
			args = append(args, "--quiet")
		}
		log, err := runCmd(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, log)
		}
		want := "wrote 2 examples to " + out + ", tokenizer bert-base-cased (vocabulary " + vocab + ", 118 tokens)\n"
		if !strings.HasSuffix(log, want) {
			t.Errorf("quiet %v: log %q, want it to end %q", quiet, log, want)
		}
		if bar := strings.Contains(log, "it/s"); bar == quiet {
			t.Errorf("quiet %v: progress bar shown %v: %q", quiet, bar, log)
		}
		if quiet && log != want {
			t.Errorf("--quiet printed more than the summary: %q", log)
		}
	}
	// A trailing slash on --out (shell completion adds one) stages beside
	// the directory, not inside it.
	out := filepath.Join(t.TempDir(), "u")
	log, err := runCmd(t, "txtdb", "--captions", caps, "--toker", "bert-base-uncased", "--img-prefix", "p", "--out", out+"/", "--quiet")
	if err != nil || !strings.Contains(log, ", tokenizer bert-base-uncased (built-in vocabulary, 30522 tokens)\n") {
		t.Errorf("built-in vocabulary: %v: %q", err, log)
	}
	openTxtDB(t, out)
}
