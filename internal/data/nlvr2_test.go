package data

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// nlvr2Example is an NLVR2 txt_db value; a target of "absent" leaves the
// field out.
func nlvr2Example(ids []int, left, right string, target any) map[string]any {
	ex := map[string]any{"input_ids": ids, "img_fname": []string{left, right}, "sentence": "s"}
	if target != "absent" {
		ex["target"] = target
	}
	return ex
}

func TestNLVR2Set(t *testing.T) {
	img := writeTinyImgDB(t)
	a, b, c := tinyFeat("a.npz"), tinyFeat("b.npz"), tinyFeat("c.npz")
	cat := func(parts ...[]float32) []float32 { return slices.Concat(parts...) }
	pad := func(n int) []float32 { return make([]float32, n*tinyDim) }
	// dev-0: words [5 6] on a (3 regions) and b (1); dev-1: [7] on b and c
	// (2). The second target is a bool, as some dbs store it.
	train := map[string]map[string]any{
		"dev-0-0-0": nlvr2Example([]int{5, 6}, "a.npz", "b.npz", 1),
		"dev-0-1-0": nlvr2Example([]int{7}, "b.npz", "c.npz", false),
	}
	test := map[string]map[string]any{
		"dev-0-0-0": nlvr2Example([]int{5, 6}, "a.npz", "b.npz", nil),
		"dev-0-1-0": nlvr2Example([]int{7}, "b.npz", "c.npz", "absent"),
	}
	ids := []string{"dev-0-0-0", "dev-0-1-0"}
	cases := []struct {
		name       string
		examples   map[string]map[string]any
		variant    string
		useImgType bool
		lens       []int
		labels     []int32
		rows       int
		inputIDs   []int32
		nbb        []int
		types      []int32
		feat       []float32
	}{
		{"paired", train, NLVR2Paired, true, []int{2*2 + 3 + 1, 2*1 + 1 + 2}, []int32{1, 0}, 2,
			[]int32{101, 5, 6, 102, 101, 5, 6, 102, 101, 7, 102, 0, 101, 7, 102, 0}, []int{3, 1, 1, 2},
			[]int32{1, 1, 1, 2, 0, 0, 1, 0, 0, 2, 2, 0},
			cat(a, b, pad(2), b, pad(2), c, pad(1))},
		{"paired without types", train, NLVR2Paired, false, []int{8, 5}, []int32{1, 0}, 2,
			[]int32{101, 5, 6, 102, 101, 5, 6, 102, 101, 7, 102, 0, 101, 7, 102, 0}, []int{3, 1, 1, 2},
			[]int32{1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0},
			cat(a, b, pad(2), b, pad(2), c, pad(1))},
		{"triplet", train, NLVR2Triplet, true, []int{2 + 3 + 1, 1 + 1 + 2}, []int32{1, 0}, 1,
			[]int32{101, 5, 6, 102, 101, 7, 102, 0}, []int{4, 3},
			[]int32{1, 1, 1, 2, 1, 2, 2, 0},
			cat(a, b, b, c, pad(1))},
		{"triplet without types", train, NLVR2Triplet, false, []int{6, 4}, []int32{1, 0}, 1,
			[]int32{101, 5, 6, 102, 101, 7, 102, 0}, []int{4, 3},
			[]int32{1, 1, 1, 1, 1, 1, 1, 0},
			cat(a, b, b, c, pad(1))},
		{"paired test split", test, NLVR2Paired, true, []int{8, 5}, nil, 2,
			[]int32{101, 5, 6, 102, 101, 5, 6, 102, 101, 7, 102, 0, 101, 7, 102, 0}, []int{3, 1, 1, 2},
			[]int32{1, 1, 1, 2, 0, 0, 1, 0, 0, 2, 2, 0},
			cat(a, b, pad(2), b, pad(2), c, pad(1))},
	}
	for _, c := range cases {
		set, err := NewNLVR2Set(writeTinyTxtDB(t, "nlvr2.db", c.examples), img, c.variant, c.useImgType, DownstreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		lens, err := set.Lens("nlvr2", 0)
		if err != nil {
			t.Fatal(err)
		}
		bt, err := buildAll(t, set.Build("nlvr2"), 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		gather := make([]int32, 0, bt.B*bt.S)
		for r, tl := range bt.TxtLens {
			for j := range bt.S {
				if j >= tl && j < tl+bt.NBB[r] {
					gather = append(gather, int32(bt.Tmax+j-tl))
				} else {
					gather = append(gather, int32(j))
				}
			}
		}
		checkFields(t, c.name, map[string][2]any{
			"Lens":           {lens, c.lens},
			"B":              {bt.B, len(c.nbb)},
			"RowsPerExample": {bt.RowsPerExample, c.rows},
			"IDs":            {bt.IDs, ids},
			"Labels":         {bt.Labels, c.labels},
			"InputIDs":       {bt.InputIDs, c.inputIDs},
			"NBB":            {bt.NBB, c.nbb},
			"ImgTypeIDs":     {bt.ImgTypeIDs, c.types},
			"ImgFeat":        {bt.ImgFeat, c.feat},
			"GatherIndex":    {bt.GatherIndex, gather},
			"Targets":        {bt.Targets, []float32(nil)},
		})
	}
}

func TestNLVR2SetErrors(t *testing.T) {
	img := writeTinyImgDB(t)
	good := nlvr2Example([]int{5}, "a.npz", "b.npz", 1)
	cases := []struct {
		name     string
		examples map[string]map[string]any
		variant  string
		indices  []int
		want     []string // substrings of the error, at construction or build
	}{
		{"missing second image", map[string]map[string]any{"dev-3-0-1": nlvr2Example([]int{5}, "a.npz", "zz.npz", 1)},
			NLVR2Paired, nil, []string{"nlvr2_dev.db", `key "dev-3-0-1"`, `"zz.npz"`, "not in db"}},
		{"one image", map[string]map[string]any{"dev-1": {"input_ids": []int{5}, "img_fname": "a.npz", "target": 1}},
			NLVR2Triplet, nil, []string{`key "dev-1"`, "want 2 image name(s)"}},
		{"target 2", map[string]map[string]any{"dev-2": nlvr2Example([]int{5}, "a.npz", "b.npz", 2)},
			NLVR2Paired, []int{0}, []string{"nlvr2_dev.db", `key "dev-2"`, "target 2, want 0 or 1"}},
		{"target a string", map[string]map[string]any{"dev-2": nlvr2Example([]int{5}, "a.npz", "b.npz", "True")},
			NLVR2Triplet, []int{0}, []string{`key "dev-2"`, `field "target"`}},
		{"labels for some examples", map[string]map[string]any{"1": good, "2": nlvr2Example([]int{5}, "a.npz", "b.npz", nil)},
			NLVR2Paired, []int{0, 1}, []string{"labels for only 1 of the 2 examples"}},
		{"bad variant", map[string]map[string]any{"1": good}, "paired-attn", nil, []string{`variant "paired-attn"`}},
	}
	for _, c := range cases {
		set, err := NewNLVR2Set(writeTinyTxtDB(t, "nlvr2_dev.db", c.examples), img, c.variant, true, DownstreamOptions{})
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

// TestNLVR2SynthEval runs the synthetic world's NLVR2 validation set
// through the evaluation batcher in both variants: every example once, in
// order, with the db's target as its label and the paired rows in pairs.
func TestNLVR2SynthEval(t *testing.T) {
	dir, _ := testWorld(t)
	txt := openTxt(t, dir, "txt/nlvr2_val.db")
	img := openImg(t, dir, "img/synth_val")
	for _, variant := range []string{NLVR2Paired, NLVR2Triplet} {
		set, err := NewNLVR2Set(txt, img, variant, true, DownstreamOptions{MaxTxtLen: DefaultMaxTxtLen})
		if err != nil {
			t.Fatal(err)
		}
		lens, _ := set.Lens("", 0)
		var ids []string
		for _, b := range evalBatches(t, lens, set.Build(""), 600) {
			n := b.B / b.RowsPerExample
			if len(b.IDs) != n || len(b.Labels) != n {
				t.Fatalf("%s: %d rows of %d, %d ids, %d labels", variant, b.B, b.RowsPerExample, len(b.IDs), len(b.Labels))
			}
			for k, id := range b.IDs {
				ex, _ := txt.Get(id)
				want, _ := ex.Int("target")
				if int64(b.Labels[k]) != want {
					t.Fatalf("%s %s: label %d, db target %d", variant, id, b.Labels[k], want)
				}
				tokens := 0
				for r := k * b.RowsPerExample; r < (k+1)*b.RowsPerExample; r++ {
					tokens += b.TxtLens[r] - 2 + b.NBB[r]
				}
				// Paired rows repeat the statement, as the paired length counts.
				if tokens != lens[len(ids)] {
					t.Fatalf("%s %s: rows hold %d tokens, sampler length %d", variant, id, tokens, lens[len(ids)])
				}
				ids = append(ids, id)
			}
		}
		if !reflect.DeepEqual(ids, set.IDs()) {
			t.Errorf("%s: evaluation visited %d ids, the set has %d (or out of order)", variant, len(ids), set.Len())
		}
	}
}

// TestCollateRows checks the grouping rules paired NLVR2 batches rely on.
func TestCollateRows(t *testing.T) {
	row := func(id string, label int32, noLabel bool) *Example {
		ex := testExample(id, 2, 1, 2, 1)
		ex.Label, ex.NoLabel = label, noLabel
		return ex
	}
	cases := []struct {
		name       string
		rows       []*Example
		perExample int
		want       string // error substring; "" for success
	}{
		{"pairs", []*Example{row("x", 1, false), row("x", 1, false), row("y", 0, false), row("y", 0, false)}, 2, ""},
		{"odd rows", []*Example{row("x", 1, false), row("x", 1, false), row("y", 0, false)}, 2, "do not split"},
		{"zero rows per example", []*Example{row("x", 1, false)}, 0, "do not split"},
		{"ids differ", []*Example{row("x", 1, false), row("y", 1, false)}, 2, `differ in id ("x", "y")`},
		{"labels differ", []*Example{row("x", 1, false), row("x", 0, false)}, 2, "label"},
		{"some labelled", []*Example{row("x", 1, false), row("y", 0, true)}, 1, "labels for only 1 of the 2"},
	}
	for _, c := range cases {
		b, err := CollateRows(c.rows, 2, c.perExample)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want == "" && (b.B != 4 || b.RowsPerExample != 2 || !reflect.DeepEqual(b.IDs, []string{"x", "y"}) || !reflect.DeepEqual(b.Labels, []int32{1, 0})):
			t.Errorf("%s: B %d rows %d ids %v labels %v", c.name, b.B, b.RowsPerExample, b.IDs, b.Labels)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}
