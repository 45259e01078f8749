package data

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"

	"uniter/internal/db"
)

// streamITR keeps the retrieval negatives apart from the other consumers
// of the seed (rng.go's streams count up from 1).
const streamITR uint64 = 0x17e

// ITROptions configure an image-text retrieval dataset.
type ITROptions struct {
	// NegSize is the number of negatives per positive (negative_size): the
	// plain recipe pairs each text with NegSize other images and its image
	// with NegSize other texts; hard negatives draw NegSize candidates per
	// side to pick from.
	NegSize int
	// HardNeg selects the hard-negative layout (train_itm_hard_negatives.py).
	HardNeg bool
	// BatchExamples is how many positives one training micro-batch holds:
	// the original's DataLoader batches by examples, not tokens.
	BatchExamples int
}

// ITRSet is an image-text retrieval dataset: a txt_db of captions, each
// naming one image of its img_db (data/itm.py). Training batches count
// examples (Lens is 1 per example); each example's rows follow the recipe:
//
//	plain: [text, its image], [text, NegSize other images],
//	       [NegSize other texts, the image]: 1 + 2*NegSize rows collated
//	       as one example (RowsPerExample), the positive first;
//	hard:  Batch.Rows holds [text, its image], [text, NegSize other
//	       images], then [text, its image], [NegSize other texts, the
//	       image]: the two candidate lists the task scores and picks from.
//
// Negatives are drawn from the seed, the epoch and the example, never a
// ground truth (the original's sample_negative: draw, and redraw the whole
// sample while it holds one).
type ITRSet struct {
	txt      *db.TxtDB
	img      *db.ImgDB
	opts     DownstreamOptions
	cls, sep int32
	imgDim   int

	ids      []string
	txtLens  []int // word pieces without specials, cut to MaxWords
	gt       []int // each text's image, an index into imgNames
	imgNames []string
	nbb      []int
	imgTexts [][]int // each image's texts, indices into ids

	mu       sync.Mutex
	cache    map[int]*db.Image
	cacheLen int
}

// itrCacheFloats bounds the region features an ITRSet keeps in memory
// (512 MB): the synthetic and small pools are read once, large ones from
// the db each time.
const itrCacheFloats = 128 << 20

// NewITRSet reads txt's captions (those of at most MaxTxtLen word pieces)
// with their images' region counts. The image pool is the images of the
// kept captions in first-caption order for the plain recipe (data/itm.py's
// ItmRankDataset), and every image of img2txts.json otherwise (its
// hard-negative and evaluation datasets), sorted by name.
func NewITRSet(txt *db.TxtDB, img *db.ImgDB, opts DownstreamOptions) (*ITRSet, error) {
	ids := txt.IDs(opts.MaxTxtLen)
	if len(ids) == 0 {
		return nil, fmt.Errorf("txt_db %s: no captions of at most %d word pieces", txt.Dir(), opts.MaxTxtLen)
	}
	meta := txt.Meta()
	s := &ITRSet{txt: txt, img: img, opts: opts, cls: int32(meta.CLS), sep: int32(meta.SEP), imgDim: opts.ImgDim,
		ids: ids, cache: map[int]*db.Image{}}
	index := map[string]int{}
	addImage := func(name string) (int, error) {
		if j, ok := index[name]; ok {
			return j, nil
		}
		n, err := img.NBB(name)
		if err != nil {
			return 0, fmt.Errorf("txt_db %s: image %q: %w", txt.Dir(), name, err)
		}
		index[name] = len(s.imgNames)
		s.imgNames = append(s.imgNames, name)
		s.nbb = append(s.nbb, n)
		s.imgTexts = append(s.imgTexts, nil)
		return len(s.imgNames) - 1, nil
	}
	if opts.ITR.HardNeg || opts.MaxTxtLen <= 0 {
		for _, name := range txt.ImageNames() {
			if _, err := addImage(name); err != nil {
				return nil, err
			}
		}
	}
	for i, id := range ids {
		tl, _ := txt.Len(id)
		if opts.MaxWords > 0 {
			tl = min(tl, opts.MaxWords)
		}
		names, ok := txt.Images(id)
		if !ok || len(names) != 1 {
			return nil, fmt.Errorf("txt_db %s: key %q: txt2img.json has %v, want one image name", txt.Dir(), id, names)
		}
		j, err := addImage(names[0])
		if err != nil {
			return nil, err
		}
		s.txtLens = append(s.txtLens, tl)
		s.gt = append(s.gt, j)
		s.imgTexts[j] = append(s.imgTexts[j], i)
	}
	if k := opts.ITR.NegSize; k > 0 {
		if len(s.imgNames)-1 < k {
			return nil, fmt.Errorf("negative_size = %d: txt_db %s has only %d images besides each positive's own", k, txt.Dir(), len(s.imgNames)-1)
		}
		most := 0
		for _, t := range s.imgTexts {
			most = max(most, len(t))
		}
		if len(ids)-most < k {
			return nil, fmt.Errorf("negative_size = %d: txt_db %s has only %d captions besides an image's own", k, txt.Dir(), len(ids)-most)
		}
	}
	if s.imgDim == 0 {
		im, err := s.image(0)
		if err != nil {
			return nil, err
		}
		s.imgDim = im.Dim
	}
	return s, nil
}

