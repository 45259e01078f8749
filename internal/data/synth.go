package data

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"uniter/internal/db"
)

// SynthOptions size and seed the synthetic world. Zero fields take the
// defaults of DefaultSynthOptions.
type SynthOptions struct {
	// Seed determines every byte written.
	Seed uint64
	// Images and ValImages are the numbers of training and validation
	// images; ValImages 0 means Images/10, at least 10.
	Images, ValImages int
	// ImgDim is the region feature size.
	ImgDim int
	// MinObjects and MaxObjects bound the objects per image.
	MinObjects, MaxObjects int
	// Noise is the standard deviation of the feature noise.
	Noise float64
	// Captions is the number of pretraining captions per image.
	Captions int
	// Questions is the number of VQA questions per image.
	Questions int
	// GTFraction is the share of each split's images that also get
	// ground-truth-box dbs and VCR and RE annotations.
	GTFraction float64
	// ITRValImages bounds the validation image pool of retrieval, whose
	// evaluation scores every caption against every image.
	ITRValImages int
	// Workers render images in parallel (default GOMAXPROCS); the output
	// does not depend on it.
	Workers int
}

// DefaultSynthOptions are sized so that writing takes seconds and a tiny
// model pretrains on two CPU cores in minutes.
func DefaultSynthOptions() SynthOptions {
	return SynthOptions{Seed: 1, Images: 1000, ImgDim: 2048, MinObjects: 2, MaxObjects: 4,
		Noise: 0.5, Captions: 5, Questions: 3, GTFraction: 0.2, ITRValImages: 100}
}

