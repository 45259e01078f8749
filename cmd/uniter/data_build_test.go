package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"uniter/internal/db"
	"uniter/internal/lmdb"
)

const npzFixtures = "../../internal/db/testdata/npz"

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var cmd = newDataImgdbCmd()
	if args[0] == "txtdb" {
		cmd = newDataTxtdbCmd()
	}
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args[1:])
	err := cmd.Execute()
	return out.String(), err
}

// TestImgdbMatchesOfficialConverter builds an img_db from raw extractor
// .npz files and compares it with the db the official converter code wrote
// from the same files (internal/db/testdata/img_db).
func TestImgdbMatchesOfficialConverter(t *testing.T) {
	official, err := db.OpenImgDB("../../internal/db/testdata/img_db", db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer official.Close()
	for _, compressed := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "img_db")
		args := []string{"imgdb", "--npz-dir", npzFixtures, "--out", out, "--workers", "3", "--label-dim", "7"}
		if compressed {
			args = append(args, "--compressed")
		}
		log, err := runCmd(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, log)
		}
		if !strings.Contains(log, "wrote 2 images") {
			t.Errorf("log: %s", log)
		}
		got, err := db.OpenImgDB(out, db.DefaultImgDBOptions())
		if err != nil {
			t.Fatal(err)
		}
		if got.Compressed() != compressed {
			t.Errorf("compressed = %v", got.Compressed())
		}
		names, err := got.Names()
		if err != nil || !reflect.DeepEqual(names, []string{"img_a.npz", "img_b.npz"}) {
			t.Fatalf("names %v, %v", names, err)
		}
		for _, n := range names {
			a, err := got.Get(n)
			if err != nil {
				t.Fatal(err)
			}
			b, err := official.Get(n)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%s differs from the official converter's (nbb %d vs %d)", n, a.NBB, b.NBB)
			}
		}
		got.Close()
		if _, err := os.Stat(filepath.Join(out, "nbb_th0.2_max100_min10.json")); err != nil {
			t.Error(err)
		}
	}
}

