package data

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"uniter/internal/db"
)

// REImageName is the img_db key of a COCO image's boxes in the official RE
// dbs: visual_grounding_coco_gt_{id:012}.npz for the ground-truth boxes
// (re_coco_gt), visual_grounding_det_coco_{id:012}.npz for the detected
// ones (re_coco_det).
func REImageName(imageID int64, gt bool) string {
	if gt {
		return fmt.Sprintf("visual_grounding_coco_gt_%012d.npz", imageID)
	}
	return fmt.Sprintf("visual_grounding_det_coco_%012d.npz", imageID)
}

// IsREGroundTruth reports whether an img_db path names the ground-truth
// boxes, the test of train_re.py and inf_re.py ("coco_gt" in the path).
func IsREGroundTruth(path string) bool { return strings.Contains(path, "coco_gt") }

// reImage is an entry of an RE txt_db's images.json.
type reImage struct {
	ID       int64   `json:"id"`
	FileName string  `json:"file_name"`
	AnnIDs   []int64 `json:"ann_ids"`
	Height   float64 `json:"height"`
	Width    float64 `json:"width"`
}

// reRef is an entry of refs.json (the refer toolkit's ref, of this split).
type reRef struct {
	RefID   int64   `json:"ref_id"`
	SentIDs []int64 `json:"sent_ids"`
}

// RESet is a referring-expression dataset (data/re.py): the sentences of
// an RE txt_db, each with its COCO image's boxes from the img_db, as this
// rank sees them. With ground-truth boxes every sentence has its target
// region (the position of its ann_id among the image's ann_ids, the rows
// of the gt db); with detected boxes it has only its target box. Every
// sentence has the target box (x y w h, pixels) and the image size for
// the IoU accuracy.
//
// Batches count sentences, as train_re.py's and inf_re.py's batch sizes
// do: every sampler length is 1, so a token budget of 128 is 128
// sentences.
type RESet struct {
	txt      *db.TxtDB
	img      *db.ImgDB
	gt       bool
	cls, sep int32
	imgDim   int
	maxWords int
	ids      []string
	fnames   []string
	labels   []int32      // gt: the target region
	boxes    [][6]float64 // target x y w h, image width, height
	maxNBB   int
}

