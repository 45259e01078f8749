package data

import (
	"context"
	"fmt"

	"uniter/internal/db"
)

// DownstreamOptions configure the fine-tuning datasets (VQASet, NLVR2Set).
type DownstreamOptions struct {
	// MaxTxtLen drops texts with more word pieces; <= 0 keeps all.
	MaxTxtLen int
	// Rank and World shard the examples: this rank keeps ids[rank::world].
	// World 0 means 1.
	Rank, World int
	// ImgDim is the region feature size; 0 reads it from the first image.
	ImgDim int
	// MaxWords cuts longer texts to their first MaxWords word pieces (0:
	// no cut), so that [CLS] text [SEP] fits the model's position table
	// (max_position_embeddings - 2): an evaluation keeps every text and
	// must not fail on one long question halfway through.
	MaxWords int
	// Train marks a training split: VCR's Q->A and QA->R choice examples
	// rather than its evaluation layout.
	Train bool
	// GTBoxes makes an RE dataset read its img_db as the ground-truth
	// boxes whatever its path (the original decides by "coco_gt" in it).
	GTBoxes bool
	// Seed draws the epoch-dependent randomness of a dataset (retrieval
	// negatives), with the epoch and the example.
	Seed uint64
	// ITR configures the image-text retrieval datasets (ITRSet).
	ITR ITROptions
}

// txtImgSet is a txt_db's examples, each with a fixed number of images, as
// one rank sees them: the part the official downstream datasets share
// (DetectFeatTxtTokDataset).
type txtImgSet struct {
	txt      *db.TxtDB
	img      *db.ImgDB
	cls, sep int32
	imgDim   int
	ids      []string
	txtLens  []int
	imgs     [][]string // txt2img.json names per example
	nbbs     [][]int    // their region counts
	maxWords int
}

// newTxtImgSet keeps this rank's share of txt's examples and checks that
// each has nimg images, all in img, so that a bad db fails here rather
// than in the middle of an epoch.
func newTxtImgSet(txt *db.TxtDB, img *db.ImgDB, nimg int, opts DownstreamOptions) (*txtImgSet, error) {
	world := opts.World
	if world == 0 {
		world = 1
	}
	ids, err := Shard(txt.IDs(opts.MaxTxtLen), opts.Rank, world)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("txt_db %s: no examples of at most %d word pieces for rank %d of %d", txt.Dir(), opts.MaxTxtLen, opts.Rank, world)
	}
	meta := txt.Meta()
	s := &txtImgSet{txt: txt, img: img, cls: int32(meta.CLS), sep: int32(meta.SEP), imgDim: opts.ImgDim, ids: ids, maxWords: opts.MaxWords}
	for _, id := range ids {
		tl, _ := txt.Len(id)
		if s.maxWords > 0 {
			tl = min(tl, s.maxWords)
		}
		names, ok := txt.Images(id)
		if !ok || len(names) != nimg {
			return nil, fmt.Errorf("txt_db %s: key %q: txt2img.json has %v, want %d image name(s)", txt.Dir(), id, names, nimg)
		}
		nbb := make([]int, nimg)
		for k, f := range names {
			if nbb[k], err = img.NBB(f); err != nil {
				return nil, fmt.Errorf("txt_db %s: key %q: %w", txt.Dir(), id, err)
			}
		}
		s.txtLens = append(s.txtLens, tl)
		s.imgs = append(s.imgs, names)
		s.nbbs = append(s.nbbs, nbb)
	}
	if s.imgDim == 0 {
		im, err := img.GetFeat(s.imgs[0][0])
		if err != nil {
			return nil, err
		}
		s.imgDim = im.Dim
	}
	return s, nil
}

// Len is the number of examples of this rank.
func (s *txtImgSet) Len() int { return len(s.ids) }

// IDs returns this rank's example ids (txt_db keys), in index order.
func (s *txtImgSet) IDs() []string { return s.ids }

// ImgDim is the region feature size.
func (s *txtImgSet) ImgDim() int { return s.imgDim }

// lens returns the sampler lengths as the official datasets count them:
// copies times the word pieces (without specials) plus every image's
// regions.
func (s *txtImgSet) lens(copies int) []int {
	out := make([]int, len(s.ids))
	for i, tl := range s.txtLens {
		out[i] = copies * tl
		for _, n := range s.nbbs[i] {
			out[i] += n
		}
	}
	return out
}

