package data

import (
	"fmt"

	"uniter/internal/db"
)

// NLVR2 input variants (data/nlvr2.py): how a statement and its two images
// become model rows.
const (
	// NLVR2Paired makes two rows per example, the statement with the left
	// image and the statement with the right one.
	NLVR2Paired = "paired"
	// NLVR2Triplet makes one row: the statement, the left image's regions,
	// then the right image's.
	NLVR2Triplet = "triplet"
)

// NLVR2Set is an NLVR2 dataset (a txt_db of statements on image pairs with
// its img_db) as this rank sees it. It has no epoch-dependent randomness,
// so the task and epoch arguments of Lens and Build are ignored.
type NLVR2Set struct {
	*txtImgSet
	paired     bool
	useImgType bool
}

// NewNLVR2Set reads the ids, text lengths and both images' region counts
// of txt and img and keeps this rank's share. variant is NLVR2Paired or
// NLVR2Triplet; useImgType gives the right image's regions type 2 (the
// left's are type 1), else every region is type 1.
func NewNLVR2Set(txt *db.TxtDB, img *db.ImgDB, variant string, useImgType bool, opts DownstreamOptions) (*NLVR2Set, error) {
	if variant != NLVR2Paired && variant != NLVR2Triplet {
		return nil, fmt.Errorf("nlvr2: variant %q (want %q or %q)", variant, NLVR2Paired, NLVR2Triplet)
	}
	base, err := newTxtImgSet(txt, img, 2, opts)
	if err != nil {
		return nil, err
	}
	return &NLVR2Set{txtImgSet: base, paired: variant == NLVR2Paired, useImgType: useImgType}, nil
}

// rowsPerExample is 2 for the paired variant, 1 for the triplet.
func (s *NLVR2Set) rowsPerExample() int {
	if s.paired {
		return 2
	}
	return 1
}

// Lens returns the sampler lengths as data/nlvr2.py counts them: paired
// 2*tl + nbb0 + nbb1 (the statement is in both rows), triplet tl + nbb0 +
// nbb1, tl without specials.
func (s *NLVR2Set) Lens(string, int) ([]int, error) { return s.lens(s.rowsPerExample()), nil }

// Build returns the loader's build function. Paired batches have
// RowsPerExample 2; Labels are per example, nil on a split without
// targets.
func (s *NLVR2Set) Build(string) BuildFunc[*Batch] {
	return buildRows(s.Rows, s.imgDim, s.rowsPerExample())
}

// Rows builds example i: two rows (paired) or one (triplet), all carrying
// the example's id and label.
func (s *NLVR2Set) Rows(i int) ([]*Example, error) {
	fields, ids, err := s.text(i)
	if err != nil {
		return nil, err
	}
	label, noLabel, err := s.label(s.ids[i], fields)
	if err != nil {
		return nil, err
	}
	ims, err := s.images(i)
	if err != nil {
		return nil, err
	}
	// Which images each row holds: the left is image 0, the right image 1.
	layout := [][]int{{0, 1}}
	if s.paired {
		layout = [][]int{{0}, {1}}
	}
	rows := make([]*Example, len(layout))
	for r, imgs := range layout {
		ex := &Example{ID: s.ids[i], InputIDs: ids, Label: label, NoLabel: noLabel}
		for _, k := range imgs {
			typeID := int32(1)
			if s.useImgType {
				typeID = int32(k + 1)
			}
			AppendRegions(ex, ims[k], typeID)
		}
		rows[r] = ex
	}
	return rows, nil
}

// label reads target: 1 (true) or 0 (false), as an int or a bool; absent or
// None (the test split) means no label.
func (s *NLVR2Set) label(id string, ex db.Example) (label int32, none bool, err error) {
	if !ex.Has("target") || ex.IsNull("target") {
		return 0, true, nil
	}
	v, err := ex.Int("target")
	if err != nil {
		return 0, false, err
	}
	if v != 0 && v != 1 {
		return 0, false, fmt.Errorf("txt_db %s: key %q: target %d, want 0 or 1", s.txt.Dir(), id, v)
	}
	return int32(v), false, nil
}
