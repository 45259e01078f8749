package data

import (
	"context"
	"fmt"
	"sync"

	"uniter/internal/db"
)

// Pretraining tasks: the task part of the official task keys
// ({task}_{dataset}).
const (
	TaskMLM   = "mlm"
	TaskMRFR  = "mrfr"
	TaskMRC   = "mrc"
	TaskMRCKL = "mrckl"
	TaskITM   = "itm"
)

// DefaultMaxTxtLen is the official limit on word pieces of training texts.
const DefaultMaxTxtLen = 60

// PretrainOptions configure a PretrainSet.
type PretrainOptions struct {
	// MaxTxtLen drops texts with more word pieces; <= 0 keeps all.
	MaxTxtLen int
	// Rank and World shard the examples: this rank keeps ids[rank::world].
	Rank, World int
	// Seed drives masking and ITM negatives, with the epoch and example.
	Seed uint64
	// ImgDim is the region feature size; 0 reads it from the first image.
	ImgDim int
	// MaskProb is the chance a region is masked in MRFR, MRC and MRC-kl
	// (mrm_prob, officially MaskProb). Zero is a valid value, not a
	// default: each example then masks the one region that is forced. MLM
	// always selects words with the original's fixed MaskProb.
	MaskProb float64
	// ITMNegProb is the chance an ITM example gets a mismatched image
	// (itm_neg_prob, officially ITMNegProb). Zero is a valid value, not a
	// default: every ITM example keeps its image.
	ITMNegProb float64
}

// PretrainSet is one pretraining dataset (a txt_db with its img_db) as this
// rank sees it, producing the inputs of every pretraining task.
type PretrainSet struct {
	txt     *db.TxtDB
	img     *db.ImgDB
	meta    db.Meta
	opts    PretrainOptions
	ids     []string
	txtLens []int
	imgOf   []string
	nbb     map[string]int

	mu  sync.Mutex
	itm map[int]*itmEpoch
}

// itmEpoch is one epoch's ITM draw.
type itmEpoch struct {
	labels []int32
	imgs   []string
	lens   []int
}

// NewPretrainSet reads the ids, text lengths and region counts of txt and
// img and keeps this rank's share. The probabilities of opts are used as
// given (callers pass MaskProb and ITMNegProb for the official settings).
func NewPretrainSet(txt *db.TxtDB, img *db.ImgDB, opts PretrainOptions) (*PretrainSet, error) {
	if opts.World == 0 {
		opts.World = 1
	}
	if !(opts.MaskProb >= 0 && opts.MaskProb <= 1) {
		return nil, fmt.Errorf("pretrain data: region mask probability %v is not in [0, 1]", opts.MaskProb)
	}
	if !(opts.ITMNegProb >= 0 && opts.ITMNegProb <= 1) {
		return nil, fmt.Errorf("pretrain data: ITM negative probability %v is not in [0, 1]", opts.ITMNegProb)
	}
	ids, err := Shard(txt.IDs(opts.MaxTxtLen), opts.Rank, opts.World)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("txt_db %s: no examples of at most %d word pieces for rank %d of %d", txt.Dir(), opts.MaxTxtLen, opts.Rank, opts.World)
	}
	meta := txt.Meta()
	if meta.VRange[1] <= meta.VRange[0] {
		return nil, fmt.Errorf("txt_db %s: meta.json v_range %v is empty", txt.Dir(), meta.VRange)
	}
	s := &PretrainSet{txt: txt, img: img, meta: meta, opts: opts, ids: ids, nbb: map[string]int{}, itm: map[int]*itmEpoch{}}
	for _, id := range ids {
		tl, _ := txt.Len(id)
		imgs, ok := txt.Images(id)
		if !ok || len(imgs) != 1 {
			return nil, fmt.Errorf("txt_db %s: key %q: txt2img.json has %v, want one image", txt.Dir(), id, imgs)
		}
		if _, err := s.regions(imgs[0]); err != nil {
			return nil, err
		}
		s.txtLens = append(s.txtLens, tl)
		s.imgOf = append(s.imgOf, imgs[0])
	}
	if s.opts.ImgDim == 0 {
		im, err := img.GetFeat(s.imgOf[0])
		if err != nil {
			return nil, err
		}
		s.opts.ImgDim = im.Dim
	}
	return s, nil
}