// text reads example i: its fields and [CLS] input_ids [SEP].
func (s *txtImgSet) text(i int) (db.Example, []int32, error) {
	if i < 0 || i >= len(s.ids) {
		return db.Example{}, nil, fmt.Errorf("txt_db %s: example %d of %d", s.txt.Dir(), i, len(s.ids))
	}
	ex, err := s.txt.Get(s.ids[i])
	if err != nil {
		return db.Example{}, nil, err
	}
	words, err := ex.InputIDs()
	if err != nil {
		return db.Example{}, nil, err
	}
	if s.maxWords > 0 && len(words) > s.maxWords {
		words = words[:s.maxWords]
	}
	return ex, WithSpecials(words, s.cls, s.sep), nil
}

// images reads example i's images (features and boxes).
func (s *txtImgSet) images(i int) ([]*db.Image, error) {
	out := make([]*db.Image, len(s.imgs[i]))
	for k, f := range s.imgs[i] {
		im, err := s.img.GetFeat(f)
		if err != nil {
			return nil, err
		}
		if im.Dim != s.imgDim {
			return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", s.img.Dir(), f, im.Dim, s.imgDim)
		}
		out[k] = im
	}
	return out, nil
}

// buildRows returns a loader's build function: the rows of every example
// of the job, collated perExample rows to an example.
func buildRows(rows func(i int) ([]*Example, error), imgDim, perExample int) BuildFunc[*Batch] {
	return func(ctx context.Context, j Job) (*Batch, error) {
		exs := make([]*Example, 0, perExample*len(j.Indices))
		for _, i := range j.Indices {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			r, err := rows(i)
			if err != nil {
				return nil, err
			}
			exs = append(exs, r...)
		}
		return CollateRows(exs, imgDim, perExample)
	}
}

// VQASet is a VQA or visual entailment dataset (a txt_db with its img_db)
// as this rank sees it: questions with one image and soft answer targets
// (data/vqa.py, data/ve.py). It has no epoch-dependent randomness, so the
// task and epoch arguments of Lens and Build are ignored.
type VQASet struct {
	*txtImgSet
	numAnswers int
}

// NewVQASet reads the ids, text lengths and region counts of txt and img
// and keeps this rank's share. numAnswers is the size of ans2label.json
// (3129 for VQA, 3 for VE).
func NewVQASet(txt *db.TxtDB, img *db.ImgDB, numAnswers int, opts DownstreamOptions) (*VQASet, error) {
	if numAnswers <= 0 {
		return nil, fmt.Errorf("txt_db %s: %d answers", txt.Dir(), numAnswers)
	}
	base, err := newTxtImgSet(txt, img, 1, opts)
	if err != nil {
		return nil, err
	}
	return &VQASet{txtImgSet: base, numAnswers: numAnswers}, nil
}

// Lens returns the sampler lengths: word pieces (without specials) plus
// regions.
func (s *VQASet) Lens(string, int) ([]int, error) { return s.lens(1), nil }

// Build returns the loader's build function. Batches have Targets
// [B*numAnswers] (nil on a split without targets) and no Labels.
func (s *VQASet) Build(string) BuildFunc[*Batch] { return buildRows(s.Rows, s.imgDim, 1) }

// Rows builds example i as its one row: [CLS] question [SEP], the image's
// regions and the answer scores scattered into a numAnswers vector.
func (s *VQASet) Rows(i int) ([]*Example, error) {
	fields, ids, err := s.text(i)
	if err != nil {
		return nil, err
	}
	ims, err := s.images(i)
	if err != nil {
		return nil, err
	}
	ex := &Example{ID: s.ids[i], InputIDs: ids, NoLabel: true}
	AppendRegions(ex, ims[0], 1)
	if ex.Targets, err = s.target(s.ids[i], fields); err != nil {
		return nil, err
	}
	return []*Example{ex}, nil
}

// target is the soft target of an example: target.scores at
// target.labels, nil when the example has no target (a test split).
func (s *VQASet) target(id string, ex db.Example) ([]float32, error) {
	if !ex.Has("target") || ex.IsNull("target") {
		return nil, nil
	}
	t, err := ex.Map("target")
	if err != nil {
		return nil, err
	}
	labels, err := t.Ints("labels")
	if err != nil {
		return nil, err
	}
	scores, err := t.Floats("scores")
	if err != nil {
		return nil, err
	}
	if len(labels) != len(scores) {
		return nil, fmt.Errorf("txt_db %s: key %q: target has %d labels and %d scores", s.txt.Dir(), id, len(labels), len(scores))
	}
	out := make([]float32, s.numAnswers)
	for k, l := range labels {
		if l < 0 || int(l) >= s.numAnswers {
			return nil, fmt.Errorf("txt_db %s: key %q: target label %d outside the %d answers of ans2label", s.txt.Dir(), id, l, s.numAnswers)
		}
		out[l] = float32(scores[k])
	}
	return out, nil
}
