package data

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"uniter/internal/db"
)

func smallSynthOptions(seed uint64) SynthOptions {
	return SynthOptions{Seed: seed, Images: 16, ValImages: 6, ImgDim: 32, GTFraction: 0.5, ITRValImages: 4, Workers: 3}
}

// sharedWorld is written once and read by several tests.
var sharedWorld struct {
	once sync.Once
	dir  string
	sum  *SynthSummary
	err  error
}

func testWorld(t *testing.T) (string, *SynthSummary) {
	t.Helper()
	sharedWorld.once.Do(func() {
		dir, err := os.MkdirTemp("", "synth-world-")
		if err != nil {
			sharedWorld.err = err
			return
		}
		sharedWorld.dir = dir
		sharedWorld.sum, sharedWorld.err = Synth(filepath.Join(dir, "w"), smallSynthOptions(11))
	})
	if sharedWorld.err != nil {
		t.Fatal(sharedWorld.err)
	}
	return filepath.Join(sharedWorld.dir, "w"), sharedWorld.sum
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedWorld.dir != "" {
		os.RemoveAll(sharedWorld.dir)
	}
	os.Exit(code)
}

// readTree maps every regular file under dir, except LMDB lock files
// (process state, not data), to its bytes.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "lock.mdb" {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestSynthDeterministic(t *testing.T) {
	base := t.TempDir()
	a, b, c := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "c")
	oa, ob, oc := smallSynthOptions(5), smallSynthOptions(5), smallSynthOptions(6)
	ob.Workers = 1 // the worker count must not matter
	for _, r := range []struct {
		dir  string
		opts SynthOptions
	}{{a, oa}, {b, ob}, {c, oc}} {
		if _, err := Synth(r.dir, r.opts); err != nil {
			t.Fatal(err)
		}
	}
	fa, fb, fc := readTree(t, a), readTree(t, b), readTree(t, c)
	if len(fa) != len(fb) {
		t.Fatalf("%d files vs %d", len(fa), len(fb))
	}
	for name, data := range fa {
		if !bytes.Equal(data, fb[name]) {
			t.Errorf("%s differs between two runs with seed 5", name)
		}
	}
	for _, name := range []string{"img/synth_train/feat_th0.2_max100_min10/data.mdb", "txt/pretrain_train.db/data.mdb"} {
		if bytes.Equal(fa[name], fc[name]) {
			t.Errorf("%s is the same for seeds 5 and 6", name)
		}
	}
	if _, err := Synth(a, oa); err == nil {
		t.Error("Synth into a non-empty directory: no error")
	}
	bad := oa
	bad.MaxObjects = 30
	if _, err := Synth(filepath.Join(base, "d"), bad); err == nil {
		t.Error("Synth with 30 objects per image: no error")
	}
}

func TestSynthVocabLayout(t *testing.T) {
	v := NewVocab(SynthVocab())
	for tok, want := range map[string]int32{TokPAD: 0, TokUNK: 100, TokCLS: 101, TokSEP: 102, TokMASK: 103, "!": 104} {
		if id, ok := v.ID(tok); !ok || id != want {
			t.Errorf("%s has id %d, want %d", tok, id, want)
		}
	}
	if v.Len() != len(SynthVocab()) {
		t.Error("duplicate vocabulary entries")
	}
}

