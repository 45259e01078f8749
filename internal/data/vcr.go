package data

import (
	"fmt"

	"uniter/internal/db"
)

// VCR token types (data/vcr.py): the question and [CLS] 0, regions 1, the
// answer 2, the rationale 3. The [SEP] that opens a segment has that
// segment's type.
const (
	VCRTypeQuestion  = 0
	VCRTypeAnswer    = 2
	VCRTypeRationale = 3
)

// VCR row layouts: how many rows one example makes.
const (
	// VCRChoiceRows is a training example: one task (Q->A or QA->R) with
	// its four choices, Label the right one.
	VCRChoiceRows = 4
	// VCRValRows is a validation example: the four Q->A rows, then the
	// four QA->R rows built with the true answer (train_vcr.py's "val").
	VCRValRows = 8
	// VCRTestRows is an inference example: the four Q->A rows, then the
	// four rationales after each of the four answers (VcrEvalDataset
	// "test", which inf_vcr.py always uses).
	VCRTestRows = 20
)

// VCR id2len side files (VcrTxtTokLmdb reads the one of its task).
const (
	VCRLensQA  = "id2len_qa.json"
	VCRLensQAR = "id2len_qar.json"
)

// VCRSet is a VCR dataset: a txt_db of questions with four answers and
// four rationales, and each example's two images, the ground-truth boxes
// (gt, first) and the detected boxes (det); either may be absent, as in
// the original. It has no epoch-dependent randomness.
//
// A training set (train true) is the original's ConcatDatasetWithLens of
// a Q->A and a QA->R dataset: every Q->A example of at most MaxTxtLen word
// pieces (id2len_qa.json), then every QA->R one (id2len_qar.json), each a
// four-row example labelled with its right choice. An evaluation set has
// one example per id of id2len_qar.json, VCRValRows or (all true, or a
// split without targets) VCRTestRows rows, labelled 4*qa_target +
// qar_target.
type VCRSet struct {
	txt      *db.TxtDB
	gt, det  *db.ImgDB
	cls, sep int32
	imgDim   int
	rows     int // rows per example
	maxWords int
	items    []vcrEntry
}

type vcrEntry struct {
	id  string
	qar bool // training: a QA->R example
	tl  int
	gt  string // image names ("" without that db)
	det string
	nbb int
}

// NewVCRSet reads txt's id2len_qa.json / id2len_qar.json and each
// example's images, keeping this rank's share. all builds VCRTestRows
// rows per evaluation example even when the split has targets (what
// uniter eval scores, as inf_vcr.py does).
func NewVCRSet(txt *db.TxtDB, gt, det *db.ImgDB, train, all bool, opts DownstreamOptions) (*VCRSet, error) {
	if gt == nil && det == nil {
		return nil, fmt.Errorf("vcr: txt_db %s: no img_db: want the ground-truth one, the detected one or both", txt.Dir())
	}
	world := opts.World
	if world == 0 {
		world = 1
	}
	meta := txt.Meta()
	s := &VCRSet{txt: txt, gt: gt, det: det, cls: int32(meta.CLS), sep: int32(meta.SEP), imgDim: opts.ImgDim, maxWords: opts.MaxWords}
	files := []string{VCRLensQAR}
	if train {
		files = []string{VCRLensQA, VCRLensQAR}
	}
	for _, f := range files {
		ids, lens, err := txt.ReadLens(f)
		if err != nil {
			return nil, fmt.Errorf("vcr: %w (a VCR txt_db has %s and %s)", err, VCRLensQA, VCRLensQAR)
		}
		var keep []string
		for _, id := range ids {
			if !train || opts.MaxTxtLen <= 0 || lens[id] <= opts.MaxTxtLen {
				keep = append(keep, id)
			}
		}
		if keep, err = Shard(keep, opts.Rank, world); err != nil {
			return nil, err
		}
		for _, id := range keep {
			e := vcrEntry{id: id, qar: f == VCRLensQAR && train, tl: lens[id]}
			names, ok := txt.Images(id)
			if !ok || len(names) != 2 {
				return nil, fmt.Errorf("vcr: txt_db %s: key %q: txt2img.json has %v, want [ground-truth, detected] image names", txt.Dir(), id, names)
			}
			for k, im := range []*db.ImgDB{gt, det} {
				if im == nil {
					continue
				}
				n, err := im.NBB(names[k])
				if err != nil {
					return nil, fmt.Errorf("vcr: txt_db %s: key %q: %w", txt.Dir(), id, err)
				}
				e.nbb += n
				if k == 0 {
					e.gt = names[k]
				} else {
					e.det = names[k]
				}
			}
			s.items = append(s.items, e)
		}
	}
	if len(s.items) == 0 {
		return nil, fmt.Errorf("vcr: txt_db %s: no examples of at most %d word pieces for rank %d of %d", txt.Dir(), opts.MaxTxtLen, opts.Rank, world)
	}
	switch {
	case train:
		s.rows = VCRChoiceRows
	case all:
		s.rows = VCRTestRows
	default:
		// A split without targets scores every rationale after every
		// answer, as the original's "test" dataset.
		s.rows = VCRValRows
		ex, err := txt.Get(s.items[0].id)
		if err != nil {
			return nil, err
		}
		if qa, _, err := s.targets(s.items[0].id, ex); err != nil {
			return nil, err
		} else if qa < 0 {
			s.rows = VCRTestRows
		}
	}
	if s.imgDim == 0 {
		ims, err := s.images(0)
		if err != nil {
			return nil, err
		}
		s.imgDim = ims[0].Dim
	}
	return s, nil
}