func (o SynthOptions) withDefaults() SynthOptions {
	d := DefaultSynthOptions()
	if o.Images == 0 {
		o.Images = d.Images
	}
	if o.ValImages == 0 {
		o.ValImages = max(o.Images/10, 10)
	}
	if o.ImgDim == 0 {
		o.ImgDim = d.ImgDim
	}
	if o.MinObjects == 0 {
		o.MinObjects = d.MinObjects
	}
	if o.MaxObjects == 0 {
		o.MaxObjects = d.MaxObjects
	}
	if o.Noise == 0 {
		o.Noise = d.Noise
	}
	if o.Captions == 0 {
		o.Captions = d.Captions
	}
	if o.Questions == 0 {
		o.Questions = d.Questions
	}
	if o.GTFraction == 0 {
		o.GTFraction = d.GTFraction
	}
	if o.ITRValImages == 0 {
		o.ITRValImages = d.ITRValImages
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return o
}

func (o SynthOptions) validate() error {
	switch {
	case o.Images < 2 || o.ValImages < 2:
		return fmt.Errorf("synth: need at least 2 training and 2 validation images, got %d and %d", o.Images, o.ValImages)
	case o.ImgDim < 1:
		return fmt.Errorf("synth: image feature size %d", o.ImgDim)
	case o.MinObjects < 2 || o.MaxObjects < o.MinObjects || o.MaxObjects > 20:
		return fmt.Errorf("synth: objects per image %d..%d: want 2 <= min <= max <= 20", o.MinObjects, o.MaxObjects)
	case o.Noise < 0 || math.IsNaN(o.Noise):
		return fmt.Errorf("synth: noise %v", o.Noise)
	case o.Captions < 1 || o.Questions < 1:
		return fmt.Errorf("synth: captions %d and questions %d per image must be positive", o.Captions, o.Questions)
	case o.GTFraction < 0 || o.GTFraction > 1:
		return fmt.Errorf("synth: gt fraction %v outside [0,1]", o.GTFraction)
	case o.ITRValImages < 1:
		return fmt.Errorf("synth: retrieval validation pool of %d images", o.ITRValImages)
	}
	return nil
}

// SynthDB is one db the synthetic world wrote.
type SynthDB struct {
	// Path is relative to the output directory.
	Path string
	// Kind is "txt_db" or "img_db".
	Kind string
	// Count is the number of examples or images.
	Count int
}

// SynthSummary describes what Synth wrote.
type SynthSummary struct {
	Dir       string
	VocabSize int
	Options   SynthOptions
	DBs       []SynthDB
	Bytes     int64
	Elapsed   time.Duration
}

// WriteTo prints the summary as a table.
func (s *SynthSummary) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "synthetic world in %s: seed %d, %d train + %d val images, %d-d regions, vocabulary %d\n",
		s.Dir, s.Options.Seed, s.Options.Images, s.Options.ValImages, s.Options.ImgDim, s.VocabSize)
	for _, d := range s.DBs {
		unit := "examples"
		if d.Kind == "img_db" {
			unit = "images"
		}
		fmt.Fprintf(&b, "  %-6s %-22s %7d %s\n", d.Kind, d.Path, d.Count, unit)
	}
	fmt.Fprintf(&b, "%.1f MB in %.1fs\n", float64(s.Bytes)/1e6, s.Elapsed.Seconds())
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// Synth writes a seeded synthetic image-text world into dir (which must not
// exist or be empty) as official-format dbs, for every pretraining and
// downstream task. The same options give the same bytes. Layout:
//
//	vocab.txt                  BERT-layout vocabulary (CLS 101, SEP 102, MASK 103, UNK 100)
//	world.json                 options, classes (detector ids 1..K), colours, vocabulary size
//	img/synth_{train,val}/     detected regions of every image (feat_th0.2_max100_min10 + nbb json)
//	img/vcr_gt_{split}/        ground-truth boxes of the VCR images
//	img/re_coco_gt_{split}/    ground-truth boxes of the RE images (visual_grounding_coco_gt_%012d.npz)
//	img/re_coco_det_{split}/   detected regions of the RE images (visual_grounding_det_coco_%012d.npz)
//	txt/pretrain_{split}.db/   captions (MLM, MRM, ITM)
//	txt/vqa_{split}.db/        questions, target {labels, scores}; ans2label.json
//	txt/ve_{split}.db/         hypotheses, target labels contradiction 0 / entailment 1 / neutral 2; ans2label.json
//	txt/nlvr2_{split}.db/      statements on image pairs, target 1/0, identifier, sentence
//	txt/vcr_{split}.db/        input_ids_as, input_ids_rs, qa_target, qar_target; img_fname [gt, det]
//	txt/re_{split}.db/         expressions; refs.json, annotations.json, categories.json, images.json
//	txt/itr_{split}.db/        caption pools for retrieval
//
// where split is train or val. Every txt_db holds meta.json, id2len.json,
// txt2img.json and img2txts.json; every img_db the nbb json.
func Synth(dir string, opts SynthOptions) (*SynthSummary, error) {
	start := time.Now()
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("synth: output directory %s is not empty", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	s := &synthesizer{dir: dir, opts: opts, sum: &SynthSummary{Dir: dir, Options: opts}}
	if err := s.run(); err != nil {
		return nil, err
	}
	s.sum.Elapsed = time.Since(start)
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			s.sum.Bytes += info.Size()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	return s.sum, nil
}

// Coordinates of the synthetic world's random streams (after streamSynth).
const (
	synthStreamImage uint64 = iota + 1
	synthStreamRender
	synthStreamCaption
	synthStreamVQA
	synthStreamVE
	synthStreamNLVR2
	synthStreamVCR
	synthStreamRE
	synthStreamITR
)

// Render kinds: the detector's view and the ground-truth boxes.
const (
	renderDet uint64 = iota
	renderGT
)

type synthesizer struct {
	dir   string
	opts  SynthOptions
	sum   *SynthSummary
	world *synthWorld
	tok   *Tokenizer
	meta  db.Meta
}

// synthSplit is a split's images; gt is how many of them, from the start,
// have ground-truth dbs and VCR/RE annotations.
type synthSplit struct {
	name   string
	index  uint64
	images []synthImage
	gt     int
}

func (s *synthesizer) run() error {
	o := s.opts
	vocab := SynthVocab()
	s.sum.VocabSize = len(vocab)
	if err := os.WriteFile(filepath.Join(s.dir, "vocab.txt"), []byte(strings.Join(vocab, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	tok, err := NewTokenizer(NewVocab(vocab), false)
	if err != nil {
		return err
	}
	s.tok = tok
	s.meta = db.Meta{CLS: synthCLS, SEP: synthSEP, MASK: synthMASK, UNK: synthUNK,
		VRange: [2]int{synthMASK + 1, len(vocab)}, Tokenizer: "synth-cased"}
	s.world = newSynthWorld(o.Seed, o.ImgDim, o.MinObjects, o.MaxObjects, o.Noise)
	if err := s.writeWorldJSON(); err != nil {
		return err
	}
	splits := []*synthSplit{{name: "train", index: 0}, {name: "val", index: 1}}
	for _, sp := range splits {
		n := o.Images
		if sp.name == "val" {
			n = o.ValImages
		}
		sp.gt = max(1, int(math.Ceil(o.GTFraction*float64(n))))
		for i := range n {
			rng := newRNG(o.Seed, streamSynth, synthStreamImage, sp.index, uint64(i))
			sp.images = append(sp.images, s.world.image(rng, fmt.Sprintf("synth_%s_%06d.npz", sp.name, i)))
		}
	}
	for _, sp := range splits {
		steps := []func(*synthSplit) error{s.writeImages, s.writePretrain, s.writeVQA, s.writeVE, s.writeNLVR2, s.writeVCR, s.writeRE, s.writeITR}
		for _, step := range steps {
			if err := step(sp); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *synthesizer) writeWorldJSON() error {
	classIDs := map[string]int{}
	for i, c := range synthClasses {
		classIDs[c] = i + 1
	}
	w := map[string]any{
		"seed": s.opts.Seed, "images": s.opts.Images, "val_images": s.opts.ValImages, "img_dim": s.opts.ImgDim,
		"min_objects": s.opts.MinObjects, "max_objects": s.opts.MaxObjects, "noise": s.opts.Noise,
		"classes": classIDs, "colours": synthColours, "sizes": synthSizes,
		"vocab_size": s.sum.VocabSize, "img_label_dim": LabelDim,
		"image_width": synthWidth, "image_height": synthHeight,
	}
	return writeJSON(filepath.Join(s.dir, "world.json"), w)
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("synth: %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return nil
}

// renderJob names one image to render into one db.
type renderJob struct {
	fname string
	im    synthImage
	gt    bool
	index uint64
}

// writeImgDB renders jobs on the worker pool and writes them in order.
// The render stream depends on the split and image index, not on the db,
// so an image's detections are identical in every db that holds them.
func (s *synthesizer) writeImgDB(rel string, split uint64, jobs []renderJob) error {
	dir := filepath.Join(s.dir, rel)
	w, err := db.CreateImgDB(dir, synthImgDBOptions(rel), false)
	if err != nil {
		return err
	}
	batches := make([][]int, len(jobs))
	for i := range batches {
		batches[i] = []int{i}
	}
	build := func(_ context.Context, j Job) (db.RawImage, error) {
		rj := jobs[j.Indices[0]]
		kind := renderDet
		if rj.gt {
			kind = renderGT
		}
		rng := newRNG(s.opts.Seed, streamSynth, synthStreamRender, split, rj.index, kind)
		return s.world.render(rng, rj.im, rj.gt, 0), nil
	}
	l := NewLoader(context.Background(), NewSliceSource(batches), build, s.opts.Workers, 2*s.opts.Workers)
	defer l.Close()
	for {
		raw, pos, err := l.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil {
			_, err = w.Put(jobs[pos.Batch].fname, raw)
		}
		if err != nil {
			w.Abort()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	s.sum.DBs = append(s.sum.DBs, SynthDB{Path: rel, Kind: "img_db", Count: len(jobs)})
	return nil
}

func reGTName(imageID int) string { return fmt.Sprintf("visual_grounding_coco_gt_%012d.npz", imageID) }
func reDetName(imageID int) string {
	return fmt.Sprintf("visual_grounding_det_coco_%012d.npz", imageID)
}
func vcrGTName(split string, i int) string {
	return fmt.Sprintf("synth_gt_%s_%06d.npz", split, i)
}

// reImageID numbers RE images across splits so that ids never collide.
func reImageID(sp *synthSplit, i int) int { return int(sp.index)*1_000_000 + i + 1 }

func (s *synthesizer) writeImages(sp *synthSplit) error {
	var det, vcrGT, reGT, reDet []renderJob
	for i, im := range sp.images {
		det = append(det, renderJob{fname: im.name, im: im, index: uint64(i)})
		if i < sp.gt {
			vcrGT = append(vcrGT, renderJob{fname: vcrGTName(sp.name, i), im: im, gt: true, index: uint64(i)})
			reGT = append(reGT, renderJob{fname: reGTName(reImageID(sp, i)), im: im, gt: true, index: uint64(i)})
			reDet = append(reDet, renderJob{fname: reDetName(reImageID(sp, i)), im: im, index: uint64(i)})
		}
	}
	for _, d := range []struct {
		rel  string
		jobs []renderJob
	}{{"img/synth_" + sp.name, det}, {"img/vcr_gt_" + sp.name, vcrGT}, {"img/re_coco_gt_" + sp.name, reGT}, {"img/re_coco_det_" + sp.name, reDet}} {
		if err := s.writeImgDB(d.rel, sp.index, d.jobs); err != nil {
			return err
		}
	}
	return nil
}

// txtDB wraps a txt_db writer with the synthesizer's tokenizer.
type txtDB struct {
	rel string
	w   *db.TxtWriter
	n   int
}

func (s *synthesizer) createTxtDB(rel string) (*txtDB, error) {
	w, err := db.CreateTxtDB(filepath.Join(s.dir, rel), s.meta)
	if err != nil {
		return nil, err
	}
	return &txtDB{rel: rel, w: w}, nil
}

func (t *txtDB) put(id string, ex map[string]any) error {
	t.n++
	return t.w.Put(id, ex)
}

// finish closes the writer; after a failed step it only releases it.
func (s *synthesizer) finish(t *txtDB, err error) error {
	cerr := t.w.Close()
	if err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	s.sum.DBs = append(s.sum.DBs, SynthDB{Path: t.rel, Kind: "txt_db", Count: t.n})
	return nil
}

func ints(ids []int32) []int {
	out := make([]int, len(ids))
	for i, v := range ids {
		out[i] = int(v)
	}
	return out
}

// textRNG is the generator of one image's texts for one task.
func (s *synthesizer) textRNG(stream uint64, sp *synthSplit, i int) *rand.Rand {
	return newRNG(s.opts.Seed, streamSynth, stream, sp.index, uint64(i))
}

func (s *synthesizer) writePretrain(sp *synthSplit) error {
	t, err := s.createTxtDB("txt/pretrain_" + sp.name + ".db")
	if err != nil {
		return err
	}
	return s.finish(t, func() error {
		for i, im := range sp.images {
			rng := s.textRNG(synthStreamCaption, sp, i)
			seen := map[string]bool{}
			for k := range s.opts.Captions {
				// Redraw repeats a few times: the grammar is small and
				// duplicate captions of one image teach nothing new.
				sent := im.caption(rng)
				for try := 0; seen[sent] && try < 10; try++ {
					sent = im.caption(rng)
				}
				seen[sent] = true
				id := fmt.Sprintf("%s_%06d_%d", sp.name, i, k)
				if err := t.put(id, map[string]any{"id": id, "sent": sent, "input_ids": ints(s.tok.Encode(sent)), "img_fname": im.name}); err != nil {
					return err
				}
			}
		}
		return nil
	}())
}

func (s *synthesizer) writeVQA(sp *synthSplit) error {
	rel := "txt/vqa_" + sp.name + ".db"
	t, err := s.createTxtDB(rel)
	if err != nil {
		return err
	}
	answers := vqaAnswers()
	ans2label := map[string]int{}
	for i, a := range answers {
		ans2label[a] = i
	}
	err = func() error {
		for i, im := range sp.images {
			rng := s.textRNG(synthStreamVQA, sp, i)
			for k := range s.opts.Questions {
				q := im.vqaQuestion(rng)
				qid := int(sp.index)*100_000_000 + i*s.opts.Questions + k
				labels := make([]int, len(q.answers))
				for j, a := range q.answers {
					labels[j] = ans2label[a]
				}
				ex := map[string]any{"question_id": qid, "question": q.question, "input_ids": ints(s.tok.Encode(q.question)),
					"img_fname": im.name, "answers": q.answers, "target": map[string]any{"labels": labels, "scores": q.scores}}
				if err := t.put(strconv.Itoa(qid), ex); err != nil {
					return err
				}
			}
		}
		return writeJSON(filepath.Join(s.dir, rel, "ans2label.json"), ans2label)
	}()
	return s.finish(t, err)
}

func (s *synthesizer) writeVE(sp *synthSplit) error {
	rel := "txt/ve_" + sp.name + ".db"
	t, err := s.createTxtDB(rel)
	if err != nil {
		return err
	}
	err = func() error {
		for i, im := range sp.images {
			rng := s.textRNG(synthStreamVE, sp, i)
			for _, label := range []int{veEntailment, veContradiction, veNeutral} {
				h := im.veHypothesis(rng, label)
				id := fmt.Sprintf("%s_%06d_%d", sp.name, i, label)
				ex := map[string]any{"sent": h, "input_ids": ints(s.tok.Encode(h)), "img_fname": im.name,
					"target": map[string]any{"labels": []int{label}, "scores": []float64{1}}}
				if err := t.put(id, ex); err != nil {
					return err
				}
			}
		}
		return writeJSON(filepath.Join(s.dir, rel, "ans2label.json"),
			map[string]int{"contradiction": veContradiction, "entailment": veEntailment, "neutral": veNeutral})
	}()
	return s.finish(t, err)
}

// writeNLVR2 pairs consecutive images and writes one true and one false
// statement per pair, so the labels are balanced.
func (s *synthesizer) writeNLVR2(sp *synthSplit) error {
	t, err := s.createTxtDB("txt/nlvr2_" + sp.name + ".db")
	if err != nil {
		return err
	}
	return s.finish(t, func() error {
		for p := 0; p+1 < len(sp.images); p += 2 {
			left, right := sp.images[p], sp.images[p+1]
			rng := s.textRNG(synthStreamNLVR2, sp, p)
			for k, want := range []bool{true, false} {
				var sent string
				var truth bool
				for try := 0; try < 200; try++ {
					if sent, truth = nlvr2Statement(rng, left, right); truth == want {
						break
					}
				}
				target := 0
				if truth {
					target = 1
				}
				ident := fmt.Sprintf("%s-%d-%d-0", sp.name, p/2, k)
				ex := map[string]any{"identifier": ident, "sentence": sent, "input_ids": ints(s.tok.Encode(sent)),
					"img_fname": []string{left.name, right.name}, "target": target}
				if err := t.put(ident, ex); err != nil {
					return err
				}
			}
		}
		return nil
	}())
}

func (s *synthesizer) writeVCR(sp *synthSplit) error {
	t, err := s.createTxtDB("txt/vcr_" + sp.name + ".db")
	if err != nil {
		return err
	}
	return s.finish(t, func() error {
		for i, im := range sp.images[:sp.gt] {
			it, ok := im.vcrQuestion(s.textRNG(synthStreamVCR, sp, i))
			if !ok {
				continue
			}
			var as, rs [][]int
			for k := range 4 {
				as = append(as, ints(s.tok.Encode(it.answers[k])))
				rs = append(rs, ints(s.tok.Encode(it.rationales[k])))
			}
			id := fmt.Sprintf("%s-%d", sp.name, i)
			ex := map[string]any{"qid": id, "question": it.question, "input_ids": ints(s.tok.Encode(it.question)),
				"answer_choices": it.answers[:], "rationale_choices": it.rationales[:],
				"input_ids_as": as, "input_ids_rs": rs, "qa_target": it.ans, "qar_target": it.rat,
				"img_fname": []string{vcrGTName(sp.name, i), im.name}}
			if err := t.put(id, ex); err != nil {
				return err
			}
			if err := putVCRLens(t.w, id, ex); err != nil {
				return err
			}
		}
		return nil
	}())
}

// writeRE writes referring expressions for the objects that have a unique
// description, with the refer-toolkit side files the official RE dataset
// reads; an image's ann_ids follow its gt db rows.
func (s *synthesizer) writeRE(sp *synthSplit) error {
	rel := "txt/re_" + sp.name + ".db"
	t, err := s.createTxtDB(rel)
	if err != nil {
		return err
	}
	type ann struct {
		ID         int       `json:"id"`
		ImageID    int       `json:"image_id"`
		CategoryID int       `json:"category_id"`
		BBox       []float64 `json:"bbox"`
		Area       float64   `json:"area"`
	}
	type sentence struct {
		SentID int      `json:"sent_id"`
		Sent   string   `json:"sent"`
		Raw    string   `json:"raw"`
		Tokens []string `json:"tokens"`
	}
	type ref struct {
		RefID      int        `json:"ref_id"`
		AnnID      int        `json:"ann_id"`
		ImageID    int        `json:"image_id"`
		CategoryID int        `json:"category_id"`
		Split      string     `json:"split"`
		SentIDs    []int      `json:"sent_ids"`
		Sentences  []sentence `json:"sentences"`
	}
	type image struct {
		ID       int    `json:"id"`
		FileName string `json:"file_name"`
		AnnIDs   []int  `json:"ann_ids"`
		Height   int    `json:"height"`
		Width    int    `json:"width"`
	}
	type category struct {
		ID            int    `json:"id"`
		Name          string `json:"name"`
		Supercategory string `json:"supercategory"`
	}
	var anns []ann
	var refs []ref
	var images []image
	err = func() error {
		for i, im := range sp.images[:sp.gt] {
			imageID := reImageID(sp, i)
			rng := s.textRNG(synthStreamRE, sp, i)
			img := image{ID: imageID, FileName: reGTName(imageID), Height: synthHeight, Width: synthWidth}
			for j, o := range im.objects {
				annID := imageID*100 + j
				img.AnnIDs = append(img.AnnIDs, annID)
				x, y := o.x1*synthWidth, o.y1*synthHeight
				w, h := (o.x2-o.x1)*synthWidth, (o.y2-o.y1)*synthHeight
				bbox := []float64{round2(x), round2(y), round2(w), round2(h)}
				anns = append(anns, ann{ID: annID, ImageID: imageID, CategoryID: o.class + 1, BBox: bbox, Area: round2(w * h)})
				expr := im.referringExpression(rng, j)
				if expr == "" || rng.IntN(2) == 0 {
					continue
				}
				r := ref{RefID: annID, AnnID: annID, ImageID: imageID, CategoryID: o.class + 1, Split: sp.name}
				sentID := annID
				r.SentIDs = []int{sentID}
				r.Sentences = []sentence{{SentID: sentID, Sent: expr, Raw: expr, Tokens: strings.Fields(expr)}}
				refs = append(refs, r)
				ex := map[string]any{"sent_id": sentID, "sent": expr, "ref_id": r.RefID, "ann_id": annID, "image_id": imageID,
					"bbox": bbox, "input_ids": ints(s.tok.Encode(expr)), "img_fname": reGTName(imageID)}
				if err := t.put(strconv.Itoa(sentID), ex); err != nil {
					return err
				}
			}
			images = append(images, img)
		}
		cats := make([]category, len(synthClasses))
		for c, name := range synthClasses {
			cats[c] = category{ID: c + 1, Name: name, Supercategory: "object"}
		}
		dir := filepath.Join(s.dir, rel)
		for _, side := range []struct {
			name string
			v    any
		}{{"refs.json", refs}, {"annotations.json", anns}, {"images.json", images}, {"categories.json", cats}} {
			if err := writeJSON(filepath.Join(dir, side.name), side.v); err != nil {
				return err
			}
		}
		return nil
	}()
	return s.finish(t, err)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// writeITR writes the retrieval caption pools: two captions per image, the
// validation pool cut to ITRValImages images because evaluation is
// quadratic.
func (s *synthesizer) writeITR(sp *synthSplit) error {
	t, err := s.createTxtDB("txt/itr_" + sp.name + ".db")
	if err != nil {
		return err
	}
	images := sp.images
	if sp.name == "val" {
		images = images[:min(len(images), s.opts.ITRValImages)]
	}
	return s.finish(t, func() error {
		for i, im := range images {
			rng := s.textRNG(synthStreamITR, sp, i)
			for k := range 2 {
				sent := im.caption(rng)
				id := fmt.Sprintf("%s_%06d_%d", sp.name, i, k)
				if err := t.put(id, map[string]any{"sent": sent, "input_ids": ints(s.tok.Encode(sent)), "img_fname": im.name}); err != nil {
					return err
				}
			}
		}
		return nil
	}())
}
