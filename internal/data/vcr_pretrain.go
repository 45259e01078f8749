package data

import (
	"fmt"
	"os"
	"path/filepath"

	"uniter/internal/db"
)

// IsVCRTxtDB reports whether dir is a VCR txt_db: one with the
// id2len_qa.json and id2len_qar.json that VcrTxtTokLmdb reads. It is what
// makes a pretraining run the second-stage VCR pretraining: the original
// has a script of its own for it (pretrain_vcr.py) and no config key,
// while its config (pretrain-vcr-*.json) differs from the first stage's
// only in naming VCR dbs.
func IsVCRTxtDB(dir string) bool {
	for _, f := range []string{VCRLensQA, VCRLensQAR} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// VCRPretrainSet is a VCR dataset for the second-stage pretraining
// (data/pretrain_vcr.py): as the original's two datasets per task, every
// Q->A text of at most MaxTxtLen word pieces (id2len_qa.json) and then
// every QA->R text (id2len_qar.json), built with the true answer and
// rationale: [CLS] Q [SEP] A [SEP] and [CLS] Q [SEP] A [SEP] R [SEP], with
// the ground-truth-box regions then the detected ones (type 1). Token
// types follow the original exactly: Q and the [SEP] after it 0, A 2,
// the [SEP] after A 2, R 3; [CLS] takes the first word's type (0) and the
// last [SEP] the last word's (2, or 3 with a rationale). MLM masks each
// segment on its own (one word at least in each), so specials are never
// targets. mlm, mrfr, mrc and mrckl are supported; itm is not (the
// original has none here).
type VCRPretrainSet struct {
	*VCRSet
	meta db.Meta
	opts PretrainOptions
}

// NewVCRPretrainSet reads a VCR txt_db with its ground-truth-box db gt
// and detected-box db det (either may be nil).
func NewVCRPretrainSet(txt *db.TxtDB, gt, det *db.ImgDB, opts PretrainOptions) (*VCRPretrainSet, error) {
	if !(opts.MaskProb >= 0 && opts.MaskProb <= 1) {
		return nil, fmt.Errorf("pretrain data: region mask probability %v is not in [0, 1]", opts.MaskProb)
	}
	meta := txt.Meta()
	if meta.VRange[1] <= meta.VRange[0] {
		return nil, fmt.Errorf("txt_db %s: meta.json v_range %v is empty", txt.Dir(), meta.VRange)
	}
	set, err := NewVCRSet(txt, gt, det, true, false, DownstreamOptions{MaxTxtLen: opts.MaxTxtLen, Rank: opts.Rank, World: opts.World, ImgDim: opts.ImgDim})
	if err != nil {
		return nil, err
	}
	return &VCRPretrainSet{VCRSet: set, meta: meta, opts: opts}, nil
}

// Lens are the sampler lengths: the task's id2len plus both images'
// regions, for every pretraining task.
func (s *VCRPretrainSet) Lens(string, int) ([]int, error) { return s.VCRSet.Lens("", 0) }

// Example builds example i of a task's epoch; randomness comes from the
// seed, task, epoch and index only.
func (s *VCRPretrainSet) Example(task string, epoch, i int) (*Example, error) {
	t, err := s.texts(i)
	if err != nil {
		return nil, err
	}
	e, q, as, rs, qa, qar := t.e, t.q, t.as, t.rs, t.qa, t.qar
	if qa < 0 || (e.qar && qar < 0) {
		return nil, fmt.Errorf("vcr: txt_db %s: key %q: no qa_target/qar_target to pretrain on", s.txt.Dir(), e.id)
	}
	segs := [][]int32{q, as[qa]}
	segTypes := []int32{VCRTypeQuestion, VCRTypeAnswer}
	// The [SEP] before a segment: 0 before A, 2 before R (pretrain_vcr.py).
	sepTypes := []int32{0, VCRTypeQuestion, VCRTypeAnswer}
	if e.qar {
		segs = append(segs, rs[qar])
		segTypes = append(segTypes, VCRTypeRationale)
	}
	withSoft := task == TaskMRC || task == TaskMRCKL
	out := &Example{ID: e.id, Label: 1}
	cls, sep, mask := int32(s.meta.CLS), int32(s.meta.SEP), int32(s.meta.MASK)
	vr := [2]int32{int32(s.meta.VRange[0]), int32(s.meta.VRange[1])}
	out.InputIDs = []int32{cls}
	out.TxtTypeIDs = []int32{segTypes[0]}
	if task == TaskMLM {
		out.MLMLabels = []int32{-1}
	}
	for k, seg := range segs {
		if k > 0 {
			out.InputIDs = append(out.InputIDs, sep)
			out.TxtTypeIDs = append(out.TxtTypeIDs, sepTypes[k])
			if task == TaskMLM {
				out.MLMLabels = append(out.MLMLabels, -1)
			}
		}
		words := seg
		if task == TaskMLM {
			rng := newRNG(s.opts.Seed, streamMLM, uint64(epoch), uint64(i), uint64(k))
			var labels []int32
			if words, labels, err = MaskWords(rng, seg, mask, vr); err != nil {
				return nil, fmt.Errorf("txt_db %s: %w", s.txt.Dir(), err)
			}
			out.MLMLabels = append(out.MLMLabels, labels...)
		}
		out.InputIDs = append(out.InputIDs, words...)
		for range seg {
			out.TxtTypeIDs = append(out.TxtTypeIDs, segTypes[k])
		}
	}
	out.InputIDs = append(out.InputIDs, sep)
	out.TxtTypeIDs = append(out.TxtTypeIDs, segTypes[len(segs)-1])
	if task == TaskMLM {
		out.MLMLabels = append(out.MLMLabels, -1)
	}

	var soft []float32
	for _, p := range []struct {
		d    *db.ImgDB
		name string
	}{{s.gt, e.gt}, {s.det, e.det}} {
		if p.d == nil {
			continue
		}
		var im *db.Image
		if withSoft {
			im, err = p.d.Get(p.name)
		} else {
			im, err = p.d.GetFeat(p.name)
		}
		if err != nil {
			return nil, err
		}
		if im.Dim != s.imgDim {
			return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", p.d.Dir(), p.name, im.Dim, s.imgDim)
		}
		if withSoft {
			if im.SoftLabels == nil || im.NumLabels != LabelDim {
				return nil, fmt.Errorf("img_db %s: key %q: %s needs %d-way soft_labels, the db has %d", p.d.Dir(), p.name, task, LabelDim, im.NumLabels)
			}
			soft = append(soft, im.SoftLabels[:im.NBB*LabelDim]...)
		}
		AppendRegions(out, im, 1)
	}
	switch task {
	case TaskMLM:
	case TaskMRFR, TaskMRC, TaskMRCKL:
		rng := newRNG(s.opts.Seed, streamMRM, uint64(epoch), uint64(i))
		if err := ApplyRegionMask(out, MaskRegions(rng, out.NBB, s.opts.MaskProb), soft, s.imgDim); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("vcr pretraining: task %q: want %s, %s, %s or %s (pretrain_vcr.py has no itm)", task, TaskMLM, TaskMRFR, TaskMRC, TaskMRCKL)
	}
	return out, nil
}

// Build returns the loader's build function for a task.
func (s *VCRPretrainSet) Build(task string) BuildFunc[*Batch] {
	return buildExamples(s.Example, task, s.imgDim)
}