// Len is the number of examples of this rank (training: Q->A and QA->R
// examples together).
func (s *VCRSet) Len() int { return len(s.items) }

// IDs returns the examples' txt_db ids in index order.
func (s *VCRSet) IDs() []string {
	out := make([]string, len(s.items))
	for i, e := range s.items {
		out[i] = e.id
	}
	return out
}

// RowsPerExample is VCRChoiceRows, VCRValRows or VCRTestRows.
func (s *VCRSet) RowsPerExample() int { return s.rows }

// ImgDim is the region feature size.
func (s *VCRSet) ImgDim() int { return s.imgDim }

// Lens are the sampler lengths as data/vcr.py counts them: the id2len of
// the example's task plus both images' regions (once, though the example
// makes several rows).
func (s *VCRSet) Lens(string, int) ([]int, error) {
	out := make([]int, len(s.items))
	for i, e := range s.items {
		out[i] = e.tl + e.nbb
	}
	return out, nil
}

// Build returns the loader's build function.
func (s *VCRSet) Build(string) BuildFunc[*Batch] { return buildRows(s.Rows, s.imgDim, s.rows) }

// images reads example i's images: the ground-truth boxes first.
func (s *VCRSet) images(i int) ([]*db.Image, error) {
	e := s.items[i]
	var out []*db.Image
	for _, p := range []struct {
		d    *db.ImgDB
		name string
	}{{s.gt, e.gt}, {s.det, e.det}} {
		if p.d == nil {
			continue
		}
		im, err := p.d.GetFeat(p.name)
		if err != nil {
			return nil, err
		}
		if s.imgDim != 0 && im.Dim != s.imgDim {
			return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", p.d.Dir(), p.name, im.Dim, s.imgDim)
		}
		out = append(out, im)
	}
	return out, nil
}

// targets reads qa_target and qar_target (-1 or absent on the test split).
func (s *VCRSet) targets(id string, ex db.Example) (qa, qar int, err error) {
	get := func(f string) (int, error) {
		if !ex.Has(f) || ex.IsNull(f) {
			return -1, nil
		}
		v, err := ex.Int(f)
		if err != nil {
			return 0, err
		}
		if v < -1 || v > 3 {
			return 0, fmt.Errorf("txt_db %s: key %q: %s %d, want 0 to 3 (-1: none)", s.txt.Dir(), id, f, v)
		}
		return int(v), nil
	}
	if qa, err = get("qa_target"); err != nil {
		return
	}
	qar, err = get("qar_target")
	return
}

// choices reads input_ids_as or input_ids_rs, which must hold four lists.
func (s *VCRSet) choices(id string, ex db.Example, field string) ([][]int32, error) {
	l, err := ex.IntLists(field)
	if err != nil {
		return nil, err
	}
	if len(l) != 4 {
		return nil, fmt.Errorf("txt_db %s: key %q: %s has %d choices, want 4", s.txt.Dir(), id, field, len(l))
	}
	return l, nil
}

