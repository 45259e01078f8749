package data

import (
	"context"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/x448/float16"

	"uniter/internal/db"
)

// tinyDim is the feature size of the tiny img_dbs.
const tinyDim = 2

// tinyImages are the images of the tiny img_db, name -> region count.
// Region r of image k (in name order) has features 100*(k+1) + 2r + c, so
// every value says where it came from.
var tinyImages = map[string]int{"a.npz": 3, "b.npz": 1, "c.npz": 2}

// tinyFeat returns the features tiny image name contributes.
func tinyFeat(name string) []float32 {
	k := slices.Index(slices.Sorted(maps.Keys(tinyImages)), name)
	var out []float32
	for i := range tinyImages[name] * tinyDim {
		out = append(out, float32(100*(k+1)+i))
	}
	return out
}

// writeTinyImgDB writes tinyImages with the official default options (all
// regions are confident, and fewer than min_bb, so every one is kept).
func writeTinyImgDB(t *testing.T) *db.ImgDB {
	t.Helper()
	dir := t.TempDir()
	w, err := db.CreateImgDB(dir, db.DefaultImgDBOptions(), false)
	if err != nil {
		t.Fatal(err)
	}
	f16 := func(v []float32) []float16.Float16 {
		out := make([]float16.Float16, len(v))
		for i, x := range v {
			out[i] = float16.Fromfloat32(x)
		}
		return out
	}
	for name, n := range tinyImages {
		var bb, conf []float32
		for range n {
			bb = append(bb, 0.25, 0.5, 0.75, 1, 0.5, 0.5)
			conf = append(conf, 0.9)
		}
		raw := db.RawImage{N: n, D: tinyDim, Features: f16(tinyFeat(name)), NormBB: f16(bb), Conf: f16(conf)}
		if _, err := w.Put(name, raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := db.OpenImgDB(dir, db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// writeTinyTxtDB writes examples into a txt_db named name (which errors
// name) and opens it.
func writeTinyTxtDB(t *testing.T, name string, examples map[string]map[string]any) *db.TxtDB {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	w, err := db.CreateTxtDB(dir, db.Meta{CLS: 101, SEP: 102, MASK: 103, UNK: 100, VRange: [2]int{104, 200}})
	if err != nil {
		t.Fatal(err)
	}
	// Written in id order: the order a txt_db lists its examples in.
	for _, id := range slices.Sorted(maps.Keys(examples)) {
		if err := w.Put(id, examples[id]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return openTxt(t, dir, "")
}

// buildAll builds one batch of the given example indices.
func buildAll(t *testing.T, build BuildFunc[*Batch], indices ...int) (*Batch, error) {
	t.Helper()
	return build(context.Background(), Job{Indices: indices})
}

// checkFields compares named batch fields with their expected values.
func checkFields(t *testing.T, name string, checks map[string][2]any) {
	t.Helper()
	for field, c := range checks {
		if !reflect.DeepEqual(c[0], c[1]) {
			t.Errorf("%s: %s = %v, want %v", name, field, c[0], c[1])
		}
	}
}

// vqaExample is a VQA txt_db value; a nil target leaves the field out.
func vqaExample(ids []int, img any, target any) map[string]any {
	ex := map[string]any{"input_ids": ids, "img_fname": img}
	if target != nil {
		ex["target"] = target
	}
	return ex
}

// vqaTarget is a VQA target field.
func vqaTarget(labels []int, scores []float64) map[string]any {
	return map[string]any{"labels": labels, "scores": scores}
}

func TestVQASet(t *testing.T) {
	img := writeTinyImgDB(t)
	train := map[string]map[string]any{
		"q1": vqaExample([]int{5, 6, 7}, "a.npz", vqaTarget([]int{2, 0}, []float64{0.9, 0.3})),
		"q2": vqaExample([]int{8}, "b.npz", vqaTarget([]int{}, []float64{})),
	}
	test := map[string]map[string]any{
		"q1": vqaExample([]int{5, 6, 7}, "a.npz", nil),
		"q2": vqaExample([]int{8}, "b.npz", nil),
	}
	// Both rows: S = max(5+3, 3+1) = 8, Tmax 5.
	commonChecks := func(b *Batch) map[string][2]any {
		return map[string][2]any{
			"B, Tmax, Nmax, S": {[]int{b.B, b.Tmax, b.Nmax, b.S}, []int{2, 5, 3, 8}},
			"RowsPerExample":   {b.RowsPerExample, 1},
			"IDs":              {b.IDs, []string{"q1", "q2"}},
			"InputIDs":         {b.InputIDs, []int32{101, 5, 6, 7, 102, 101, 8, 102, 0, 0}},
			"NBB":              {b.NBB, []int{3, 1}},
			"ImgTypeIDs":       {b.ImgTypeIDs, []int32{1, 1, 1, 1, 0, 0}},
			"GatherIndex":      {b.GatherIndex, []int32{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 5, 4, 5, 6, 7}},
			"ImgFeat":          {b.ImgFeat, append(append(tinyFeat("a.npz"), tinyFeat("b.npz")...), 0, 0, 0, 0)},
			"ImgPos[:7]":       {b.ImgPos[:7], []float32{0.25, 0.5, 0.75, 1, 0.5, 0.5, 0.25}},
			"Labels":           {b.Labels, []int32(nil)},
		}
	}
	cases := []struct {
		name      string
		examples  map[string]map[string]any
		targets   []float32
		targetDim int
	}{
		{"train", train, []float32{0.3, 0, 0.9, 0, 0, 0, 0, 0}, 4},
		{"test split", test, nil, 0},
	}
	for _, c := range cases {
		set, err := NewVQASet(writeTinyTxtDB(t, "vqa.db", c.examples), img, 4, DownstreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		lens, err := set.Lens("vqa", 3)
		if err != nil {
			t.Fatal(err)
		}
		// id2len plus regions: 3+3 and 1+1.
		if set.Len() != 2 || set.ImgDim() != tinyDim || !reflect.DeepEqual(lens, []int{6, 2}) {
			t.Errorf("%s: Len %d ImgDim %d lens %v, want 2 %d [6 2]", c.name, set.Len(), set.ImgDim(), lens, tinyDim)
		}
		b, err := buildAll(t, set.Build("vqa"), 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		checks := commonChecks(b)
		checks["Targets"] = [2]any{b.Targets, c.targets}
		checks["TargetDim"] = [2]any{b.TargetDim, c.targetDim}
		checkFields(t, c.name, checks)
	}

	short, err := NewVQASet(writeTinyTxtDB(t, "vqa.db", train), img, 4, DownstreamOptions{MaxTxtLen: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(short.IDs(), []string{"q2"}) {
		t.Errorf("MaxTxtLen 2 keeps %v, want [q2]", short.IDs())
	}
}

func TestVQASetErrors(t *testing.T) {
	img := writeTinyImgDB(t)
	good := vqaExample([]int{5}, "a.npz", vqaTarget([]int{1}, []float64{1}))
	cases := []struct {
		name     string
		examples map[string]map[string]any
		answers  int
		indices  []int
		want     []string // substrings of the error, at construction or build
	}{
		{"label out of range", map[string]map[string]any{"123": vqaExample([]int{5}, "a.npz", vqaTarget([]int{4}, []float64{1}))},
			4, []int{0}, []string{"vqa_train.db", `key "123"`, "target label 4 outside the 4 answers of ans2label"}},
		{"negative label", map[string]map[string]any{"123": vqaExample([]int{5}, "a.npz", vqaTarget([]int{-1}, []float64{1}))},
			4, []int{0}, []string{`key "123"`, "target label -1"}},
		{"scores short", map[string]map[string]any{"7": vqaExample([]int{5}, "a.npz", vqaTarget([]int{1, 2}, []float64{1}))},
			4, []int{0}, []string{`key "7"`, "2 labels and 1 scores"}},
		{"targets for some examples", map[string]map[string]any{"1": good, "2": vqaExample([]int{5}, "b.npz", nil)},
			4, []int{0, 1}, []string{"Targets has 0 values, want 4"}},
		{"missing image", map[string]map[string]any{"9": vqaExample([]int{5}, "zz.npz", nil)},
			4, nil, []string{"vqa_train.db", `key "9"`, `"zz.npz"`, "not in db"}},
		{"two images", map[string]map[string]any{"9": vqaExample([]int{5}, []string{"a.npz", "b.npz"}, nil)},
			4, nil, []string{`key "9"`}},
		{"no answers", map[string]map[string]any{"1": good}, 0, nil, []string{"0 answers"}},
	}
	for _, c := range cases {
		set, err := NewVQASet(writeTinyTxtDB(t, "vqa_train.db", c.examples), img, c.answers, DownstreamOptions{})
		if err == nil {
			if c.indices == nil {
				t.Errorf("%s: no error at construction", c.name)
				continue
			}
			_, err = buildAll(t, set.Build(""), c.indices...)
		}
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not contain %q", c.name, err, w)
			}
		}
	}
}

// evalBatches builds every batch SequentialBatches cuts over the set's
// lengths, as validation does, with several workers.
func evalBatches(t *testing.T, lens []int, build BuildFunc[*Batch], budget int) []*Batch {
	t.Helper()
	batches, err := SequentialBatches(lens, budget, 0)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLoader(context.Background(), NewSliceSource(batches), build, 3, 4)
	defer l.Close()
	var out []*Batch
	for {
		b, _, err := l.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
}

// TestVQASynthEval runs the synthetic world's VQA and VE validation sets
// through the evaluation batcher: every example once, in order, with the
// db's target scattered into its row.
func TestVQASynthEval(t *testing.T) {
	dir, _ := testWorld(t)
	img := openImg(t, dir, "img/synth_val")
	for _, c := range []struct {
		db      string
		answers int
	}{{"txt/vqa_val.db", len(vqaAnswers())}, {"txt/ve_val.db", 3}} {
		txt := openTxt(t, dir, c.db)
		set, err := NewVQASet(txt, img, c.answers, DownstreamOptions{MaxTxtLen: DefaultMaxTxtLen})
		if err != nil {
			t.Fatal(err)
		}
		lens, _ := set.Lens("", 0)
		var ids []string
		for _, b := range evalBatches(t, lens, set.Build(""), 300) {
			if b.TargetDim != c.answers || len(b.Targets) != b.B*c.answers || b.Labels != nil {
				t.Fatalf("%s: TargetDim %d, %d targets for %d rows, labels %v", c.db, b.TargetDim, len(b.Targets), b.B, b.Labels)
			}
			for k, id := range b.IDs {
				ex, _ := txt.Get(id)
				tg, _ := ex.Map("target")
				labels, _ := tg.Ints("labels")
				scores, _ := tg.Floats("scores")
				want := make([]float32, c.answers)
				for j, l := range labels {
					want[l] = float32(scores[j])
				}
				if got := b.Targets[k*c.answers : (k+1)*c.answers]; !slices.Equal(got, want) {
					t.Fatalf("%s %s: targets differ from the db's", c.db, id)
				}
				words, _ := txt.Len(id)
				if b.TxtLens[k]+b.NBB[k] != lens[len(ids)]+2 || b.TxtLens[k] != words+2 {
					t.Fatalf("%s %s: row tl %d nbb %d for sampler length %d", c.db, id, b.TxtLens[k], b.NBB[k], lens[len(ids)])
				}
				ids = append(ids, id)
			}
		}
		if !slices.Equal(ids, set.IDs()) {
			t.Errorf("%s: evaluation visited %d ids, the set has %d (or out of order)", c.db, len(ids), set.Len())
		}

		var shards []string
		for rank := range 3 {
			s, err := NewVQASet(txt, img, c.answers, DownstreamOptions{Rank: rank, World: 3})
			if err != nil {
				t.Fatal(err)
			}
			shards = append(shards, s.IDs()...)
		}
		slices.Sort(shards)
		if !slices.Equal(shards, slices.Sorted(slices.Values(txt.IDs(0)))) {
			t.Errorf("%s: shards cover %d ids of %d", c.db, len(shards), len(txt.IDs(0)))
		}
	}
}
