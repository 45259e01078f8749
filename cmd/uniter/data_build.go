package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
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
	vocab, toker, imgPrefix, out                string
}

func newDataTxtdbCmd() *cobra.Command {
	o := txtdbOpts{toker: "bert-base-cased"}
	cmd := &cobra.Command{
		Use:   "txtdb --vocab FILE --img-prefix PREFIX --out DIR (--captions FILE | --questions FILE [--annotations FILE --ans2label FILE])",
		Short: "Build an official-format txt_db from COCO captions or VQA v2 questions",
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
0.3k (at most 1), the standard VQA soft score.

img_fname is PREFIX_%012d.npz of image_id, the official naming
(coco_train2014_000000000009.npz). The tokenizer is lowercasing when --toker
names an uncased model, as in the official prepro.`,
		Example: `  uniter data txtdb --captions captions_train2014.json --vocab bert-base-cased-vocab.txt \
      --img-prefix coco_train2014 --out txt_db/coco_train.db
  uniter data txtdb --questions v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations v2_mscoco_val2014_annotations.json --ans2label ans2label.json \
      --vocab vocab.txt --img-prefix coco_val2014 --out txt_db/vqa_val.db`,
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
	f.StringVar(&o.vocab, "vocab", "", "BERT vocab.txt")
	f.StringVar(&o.toker, "toker", o.toker, "tokenizer name recorded in meta.json; \"uncased\" in it turns on lowercasing")
	f.StringVar(&o.imgPrefix, "img-prefix", "", "image name prefix, e.g. coco_train2014")
	f.StringVar(&o.out, "out", "", "output txt_db directory (must not hold a db)")
	return cmd
}

// txtExample is one example ready for the writer.
type txtExample struct {
	id     string
	fields map[string]any
}

func runTxtdb(o txtdbOpts, progress io.Writer) error {
	switch {
	case o.out == "":
		return errors.New("data txtdb: --out is required")
	case o.vocab == "":
		return errors.New("data txtdb: --vocab is required (a BERT vocab.txt)")
	case o.imgPrefix == "":
		return errors.New("data txtdb: --img-prefix is required (e.g. coco_train2014)")
	case (o.captions == "") == (o.questions == ""):
		return errors.New("data txtdb: give exactly one of --captions and --questions")
	case o.annotations != "" && o.ans2label == "":
		return fmt.Errorf("data txtdb: --annotations %s needs --ans2label", o.annotations)
	case o.questions == "" && (o.annotations != "" || o.ans2label != ""):
		return errors.New("data txtdb: --annotations and --ans2label go with --questions")
	}
	vocab, err := data.LoadVocab(o.vocab)
	if err != nil {
		return fmt.Errorf("data txtdb: %s: %w", o.vocab, err)
	}
	tok, err := data.NewTokenizer(vocab, strings.Contains(o.toker, "uncased"))
	if err != nil {
		return fmt.Errorf("data txtdb: %s: %w", o.vocab, err)
	}
	meta, err := vocabMeta(vocab, o.vocab, o.toker)
	if err != nil {
		return err
	}
	var examples []txtExample
	if o.captions != "" {
		examples, err = captionExamples(o.captions, o.imgPrefix, tok)
	} else {
		examples, err = vqaExamples(o, tok)
	}
	if err != nil {
		return err
	}
	w, err := db.CreateTxtDB(o.out, meta)
	if err != nil {
		return err
	}
	bar := newProgress(progress, len(examples), "txt_db")
	for _, ex := range examples {
		if err := w.Put(ex.id, ex.fields); err != nil {
			w.Close()
			return err
		}
		bar.Add(1)
	}
	bar.Finish()
	return w.Close()
}

// vocabMeta derives meta.json's special ids from the vocabulary, as the
// official prepro does with convert_tokens_to_ids.
func vocabMeta(v *data.Vocab, path, toker string) (db.Meta, error) {
	m := db.Meta{Tokenizer: toker}
	for _, s := range []struct {
		tok string
		dst *int
	}{{data.TokCLS, &m.CLS}, {data.TokSEP, &m.SEP}, {data.TokMASK, &m.MASK}, {data.TokUNK, &m.UNK}, {"!", &m.VRange[0]}} {
		id, ok := v.ID(s.tok)
		if !ok {
			return db.Meta{}, fmt.Errorf("data txtdb: vocab %s has no %q token", path, s.tok)
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
		out = append(out, txtExample{id: strconv.FormatInt(*a.ID, 10), fields: map[string]any{
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
		out = append(out, txtExample{id: strconv.FormatInt(*q.QuestionID, 10), fields: fields})
	}
	return out, nil
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
	workers     int
	db          db.ImgDBOptions
}

func newDataImgdbCmd() *cobra.Command {
	o := imgdbOpts{db: db.DefaultImgDBOptions()}
	cmd := &cobra.Command{
		Use:   "imgdb --npz-dir DIR --out DIR [--compressed]",
		Short: "Build an official-format img_db from per-image .npz region features",
		Long: `imgdb converts a directory of per-image .npz files (the BUTD extractor's
output: norm_bb [N,6], features [N,D], conf [N] or [N,1], soft_labels
[N,L]; float32 or float16) into an img_db as the official convert_imgdir.py
does: arrays stored as fp16, regions sorted by confidence truncated to
nbb = min(max_bb, max(min_bb, #(conf > conf_th))), values msgpack-numpy (or
np.savez_compressed with --compressed), the __keys__ list, and the nbb json.

The LMDB goes to DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}, or
DIR/feat_numbb{num_bb} with --conf-th -1 (exactly num_bb regions), or
DIR/all with --keep-all (every region, nbb computed when read), each with
"_compressed" when compressed. Images are written in file-name order.`,
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
	f.BoolVar(&o.skipCorrupt, "skip-corrupt", false, "report unreadable .npz files and go on, as the official converter does")
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
	w, err := db.CreateImgDB(o.out, o.db, o.compressed)
	if err != nil {
		return err
	}
	bar := newProgress(progress, len(names), "img_db")
	written := 0
	err = readNpzOrdered(names, max(1, o.workers), func(path string, l loaded) error {
		bar.Add(1)
		if l.err != nil {
			err := fmt.Errorf("data imgdb: %s: %w", path, l.err)
			if o.skipCorrupt {
				fmt.Fprintf(progress, "\nskipping %v\n", err)
				return nil
			}
			return err
		}
		if _, err := w.Put(filepath.Base(path), l.raw); err != nil {
			return fmt.Errorf("data imgdb: %s: %w", path, err)
		}
		written++
		return nil
	})
	if err != nil {
		w.Close()
		return err
	}
	bar.Finish()
	if err := w.Close(); err != nil {
		return err
	}
	fmt.Fprintf(progress, "wrote %d images to %s\n", written, w.Path())
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
