package db

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/x448/float16"

	"uniter/internal/lmdb"
)

func newRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

// newTestEncoder is a msgpack encoder set up as Python's msgpack packs.
func newTestEncoder(w io.Writer) *msgpack.Encoder {
	enc := msgpack.NewEncoder(w)
	enc.UseCompactInts(true)
	enc.SetSortMapKeys(true)
	return enc
}

// randRaw makes a detector dump with n regions sorted by confidence, nHigh
// of them above 0.2.
func randRaw(rng *rand.Rand, n, d, l, nHigh int) RawImage {
	r := RawImage{N: n, D: d, L: l}
	f := func(x float64) float16.Float16 { return float16.Fromfloat32(float32(x)) }
	for i := 0; i < n*d; i++ {
		r.Features = append(r.Features, f(rng.NormFloat64()*3))
	}
	for i := 0; i < n; i++ {
		x, y, w, h := rng.Float64()/2, rng.Float64()/2, 0.05+rng.Float64()/2, 0.05+rng.Float64()/2
		r.NormBB = append(r.NormBB, f(x), f(y), f(x+w), f(y+h), f(w), f(h))
	}
	confs := make([]float64, n)
	for i := range confs {
		if i < nHigh {
			confs[i] = 0.25 + 0.7*rng.Float64()
		} else {
			confs[i] = 0.19 * rng.Float64()
		}
	}
	sort.Sort(sort.Reverse(sort.Float64Slice(confs)))
	for _, c := range confs {
		r.Conf = append(r.Conf, f(c))
	}
	for i := 0; i < n*l; i++ {
		r.SoftLabels = append(r.SoftLabels, f(rng.Float64()/float64(l)))
	}
	return r
}

// f16Rows converts the first rows*cols values to float32, which is what a
// reader must return.
func f16Rows(v []float16.Float16, rows, cols int) []float32 {
	out := make([]float32, rows*cols)
	for i := range out {
		out[i] = v[i].Float32()
	}
	return out
}

// txtExamples covers the field types of every official txt_db.
func txtExamples() map[string]map[string]any {
	long := make([]int32, 30000)
	for i := range long {
		long[i] = int32(1000 + i%997)
	}
	return map[string]map[string]any{
		"0": {"input_ids": []int32{1109, 3676, 119}, "img_fname": "coco_val2014_000000000042.npz", "raw": "a cat."},
		"q1": {"input_ids": []int{1184, 1110}, "img_fname": "coco_val2014_000000262148.npz",
			"target": map[string]any{"labels": []int{17, 2044}, "scores": []float64{1, 0.3}}, "question_id": 262148000},
		"dev-1-0-0": {"input_ids": []any{int64(5)}, "img_fname": []string{"nlvr2_dev-1-img0.npz", "nlvr2_dev-1-img1.npz"},
			"target": nil, "sentence": "\u00e9\u4e2d", "identifier": "dev-1-0-0"},
		"vcr-0": {"input_ids": []int32{}, "img_fname": []string{"vcr_gt_0.npz", "vcr_0.npz"},
			"input_ids_as": [][]int32{{1}, {2, 3}, {}, {4}}, "qa_target": 2, "qar_target": -1, "neg": -70000, "big": int64(1) << 40},
		"long": {"input_ids": long, "img_fname": "coco_val2014_000000000042.npz", "blob": []byte{0, 1, 255}, "flag": true},
	}
}

