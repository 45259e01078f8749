package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"uniter/internal/data"
	"uniter/internal/db"
)

// newProgress returns a progress bar on w for n items.
func newProgress(w io.Writer, n int, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions(n,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
}

// txtdbOpts are the flags of `uniter data txtdb`.
type txtdbOpts struct {
	captions, questions, annotations, ans2label string
	nlvr2, snliVE, missingImgs                  string
	vocab, toker, imgPrefix, out                string
	refs, instances, iidToAnnIDs, split         string // re (prepro.py --task re)
	vcr                                         string // VCR annotations (JSON lines)
	quiet                                       bool
}

func newDataTxtdbCmd() *cobra.Command {
	o := txtdbOpts{toker: "bert-base-cased"}
	cmd := &cobra.Command{
		Use:   "txtdb --out DIR (--captions FILE | --questions FILE [--annotations FILE --ans2label FILE] | --nlvr2 FILE | --snli-ve FILE | --refs FILE --instances FILE [--iid-to-ann-ids FILE] [--split NAME]) [--img-prefix PREFIX] [--toker NAME] [--vocab FILE]",
		Short: "Build an official-format txt_db from COCO captions, VQA v2, NLVR2, SNLI-VE or RefCOCO annotations",
		Long: `txtdb tokenises raw annotations with BERT WordPiece (UNITER's prepro:
whitespace split, basic tokenizer, WordPiece, no specials, no truncation) and
writes a txt_db: the LMDB of lz4-compressed msgpack examples plus
id2len.json, txt2img.json, img2txts.json and meta.json.

--captions takes COCO captions JSON ({"annotations": [{"id", "image_id",
"caption"}]}); each caption becomes example "id" with input_ids, img_fname,
image_id and raw.

--questions takes VQA v2 questions JSON ({"questions": [{"question_id",
"image_id", "question"}]}); each question becomes example "question_id" with
input_ids, img_fname, image_id and question. With --annotations (VQA v2
annotations JSON) and --ans2label (UNITER's ans2label.json) it also gets
target = {labels, scores}: each of the 10 human answers is matched to a
label (as written, else after the VQA evaluation's punctuation, number-word
and article normalisation, else ignoring apostrophes, which stands in for the
evaluation's contraction table), and a label given by k answers scores
0.3k (at most 1), the standard VQA soft score. For both, img_fname is
PREFIX_%012d.npz of image_id, the official naming
(coco_train2014_000000000009.npz), and --img-prefix is required.

--nlvr2 takes NLVR2 annotations (JSON lines: identifier, sentence, label
"True"/"False", absent on the unlabelled test split, left_url ...) and
does what the official prepro.py does: each line becomes example
"identifier" holding the whole annotation plus input_ids (of sentence),
img_fname, the pair [nlvr2_ID-img0.npz, nlvr2_ID-img1.npz] where ID is
the identifier without its last dash field (dev-850-0-0 -> dev-850-0), and
target 1 for "True", 0 for "False", null without a label.

--snli-ve takes SNLI-VE annotations (JSON lines: pairID, Flikr30kID, also
spelt Flickr30kID, sentence2, gold_label): each line becomes example
"pairID" holding the whole annotation plus image_id (Flikr30kID without
".jpg"), input_ids (of sentence2), img_fname flickr30k_%012d.npz of
image_id (the official flickr30k img_db's names) and target = {labels:
[label], scores: [1.0]} with contradiction 0, entailment 1, neutral 2 (the
official VE ans2label, also written to the db as ans2label.json). A
gold_label outside those three is an error: SNLI-VE left out SNLI's
unlabelled "-" pairs.

--refs takes the refer toolkit's refs(*).p pickle (refcoco/refs(unc).p,
refcoco+/refs(unc).p, refcocog/refs(umd).p) with --instances, that
dataset's instances.json, and does what the official prepro.py --task re
does for one split (--split, else the name of --out after its first
underscore, as prepro.py: refcoco_testA.db is testA): every sentence of
the split's refs becomes example "sent_id" with sent_id, sent, ref_id,
ann_id, image_id, bbox (the annotation's), input_ids and img_fname
visual_grounding_coco_gt_%012d.npz, and the db gets refs.json (the
split's refs), images.json ({id, file_name, ann_ids, height, width} of
their images), annotations.json and categories.json. ann_ids, the order
of the ground-truth img_db's boxes, come from --iid-to-ann-ids (the
official iid_to_ann_ids.json: {"iid_to_ann_ids": {image_id: [ann_id]}}),
else from instances.json's order of the image's annotations.

--missing-imgs takes a JSON list of image names (the official
missing_nlvr2_imgs.json) and leaves out every example using one of them.

The vocabularies of bert-base-cased (the UNITER default) and
bert-base-uncased are built in: --toker picks one, records it in meta.json
and, when its name holds "uncased", turns on lowercasing and accent
stripping, as in the official prepro; --vocab FILE tokenises with another
vocab.txt instead. DIR must not exist or be empty; it appears only once the
whole db is written.`,
		Example: `  uniter data txtdb --captions captions_train2014.json \
      --img-prefix coco_train2014 --out txt_db/coco_train.db
  uniter data txtdb --questions v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations v2_mscoco_val2014_annotations.json --ans2label ans2label.json \
      --img-prefix coco_val2014 --out txt_db/vqa_val.db
  uniter data txtdb --nlvr2 nlvr2/data/dev.json --missing-imgs missing_nlvr2_imgs.json \
      --out txt_db/nlvr2_dev.db
  uniter data txtdb --snli-ve snli_ve_train.jsonl --out txt_db/ve_train.db
  uniter data txtdb --refs 'refcoco/refs(unc).p' --instances refcoco/instances.json \
      --iid-to-ann-ids iid_to_ann_ids.json --out txt_db/refcoco_val.db
  uniter data txtdb --captions captions.json --img-prefix coco_val2014 \
      --toker bert-base-uncased --out txt_db/coco_val_uncased.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTxtdb(o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.captions, "captions", "", "COCO captions JSON")
	f.StringVar(&o.questions, "questions", "", "VQA v2 questions JSON")
	f.StringVar(&o.annotations, "annotations", "", "VQA v2 annotations JSON (adds targets)")
	f.StringVar(&o.ans2label, "ans2label", "", "answer -> label JSON (needed with --annotations)")
	f.StringVar(&o.nlvr2, "nlvr2", "", "NLVR2 annotations, JSON lines (train.json, dev.json, test1.json)")
	f.StringVar(&o.snliVE, "snli-ve", "", "SNLI-VE annotations, JSON lines (snli_ve_train.jsonl ...)")
	f.StringVar(&o.vcr, "vcr", "", "VCR annotations, JSON lines (train.jsonl, val.jsonl, test.jsonl)")
	f.StringVar(&o.refs, "refs", "", "re: the refer toolkit's refs(*).p pickle (RefCOCO, RefCOCO+, RefCOCOg)")
	f.StringVar(&o.instances, "instances", "", "re: the dataset's instances.json (images, annotations, categories)")
	f.StringVar(&o.iidToAnnIDs, "iid-to-ann-ids", "", "re: JSON {\"iid_to_ann_ids\": {image_id: [ann_id, ...]}}, the box order of the ground-truth img_db (default: instances.json's order)")
	f.StringVar(&o.split, "split", "", "re: the refs' split to write (default: the name of --out after its first underscore, as prepro.py)")
	f.StringVar(&o.missingImgs, "missing-imgs", "", "JSON list of image names whose examples are left out (e.g. missing_nlvr2_imgs.json)")
	f.StringVar(&o.vocab, "vocab", "", "BERT vocab.txt to use instead of the built-in vocabulary of --toker")
	f.StringVar(&o.toker, "toker", o.toker, "tokenizer: "+strings.Join(data.BuiltinVocabs(), " or ")+
		" (built in), or any name with --vocab; recorded in meta.json; \"uncased\" in it turns on lowercasing")
	f.StringVar(&o.imgPrefix, "img-prefix", "", "image name prefix for --captions and --questions, e.g. coco_train2014")
	f.StringVar(&o.out, "out", "", "output txt_db directory (must not exist or be empty)")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar, only the summary")
	return cmd
}

// txtExample is one example ready for the writer; where names its place in
// the input (file:line or file: list[index]).
type txtExample struct {
	id, where string
	fields    map[string]any
	// lens are further {id: len} side files the example is listed in
	// (VCR's id2len_qa.json and id2len_qar.json).
	lens map[string]int
}

// veAns2Label is the official VE label map (utils/misc.py VE_ENT2IDX).
var veAns2Label = map[string]int{"contradiction": 0, "entailment": 1, "neutral": 2}

func runTxtdb(o txtdbOpts, progress io.Writer) error {
	inputs := 0
	for _, in := range []string{o.captions, o.questions, o.nlvr2, o.snliVE, o.refs, o.vcr} {
		if in != "" {
			inputs++
		}
	}
	prefixed := o.captions != "" || o.questions != ""
	switch {
	case o.out == "":
		return errors.New("data txtdb: --out is required")
	case inputs != 1:
		return errors.New("data txtdb: give exactly one of --captions, --questions, --nlvr2, --snli-ve, --refs and --vcr")
	case prefixed && o.imgPrefix == "":
		return errors.New("data txtdb: --img-prefix is required with --captions and --questions (e.g. coco_train2014)")
	case !prefixed && o.imgPrefix != "":
		return fmt.Errorf("data txtdb: --img-prefix %s goes with --captions and --questions; NLVR2 and SNLI-VE images have fixed names", o.imgPrefix)
	case o.annotations != "" && o.ans2label == "":
		return fmt.Errorf("data txtdb: --annotations %s needs --ans2label", o.annotations)
	case o.questions == "" && (o.annotations != "" || o.ans2label != ""):
		return errors.New("data txtdb: --annotations and --ans2label go with --questions")
	case (o.refs != "") != (o.instances != ""):
		return errors.New("data txtdb: --refs and --instances go together (the refer toolkit's refs(*).p and instances.json)")
	case o.refs == "" && (o.iidToAnnIDs != "" || o.split != ""):
		return errors.New("data txtdb: --iid-to-ann-ids and --split go with --refs")
	}
	tok, err := data.BertTokenizer(o.toker, o.vocab)
	if err != nil {
		if o.vocab == "" {
			return fmt.Errorf("data txtdb: --toker: %w; give its vocab.txt with --vocab", err)
		}
		return fmt.Errorf("data txtdb: %w", err)
	}
	vocabSrc := o.vocab
	if vocabSrc == "" {
		vocabSrc = "built-in " + o.toker
	}
	bar := progress
	if o.quiet {
		bar = io.Discard
	}
	meta, err := vocabMeta(tok.Vocab(), vocabSrc, o.toker)
	if err != nil {
		return err
	}
	var examples []txtExample
	sideFiles := map[string]any{}
	switch {
	case o.captions != "":
		examples, err = captionExamples(o.captions, o.imgPrefix, tok)
	case o.questions != "":
		examples, err = vqaExamples(o, tok)
	case o.nlvr2 != "":
		examples, err = nlvr2Examples(o.nlvr2, tok)
	case o.refs != "":
		examples, _, err = reExamples(o, tok, sideFiles)
	case o.vcr != "":
		examples, err = vcrExamples(o.vcr, tok)
	default:
		examples, err = veExamples(o.snliVE, tok)
		sideFiles["ans2label.json"] = veAns2Label
	}
	if err != nil {
		return err
	}
	if err := checkUniqueIDs(examples); err != nil {
		return err
	}
	skipped := 0
	if o.missingImgs != "" {
		if examples, skipped, err = dropMissingImages(examples, o.missingImgs); err != nil {
			return err
		}
	}
	if err := writeTxtDB(o.out, meta, examples, sideFiles, bar); err != nil {
		return err
	}
	// One line, as data imgdb prints: what was written where, and with
	// which tokenizer, which every later command must match.
	fmt.Fprintf(progress, "wrote %d examples to %s", len(examples), o.out)
	if o.missingImgs != "" {
		fmt.Fprintf(progress, " (left out %d with an image in %s)", skipped, o.missingImgs)
	}
	vocabDesc := "built-in vocabulary"
	if o.vocab != "" {
		vocabDesc = "vocabulary " + o.vocab
	}
	fmt.Fprintf(progress, ", tokenizer %s (%s, %d tokens)\n", o.toker, vocabDesc, tok.Vocab().Len())
	return nil
}

// writeTxtDB writes examples and the extra side files (name -> JSON value)
// as a txt_db at out, all or nothing: the db is built in a hidden directory
// beside out and renamed to out once complete.
func writeTxtDB(out string, meta db.Meta, examples []txtExample, sideFiles map[string]any, progress io.Writer) error {
	tmp, err := db.StageDir(out)
	if err != nil {
		return fmt.Errorf("data txtdb: --out %w", err)
	}
	if err := fillTxtDB(tmp, meta, examples, sideFiles, progress); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := db.CommitDir(tmp, out); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("data txtdb: --out %w", err)
	}
	return nil
}

func fillTxtDB(dir string, meta db.Meta, examples []txtExample, sideFiles map[string]any, progress io.Writer) error {
	w, err := db.CreateTxtDB(dir, meta)
	if err != nil {
		return err
	}
	bar := newProgress(progress, len(examples), "txt_db")
	for _, ex := range examples {
		if err := w.Put(ex.id, ex.fields); err != nil {
			w.Close()
			return fmt.Errorf("data txtdb: %s: %w", ex.where, err)
		}
		for name, n := range ex.lens {
			if err := w.PutLen(name, ex.id, n); err != nil {
				w.Close()
				return fmt.Errorf("data txtdb: %s: %w", ex.where, err)
			}
		}
		bar.Add(1)
	}
	bar.Finish()
	if err := w.Close(); err != nil {
		return err
	}
	for name, v := range sideFiles {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("data txtdb: %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("data txtdb: %w", err)
		}
	}
	return nil
}

// checkUniqueIDs rejects two examples with one id, which would silently
// replace one another in the LMDB.
func checkUniqueIDs(examples []txtExample) error {
	seen := make(map[string]string, len(examples))
	for _, ex := range examples {
		if first, dup := seen[ex.id]; dup {
			return fmt.Errorf("data txtdb: %s: example id %q already given at %s", ex.where, ex.id, first)
		}
		seen[ex.id] = ex.where
	}
	return nil
}

// dropMissingImages leaves out the examples with an image listed in the
// JSON list at path, as prepro.py's --missing_imgs, and returns how many.
func dropMissingImages(examples []txtExample, path string) ([]txtExample, int, error) {
	var names []string
	if err := readJSONFile(path, &names); err != nil {
		return nil, 0, err
	}
	missing := make(map[string]bool, len(names))
	for _, n := range names {
		missing[n] = true
	}
	kept := examples[:0]
	for _, ex := range examples {
		if !slices.ContainsFunc(exampleImages(ex.fields), func(n string) bool { return missing[n] }) {
			kept = append(kept, ex)
		}
	}
	return kept, len(examples) - len(kept), nil
}

// exampleImages returns an example's img_fname as a list.
func exampleImages(fields map[string]any) []string {
	switch f := fields["img_fname"].(type) {
	case string:
		return []string{f}
	case []string:
		return f
	}
	return nil
}

// vocabMeta derives meta.json's special ids from the vocabulary, as the
// official prepro does with convert_tokens_to_ids; src names the vocabulary
// in errors.
func vocabMeta(v *data.Vocab, src, toker string) (db.Meta, error) {
	m := db.Meta{Tokenizer: toker}
	for _, s := range []struct {
		tok string
		dst *int
	}{{data.TokCLS, &m.CLS}, {data.TokSEP, &m.SEP}, {data.TokMASK, &m.MASK}, {data.TokUNK, &m.UNK}, {"!", &m.VRange[0]}} {
		id, ok := v.ID(s.tok)
		if !ok {
			return db.Meta{}, fmt.Errorf("data txtdb: vocab %s has no %q token", src, s.tok)
		}
		*s.dst = int(id)
	}
	m.VRange[1] = v.Len()
	return m, nil
}

// readJSONFile decodes path into v, naming the file in errors.
func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("data txtdb: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("data txtdb: %s: %w", path, err)
	}
	return nil
}

func imgFname(prefix string, imageID int64) string {
	return fmt.Sprintf("%s_%012d.npz", prefix, imageID)
}

func captionExamples(path, prefix string, tok *data.Tokenizer) ([]txtExample, error) {
	var file struct {
		Annotations []struct {
			ID      *int64  `json:"id"`
			ImageID *int64  `json:"image_id"`
			Caption *string `json:"caption"`
		} `json:"annotations"`
	}
	if err := readJSONFile(path, &file); err != nil {
		return nil, err
	}
	if len(file.Annotations) == 0 {
		return nil, fmt.Errorf("data txtdb: %s: no \"annotations\"", path)
	}
	out := make([]txtExample, 0, len(file.Annotations))
	for i, a := range file.Annotations {
		if a.ID == nil || a.ImageID == nil || a.Caption == nil {
			return nil, fmt.Errorf("data txtdb: %s: annotations[%d] lacks id, image_id or caption", path, i)
		}
		out = append(out, txtExample{id: strconv.FormatInt(*a.ID, 10), where: fmt.Sprintf("%s: annotations[%d]", path, i), fields: map[string]any{
			"input_ids": tok.Encode(*a.Caption),
			"img_fname": imgFname(prefix, *a.ImageID),
			"image_id":  *a.ImageID,
			"raw":       *a.Caption,
		}})
	}
	return out, nil
}

func vqaExamples(o txtdbOpts, tok *data.Tokenizer) ([]txtExample, error) {
	var qs struct {
		Questions []struct {
			QuestionID *int64  `json:"question_id"`
			ImageID    *int64  `json:"image_id"`
			Question   *string `json:"question"`
		} `json:"questions"`
	}
	if err := readJSONFile(o.questions, &qs); err != nil {
		return nil, err
	}
	if len(qs.Questions) == 0 {
		return nil, fmt.Errorf("data txtdb: %s: no \"questions\"", o.questions)
	}
	var targets map[int64]map[string]any
	if o.annotations != "" {
		var err error
		if targets, err = vqaTargets(o.annotations, o.ans2label); err != nil {
			return nil, err
		}
	}
	out := make([]txtExample, 0, len(qs.Questions))
	for i, q := range qs.Questions {
		if q.QuestionID == nil || q.ImageID == nil || q.Question == nil {
			return nil, fmt.Errorf("data txtdb: %s: questions[%d] lacks question_id, image_id or question", o.questions, i)
		}
		fields := map[string]any{
			"input_ids":   tok.Encode(*q.Question),
			"img_fname":   imgFname(o.imgPrefix, *q.ImageID),
			"image_id":    *q.ImageID,
			"question_id": *q.QuestionID,
			"question":    *q.Question,
		}
		if targets != nil {
			t, ok := targets[*q.QuestionID]
			if !ok {
				return nil, fmt.Errorf("data txtdb: %s: no annotation for question_id %d", o.annotations, *q.QuestionID)
			}
			fields["target"] = t
		}
		out = append(out, txtExample{id: strconv.FormatInt(*q.QuestionID, 10), where: fmt.Sprintf("%s: questions[%d]", o.questions, i), fields: fields})
	}
	return out, nil
}

// nlvr2Examples reads NLVR2 annotations as the official prepro.py's
// process_nlvr2 does.
func nlvr2Examples(path string, tok *data.Tokenizer) ([]txtExample, error) {
	var out []txtExample
	err := readJSONLines(path, func(where string, ex map[string]any) error {
		id, ok := ex["identifier"].(string)
		if !ok || id == "" {
			return fmt.Errorf("data txtdb: %s: want an \"identifier\" string, got %s", where, fieldText(ex, "identifier"))
		}
		cut := strings.LastIndexByte(id, '-')
		if cut < 0 {
			return fmt.Errorf("data txtdb: %s: identifier %q has no dash (want e.g. dev-850-0-0)", where, id)
		}
		sent, ok := ex["sentence"].(string)
		if !ok {
			return fmt.Errorf("data txtdb: %s: identifier %q: want a \"sentence\" string, got %s", where, id, fieldText(ex, "sentence"))
		}
		var target any // None on the unlabelled test split
		if label, labelled := ex["label"]; labelled {
			switch label {
			case "True":
				target = 1
			case "False":
				target = 0
			default:
				return fmt.Errorf("data txtdb: %s: identifier %q: label %s, want \"True\" or \"False\"", where, id, jsonText(label))
			}
		}
		img := "nlvr2_" + id[:cut]
		ex["input_ids"] = tok.Encode(sent)
		ex["img_fname"] = []string{img + "-img0.npz", img + "-img1.npz"}
		ex["target"] = target
		out = append(out, txtExample{id: id, where: where, fields: ex})
		return nil
	})
	return out, err
}

// veExamples reads SNLI-VE annotations the way the UNITER authors' VE
// preprocessing did: key pairID, image flickr30k_%012d.npz of the Flickr30k
// id, a one-hot soft target.
func veExamples(path string, tok *data.Tokenizer) ([]txtExample, error) {
	var out []txtExample
	err := readJSONLines(path, func(where string, h map[string]any) error {
		id, ok := h["pairID"].(string)
		if !ok || id == "" {
			return fmt.Errorf("data txtdb: %s: want a \"pairID\" string, got %s", where, fieldText(h, "pairID"))
		}
		imageID, err := flickrImageID(h)
		if err != nil {
			return fmt.Errorf("data txtdb: %s: pairID %q: %w", where, id, err)
		}
		sent, ok := h["sentence2"].(string)
		if !ok {
			return fmt.Errorf("data txtdb: %s: pairID %q: want a \"sentence2\" string, got %s", where, id, fieldText(h, "sentence2"))
		}
		gold, _ := h["gold_label"].(string)
		label, ok := veAns2Label[gold]
		if !ok {
			return fmt.Errorf("data txtdb: %s: pairID %q: gold_label %s, want contradiction, entailment or neutral", where, id, fieldText(h, "gold_label"))
		}
		h["image_id"] = imageID
		h["input_ids"] = tok.Encode(sent)
		h["img_fname"] = imgFname("flickr30k", imageID)
		h["target"] = map[string]any{"labels": []int{label}, "scores": []float64{1}}
		out = append(out, txtExample{id: id, where: where, fields: h})
		return nil
	})
	return out, err
}

// flickrImageID reads an SNLI-VE line's Flickr30k image id: "Flikr30kID"
// (SNLI-VE's own spelling) or "Flickr30kID", a file name such as
// "3416050480.jpg" or a bare number.
func flickrImageID(h map[string]any) (int64, error) {
	key := "Flikr30kID"
	v, ok := h[key]
	if !ok {
		key = "Flickr30kID"
		v = h[key]
	}
	switch id := v.(type) {
	case int64:
		if id >= 0 {
			return id, nil
		}
	case string:
		stem, _, _ := strings.Cut(id, ".")
		if n, err := strconv.ParseInt(stem, 10, 64); err == nil && n >= 0 {
			return n, nil
		}
	case nil:
		return 0, errors.New("no \"Flikr30kID\" (or \"Flickr30kID\")")
	}
	return 0, fmt.Errorf("%s %s is not a Flickr30k image id such as \"3416050480.jpg\"", key, jsonText(v))
}

// readJSONLines calls fn with each non-blank line of path decoded as a JSON
// object, numbers typed as Python's json module types them (see pyJSON),
// and the line's place ("path:line") for errors.
func readJSONLines(path string, fn func(where string, obj map[string]any) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data txtdb: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 64<<20)
	lines := 0
	for n := 1; sc.Scan(); n++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		where := fmt.Sprintf("%s:%d", path, n)
		var obj map[string]any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&obj); err != nil {
			return fmt.Errorf("data txtdb: %s: not a JSON object: %w", where, err)
		}
		if obj == nil || dec.More() {
			return fmt.Errorf("data txtdb: %s: want one JSON object on the line, got %.40q", where, b)
		}
		v, err := pyJSON(obj)
		if err != nil {
			return fmt.Errorf("data txtdb: %s: %w", where, err)
		}
		if err := fn(where, v.(map[string]any)); err != nil {
			return err
		}
		lines++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("data txtdb: %s: %w", path, err)
	}
	if lines == 0 {
		return fmt.Errorf("data txtdb: %s: no JSON lines", path)
	}
	return nil
}

// pyJSON types the numbers of a decoded JSON value as Python's json.loads
// does, so that they are stored as the official prepro stores them: int64
// for integer literals, float64 for those with a fraction or exponent.
func pyJSON(v any) (any, error) {
	switch x := v.(type) {
	case json.Number:
		s := x.String()
		if strings.ContainsAny(s, ".eE") {
			return x.Float64()
		}
		n, err := x.Int64()
		if err != nil {
			return nil, fmt.Errorf("integer %s does not fit in 64 bits", s)
		}
		return n, nil
	case map[string]any:
		for k, e := range x {
			var err error
			if x[k], err = pyJSON(e); err != nil {
				return nil, err
			}
		}
	case []any:
		for i, e := range x {
			var err error
			if x[i], err = pyJSON(e); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// fieldText renders obj[key] for an error message: its JSON, or "none"
// when obj has no such key.
func fieldText(obj map[string]any, key string) string {
	v, ok := obj[key]
	if !ok {
		return "none"
	}
	return jsonText(v)
}

// jsonText renders a decoded JSON value for an error message.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// vqaTargets reads VQA annotations and returns each question's soft target
// {labels, scores}.
func vqaTargets(annPath, labelPath string) (map[int64]map[string]any, error) {
	var ans2label map[string]int
	if err := readJSONFile(labelPath, &ans2label); err != nil {
		return nil, err
	}
	if len(ans2label) == 0 {
		return nil, fmt.Errorf("data txtdb: %s: empty answer -> label map", labelPath)
	}
	lookup := newAnswerLookup(ans2label)
	var anns struct {
		Annotations []struct {
			QuestionID *int64 `json:"question_id"`
			Answers    []struct {
				Answer string `json:"answer"`
			} `json:"answers"`
		} `json:"annotations"`
	}
	if err := readJSONFile(annPath, &anns); err != nil {
		return nil, err
	}
	out := make(map[int64]map[string]any, len(anns.Annotations))
	for i, a := range anns.Annotations {
		if a.QuestionID == nil {
			return nil, fmt.Errorf("data txtdb: %s: annotations[%d] lacks question_id", annPath, i)
		}
		counts := map[int]int{}
		var order []int
		for _, ans := range a.Answers {
			label, ok := lookup.label(ans.Answer)
			if !ok {
				continue
			}
			if counts[label] == 0 {
				order = append(order, label)
			}
			counts[label]++
		}
		labels := make([]int, len(order))
		scores := make([]float64, len(order))
		for j, l := range order {
			labels[j] = l
			scores[j] = vqaScore(counts[l])
		}
		out[*a.QuestionID] = map[string]any{"labels": labels, "scores": scores}
	}
	return out, nil
}

// vqaScore is the standard VQA soft score of an answer given by n of the 10
// annotators: 0.3 per annotator, at most 1.
func vqaScore(n int) float64 {
	switch {
	case n >= 4:
		return 1
	case n == 3:
		return 0.9
	case n == 2:
		return 0.6
	case n == 1:
		return 0.3
	}
	return 0
}

// answerLookup maps raw VQA answers to labels.
type answerLookup struct {
	exact, noApos map[string]int
}

func newAnswerLookup(ans2label map[string]int) answerLookup {
	l := answerLookup{exact: ans2label, noApos: map[string]int{}}
	// Sorted so that when two labels collide without apostrophes the same
	// one wins every run.
	keys := make([]string, 0, len(ans2label))
	for k := range ans2label {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := strings.ReplaceAll(k, "'", "")
		if _, dup := l.noApos[s]; !dup {
			l.noApos[s] = ans2label[k]
		}
	}
	return l
}

func (l answerLookup) label(answer string) (int, bool) {
	if id, ok := l.exact[answer]; ok {
		return id, true
	}
	norm := normalizeVQAAnswer(answer)
	if id, ok := l.exact[norm]; ok {
		return id, true
	}
	id, ok := l.noApos[strings.ReplaceAll(norm, "'", "")]
	return id, ok
}

var (
	vqaPunct     = []string{";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"}
	vqaNumbers   = map[string]string{"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
	vqaArticles  = map[string]bool{"a": true, "an": true, "the": true}
	vqaMaxPeriod = 32
)

// normalizeVQAAnswer is the VQA evaluation's processPunctuation followed by
// processDigitArticle (without its contraction table).
func normalizeVQAAnswer(s string) string {
	out := s
	commaInNumber := hasCommaInNumber(s)
	for _, p := range vqaPunct {
		if strings.Contains(s, p+" ") || strings.Contains(s, " "+p) || commaInNumber {
			out = strings.ReplaceAll(out, p, "")
		} else {
			out = strings.ReplaceAll(out, p, " ")
		}
	}
	out = stripPeriods(out)
	var words []string
	for _, w := range strings.Fields(strings.ToLower(out)) {
		if n, ok := vqaNumbers[w]; ok {
			w = n
		}
		if !vqaArticles[w] {
			words = append(words, w)
		}
	}
	return strings.Join(words, " ")
}

// hasCommaInNumber reports a digit, comma, digit sequence (the evaluation's
// commaStrip pattern).
func hasCommaInNumber(s string) bool {
	r := []rune(s)
	for i := 1; i+1 < len(r); i++ {
		if r[i] == ',' && unicode.IsDigit(r[i-1]) && unicode.IsDigit(r[i+1]) {
			return true
		}
	}
	return false
}

// stripPeriods removes periods not followed by a digit. The evaluation's
// periodStrip.sub("", text, re.UNICODE) passes re.UNICODE (32) as the
// count, so at most 32 are removed; so here.
func stripPeriods(s string) string {
	r := []rune(s)
	var b strings.Builder
	removed := 0
	for i, c := range r {
		if c == '.' && removed < vqaMaxPeriod && (i+1 == len(r) || !unicode.IsDigit(r[i+1])) {
			removed++
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// imgdbOpts are the flags of `uniter data imgdb`.
type imgdbOpts struct {
	npzDir, out string
	compressed  bool
	skipCorrupt bool
	quiet       bool
	workers     int
	labelDim    int
	db          db.ImgDBOptions
}

func newDataImgdbCmd() *cobra.Command {
	o := imgdbOpts{db: db.DefaultImgDBOptions()}
	cmd := &cobra.Command{
		Use:   "imgdb --npz-dir DIR --out DIR [--compressed]",
		Short: "Build an official-format img_db from per-image .npz region features",
		Long: `imgdb converts a directory of per-image .npz files (the BUTD extractor's
output: norm_bb [N,6], features [N,D], conf [N] or [N,1], soft_labels
[N,1601]; float32 or float16) into an img_db as the official convert_imgdir.py
does: arrays stored as fp16, regions sorted by confidence truncated to
nbb = min(max_bb, max(min_bb, #(conf > conf_th))), values msgpack-numpy (or
np.savez_compressed with --compressed), the __keys__ list, and the nbb json.

The LMDB goes to DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}, or
DIR/feat_numbb{num_bb} with --conf-th -1, or DIR/all with --keep-all (every
region, nbb computed when read), each with "_compressed" when compressed.
With --conf-th -1 every region counts: an image keeps min(N, max_bb) of its
N regions and no nbb json is written, exactly as the official converter, so
ground-truth dbs of a few boxes an image build too; --num-bb only names the
directory (readers then take at most num_bb regions an image). Images are
written in file-name order.

Every file is checked as it is read: each array present, with N rows,
features D columns (--img-dim, else the first image's), norm_bb 6 and
soft_labels --label-dim (1601, the Visual Genome classes MRC predicts;
--label-dim 0 accepts files without soft labels). A file that fails, or
cannot be read, stops the build with an error naming it, the array and
the shape found and wanted; with --skip-corrupt it is reported and left
out instead. The db is built in a hidden temporary directory beside DIR
(or beside its LMDB sub-directory when DIR already holds other layouts)
and moved into place at the end: a failed build leaves nothing that
looks like a db, so the same command can simply be run again.`,
		Example: `  uniter data imgdb --npz-dir /feats/coco_val2014 --out img_db/coco_val2014
  uniter data imgdb --npz-dir /feats/nlvr2_dev --out img_db/nlvr2_dev --compressed
  uniter data imgdb --npz-dir /feats/vcr --out img_db/vcr --conf-th -1 --num-bb 100`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runImgdb(o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.npzDir, "npz-dir", "", "directory of per-image .npz files")
	f.StringVar(&o.out, "out", "", "output img_db directory")
	f.BoolVar(&o.compressed, "compressed", false, "store values as np.savez_compressed bytes")
	registerImgDBFlags(f, &o.db)
	f.BoolVar(&o.db.KeepAll, "keep-all", false, "keep every region (the \"all\" layout)")
	f.IntVar(&o.db.ImgDim, "img-dim", 0, "required feature size (0: any, but the same for every image)")
	f.IntVar(&o.labelDim, "label-dim", data.LabelDim, "soft_labels classes every .npz must have (0: soft_labels not required; mrc and mrckl need them)")
	f.BoolVar(&o.skipCorrupt, "skip-corrupt", false, "report unreadable or malformed .npz files and go on, as the official converter does")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar, only the summary (and any skipped files)")
	f.IntVar(&o.workers, "workers", runtime.NumCPU(), "goroutines reading .npz files")
	return cmd
}

// loaded is one .npz read by a worker.
type loaded struct {
	raw db.RawImage
	err error
}

func runImgdb(o imgdbOpts, progress io.Writer) error {
	switch {
	case o.npzDir == "":
		return errors.New("data imgdb: --npz-dir is required")
	case o.out == "":
		return errors.New("data imgdb: --out is required")
	case o.db.MinBB < 0 || o.db.MaxBB < o.db.MinBB:
		return fmt.Errorf("data imgdb: --min-bb %d and --max-bb %d: want 0 <= min <= max", o.db.MinBB, o.db.MaxBB)
	case o.db.ConfTh == -1 && o.db.NumBB <= 0:
		return fmt.Errorf("data imgdb: --num-bb %d: want > 0", o.db.NumBB)
	}
	names, err := filepath.Glob(filepath.Join(o.npzDir, "*.npz"))
	if err != nil {
		return fmt.Errorf("data imgdb: --npz-dir %s: %w", o.npzDir, err)
	}
	if len(names) == 0 {
		return fmt.Errorf("data imgdb: --npz-dir %s: no .npz files", o.npzDir)
	}
	sort.Strings(names)
	if o.labelDim < 0 {
		return fmt.Errorf("data imgdb: --label-dim %d: want >= 0", o.labelDim)
	}
	w, err := db.CreateImgDB(o.out, o.db, o.compressed)
	if err != nil {
		return err
	}
	barOut, nl := progress, "\n" // nl ends the bar's line before a report
	if o.quiet {
		barOut, nl = io.Discard, ""
	}
	bar := newProgress(barOut, len(names), "img_db")
	shapes := npzShapes{dim: o.db.ImgDim, labels: o.labelDim}
	if shapes.dim > 0 {
		shapes.dimFrom = fmt.Sprintf("--img-dim %d", shapes.dim)
	}
	written, skipped := 0, 0
	err = readNpzOrdered(names, max(1, o.workers), func(path string, l loaded) error {
		bar.Add(1)
		if l.err == nil {
			l.err = shapes.check(path, l.raw)
		}
		if l.err != nil {
			err := fmt.Errorf("data imgdb: %s: %w", path, l.err)
			if o.skipCorrupt {
				skipped++
				fmt.Fprintf(progress, "%sskipping %v\n", nl, err)
				return nil
			}
			return fmt.Errorf("%w; nothing written (--skip-corrupt leaves bad files out)", err)
		}
		if _, err := w.Put(filepath.Base(path), l.raw); err != nil {
			return fmt.Errorf("data imgdb: %s: %w", path, err)
		}
		written++
		return nil
	})
	if err == nil && written == 0 {
		err = fmt.Errorf("data imgdb: --npz-dir %s: all %d .npz files were skipped; nothing written", o.npzDir, skipped)
	}
	if err != nil {
		w.Abort()
		return err
	}
	bar.Finish()
	if err := w.Close(); err != nil {
		return err
	}
	fmt.Fprintf(progress, "wrote %d images to %s (%d-d features", written, w.Path(), shapes.dim)
	if shapes.labels > 0 {
		fmt.Fprintf(progress, ", %d-way soft_labels", shapes.labels)
	}
	fmt.Fprint(progress, ")")
	if skipped > 0 {
		fmt.Fprintf(progress, ", skipped %d bad .npz", skipped)
	}
	fmt.Fprintln(progress)
	return nil
}

// npzShapes checks each extractor .npz against what the img_db's readers
// need, so that a file that would only fail at training or eval time (no
// soft_labels for MRC, another feature size) fails the build instead,
// naming itself. ReadRawNpz has already checked that every array has the
// features' N rows and norm_bb 6 columns.
type npzShapes struct {
	// dim is the feature size every image must have: --img-dim, else the
	// first image's (dimFrom says which, for errors); 0 until known.
	dim     int
	dimFrom string
	// labels is the soft_labels width every image must have, 0: any or none.
	labels int
}

func (s *npzShapes) check(path string, raw db.RawImage) error {
	if s.dim > 0 && raw.D != s.dim {
		return fmt.Errorf("features shape [%d %d], want [%d %d] (%s)", raw.N, raw.D, raw.N, s.dim, s.dimFrom)
	}
	if s.labels > 0 {
		if raw.SoftLabels == nil {
			return fmt.Errorf("no soft_labels array, want [%d %d] (--label-dim %d; --label-dim 0 builds a db without them, which mrc and mrckl cannot train on)", raw.N, s.labels, s.labels)
		}
		if raw.L != s.labels {
			return fmt.Errorf("soft_labels shape [%d %d], want [%d %d] (--label-dim %d)", raw.N, raw.L, raw.N, s.labels, s.labels)
		}
	}
	if s.dim == 0 {
		s.dim, s.dimFrom = raw.D, "the feature size of "+filepath.Base(path)+", the first image"
	}
	return nil
}

// readNpzOrdered reads the .npz files with workers goroutines and calls put
// for each in the order of paths, so the db does not depend on scheduling.
// It stops at put's first error.
func readNpzOrdered(paths []string, workers int, put func(string, loaded) error) error {
	// At most window files are read ahead of put; file i's result goes to
	// results[i%window], free again once put has taken file i-window's.
	window := 4 * workers
	results := make([]chan loaded, window)
	for i := range results {
		results[i] = make(chan loaded, 1)
	}
	slots := make(chan struct{}, window)
	next := make(chan int)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var l loaded
				b, err := os.ReadFile(paths[i])
				if err != nil {
					l.err = err
				} else {
					l.raw, l.err = db.ReadRawNpz(b)
				}
				results[i%window] <- l
			}
		}()
	}
	go func() {
		defer close(next)
		for i := range paths {
			select {
			case slots <- struct{}{}:
			case <-done:
				return
			}
			select {
			case next <- i:
			case <-done:
				return
			}
		}
	}()
	var err error
	for i, p := range paths {
		l := <-results[i%window]
		<-slots
		if err = put(p, l); err != nil {
			break
		}
	}
	close(done)
	wg.Wait()
	return err
}