// NewRESet reads the side files of txt (refs.json, images.json,
// annotations.json, categories.json, as ReTxtTokLmdb does), lists the
// sentences ref by ref in refs.json's order (training: only those shorter
// than MaxTxtLen word pieces, train_re.py's filter) and checks every
// sentence's image and, with ground-truth boxes, its target region, so
// that a bad db fails here and names what is wrong.
func NewRESet(txt *db.TxtDB, img *db.ImgDB, gt bool, o DownstreamOptions) (*RESet, error) {
	dir := txt.Dir()
	var refs []reRef
	var images []reImage
	var anns, cats []json.RawMessage
	for _, f := range []struct {
		name string
		v    any
	}{{"refs.json", &refs}, {"images.json", &images}, {"annotations.json", &anns}, {"categories.json", &cats}} {
		path := filepath.Join(dir, f.name)
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("txt_db %s: an RE txt_db needs %s: %w", dir, f.name, err)
		}
		if err := json.Unmarshal(b, f.v); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	imgByID := make(map[int64]*reImage, len(images))
	for i := range images {
		imgByID[images[i].ID] = &images[i]
	}
	var all []string
	for _, r := range refs {
		for _, s := range r.SentIDs {
			id := strconv.FormatInt(s, 10)
			n, ok := txt.Len(id)
			if !ok {
				return nil, fmt.Errorf("%s: ref %d: sentence %s is not in id2len.json", filepath.Join(dir, "refs.json"), r.RefID, id)
			}
			if o.MaxTxtLen <= 0 || n < o.MaxTxtLen {
				all = append(all, id)
			}
		}
	}
	world := max(o.World, 1)
	ids, err := Shard(all, o.Rank, world)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("txt_db %s: no sentences (of fewer than %d word pieces) for rank %d of %d", dir, o.MaxTxtLen, o.Rank, world)
	}
	meta := txt.Meta()
	s := &RESet{txt: txt, img: img, gt: gt, cls: int32(meta.CLS), sep: int32(meta.SEP), imgDim: o.ImgDim, maxWords: o.MaxWords, ids: ids}
	nbbOf := map[string]int{}
	for _, id := range ids {
		ex, err := txt.Get(id)
		if err != nil {
			return nil, err
		}
		imageID, err := ex.Int("image_id")
		if err != nil {
			return nil, err
		}
		annID, err := ex.Int("ann_id")
		if err != nil {
			return nil, err
		}
		bbox, err := ex.Floats("bbox")
		if err != nil {
			return nil, err
		}
		if len(bbox) != 4 {
			return nil, fmt.Errorf("txt_db %s: key %q: bbox %v, want x, y, w, h", dir, id, bbox)
		}
		im, ok := imgByID[imageID]
		if !ok {
			return nil, fmt.Errorf("%s: no image %d, the image_id of sentence %q", filepath.Join(dir, "images.json"), imageID, id)
		}
		fname := REImageName(imageID, gt)
		nbb, seen := nbbOf[fname]
		if !seen {
			if nbb, err = img.Regions(fname); err != nil {
				return nil, fmt.Errorf("txt_db %s: key %q: %w", dir, id, err)
			}
			nbbOf[fname] = nbb
		}
		if gt {
			if nbb != len(im.AnnIDs) {
				return nil, fmt.Errorf("img_db %s: key %q: %d boxes, but %s lists %d ann_ids for image %d: a ground-truth RE img_db (visual_grounding_coco_gt) has one box per annotation",
					img.Dir(), fname, nbb, filepath.Join(dir, "images.json"), len(im.AnnIDs), imageID)
			}
			target := -1
			for k, a := range im.AnnIDs {
				if a == annID {
					target = k
					break
				}
			}
			if target < 0 {
				return nil, fmt.Errorf("%s: key %q: ann_id %d is not among the ann_ids %v of image %d, so the ground-truth img_db %s has no box for its target",
					filepath.Join(dir, "data.mdb"), id, annID, im.AnnIDs, imageID, img.Dir())
			}
			s.labels = append(s.labels, int32(target))
		}
		s.fnames = append(s.fnames, fname)
		s.boxes = append(s.boxes, [6]float64{bbox[0], bbox[1], bbox[2], bbox[3], im.Width, im.Height})
		s.maxNBB = max(s.maxNBB, nbb)
	}
	if s.imgDim == 0 {
		im, err := img.GetFeat(s.fnames[0])
		if err != nil {
			return nil, err
		}
		s.imgDim = im.Dim
	}
	return s, nil
}

// Len is the number of sentences of this rank.
func (s *RESet) Len() int { return len(s.ids) }

// IDs returns this rank's sentence ids (txt_db keys), in index order.
func (s *RESet) IDs() []string { return s.ids }

// GroundTruth reports whether the regions are the ground-truth boxes.
func (s *RESet) GroundTruth() bool { return s.gt }

// MaxNBB is the most regions of an image of the set.
func (s *RESet) MaxNBB() int { return s.maxNBB }

// Lens are all 1: batches count sentences (see RESet).
func (s *RESet) Lens(string, int) ([]int, error) {
	out := make([]int, len(s.ids))
	for i := range out {
		out[i] = 1
	}
	return out, nil
}

// Build returns the loader's build function: one row per sentence with
// Boxes, and Labels with ground-truth boxes.
func (s *RESet) Build(string) BuildFunc[*Batch] { return buildRows(s.Rows, s.imgDim, 1) }

// Rows builds sentence i: [CLS] sentence [SEP] and every region of its
// image (type 1).
func (s *RESet) Rows(i int) ([]*Example, error) {
	if i < 0 || i >= len(s.ids) {
		return nil, fmt.Errorf("txt_db %s: sentence %d of %d", s.txt.Dir(), i, len(s.ids))
	}
	ex, err := s.txt.Get(s.ids[i])
	if err != nil {
		return nil, err
	}
	words, err := ex.InputIDs()
	if err != nil {
		return nil, err
	}
	if s.maxWords > 0 && len(words) > s.maxWords {
		words = words[:s.maxWords]
	}
	im, err := s.img.GetFeat(s.fnames[i])
	if err != nil {
		return nil, err
	}
	if im.Dim != s.imgDim {
		return nil, fmt.Errorf("img_db %s: key %q: feature size %d, want %d", s.img.Dir(), s.fnames[i], im.Dim, s.imgDim)
	}
	e := &Example{ID: s.ids[i], InputIDs: WithSpecials(words, s.cls, s.sep), NoLabel: !s.gt, Boxes: s.boxes[i][:]}
	if s.gt {
		e.Label = s.labels[i]
	}
	AppendRegions(e, im, 1)
	return []*Example{e}, nil
}