func writeTxtDB(t *testing.T, dir string) Meta {
	t.Helper()
	meta := Meta{CLS: 101, SEP: 102, MASK: 103, UNK: 100, VRange: [2]int{999, 28996}, Tokenizer: "bert-base-cased"}
	w, err := CreateTxtDB(dir, meta)
	if err != nil {
		t.Fatal(err)
	}
	for id, ex := range txtExamples() {
		if err := w.Put(id, ex); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return meta
}

func TestTxtWriterRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "txt")
	meta := writeTxtDB(t, dir)
	db, err := OpenTxtDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got := db.Meta()
	got.Extra = nil
	if !reflect.DeepEqual(got, meta) {
		t.Errorf("meta %+v, want %+v", got, meta)
	}
	for id, ex := range txtExamples() {
		back, err := db.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		in, err := back.InputIDs()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := db.Len(id); n != len(in) {
			t.Errorf("%s: id2len %d, input_ids %d", id, n, len(in))
		}
		if !reflect.DeepEqual(viaJSON(t, jsonable(back.Fields)), viaJSON(t, jsonable(viaJSON(t, ex)))) && id != "long" {
			t.Errorf("%s: got %v, want %v", id, back.Fields, ex)
		}
	}
	ex, _ := db.Get("long")
	if in, _ := ex.InputIDs(); len(in) != 30000 || in[29999] != int32(1000+29999%997) {
		t.Errorf("long input_ids wrong")
	}
	if b, _ := ex.Fields["blob"].([]byte); !reflect.DeepEqual(b, []byte{0, 1, 255}) {
		t.Errorf("blob = %v", ex.Fields["blob"])
	}
	if imgs, _ := db.Images("dev-1-0-0"); len(imgs) != 2 {
		t.Errorf("txt2img pair = %v", imgs)
	}
	if got := db.Texts("coco_val2014_000000000042.npz"); !reflect.DeepEqual(got, []string{"0", "long"}) {
		t.Errorf("img2txts = %v", got)
	}
}

// imgCase is one img_db layout the writer produces.
type imgCase struct {
	opts       ImgDBOptions
	compressed bool
	sub        string
	rows       map[string]int // stored rows per image
	nbb        map[string]int
}

func imgCases() []imgCase {
	th := DefaultImgDBOptions()
	numbb := DefaultImgDBOptions()
	numbb.ConfTh, numbb.NumBB = -1, 4
	all := DefaultImgDBOptions()
	all.KeepAll = true
	return []imgCase{
		{th, false, "feat_th0.2_max100_min10", map[string]int{"a.npz": 12, "b.npz": 10, "c.npz": 100, "d.npz": 10}, map[string]int{"a.npz": 12, "b.npz": 10, "c.npz": 100, "d.npz": 10}},
		{th, true, "feat_th0.2_max100_min10_compressed", map[string]int{"a.npz": 12, "b.npz": 10, "c.npz": 100, "d.npz": 10}, map[string]int{"a.npz": 12, "b.npz": 10, "c.npz": 100, "d.npz": 10}},
		// conf_th -1 stores every region up to max_bb, as the official
		// converter; num_bb only names the directory and limits what is read.
		{numbb, false, "feat_numbb4", map[string]int{"a.npz": 14, "b.npz": 16, "c.npz": 100, "d.npz": 11}, map[string]int{"a.npz": 4, "b.npz": 4, "c.npz": 4, "d.npz": 4}},
		{all, true, "all_compressed", map[string]int{"a.npz": 14, "b.npz": 16, "c.npz": 120, "d.npz": 11}, map[string]int{"a.npz": 12, "b.npz": 10, "c.npz": 100, "d.npz": 10}},
	}
}

// imgRaws: a (12 high of 14), b (3 high of 16: min_bb), c (110 high of 120:
// max_bb), d (no soft labels; 6 high of 11: min_bb).
func imgRaws() map[string]RawImage {
	rng := newRand()
	return map[string]RawImage{
		"a.npz": randRaw(rng, 14, 16, 5, 12),
		"b.npz": randRaw(rng, 16, 16, 5, 3),
		"c.npz": randRaw(rng, 120, 16, 5, 110),
		"d.npz": randRaw(rng, 11, 16, 0, 6),
	}
}

var imgOrder = []string{"a.npz", "b.npz", "c.npz", "d.npz"}