// Len is the number of captions.
func (s *ITRSet) Len() int { return len(s.ids) }

// IDs are the caption ids (txt_db keys) in index order.
func (s *ITRSet) IDs() []string { return s.ids }

// ImgNames are the image pool's names in index order.
func (s *ITRSet) ImgNames() []string { return s.imgNames }

// NBB is image j's region count.
func (s *ITRSet) NBB(j int) int { return s.nbb[j] }

// TxtLen is caption i's length with [CLS] and [SEP].
func (s *ITRSet) TxtLen(i int) int { return s.txtLens[i] + 2 }

// ImgDim is the region feature size.
func (s *ITRSet) ImgDim() int { return s.imgDim }

// GT is caption i's image, an index into ImgNames.
func (s *ITRSet) GT(i int) int { return s.gt[i] }

// ImageTexts are image j's captions, indices into IDs.
func (s *ITRSet) ImageTexts(j int) []int { return s.imgTexts[j] }

// BatchExamples is the number of positives per training micro-batch.
func (s *ITRSet) BatchExamples() int { return max(1, s.opts.ITR.BatchExamples) }

// Lens gives every example length 1: retrieval batches count examples.
func (s *ITRSet) Lens(string, int) ([]int, error) { return unitLens(s.Len()), nil }

// unitLens is n lengths of 1.
func unitLens(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = 1
	}
	return out
}

// RowsPerExample is the number of collated rows of a plain example.
func (s *ITRSet) RowsPerExample() int {
	if s.opts.ITR.HardNeg {
		return 1
	}
	return 1 + 2*s.opts.ITR.NegSize
}

// Build returns the loader's build function for training batches: that
// of the set alone as an ITRConcat.
func (s *ITRSet) Build(key string) BuildFunc[*Batch] {
	return NewITRConcat([]*ITRSet{s}).Build(key)
}

// CollateITR makes a training batch of examples' rows: collated (plain),
// or carried as Batch.Rows (hard negatives).
func CollateITR(rows [][]*Example, imgDim int, hard bool) (*Batch, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("collate: empty batch")
	}
	if !hard {
		var all []*Example
		for _, r := range rows {
			all = append(all, r...)
		}
		return CollateRows(all, imgDim, len(rows[0]))
	}
	b := &Batch{B: len(rows), RowsPerExample: 1, ImgDim: imgDim}
	for _, r := range rows {
		pos := r[0]
		b.IDs = append(b.IDs, pos.ID)
		b.TxtLens = append(b.TxtLens, len(pos.InputIDs))
		b.NBB = append(b.NBB, pos.NBB)
		b.AttnLens = append(b.AttnLens, len(pos.InputIDs)+pos.NBB)
		// S describes the positive rows only, so that the trainer's
		// padding share stays defined.
		b.S = max(b.S, len(pos.InputIDs)+pos.NBB)
		b.Rows = append(b.Rows, r...)
	}
	return b, nil
}

// Rows builds example i of epoch's rows (see ITRSet).
func (s *ITRSet) Rows(epoch, i int) ([]*Example, error) {
	if i < 0 || i >= len(s.ids) {
		return nil, fmt.Errorf("txt_db %s: example %d of %d", s.txt.Dir(), i, len(s.ids))
	}
	k := s.opts.ITR.NegSize
	if k <= 0 {
		return nil, fmt.Errorf("itr: negative_size = %d: training needs at least one negative", k)
	}
	rng := newRNG(s.opts.Seed, streamITR, uint64(epoch), uint64(i))
	gt := s.gt[i]
	negImgs := sampleNegatives(rng, len(s.imgNames), k, func(j int) bool { return j == gt })
	gtTexts := s.imgTexts[gt]
	negTxts := sampleNegatives(rng, len(s.ids), k, func(t int) bool { return slices.Contains(gtTexts, t) })
	pairs := make([][2]int, 0, 2+2*k)
	pairs = append(pairs, [2]int{i, gt})
	for _, j := range negImgs {
		pairs = append(pairs, [2]int{i, j})
	}
	if s.opts.ITR.HardNeg {
		pairs = append(pairs, [2]int{i, gt})
	}
	for _, t := range negTxts {
		pairs = append(pairs, [2]int{t, gt})
	}
	out := make([]*Example, len(pairs))
	for r, p := range pairs {
		ex, err := s.Pair(p[0], p[1])
		if err != nil {
			return nil, err
		}
		if !s.opts.ITR.HardNeg {
			// One collated example: every row carries the positive's id.
			ex.ID = s.ids[i]
		}
		out[r] = ex
	}
	return out, nil
}