// regions returns (and caches) the region count of an image.
func (s *PretrainSet) regions(fname string) (int, error) {
	if n, ok := s.nbb[fname]; ok {
		return n, nil
	}
	n, err := s.img.NBB(fname)
	if err != nil {
		return 0, err
	}
	s.nbb[fname] = n
	return n, nil
}

// Len is the number of examples of this rank.
func (s *PretrainSet) Len() int { return len(s.ids) }

// IDs returns this rank's example ids, in index order.
func (s *PretrainSet) IDs() []string { return s.ids }

// ImgDim is the region feature size.
func (s *PretrainSet) ImgDim() int { return s.opts.ImgDim }

// Lens returns the sampler lengths of a task's epoch: word pieces (without
// specials) plus regions, as the official datasets count them. ITM lengths
// follow the epoch's image draw.
func (s *PretrainSet) Lens(task string, epoch int) ([]int, error) {
	if task == TaskITM {
		e, err := s.itmEpoch(epoch)
		if err != nil {
			return nil, err
		}
		return e.lens, nil
	}
	lens := make([]int, len(s.ids))
	for i, tl := range s.txtLens {
		lens[i] = tl + s.nbb[s.imgOf[i]]
	}
	return lens, nil
}

// LensFunc binds Lens to a task for NewBatchStream.
func (s *PretrainSet) LensFunc(task string) LensFunc {
	return func(epoch int) ([]int, error) { return s.Lens(task, epoch) }
}

// itmEpoch draws (once) an epoch's ITM labels and images. Only the two most
// recent epochs are kept: workers straddle at most one epoch boundary.
func (s *PretrainSet) itmEpoch(epoch int) (*itmEpoch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.itm[epoch]; ok {
		return e, nil
	}
	labels, imgs, err := AssignITM(s.imgOf, s.opts.ITMNegProb, s.opts.Seed, epoch)
	if err != nil {
		return nil, fmt.Errorf("txt_db %s: %w", s.txt.Dir(), err)
	}
	e := &itmEpoch{labels: labels, imgs: imgs, lens: make([]int, len(imgs))}
	for i, f := range imgs {
		e.lens[i] = s.txtLens[i] + s.nbb[f]
	}
	for k := range s.itm {
		if k < epoch-1 || k > epoch+1 {
			delete(s.itm, k)
		}
	}
	s.itm[epoch] = e
	return e, nil
}