func TestImgdbLayoutsAndErrors(t *testing.T) {
	out := filepath.Join(t.TempDir(), "numbb")
	if log, err := runCmd(t, "imgdb", "--npz-dir", npzFixtures, "--out", out, "--conf-th", "-1", "--num-bb", "4", "--label-dim", "7"); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	o := db.DefaultImgDBOptions()
	o.ConfTh, o.NumBB = -1, 4
	d, err := db.OpenImgDB(out, o)
	if err != nil {
		t.Fatal(err)
	}
	if d.SubDir() != "feat_numbb4" {
		t.Errorf("sub-dir %s", d.SubDir())
	}
	if im, err := d.Get("img_b.npz"); err != nil || im.NBB != 4 {
		t.Errorf("numbb Get: %v", err)
	}
	d.Close()

	// A corrupt file: an error naming it, or skipped with --skip-corrupt.
	dir := copyFixtures(t)
	bad := filepath.Join(dir, "img_0bad.npz")
	if err := os.WriteFile(bad, []byte("not a zip"), 0o644); err != nil {
		t.Fatal(err)
	}
	failed := filepath.Join(t.TempDir(), "x")
	_, err = runCmd(t, "imgdb", "--npz-dir", dir, "--out", failed, "--label-dim", "7")
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("corrupt file error %v does not name %s", err, bad)
	}
	if ents, _ := os.ReadDir(failed); len(ents) != 0 {
		t.Errorf("a failed build left %v", ents)
	}
	out = filepath.Join(t.TempDir(), "skip")
	log, err := runCmd(t, "imgdb", "--npz-dir", dir, "--out", out, "--skip-corrupt", "--keep-all", "--label-dim", "7")
	if err != nil || !strings.Contains(log, "skipping") || !strings.Contains(log, "wrote 2 images") {
		t.Fatalf("--skip-corrupt: %v\n%s", err, log)
	}
	d, err = db.OpenImgDB(out, db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	if d.SubDir() != "all" {
		t.Errorf("--keep-all wrote %s", d.SubDir())
	}
	if im, err := d.Get("img_a.npz"); err != nil || im.NBB != 12 {
		t.Errorf("all layout Get: %v", err)
	}
	d.Close()

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"imgdb", "--out", "x"}, "--npz-dir is required"},
		{[]string{"imgdb", "--npz-dir", t.TempDir(), "--out", "x"}, "no .npz files"},
		{[]string{"imgdb", "--npz-dir", dir, "--out", "x", "--min-bb", "5", "--max-bb", "2"}, "--min-bb 5 and --max-bb 2"},
		{[]string{"imgdb", "--npz-dir", npzFixtures, "--out", filepath.Join(t.TempDir(), "d"), "--img-dim", "2048", "--label-dim", "7"}, "features shape [14 32], want [14 2048] (--img-dim 2048)"},
		{[]string{"imgdb", "--npz-dir", npzFixtures, "--out", "x", "--label-dim", "-1"}, "--label-dim -1: want >= 0"},
	} {
		_, err := runCmd(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

// writeGTNpz writes a ground-truth style extractor .npz: n boxes, all of
// confidence 1, with 1601-way soft labels, float32 as the extractor writes
// them.
func writeGTNpz(t *testing.T, path string, n, dim int) {
	t.Helper()
	writeNpz(t, path, n, dim, 1601)
}

// writeNpz writes an extractor .npz of n boxes with dim-d features and
// labels-way soft labels (none when labels is 0).
func writeNpz(t *testing.T, path string, n, dim, labels int) {
	t.Helper()
	f32 := func(rows, cols int, v func(i int) float32) db.Array {
		b := make([]byte, 4*rows*cols)
		for i := range rows * cols {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v(i)))
		}
		return db.Array{Dtype: "<f4", Shape: []int{rows, cols}, Data: b}
	}
	conf := f32(n, 1, func(int) float32 { return 1 })
	conf.Shape = []int{n}
	arrays := map[string]db.Array{
		"features": f32(n, dim, func(i int) float32 { return float32(i%97) / 8 }),
		"norm_bb":  f32(n, 6, func(i int) float32 { return float32(i%6) / 8 }),
		"conf":     conf,
	}
	if labels > 0 {
		arrays["soft_labels"] = f32(n, labels, func(i int) float32 { return float32(i%labels) / float32(labels*labels) })
	}
	b, err := db.EncodeImgValue(arrays, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImgdbGroundTruthNumBB builds a VCR/RE-style ground-truth img_db (5 to
// 20 boxes an image) with --conf-th -1 --num-bb 100: every box is stored,
// in feat_numbb100, without an nbb json, as the official converter does.
func TestImgdbGroundTruthNumBB(t *testing.T) {
	dir := t.TempDir()
	boxes := map[string]int{"vcr_gt_val_a.npz": 5, "vcr_gt_val_b.npz": 13, "vcr_gt_val_c.npz": 20}
	for name, n := range boxes {
		writeGTNpz(t, filepath.Join(dir, name), n, 16)
	}
	out := filepath.Join(t.TempDir(), "vcr_gt_val")
	log, err := runCmd(t, "imgdb", "--npz-dir", dir, "--out", out, "--conf-th", "-1", "--num-bb", "100")
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	if !strings.Contains(log, "wrote 3 images to "+filepath.Join(out, "feat_numbb100")) {
		t.Errorf("log: %s", log)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 || ents[0].Name() != "feat_numbb100" {
		t.Errorf("%s holds %v, want feat_numbb100 alone", out, ents)
	}
	o := db.DefaultImgDBOptions()
	o.ConfTh, o.NumBB = -1, 100
	d, err := db.OpenImgDB(out, o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	names, err := d.Names()
	if err != nil || !reflect.DeepEqual(names, []string{"vcr_gt_val_a.npz", "vcr_gt_val_b.npz", "vcr_gt_val_c.npz"}) {
		t.Fatalf("names %v, %v", names, err)
	}
	// What each image stores (and the official reader's arr[:num_bb] sees).
	env, err := lmdb.Open(filepath.Join(out, d.SubDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	for name, n := range boxes {
		b, err := env.Get([]byte(name))
		if err != nil {
			t.Fatal(err)
		}
		arrays, err := db.DecodeImgValue(b, false)
		if err != nil {
			t.Fatal(err)
		}
		for arr, shape := range map[string][]int{"features": {n, 16}, "norm_bb": {n, 6}, "conf": {n, 1}} {
			if got := arrays[arr].Shape; !reflect.DeepEqual(got, shape) {
				t.Errorf("%s: %s shape %v, want %v", name, arr, got, shape)
			}
		}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testVocab is a small BERT-layout vocabulary.
func testVocab(t *testing.T, dir string) string {
	toks := []string{"[PAD]"}
	for i := 1; i < 100; i++ {
		toks = append(toks, "[unused]")
	}
	toks = append(toks, "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", "?", "a", "cat", "is", "on", "the", "mat", "what", "colour", "##s", "dog", "red")
	return writeFile(t, dir, "vocab.txt", strings.Join(toks, "\n")+"\n")
}

func TestTxtdbCaptions(t *testing.T) {
	dir := t.TempDir()
	vocab := testVocab(t, dir)
	caps := writeFile(t, dir, "captions.json", `{"images": [], "annotations": [
		{"id": 48, "image_id": 9, "caption": "A cat is on the mat."},
		{"id": 67, "image_id": 9, "caption": "the dogs  !"},
		{"id": 126, "image_id": 42, "caption": "zebra"}]}`)
	out := filepath.Join(dir, "txt_db")
	if log, err := runCmd(t, "txtdb", "--captions", caps, "--vocab", vocab, "--img-prefix", "coco_train2014", "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	d, err := db.OpenTxtDB(out)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m := d.Meta()
	if m.UNK != 100 || m.CLS != 101 || m.SEP != 102 || m.MASK != 103 || m.VRange != [2]int{104, 118} || m.Tokenizer != "bert-base-cased" {
		t.Errorf("meta %+v", m)
	}
	// In the annotations' order, as prepro.py writes id2len.json.
	if ids := d.IDs(-1); !reflect.DeepEqual(ids, []string{"48", "67", "126"}) {
		t.Errorf("ids %v", ids)
	}
	for id, want := range map[string][]int32{
		"48":  {100, 108, 109, 110, 111, 112, 105}, // "A" is [UNK] in a cased vocab
		"67":  {111, 116, 115, 104},
		"126": {100},
	} {
		ex, err := d.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ex.InputIDs()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: input_ids %v, want %v (%v)", id, got, want, err)
		}
	}
	ex, _ := d.Get("48")
	if f, _ := ex.String("img_fname"); f != "coco_train2014_000000000009.npz" {
		t.Errorf("img_fname %q", f)
	}
	if r, _ := ex.String("raw"); r != "A cat is on the mat." {
		t.Errorf("raw %q", r)
	}
	if got := d.Texts("coco_train2014_000000000009.npz"); !reflect.DeepEqual(got, []string{"48", "67"}) {
		t.Errorf("img2txts %v", got)
	}

	// Uncased: lowercasing turns "A" into a known token.
	out2 := filepath.Join(dir, "uncased")
	if _, err := runCmd(t, "txtdb", "--captions", caps, "--vocab", vocab, "--img-prefix", "p", "--out", out2, "--toker", "bert-base-uncased"); err != nil {
		t.Fatal(err)
	}
	d2, err := db.OpenTxtDB(out2)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if ex, _ := d2.Get("48"); ex.Fields["input_ids"].([]any)[0] != int64(107) {
		t.Errorf("uncased input_ids %v", ex.Fields["input_ids"])
	}
}

func TestTxtdbVQA(t *testing.T) {
	dir := t.TempDir()
	vocab := testVocab(t, dir)
	qs := writeFile(t, dir, "q.json", `{"questions": [
		{"question_id": 90, "image_id": 9, "question": "What colours?"},
		{"question_id": 91, "image_id": 9, "question": "what is on the mat?"}]}`)
	anns := writeFile(t, dir, "a.json", `{"annotations": [
		{"question_id": 90, "image_id": 9, "answers": [
			{"answer": "red"}, {"answer": "Red."}, {"answer": "red"}, {"answer": "blue"},
			{"answer": "two"}, {"answer": "2"}, {"answer": "dont"}, {"answer": "the red"}, {"answer": "zzz"}, {"answer": "red"}]},
		{"question_id": 91, "image_id": 9, "answers": [{"answer": "cat"}]}]}`)
	labels := writeFile(t, dir, "ans2label.json", `{"net": 0, "red": 1, "blue": 2, "2": 3, "don't": 4, "cat": 5}`)
	out := filepath.Join(dir, "vqa")
	if log, err := runCmd(t, "txtdb", "--questions", qs, "--annotations", anns, "--ans2label", labels,
		"--vocab", vocab, "--img-prefix", "coco_val2014", "--out", out); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	d, err := db.OpenTxtDB(out)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ex, err := d.Get("90")
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := ex.Map("target")
	if err != nil {
		t.Fatal(err)
	}
	l, _ := tgt.Ints("labels")
	s, _ := tgt.Floats("scores")
	// red x5 (red, Red., red, the red, red), blue x1, 2 x2 (two, 2), don't x1.
	if !reflect.DeepEqual(l, []int32{1, 2, 3, 4}) || !reflect.DeepEqual(s, []float64{1, 0.3, 0.6, 0.3}) {
		t.Errorf("target labels %v scores %v", l, s)
	}
	if q, _ := ex.Int("question_id"); q != 90 {
		t.Errorf("question_id %d", q)
	}
	if in, _ := ex.InputIDs(); !reflect.DeepEqual(in, []int32{100, 114, 115, 106}) {
		t.Errorf("input_ids %v", in)
	}

	// Without annotations: no target.
	out2 := filepath.Join(dir, "vqa_test")
	if _, err := runCmd(t, "txtdb", "--questions", qs, "--vocab", vocab, "--img-prefix", "coco_test2015", "--out", out2); err != nil {
		t.Fatal(err)
	}
	d2, err := db.OpenTxtDB(out2)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if ex, _ := d2.Get("91"); ex.Has("target") {
		t.Error("target without annotations")
	}

	missing := writeFile(t, dir, "a2.json", `{"annotations": [{"question_id": 90, "answers": []}]}`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--questions", qs, "--annotations", missing, "--ans2label", labels}, "no annotation for question_id 91"},
		{[]string{"--questions", qs, "--annotations", anns}, "needs --ans2label"},
		{[]string{"--questions", qs, "--captions", qs}, "exactly one of"},
		{[]string{"--captions", writeFile(t, dir, "bad.json", `{"annotations": [{"id": 1}]}`)}, "annotations[0] lacks id, image_id or caption"},
		{[]string{"--captions", writeFile(t, dir, "broken.json", `{"annotations": [`)}, "broken.json"},
		{[]string{"--captions", filepath.Join(dir, "absent.json")}, "absent.json"},
	} {
		args := append([]string{"txtdb", "--vocab", vocab, "--img-prefix", "p", "--out", filepath.Join(t.TempDir(), "o")}, tc.args...)
		_, err := runCmd(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
	noMask := writeFile(t, dir, "v2.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
	_, err = runCmd(t, "txtdb", "--vocab", noMask, "--img-prefix", "p", "--out", filepath.Join(t.TempDir(), "o"), "--questions", qs)
	if err == nil || !strings.Contains(err.Error(), `no "[MASK]" token`) || !strings.Contains(err.Error(), noMask) {
		t.Errorf("vocab without [MASK]: %v", err)
	}
}

func TestNormalizeVQAAnswer(t *testing.T) {
	for in, want := range map[string]string{
		"Two":             "2",
		"the dog.":        "dog",
		"yes!":            "yes",
		"1,000":           "1000",
		"a red-and-white": "red and white",
		"red - white":     "red white",
		"3.5":             "3.5",
		"none":            "0",
		"  An  apple ":    "apple",
		"x/y":             "x y",
	} {
		if got := normalizeVQAAnswer(in); got != want {
			t.Errorf("normalizeVQAAnswer(%q) = %q, want %q", in, got, want)
		}
	}
	if got := stripPeriods(strings.Repeat(".", 40)); got != "........" {
		t.Errorf("stripPeriods removed %d of 40, want 32", 40-len(got))
	}
	for n, want := range map[int]float64{0: 0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1, 10: 1} {
		if got := vqaScore(n); got != want {
			t.Errorf("vqaScore(%d) = %v, want %v", n, got, want)
		}
	}
}

// copyFixtures copies the extractor .npz fixtures into a new directory.
func copyFixtures(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"img_a.npz", "img_b.npz"} {
		b, err := os.ReadFile(filepath.Join(npzFixtures, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// entries lists a directory's names, hidden ones included; none when it
// does not exist.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestDataImgdbTruncatedNpzLeavesNothing stops a build at a truncated
// .npz: no output directory is left, not even an empty one or a hidden
// staging directory beside it, so the retry with --skip-corrupt just works;
// a complete db is then refused; and a failed build of a second layout
// into it leaves the first as it was.
func TestDataImgdbTruncatedNpzLeavesNothing(t *testing.T) {
	dir := copyFixtures(t)
	b, err := os.ReadFile(filepath.Join(dir, "img_b.npz"))
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "img_c.npz")
	if err := os.WriteFile(bad, b[:len(b)*2/3], 0o644); err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	out := filepath.Join(parent, "img_db")
	args := []string{"imgdb", "--npz-dir", dir, "--out", out, "--label-dim", "7"}
	_, err = runCmd(t, args...)
	if err == nil || !strings.Contains(err.Error(), bad+": ") || !strings.Contains(err.Error(), "nothing written (--skip-corrupt leaves bad files out)") {
		t.Fatalf("truncated .npz: error %v", err)
	}
	if left := entries(t, parent); len(left) != 0 {
		t.Fatalf("the failed build left %v in %s", left, parent)
	}

	log, err := runCmd(t, append(args, "--skip-corrupt")...)
	if err != nil {
		t.Fatalf("retry with --skip-corrupt: %v\n%s", err, log)
	}
	want := "wrote 2 images to " + filepath.Join(out, "feat_th0.2_max100_min10") + " (32-d features, 7-way soft_labels), skipped 1 bad .npz\n"
	if !strings.Contains(log, "skipping data imgdb: "+bad+": ") || !strings.Contains(log, want) {
		t.Errorf("retry log:\n%s\nwant %q", log, want)
	}
	d, err := db.OpenImgDB(out, db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	if names, err := d.Names(); err != nil || !reflect.DeepEqual(names, []string{"img_a.npz", "img_b.npz"}) {
		t.Errorf("names %v, %v", names, err)
	}
	d.Close()
	complete := []string{"feat_th0.2_max100_min10", "nbb_th0.2_max100_min10.json"}
	if got := entries(t, out); !reflect.DeepEqual(got, complete) {
		t.Errorf("%s holds %v, want %v", out, got, complete)
	}

	// A complete db is refused, as before.
	_, err = runCmd(t, append(args, "--skip-corrupt")...)
	if err == nil || !strings.Contains(err.Error(), "already exists and is not empty (remove it to rebuild)") {
		t.Errorf("rebuilding over a complete db: %v", err)
	}
	// Another layout beside it: a failure leaves the db as it was.
	if _, err := runCmd(t, append(args, "--compressed")...); err == nil {
		t.Fatal("compressed build with a truncated .npz succeeded")
	}
	if got := entries(t, out); !reflect.DeepEqual(got, complete) {
		t.Errorf("after a failed second layout %s holds %v, want %v", out, got, complete)
	}
	if log, err := runCmd(t, append(args, "--compressed", "--skip-corrupt")...); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	if got, want := entries(t, out), append(complete[:1:1], "feat_th0.2_max100_min10_compressed", complete[1]); !reflect.DeepEqual(got, want) {
		t.Errorf("%s holds %v, want %v", out, got, want)
	}
}

// TestDataImgdbChecksArrays builds from a good .npz and a bad one: a missing
// soft_labels, the wrong soft_labels width or feature size is one error at
// build time naming the file, the array and the shapes, nothing is
// written, and --skip-corrupt leaves the file out.
func TestDataImgdbChecksArrays(t *testing.T) {
	for _, tc := range []struct {
		name            string
		dim, labels     int
		want            string
		extra           []string
		acceptedByExtra bool
	}{
		{"no soft_labels", 16, 0, "no soft_labels array, want [12 1601] (--label-dim 1601; --label-dim 0 builds a db without them, which mrc and mrckl cannot train on)", []string{"--label-dim", "0"}, true},
		{"narrow soft_labels", 16, 1600, "soft_labels shape [12 1600], want [12 1601] (--label-dim 1601)", []string{"--label-dim", "1600"}, false},
		{"feature size", 32, 1601, "features shape [12 32], want [12 16] (the feature size of a.npz, the first image)", []string{"--img-dim", "16"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeNpz(t, filepath.Join(dir, "a.npz"), 12, 16, 1601)
			bad := filepath.Join(dir, "b.npz")
			writeNpz(t, bad, 12, tc.dim, tc.labels)
			out := filepath.Join(t.TempDir(), "img_db")
			_, err := runCmd(t, "imgdb", "--npz-dir", dir, "--out", out)
			want := "data imgdb: " + bad + ": " + tc.want + "; nothing written"
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %v\nwant %s", err, want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("the failed build left %s (%v)", out, err)
			}
			log, err := runCmd(t, "imgdb", "--npz-dir", dir, "--out", out, "--skip-corrupt")
			if err != nil || !strings.Contains(log, "skipping data imgdb: "+bad+": "+tc.want+"\n") || !strings.Contains(log, "wrote 1 images to ") {
				t.Fatalf("--skip-corrupt: %v\n%s", err, log)
			}
			// The flag that names the wanted shape moves the blame to a.npz
			// or, for --label-dim 0, accepts both.
			_, err = runCmd(t, append([]string{"imgdb", "--npz-dir", dir, "--out", filepath.Join(t.TempDir(), "x")}, tc.extra...)...)
			if tc.acceptedByExtra != (err == nil) {
				t.Errorf("%v: %v", tc.extra, err)
			}
		})
	}
	dir := t.TempDir()
	writeNpz(t, filepath.Join(dir, "a.npz"), 12, 16, 0)
	_, err := runCmd(t, "imgdb", "--npz-dir", dir, "--out", filepath.Join(t.TempDir(), "x"), "--skip-corrupt")
	if err == nil || !strings.Contains(err.Error(), "all 1 .npz files were skipped; nothing written") {
		t.Errorf("every file skipped: %v", err)
	}
}

// TestDataImgdbQuiet: --quiet prints the summary line without the progress bar.
func TestDataImgdbQuiet(t *testing.T) {
	for _, quiet := range []bool{false, true} {
		args := []string{"imgdb", "--npz-dir", npzFixtures, "--out", filepath.Join(t.TempDir(), "img_db"), "--label-dim", "7"}
		if quiet {
			args = append(args, "--quiet")
		}
		log, err := runCmd(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, log)
		}
		if bar := strings.Contains(log, "it/s"); bar == quiet || !strings.Contains(log, "wrote 2 images to ") {
			t.Errorf("quiet %v: log %q", quiet, log)
		}
		if quiet && strings.Count(log, "\n") != 1 {
			t.Errorf("--quiet printed more than the summary: %q", log)
		}
	}
}