// openTxt opens a txt_db of the test world.
func openTxt(t *testing.T, dir, rel string) *db.TxtDB {
	t.Helper()
	d, err := db.OpenTxtDB(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func openImg(t *testing.T, dir, rel string) *db.ImgDB {
	t.Helper()
	d, err := db.OpenImgDB(filepath.Join(dir, rel), db.DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// openREImg opens an RE (or VCR ground-truth) img_db as the original does
// (conf_th -1, num_bb 100: feat_numbb100).
func openREImg(t *testing.T, dir, rel string) *db.ImgDB {
	t.Helper()
	d, err := db.OpenImgDB(filepath.Join(dir, rel), db.GroundTruthOptions(db.DefaultImgDBOptions()))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func readJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestSynthReadBack(t *testing.T) {
	dir, sum := testWorld(t)
	want := map[string]bool{}
	for _, split := range []string{"train", "val"} {
		for _, task := range []string{"pretrain", "vqa", "ve", "nlvr2", "vcr", "re", "itr"} {
			want["txt/"+task+"_"+split+".db"] = true
		}
		for _, img := range []string{"synth", "vcr_gt", "re_coco_gt", "re_coco_det"} {
			want["img/"+img+"_"+split] = true
		}
	}
	for _, d := range sum.DBs {
		if !want[d.Path] {
			t.Errorf("unexpected db %s", d.Path)
		}
		if d.Count == 0 {
			t.Errorf("%s is empty", d.Path)
		}
		delete(want, d.Path)
	}
	for p := range want {
		t.Errorf("missing db %s", p)
	}
	vocab := SynthVocab()
	for _, split := range []string{"train", "val"} {
		dets := openImg(t, dir, "img/synth_"+split)
		vcrGT := openREImg(t, dir, "img/vcr_gt_"+split)
		reGT := openREImg(t, dir, "img/re_coco_gt_"+split)
		reDet := openREImg(t, dir, "img/re_coco_det_"+split)
		imgFor := map[string]*db.ImgDB{"pretrain": dets, "vqa": dets, "ve": dets, "nlvr2": dets, "itr": dets, "re": reGT}
		for task, img := range imgFor {
			txt := openTxt(t, dir, "txt/"+task+"_"+split+".db")
			m := txt.Meta()
			if m.CLS != 101 || m.SEP != 102 || m.MASK != 103 || m.UNK != 100 || m.VRange != [2]int{104, len(vocab)} {
				t.Errorf("%s %s meta %+v", task, split, m)
			}
			for _, id := range txt.IDs(0) {
				ex, err := txt.Get(id)
				if err != nil {
					t.Fatal(err)
				}
				ids, err := ex.InputIDs()
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range ids {
					if w < 104 || int(w) >= len(vocab) {
						t.Fatalf("%s %s %s: token id %d outside the words", task, split, id, w)
					}
				}
				names, _ := ex.ImgFnames()
				for _, n := range names {
					im, err := img.GetFeat(n)
					if err != nil {
						t.Fatal(err)
					}
					// Detections are padded to min_bb; gt dbs hold the objects.
					if (img == dets && im.NBB < 10) || im.NBB < 2 || im.Dim != 32 {
						t.Fatalf("%s: %d regions of %d", n, im.NBB, im.Dim)
					}
				}
				if task == "nlvr2" && len(names) != 2 {
					t.Fatalf("nlvr2 %s: %d images", id, len(names))
				}
			}
		}
		checkVQA(t, dir, split)
		checkVCR(t, dir, split, vcrGT, dets)
		checkRE(t, dir, split, reGT, reDet)
	}
}

func checkVQA(t *testing.T, dir, split string) {
	var ans2label map[string]int
	readJSONFile(t, filepath.Join(dir, "txt/vqa_"+split+".db/ans2label.json"), &ans2label)
	txt := openTxt(t, dir, "txt/vqa_"+split+".db")
	for _, id := range txt.IDs(0) {
		ex, _ := txt.Get(id)
		target, err := ex.Map("target")
		if err != nil {
			t.Fatal(err)
		}
		labels, _ := target.Ints("labels")
		scores, _ := target.Floats("scores")
		if len(labels) == 0 || len(labels) != len(scores) || scores[0] != 1 {
			t.Fatalf("vqa %s: labels %v scores %v", id, labels, scores)
		}
		for _, l := range labels {
			if int(l) >= len(ans2label) {
				t.Fatalf("vqa %s: label %d of %d answers", id, l, len(ans2label))
			}
		}
	}
	var ve map[string]int
	readJSONFile(t, filepath.Join(dir, "txt/ve_"+split+".db/ans2label.json"), &ve)
	if ve["contradiction"] != 0 || ve["entailment"] != 1 || ve["neutral"] != 2 {
		t.Errorf("ve ans2label %v", ve)
	}
	nl := openTxt(t, dir, "txt/nlvr2_"+split+".db")
	pos := 0
	for _, id := range nl.IDs(0) {
		ex, _ := nl.Get(id)
		v, err := ex.Int("target")
		if err != nil {
			t.Fatal(err)
		}
		pos += int(v)
	}
	if n := len(nl.IDs(0)); pos*4 < n || pos*4 > 3*n {
		t.Errorf("nlvr2 %s: %d true of %d", split, pos, n)
	}
}

func checkVCR(t *testing.T, dir, split string, gt, det *db.ImgDB) {
	txt := openTxt(t, dir, "txt/vcr_"+split+".db")
	if len(txt.IDs(0)) == 0 {
		t.Fatalf("vcr %s: no questions", split)
	}
	for _, id := range txt.IDs(0) {
		ex, _ := txt.Get(id)
		as, err1 := ex.IntLists("input_ids_as")
		rs, err2 := ex.IntLists("input_ids_rs")
		qa, err3 := ex.Int("qa_target")
		qar, err4 := ex.Int("qar_target")
		if err := firstErr(err1, err2, err3, err4); err != nil {
			t.Fatal(err)
		}
		if len(as) != 4 || len(rs) != 4 || qa < 0 || qa > 3 || qar < 0 || qar > 3 {
			t.Fatalf("vcr %s: %d answers %d rationales targets %d %d", id, len(as), len(rs), qa, qar)
		}
		names, _ := ex.ImgFnames()
		if len(names) != 2 {
			t.Fatalf("vcr %s: img_fname %v", id, names)
		}
		g, err := gt.Get(names[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := det.GetFeat(names[1]); err != nil {
			t.Fatal(err)
		}
		for _, c := range g.Conf {
			if c != 1 {
				t.Fatalf("vcr gt %s: confidence %v", names[0], c)
			}
		}
	}
}

func checkRE(t *testing.T, dir, split string, gt, det *db.ImgDB) {
	base := filepath.Join(dir, "txt/re_"+split+".db")
	var images []struct {
		ID       int    `json:"id"`
		FileName string `json:"file_name"`
		AnnIDs   []int  `json:"ann_ids"`
	}
	var anns []struct {
		ID         int       `json:"id"`
		CategoryID int       `json:"category_id"`
		BBox       []float64 `json:"bbox"`
	}
	var refs []struct {
		RefID   int   `json:"ref_id"`
		AnnID   int   `json:"ann_id"`
		SentIDs []int `json:"sent_ids"`
	}
	var cats []struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	readJSONFile(t, filepath.Join(base, "images.json"), &images)
	readJSONFile(t, filepath.Join(base, "annotations.json"), &anns)
	readJSONFile(t, filepath.Join(base, "refs.json"), &refs)
	readJSONFile(t, filepath.Join(base, "categories.json"), &cats)
	if len(cats) != len(synthClasses) || len(refs) == 0 {
		t.Fatalf("re %s: %d categories, %d refs", split, len(cats), len(refs))
	}
	annCat := map[int]int{}
	for _, a := range anns {
		annCat[a.ID] = a.CategoryID
	}
	for _, im := range images {
		g, err := gt.Get(im.FileName)
		if err != nil {
			t.Fatal(err)
		}
		// The official RE dataset requires one gt region per annotation,
		// in ann_ids order; the soft labels' class must be the category.
		if g.NBB != len(im.AnnIDs) {
			t.Fatalf("re %s: %d gt regions for %d annotations", im.FileName, g.NBB, len(im.AnnIDs))
		}
		for r, a := range im.AnnIDs {
			if c := MRCLabel(g.SoftLabels[r*LabelDim : (r+1)*LabelDim]); int(c) != annCat[a] {
				t.Fatalf("re %s region %d: class %d, annotation category %d", im.FileName, r, c, annCat[a])
			}
		}
		if _, err := det.GetFeat(strings.Replace(im.FileName, "coco_gt", "det_coco", 1)); err != nil {
			t.Fatal(err)
		}
	}
	txt := openTxt(t, dir, "txt/re_"+split+".db")
	if len(txt.IDs(0)) != len(refs) {
		t.Errorf("re %s: %d sentences for %d refs", split, len(txt.IDs(0)), len(refs))
	}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// TestSynthLearnable checks that region features determine their class,
// the premise of MRC and of every text that names objects: nearest-centroid
// classification of object regions, centroids from half the images.
func TestSynthLearnable(t *testing.T) {
	w := newSynthWorld(3, 128, 6, 20, 0.5)
	type region struct {
		feat  []float32
		class int
	}
	var regs [][]region
	for i := range 60 {
		im := w.image(newRNG(3, uint64(i)), "x")
		raw := w.render(newRNG(4, uint64(i)), im, false, 0)
		var rs []region
		for r, o := range im.objects {
			f := make([]float32, raw.D)
			for j := range f {
				f[j] = raw.Features[r*raw.D+j].Float32()
			}
			rs = append(rs, region{f, o.class})
		}
		regs = append(regs, rs)
	}
	sums, counts := map[int][]float64{}, map[int]int{}
	for _, rs := range regs[:30] {
		for _, r := range rs {
			if sums[r.class] == nil {
				sums[r.class] = make([]float64, len(r.feat))
			}
			for j, v := range r.feat {
				sums[r.class][j] += float64(v)
			}
			counts[r.class]++
		}
	}
	right, total := 0, 0
	for _, rs := range regs[30:] {
		for _, r := range rs {
			best, bestD := -1, 0.0
			for c, s := range sums {
				d := 0.0
				for j, v := range r.feat {
					x := float64(v) - s[j]/float64(counts[c])
					d += x * x
				}
				if best < 0 || d < bestD {
					best, bestD = c, d
				}
			}
			total++
			if best == r.class {
				right++
			}
		}
	}
	if acc := float64(right) / float64(total); acc < 0.95 {
		t.Errorf("nearest-centroid class accuracy %.3f on %d regions", acc, total)
	} else {
		t.Logf("nearest-centroid class accuracy %.3f on %d regions", acc, total)
	}
}

// captionClasses returns the classes a caption names (plurals included).
func captionClasses(caption string) []int {
	var classes []int
	for _, w := range strings.Fields(caption) {
		for c, name := range synthClasses {
			if w == name || w == name+"s" {
				classes = append(classes, c)
			}
		}
	}
	return classes
}

// TestSynthCaptionsPinImages checks what makes ITM learnable: every
// caption names every object of its image by its class, and the classes it
// names are rarely all present in another image, so a random ITM negative
// is almost never also a true description.
func TestSynthCaptionsPinImages(t *testing.T) {
	o := DefaultSynthOptions()
	w := newSynthWorld(5, 8, o.MinObjects, o.MaxObjects, o.Noise)
	var ims []synthImage
	for i := range 400 {
		ims = append(ims, w.image(newRNG(5, uint64(i)), "x"))
	}
	rng := newRNG(6, 0)
	ambiguous, total := 0, 0
	for i, im := range ims {
		var want []int
		for _, o := range im.objects {
			want = append(want, o.class)
		}
		slices.Sort(want)
		for range 5 {
			caption := im.caption(rng)
			got := captionClasses(caption)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("image %d: caption %q names classes %v, the image has %v", i, caption, got, want)
			}
			other := ims[(i+1+rng.IntN(len(ims)-1))%len(ims)]
			all := true
			for _, c := range got {
				all = all && other.countClass(c) > 0
			}
			if all {
				ambiguous++
			}
			total++
		}
	}
	if frac := float64(ambiguous) / float64(total); frac > 0.02 {
		t.Errorf("%.3f of captions name only classes a random other image also has (want <= 0.02)", frac)
	} else {
		t.Logf("%d of %d captions (%.4f) name only classes a random other image also has", ambiguous, total, frac)
	}
}

// TestSynthSoftLabelsSum checks that every region's soft labels, as
// written to the img dbs, are a distribution (sum 1 up to fp16 rounding),
// clutter fragments whose second class equals their own included.
func TestSynthSoftLabelsSum(t *testing.T) {
	dir, _ := testWorld(t)
	for _, rel := range []string{"img/synth_train", "img/synth_val", "img/vcr_gt_train", "img/re_coco_gt_train", "img/re_coco_det_train"} {
		open := openImg
		if strings.HasPrefix(rel, "img/re_coco_") || strings.HasPrefix(rel, "img/vcr_gt_") {
			open = openREImg
		}
		img := open(t, dir, rel)
		names, err := img.Names()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			im, err := img.Get(n)
			if err != nil {
				t.Fatal(err)
			}
			for r := range im.NBB {
				sum := 0.0
				for _, v := range im.SoftLabels[r*im.NumLabels : (r+1)*im.NumLabels] {
					sum += float64(v)
				}
				// At most three non-zero fp16 values below 1, each off by
				// at most half an ulp (2^-12).
				if math.Abs(sum-1) > 1e-3 {
					t.Fatalf("%s %s region %d: soft labels sum to %v", rel, n, r, sum)
				}
			}
		}
	}
}