// Rows builds example i's rows. Q->A rows are [CLS] Q [SEP] A [SEP] with
// types 0 (CLS, Q) and 2 ([SEP] A [SEP]); QA->R rows are [CLS] Q [SEP] A
// [SEP] R [SEP] with types 0, 2 ([SEP] A) and 3 ([SEP] R [SEP]).
func (s *VCRSet) Rows(i int) ([]*Example, error) {
	t, err := s.texts(i)
	if err != nil {
		return nil, err
	}
	e, q, as, rs, qa, qar := t.e, t.q, t.as, t.rs, t.qa, t.qar
	ims, err := s.images(i)
	if err != nil {
		return nil, err
	}
	var texts [][]int32
	var types [][]int32
	add := func(a, r []int32) {
		ids, ty := s.row(q, a, r)
		texts, types = append(texts, ids), append(types, ty)
	}
	label, noLabel := int32(0), false
	switch {
	case s.rows == VCRChoiceRows && !e.qar:
		if qa < 0 {
			return nil, fmt.Errorf("vcr: txt_db %s: key %q: no qa_target to train on", s.txt.Dir(), e.id)
		}
		for _, a := range as {
			add(a, nil)
		}
		label = int32(qa)
	case s.rows == VCRChoiceRows:
		if qa < 0 || qar < 0 {
			return nil, fmt.Errorf("vcr: txt_db %s: key %q: no qa_target/qar_target to train on", s.txt.Dir(), e.id)
		}
		for _, r := range rs {
			add(as[qa], r)
		}
		label = int32(qar)
	default:
		for _, a := range as {
			add(a, nil)
		}
		if s.rows == VCRValRows {
			if qa < 0 {
				return nil, fmt.Errorf("vcr: txt_db %s: key %q: no qa_target, where the split's first example has one", s.txt.Dir(), e.id)
			}
			for _, r := range rs {
				add(as[qa], r)
			}
		} else {
			for _, a := range as {
				for _, r := range rs {
					add(a, r)
				}
			}
		}
		if qa < 0 || qar < 0 {
			noLabel = true
		} else {
			label = int32(4*qa + qar)
		}
	}
	out := make([]*Example, len(texts))
	for r := range texts {
		x := &Example{ID: e.id, InputIDs: texts[r], TxtTypeIDs: types[r], Label: label, NoLabel: noLabel}
		for _, im := range ims {
			AppendRegions(x, im, 1)
		}
		out[r] = x
	}
	return out, nil
}

// vcrTexts are one example's question, answer and rationale choices and
// targets (-1 where the split has none).
type vcrTexts struct {
	e       vcrEntry
	q       []int32
	as, rs  [][]int32
	qa, qar int
}

// texts reads example i's texts and targets from the txt_db.
func (s *VCRSet) texts(i int) (vcrTexts, error) {
	var t vcrTexts
	if i < 0 || i >= len(s.items) {
		return t, fmt.Errorf("vcr: txt_db %s: example %d of %d", s.txt.Dir(), i, len(s.items))
	}
	t.e = s.items[i]
	ex, err := s.txt.Get(t.e.id)
	if err != nil {
		return t, err
	}
	if t.q, err = ex.InputIDs(); err != nil {
		return t, err
	}
	if t.as, err = s.choices(t.e.id, ex, "input_ids_as"); err != nil {
		return t, err
	}
	if t.rs, err = s.choices(t.e.id, ex, "input_ids_rs"); err != nil {
		return t, err
	}
	t.qa, t.qar, err = s.targets(t.e.id, ex)
	return t, err
}

// row is VCRRow with the set's specials, cut to the position table: a row
// longer than MaxWords word pieces plus [CLS] and the last [SEP] keeps its
// final [SEP], so that an evaluation does not fail on one long example.
func (s *VCRSet) row(q, a, r []int32) (ids, types []int32) {
	ids, types = VCRRow(s.cls, s.sep, q, a, r)
	if s.maxWords > 0 && len(ids) > s.maxWords+2 {
		ids = append(ids[:s.maxWords+1], s.sep)
		types = types[:s.maxWords+2]
	}
	return ids, types
}

// VCRRow joins a question q and an answer a, and with r non-nil a
// rationale, into a row as data/vcr.py does: [CLS] q [SEP] a [SEP] with
// types 0 for [CLS] and q, 2 for "[SEP] a [SEP]"; with a rationale
// [CLS] q [SEP] a [SEP] r [SEP], types 0, 2 for "[SEP] a", 3 for
// "[SEP] r [SEP]".
func VCRRow(cls, sep int32, q, a, r []int32) (ids, types []int32) {
	ids = append(append(append(ids, cls), q...), sep)
	for range 1 + len(q) {
		types = append(types, VCRTypeQuestion)
	}
	types = append(types, VCRTypeAnswer)
	ids = append(append(ids, a...), sep)
	for range a {
		types = append(types, VCRTypeAnswer)
	}
	if r == nil {
		return ids, append(types, VCRTypeAnswer)
	}
	types = append(types, VCRTypeRationale)
	ids = append(append(ids, r...), sep)
	for range len(r) + 1 {
		types = append(types, VCRTypeRationale)
	}
	return ids, types
}

// VCRTextLens are the lengths a VCR txt_db records for an example in
// id2len_qa.json and id2len_qar.json: the word pieces (no specials) of the
// question and its longest answer, and of the question, the true answer
// (the longest without a target) and the longest rationale, so that
// max_txt_len keeps only examples whose every row fits.
func VCRTextLens(q []int32, as, rs [][]int32, qaTarget int) (qa, qar int) {
	longest := func(l [][]int32) int {
		n := 0
		for _, x := range l {
			n = max(n, len(x))
		}
		return n
	}
	a := longest(as)
	if qaTarget >= 0 && qaTarget < len(as) {
		a = len(as[qaTarget])
	}
	return len(q) + longest(as), len(q) + a + longest(rs)
}