// Example builds example i of a task's epoch: MLM masks the text, MRFR and
// MRC/MRC-kl mask regions (MRC ones carry class targets), ITM pairs the text
// with the epoch's image and label. Randomness comes from the seed, task,
// epoch and index only.
func (s *PretrainSet) Example(task string, epoch, i int) (*Example, error) {
	if i < 0 || i >= len(s.ids) {
		return nil, fmt.Errorf("pretrain example %d of %d", i, len(s.ids))
	}
	id, fname := s.ids[i], s.imgOf[i]
	label := int32(1)
	if task == TaskITM {
		e, err := s.itmEpoch(epoch)
		if err != nil {
			return nil, err
		}
		fname, label = e.imgs[i], e.labels[i]
	}
	tex, err := s.txt.Get(id)
	if err != nil {
		return nil, err
	}
	words, err := tex.InputIDs()
	if err != nil {
		return nil, err
	}
	withSoft := task == TaskMRC || task == TaskMRCKL
	var im *db.Image
	if withSoft {
		im, err = s.img.Get(fname)
	} else {
		im, err = s.img.GetFeat(fname)
	}
	if err != nil {
		return nil, err
	}
	if im.Dim != s.opts.ImgDim {
		return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", s.img.Dir(), fname, im.Dim, s.opts.ImgDim)
	}
	cls, sep := int32(s.meta.CLS), int32(s.meta.SEP)
	ex := &Example{ID: id, NBB: im.NBB, ImgFeat: im.Features, ImgPos: im.Box7(), Label: label}
	switch task {
	case TaskMLM:
		rng := newRNG(s.opts.Seed, streamMLM, uint64(epoch), uint64(i))
		vr := [2]int32{int32(s.meta.VRange[0]), int32(s.meta.VRange[1])}
		masked, labels, err := MaskWords(rng, words, int32(s.meta.MASK), vr)
		if err != nil {
			return nil, fmt.Errorf("txt_db %s: %w", s.txt.Dir(), err)
		}
		ex.InputIDs, ex.MLMLabels = MLMInput(masked, labels, cls, sep)
	case TaskMRFR, TaskMRC, TaskMRCKL:
		ex.InputIDs = WithSpecials(words, cls, sep)
		rng := newRNG(s.opts.Seed, streamMRM, uint64(epoch), uint64(i))
		var soft []float32
		if withSoft {
			if im.SoftLabels == nil || im.NumLabels != LabelDim {
				return nil, fmt.Errorf("img_db %s: key %q: %s needs %d-way soft_labels, the db has %d", s.img.Dir(), fname, task, LabelDim, im.NumLabels)
			}
			soft = im.SoftLabels
		}
		if err := ApplyRegionMask(ex, MaskRegions(rng, im.NBB, s.opts.MaskProb), soft, s.opts.ImgDim); err != nil {
			return nil, err
		}
	case TaskITM:
		ex.InputIDs = WithSpecials(words, cls, sep)
	default:
		return nil, fmt.Errorf("unknown pretraining task %q (want %s, %s, %s, %s or %s)", task, TaskMLM, TaskMRFR, TaskMRC, TaskMRCKL, TaskITM)
	}
	return ex, nil
}

// Build returns the loader's build function for a task: decode every
// example of the job, then collate.
func (s *PretrainSet) Build(task string) BuildFunc[*Batch] {
	return buildExamples(s.Example, task, s.opts.ImgDim)
}

// buildExamples is the build function of a pretraining set: decode each
// example of the job with example, then collate.
func buildExamples(example func(task string, epoch, i int) (*Example, error), task string, imgDim int) BuildFunc[*Batch] {
	return func(ctx context.Context, j Job) (*Batch, error) {
		exs := make([]*Example, len(j.Indices))
		for k, i := range j.Indices {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			ex, err := example(task, j.Pos.Epoch, i)
			if err != nil {
				return nil, err
			}
			exs[k] = ex
		}
		return Collate(exs, imgDim)
	}
}

// AppendRegions appends an image's regions to ex with the given region type
// (1 for the usual single image; 2 for NLVR2's right image). Tasks whose
// input joins several images (VCR: ground-truth boxes, then detections;
// NLVR2 triplet: left, then right) call it once per image in order.
func AppendRegions(ex *Example, im *db.Image, typeID int32) {
	if typeID != 1 && ex.ImgTypeIDs == nil {
		ex.ImgTypeIDs = make([]int32, ex.NBB)
		for i := range ex.ImgTypeIDs {
			ex.ImgTypeIDs[i] = 1
		}
	}
	ex.ImgFeat = append(ex.ImgFeat, im.Features[:im.NBB*im.Dim]...)
	ex.ImgPos = append(ex.ImgPos, im.Box7()...)
	if ex.ImgTypeIDs != nil {
		for range im.NBB {
			ex.ImgTypeIDs = append(ex.ImgTypeIDs, typeID)
		}
	}
	ex.NBB += im.NBB
}