// sampleNegatives draws k distinct indices of [0, n), redrawing the whole
// sample while it holds an excluded one, as the original's
// sample_negative (random.sample, retry on overlap).
func sampleNegatives(rng *rand.Rand, n, k int, excluded func(int) bool) []int {
	for {
		out := sampleDistinct(rng, n, k)
		if !slices.ContainsFunc(out, excluded) {
			return out
		}
	}
}

// sampleDistinct is random.sample(range(n), k): k distinct indices in
// random order.
func sampleDistinct(rng *rand.Rand, n, k int) []int {
	out := make([]int, 0, k)
	if 2*k > n {
		perm := rng.Perm(n)
		return append(out, perm[:k]...)
	}
	seen := make(map[int]bool, k)
	for len(out) < k {
		j := rng.IntN(n)
		if !seen[j] {
			seen[j] = true
			out = append(out, j)
		}
	}
	return out
}

// Text is caption i's input_ids with [CLS] and [SEP], cut to MaxWords.
func (s *ITRSet) Text(i int) ([]int32, error) {
	ex, err := s.txt.Get(s.ids[i])
	if err != nil {
		return nil, err
	}
	words, err := ex.InputIDs()
	if err != nil {
		return nil, err
	}
	if s.opts.MaxWords > 0 && len(words) > s.opts.MaxWords {
		words = words[:s.opts.MaxWords]
	}
	return WithSpecials(words, s.cls, s.sep), nil
}

// Pair is the model row of caption t with image j. Its region slices
// share the cached image's storage: collation copies them.
func (s *ITRSet) Pair(t, j int) (*Example, error) {
	ids, err := s.Text(t)
	if err != nil {
		return nil, err
	}
	im, err := s.image(j)
	if err != nil {
		return nil, err
	}
	return &Example{ID: s.ids[t], InputIDs: ids, NoLabel: true, NBB: im.NBB,
		ImgFeat: im.Features[:im.NBB*im.Dim], ImgPos: im.Box7()}, nil
}

// Image reads image j's regions (from the cache when it holds them).
func (s *ITRSet) Image(j int) (*db.Image, error) { return s.image(j) }

func (s *ITRSet) image(j int) (*db.Image, error) {
	s.mu.Lock()
	im, ok := s.cache[j]
	s.mu.Unlock()
	if ok {
		return im, nil
	}
	im, err := s.img.GetFeat(s.imgNames[j])
	if err != nil {
		return nil, err
	}
	if s.imgDim != 0 && im.Dim != s.imgDim {
		return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", s.img.Dir(), s.imgNames[j], im.Dim, s.imgDim)
	}
	s.mu.Lock()
	if s.cacheLen+im.NBB*im.Dim <= itrCacheFloats {
		s.cache[j] = im
		s.cacheLen += im.NBB * im.Dim
	}
	s.mu.Unlock()
	return im, nil
}

// ITRConcat joins the retrieval datasets of several txt_db/img_db pairs
// into one index space (the original's ConcatDataset); each example's
// negatives come from its own set.
type ITRConcat struct {
	Sets   []*ITRSet
	starts []int
}

// NewITRConcat concatenates sets.
func NewITRConcat(sets []*ITRSet) *ITRConcat {
	c := &ITRConcat{Sets: sets}
	n := 0
	for _, s := range sets {
		c.starts = append(c.starts, n)
		n += s.Len()
	}
	return c
}

// Len is the number of captions of every set.
func (c *ITRConcat) Len() int { return c.starts[len(c.starts)-1] + c.Sets[len(c.Sets)-1].Len() }

// BatchExamples is the first set's.
func (c *ITRConcat) BatchExamples() int { return c.Sets[0].BatchExamples() }

// Lens gives every example length 1.
func (c *ITRConcat) Lens(string, int) ([]int, error) { return unitLens(c.Len()), nil }

// Build returns the loader's build function.
func (c *ITRConcat) Build(string) BuildFunc[*Batch] {
	return func(ctx context.Context, j Job) (*Batch, error) {
		var rows [][]*Example
		for _, i := range j.Indices {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			s := sort.Search(len(c.starts), func(n int) bool { return c.starts[n] > i }) - 1
			r, err := c.Sets[s].Rows(j.Pos.Epoch, i-c.starts[s])
			if err != nil {
				return nil, err
			}
			rows = append(rows, r)
		}
		return CollateITR(rows, c.Sets[0].imgDim, c.Sets[0].opts.ITR.HardNeg)
	}
}
