package data

import (
	"path/filepath"
	"slices"
	"testing"

	"uniter/internal/db"
)

// vcrSynth writes a small world where every image has a VCR question and
// opens its val split: txt_db, ground-truth db (feat_numbb100), detections.
func vcrSynth(t *testing.T) (*db.TxtDB, *db.ImgDB, *db.ImgDB) {
	t.Helper()
	dir := t.TempDir()
	if _, err := Synth(dir, SynthOptions{Seed: 3, Images: 8, ValImages: 8, ImgDim: 16, Captions: 1, Questions: 1, GTFraction: 1}); err != nil {
		t.Fatal(err)
	}
	txt, err := db.OpenTxtDB(filepath.Join(dir, "txt", "vcr_val.db"))
	if err != nil {
		t.Fatal(err)
	}
	o := db.DefaultImgDBOptions()
	o.ConfTh, o.NumBB = -1, 100
	gt, err := db.OpenImgDB(filepath.Join(dir, "img", "vcr_gt_val"), o)
	if err != nil {
		t.Fatalf("the synthetic VCR gt db is not feat_numbb100: %v", err)
	}
	det, err := db.OpenImgDB(filepath.Join(dir, "img", "synth_val"), db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { txt.Close(); gt.Close(); det.Close() })
	return txt, gt, det
}

