package data

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"uniter/internal/db"
)

// copyTxtDB copies the txt_db at rel of the test world into a temporary
// directory, where its side files can be edited.
func copyTxtDB(t *testing.T, dir, rel string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(rel))
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "lock.mdb" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, rel, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestRESet reads the synthetic world's RE dbs as train_re.py does: on the
// ground-truth boxes every sentence has its target region, the position of
// its ann_id among its image's ann_ids, whose box is the target box; on the
// detected boxes only the target box; sentences follow refs.json.
func TestRESet(t *testing.T) {
	dir, _ := testWorld(t)
	txt := openTxt(t, dir, "txt/re_val.db")
	gt := openREImg(t, dir, "img/re_coco_gt_val")
	det := openREImg(t, dir, "img/re_coco_det_val")
	var refs []struct {
		SentIDs []int64 `json:"sent_ids"`
	}
	readJSONFile(t, filepath.Join(txt.Dir(), "refs.json"), &refs)
	var want []string
	for _, r := range refs {
		for _, s := range r.SentIDs {
			want = append(want, strconv.FormatInt(s, 10))
		}
	}
	gs, err := NewRESet(txt, gt, true, DownstreamOptions{MaxTxtLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gs.IDs(), want) || !gs.GroundTruth() {
		t.Fatalf("gt ids %v, refs.json order %v", gs.IDs(), want)
	}
	for i := range gs.Len() {
		rows, err := gs.Rows(i)
		if err != nil {
			t.Fatal(err)
		}
		e := rows[0]
		if e.NoLabel || int(e.Label) >= e.NBB || len(e.Boxes) != REBoxDim {
			t.Fatalf("gt sentence %s: label %d of %d regions, boxes %v", e.ID, e.Label, e.NBB, e.Boxes)
		}
		// The target region's box in pixels is the target box.
		pos := e.ImgPos[int(e.Label)*PosDim:]
		w, h := e.Boxes[4], e.Boxes[5]
		for k, v := range []float64{float64(pos[0]) * w, float64(pos[1]) * h, float64(pos[4]) * w, float64(pos[5]) * h} {
			if d := v - e.Boxes[k]; d > 1 || d < -1 {
				t.Fatalf("gt sentence %s: target region box %d = %v, target box %v", e.ID, k, v, e.Boxes[:4])
			}
		}
	}
	ds, err := NewRESet(txt, det, false, DownstreamOptions{MaxTxtLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ds.Rows(0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ds.IDs(), want) || ds.GroundTruth() || !rows[0].NoLabel || len(rows[0].Boxes) != REBoxDim {
		t.Errorf("det set: ids %v gt %v row %+v", ds.IDs(), ds.GroundTruth(), rows[0])
	}
}

// TestRESetMissingTarget: a sentence whose target box the ground-truth
// img_db lacks (its ann_id not among its image's ann_ids) fails when the
// set opens, in one sentence naming the file, the key and the value.
func TestRESetMissingTarget(t *testing.T) {
	dir, _ := testWorld(t)
	out := copyTxtDB(t, dir, "txt/re_val.db")
	var images []map[string]any
	readJSONFile(t, filepath.Join(out, "images.json"), &images)
	// Replace every ann_id of the first image by another id.
	first := images[0]["ann_ids"].([]any)
	for i := range first {
		first[i] = 999000000 + float64(i)
	}
	b, _ := json.Marshal(images)
	if err := os.WriteFile(filepath.Join(out, "images.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	txt, err := db.OpenTxtDB(out)
	if err != nil {
		t.Fatal(err)
	}
	defer txt.Close()
	gt := openREImg(t, dir, "img/re_coco_gt_val")
	_, err = NewRESet(txt, gt, true, DownstreamOptions{MaxTxtLen: -1})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, w := range []string{filepath.Join(out, "data.mdb"), "key ", "ann_id ", "999000000", "has no box for its target"} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not name %q", msg, w)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	// The detected boxes need no target region.
	if _, err := NewRESet(txt, openREImg(t, dir, "img/re_coco_det_val"), false, DownstreamOptions{MaxTxtLen: -1}); err != nil {
		t.Errorf("det: %v", err)
	}
}

// TestSequentialSampler: batches of consecutive indices, the last one
// partial, the same every epoch (train_re.py's order).
func TestSequentialSampler(t *testing.T) {
	s := TokenBucketSampler{MaxTokens: 4, BucketSize: 1 << 30, SizeMultiple: 1, Sequential: true, Seed: 7}
	lens := make([]int, 10)
	for i := range lens {
		lens[i] = 1
	}
	want := [][]int{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}
	for epoch := range 3 {
		got, err := s.Batches(lens, epoch)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, want, slices.Equal[[]int]) {
			t.Errorf("epoch %d: %v, want %v", epoch, got, want)
		}
	}
}