func writeImgDB(t *testing.T, dir string, c imgCase) {
	t.Helper()
	w, err := CreateImgDB(dir, c.opts, c.compressed)
	if err != nil {
		t.Fatal(err)
	}
	raws := imgRaws()
	for _, n := range imgOrder {
		got, err := w.Put(n, raws[n])
		if err != nil {
			t.Fatal(err)
		}
		if got != c.rows[n] {
			t.Errorf("%s %s: Put kept %d rows, want %d", c.sub, n, got, c.rows[n])
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestImgWriterRoundTrip(t *testing.T) {
	raws := imgRaws()
	for _, c := range imgCases() {
		t.Run(c.sub, func(t *testing.T) {
			dir := t.TempDir()
			writeImgDB(t, dir, c)
			if _, err := os.Stat(filepath.Join(dir, c.opts.NBBFile())); (err == nil) != (c.sub[:7] == "feat_th") {
				t.Errorf("nbb json present = %v", err == nil)
			}
			opts := c.opts
			opts.KeepAll = false
			db, err := OpenImgDB(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if db.SubDir() != c.sub {
				t.Fatalf("found %s, want %s", db.SubDir(), c.sub)
			}
			names, err := db.Names()
			if err != nil || !reflect.DeepEqual(names, imgOrder) {
				t.Fatalf("Names = %v, %v", names, err)
			}
			for _, n := range imgOrder {
				raw := raws[n]
				im, err := db.Get(n)
				if err != nil {
					t.Fatal(err)
				}
				nbb := c.nbb[n]
				if im.NBB != nbb || im.Dim != raw.D {
					t.Fatalf("%s: nbb %d dim %d, want %d %d", n, im.NBB, im.Dim, nbb, raw.D)
				}
				if !reflect.DeepEqual(im.Features, f16Rows(raw.Features, nbb, raw.D)) ||
					!reflect.DeepEqual(im.NormBB, f16Rows(raw.NormBB, nbb, 6)) ||
					!reflect.DeepEqual(im.Conf, f16Rows(raw.Conf, nbb, 1)) {
					t.Errorf("%s: arrays differ", n)
				}
				if raw.L == 0 {
					if im.SoftLabels != nil {
						t.Errorf("%s: soft labels appeared", n)
					}
				} else if im.NumLabels != raw.L || !reflect.DeepEqual(im.SoftLabels, f16Rows(raw.SoftLabels, nbb, raw.L)) {
					t.Errorf("%s: soft labels differ", n)
				}
			}
		})
	}
}

// TestImgWriterNumBBFewRegions writes a ground-truth style db (5 to 20 boxes
// an image) with conf_th -1 and num_bb 100, as RE's and VCR's gt dbs are:
// every region is stored and no nbb json is written.
func TestImgWriterNumBBFewRegions(t *testing.T) {
	dir := t.TempDir()
	opts := DefaultImgDBOptions()
	opts.ConfTh, opts.NumBB = -1, 100
	w, err := CreateImgDB(dir, opts, false)
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand()
	regions := map[string]int{"gt_a.npz": 5, "gt_b.npz": 12, "gt_c.npz": 20}
	raws := map[string]RawImage{}
	for _, n := range []string{"gt_a.npz", "gt_b.npz", "gt_c.npz"} {
		// Ground-truth boxes carry confidence 1 in the extractor output;
		// low ones must not matter with conf_th -1.
		raws[n] = randRaw(rng, regions[n], 8, 3, regions[n]/2)
		got, err := w.Put(n, raws[n])
		if err != nil {
			t.Fatal(err)
		}
		if got != regions[n] {
			t.Errorf("%s: stored %d rows, want %d", n, got, regions[n])
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "feat_numbb100" {
		t.Errorf("dir holds %v, want feat_numbb100 alone (no nbb json, no temporary)", ents)
	}
	// What the official reader would see: every stored row.
	env, err := lmdb.Open(filepath.Join(dir, "feat_numbb100"))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	for n, want := range regions {
		b, err := env.Get([]byte(n))
		if err != nil {
			t.Fatal(err)
		}
		arrays, err := DecodeImgValue(b, false)
		if err != nil {
			t.Fatal(err)
		}
		raw := raws[n]
		feat := arrays["features"]
		if !reflect.DeepEqual(feat.Shape, []int{want, raw.D}) || !reflect.DeepEqual(arrays["soft_labels"].Shape, []int{want, raw.L}) {
			t.Errorf("%s: features %v soft_labels %v, want %d rows", n, feat.Shape, arrays["soft_labels"].Shape, want)
		}
		if got, err := toFloat32(feat); err != nil || !reflect.DeepEqual(got, f16Rows(raw.Features, want, raw.D)) {
			t.Errorf("%s: features differ (%v)", n, err)
		}
	}
}

// TestImgWriterAtomic: until Close succeeds nothing looks like a db, and
// Abort leaves nothing behind.
func TestImgWriterAtomic(t *testing.T) {
	dir := t.TempDir()
	c := imgCases()[0]
	w, err := CreateImgDB(dir, c.opts, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Put("a.npz", imgRaws()["a.npz"]); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImgDB(dir, c.opts); err == nil {
		t.Error("a db being written can be opened")
	}
	w.Abort()
	if err := w.Close(); err != nil {
		t.Errorf("Close after Abort: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Abort left %v", ents)
	}
	// An empty sub-directory is taken over; a non-empty one is refused.
	sub := filepath.Join(dir, c.sub)
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	writeImgDB(t, dir, c)
	if _, err := CreateImgDB(dir, c.opts, false); err == nil || !strings.Contains(err.Error(), sub) {
		t.Errorf("rebuilding over a db: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{c.sub, c.opts.NBBFile()}; !reflect.DeepEqual(names, want) {
		t.Errorf("dir holds %v, want %v", names, want)
	}
	if st, err := os.Stat(sub); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("db dir mode: %v %v", st.Mode(), err)
	}
}

// pythonHasModules reports whether Debian's python3 can run the interop
// scripts.
func pythonHasModules() bool {
	return exec.Command("/usr/bin/python3", "-c", "import lmdb, msgpack, msgpack_numpy, lz4.frame, numpy").Run() == nil
}

// TestPythonReadsGoDBs writes dbs with the Go writers and has
// scripts/check_go_dbs.py read them through the official Python code paths.
func TestPythonReadsGoDBs(t *testing.T) {
	if !pythonHasModules() {
		t.Skip("/usr/bin/python3 lacks lmdb/msgpack/msgpack_numpy/lz4/numpy")
	}
	root := t.TempDir()
	txtDir := filepath.Join(root, "txt_db")
	meta := writeTxtDB(t, txtDir)
	examples := map[string]any{}
	for id, ex := range txtExamples() {
		// JSON first turns typed Go slices into generic lists.
		examples[id] = render(viaJSON(t, render(ex, false)), false)
	}

	spec := map[string]any{
		"txt_db": map[string]any{"dir": txtDir, "examples": examples,
			"meta": map[string]any{"CLS": meta.CLS, "SEP": meta.SEP, "MASK": meta.MASK, "UNK": meta.UNK, "v_range": meta.VRange, "bert": meta.Tokenizer}},
	}
	raws := imgRaws()
	var imgDBs []any
	for _, c := range imgCases() {
		dir := filepath.Join(root, "img", c.sub)
		writeImgDB(t, dir, c)
		images := map[string]any{}
		for _, n := range imgOrder {
			raw, nbb := raws[n], c.nbb[n]
			want := map[string]any{
				"nbb": nbb, "rows": c.rows[n],
				"features": f32Digest(f16Rows(raw.Features, nbb, raw.D)),
				"norm_bb":  f32Digest(f16Rows(raw.NormBB, nbb, 6)),
				"conf":     f32Digest(f16Rows(raw.Conf, nbb, 1)),
			}
			if raw.L > 0 {
				want["soft_labels"] = f32Digest(f16Rows(raw.SoftLabels, nbb, raw.L))
			}
			images[n] = want
		}
		imgDBs = append(imgDBs, map[string]any{
			"dir": dir, "sub": c.sub, "compressed": c.compressed,
			"conf_th": c.opts.ConfTh, "max_bb": c.opts.MaxBB, "min_bb": c.opts.MinBB, "num_bb": c.opts.NumBB,
			"images": images,
		})
	}
	spec["img_dbs"] = imgDBs
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(root, "spec.json")
	if err := os.WriteFile(specPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/usr/bin/python3", "../../scripts/check_go_dbs.py", specPath).CombinedOutput()
	t.Logf("check_go_dbs.py: %s", out)
	if err != nil {
		t.Fatalf("check_go_dbs.py failed: %v", err)
	}
}

// TestRawNpzMatchesOfficialConverter converts the raw extractor .npz
// fixtures with ReadRawNpz + ImgWriter and compares with the db the
// official converter code wrote from the same files.
func TestRawNpzMatchesOfficialConverter(t *testing.T) {
	_, want := loadExpected(t)
	for _, compressed := range []bool{false, true} {
		dir := t.TempDir()
		w, err := CreateImgDB(dir, DefaultImgDBOptions(), compressed)
		if err != nil {
			t.Fatal(err)
		}
		names := []string{"img_a.npz", "img_b.npz"}
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join("testdata", "npz", n))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := ReadRawNpz(b)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			if _, err := w.Put(n, raw); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		db, err := OpenImgDB(dir, DefaultImgDBOptions())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			checkImage(t, db, n, want["img_db"][n])
		}
		db.Close()
	}
}

func TestReadRawNpzErrors(t *testing.T) {
	f32 := func(shape ...int) Array {
		n := 1
		for _, d := range shape {
			n *= d
		}
		return Array{Dtype: "<f4", Shape: shape, Data: make([]byte, 4*n)}
	}
	for name, tc := range map[string]struct {
		arrays map[string]Array
		want   string
	}{
		"no conf":      {map[string]Array{"features": f32(3, 4), "norm_bb": f32(3, 6)}, "no conf array"},
		"1-d features": {map[string]Array{"features": f32(3), "norm_bb": f32(3, 6), "conf": f32(3)}, "features shape [3]"},
		"bb rows":      {map[string]Array{"features": f32(3, 4), "norm_bb": f32(2, 6), "conf": f32(3)}, "norm_bb shape [2 6], want [3, 6] to match features [3 4]"},
		"conf 2-d":     {map[string]Array{"features": f32(3, 4), "norm_bb": f32(3, 6), "conf": f32(3, 2)}, "conf shape [3 2], want [3] or [3, 1]"},
		"soft 1-d":     {map[string]Array{"features": f32(3, 4), "norm_bb": f32(3, 6), "conf": f32(3), "soft_labels": f32(3)}, "soft_labels shape [3], want [3, L]"},
	} {
		b, err := encodeNpz(orderedNames(tc.arrays), tc.arrays, true)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ReadRawNpz(b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
	_, err := ReadRawNpz([]byte("PK\x03\x04 not really"))
	if err == nil || !strings.Contains(err.Error(), "npz") {
		t.Errorf("garbage: %v", err)
	}
}

// TestImgDBConcurrentGet reads one db from many goroutines: nbb computed
// from conf (the "all" layout) and the shared feature size are cached
// concurrently.
func TestImgDBConcurrentGet(t *testing.T) {
	dir := t.TempDir()
	writeImgDB(t, dir, imgCases()[3])
	db, err := OpenImgDB(dir, DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	want := imgCases()[3].nbb
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func(g int) {
			for i := 0; i < 50; i++ {
				n := imgOrder[(g+i)%len(imgOrder)]
				var im *Image
				var err error
				if i%2 == 0 {
					im, err = db.Get(n)
				} else {
					im, err = db.GetFeat(n)
				}
				if err == nil && im.NBB != want[n] {
					err = fmt.Errorf("%s: nbb %d, want %d", n, im.NBB, want[n])
				}
				if err == nil {
					var nbb int
					if nbb, err = db.NBB(n); err == nil && nbb != want[n] {
						err = fmt.Errorf("%s: NBB() %d", n, nbb)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