// TestVCRSetLayouts checks the training set (Q->A examples then QA->R
// ones, 4 rows, the right choice as label), the validation layout (8
// rows, label 4*qa+qar) and the test layout (20 rows), each row with the
// gt regions then the detected ones, and the sampler lengths.
func TestVCRSetLayouts(t *testing.T) {
	txt, gt, det := vcrSynth(t)
	n := len(txt.IDs(-1))
	train, err := NewVCRSet(txt, gt, det, true, false, DownstreamOptions{MaxTxtLen: 220})
	if err != nil {
		t.Fatal(err)
	}
	if train.Len() != 2*n || train.RowsPerExample() != VCRChoiceRows {
		t.Fatalf("training set: %d examples of %d rows, want %d of 4", train.Len(), train.RowsPerExample(), 2*n)
	}
	id := train.IDs()[0]
	ex, _ := txt.Get(id)
	q, _ := ex.InputIDs()
	as, _ := ex.IntLists("input_ids_as")
	rs, _ := ex.IntLists("input_ids_rs")
	qa, _ := ex.Int("qa_target")
	qar, _ := ex.Int("qar_target")
	names, _ := txt.Images(id)
	g, _ := gt.GetFeat(names[0])
	d, _ := det.GetFeat(names[1])
	lens, _ := train.Lens("vcr", 0)
	meta := txt.Meta()
	for k, c := range []struct {
		i     int
		label int64
		rows  [][2][]int32
	}{
		{0, qa, [][2][]int32{{as[0], nil}, {as[1], nil}, {as[2], nil}, {as[3], nil}}},
		{n, qar, [][2][]int32{{as[qa], rs[0]}, {as[qa], rs[1]}, {as[qa], rs[2]}, {as[qa], rs[3]}}},
	} {
		rows, err := train.Rows(c.i)
		if err != nil {
			t.Fatal(err)
		}
		for r, row := range rows {
			ids, types := VCRRow(int32(meta.CLS), int32(meta.SEP), q, c.rows[r][0], c.rows[r][1])
			if !slices.Equal(row.InputIDs, ids) || !slices.Equal(row.TxtTypeIDs, types) || row.Label != int32(c.label) || row.NBB != g.NBB+d.NBB {
				t.Errorf("case %d row %d: ids %v types %v label %d nbb %d", k, r, row.InputIDs, row.TxtTypeIDs, row.Label, row.NBB)
			}
			if !slices.Equal(row.ImgFeat[:g.NBB*g.Dim], g.Features[:g.NBB*g.Dim]) || !slices.Equal(row.ImgFeat[g.NBB*g.Dim:], d.Features[:d.NBB*d.Dim]) {
				t.Errorf("case %d row %d: regions are not gt then detected", k, r)
			}
		}
		want := VCRTextLensOf(t, q, as, rs, int(qa), c.i >= n) + 100 + d.NBB
		if lens[c.i] != want {
			t.Errorf("case %d: sampler length %d, want %d", k, lens[c.i], want)
		}
	}
	for _, c := range []struct {
		all  bool
		rows int
	}{{false, VCRValRows}, {true, VCRTestRows}} {
		s, err := NewVCRSet(txt, gt, det, false, c.all, DownstreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rows, err := s.Rows(0)
		if err != nil || len(rows) != c.rows || s.RowsPerExample() != c.rows || rows[0].Label != int32(4*qa+qar) {
			t.Errorf("evaluation layout: %d rows (want %d), label %d, %v", len(rows), c.rows, rows[0].Label, err)
		}
	}
}

// VCRTextLensOf is id2len_qa (qar false) or id2len_qar of an example.
func VCRTextLensOf(t *testing.T, q []int32, as, rs [][]int32, qa int, qar bool) int {
	a, r := VCRTextLens(q, as, rs, qa)
	if qar {
		return r
	}
	return a
}

// TestVCRPretrainExample checks pretrain_vcr.py's text layout: types (the
// [SEP] before A 0, before R 2; [CLS] 0; the last [SEP] the last
// segment's), MLM labels only inside the segments and at least one per
// segment, and region masks over both images.
func TestVCRPretrainExample(t *testing.T) {
	txt, gt, det := vcrSynth(t)
	s, err := NewVCRPretrainSet(txt, gt, det, PretrainOptions{MaxTxtLen: 220, Seed: 1, MaskProb: 0.15})
	if err != nil {
		t.Fatal(err)
	}
	n := s.Len() / 2
	ex, _ := txt.Get(s.IDs()[0])
	q, _ := ex.InputIDs()
	as, _ := ex.IntLists("input_ids_as")
	rs, _ := ex.IntLists("input_ids_rs")
	qa, _ := ex.Int("qa_target")
	qar, _ := ex.Int("qar_target")
	meta := txt.Meta()
	cls, sep := int32(meta.CLS), int32(meta.SEP)
	rep := func(v int32, k int) []int32 { return slices.Repeat([]int32{v}, k) }
	for _, c := range []struct {
		i          int
		ids, types []int32
	}{
		{0, slices.Concat([]int32{cls}, q, []int32{sep}, as[qa], []int32{sep}), slices.Concat([]int32{0}, rep(0, len(q)), []int32{0}, rep(2, len(as[qa])), []int32{2})},
		{n, slices.Concat([]int32{cls}, q, []int32{sep}, as[qa], []int32{sep}, rs[qar], []int32{sep}),
			slices.Concat([]int32{0}, rep(0, len(q)), []int32{0}, rep(2, len(as[qa])), []int32{2}, rep(3, len(rs[qar])), []int32{3})},
	} {
		plain, err := s.Example(TaskMRFR, 0, c.i)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(plain.InputIDs, c.ids) || !slices.Equal(plain.TxtTypeIDs, c.types) {
			t.Errorf("example %d: ids %v types %v, want %v %v", c.i, plain.InputIDs, plain.TxtTypeIDs, c.ids, c.types)
		}
		if plain.NBB < 2 || !slices.Contains(plain.ImgMask, true) || plain.MLMLabels != nil {
			t.Errorf("example %d: mrfr nbb %d mask %v", c.i, plain.NBB, plain.ImgMask)
		}
		mlm, err := s.Example(TaskMLM, 0, c.i)
		if err != nil {
			t.Fatal(err)
		}
		seg := -1
		picked := map[int]bool{}
		for p, id := range c.ids {
			if id == cls || id == sep {
				seg++
				if mlm.MLMLabels[p] != -1 {
					t.Errorf("example %d: special at %d is an MLM target", c.i, p)
				}
				continue
			}
			if mlm.MLMLabels[p] != -1 {
				picked[seg] = true
				if mlm.MLMLabels[p] != id {
					t.Errorf("example %d: label %d at %d, want %d", c.i, mlm.MLMLabels[p], p, id)
				}
			}
		}
		if want := 2 + btoi(c.i >= n); len(picked) != want {
			t.Errorf("example %d: MLM targets in %d segments, want %d", c.i, len(picked), want)
		}
	}
	if _, err := s.Example(TaskITM, 0, 0); err == nil {
		t.Error("itm: no error")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
