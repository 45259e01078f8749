package db

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
	"github.com/x448/float16"

	"uniter/internal/lmdb"
)

// wantErr fails unless err is non-nil and mentions every part.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

// overwrite replaces raw values in the LMDB environment at dir.
func overwrite(t *testing.T, dir string, kv map[string][]byte) {
	t.Helper()
	env, err := lmdb.Create(dir, lmdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		if err := env.Put([]byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
}

func lz4Frame(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := lz4.NewWriter(&out)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestTxtDBErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "txt")
	writeTxtDB(t, dir)
	overwrite(t, dir, map[string][]byte{
		"badlz4":   []byte("not lz4 at all"),
		"badmp":    lz4Frame(t, []byte{0xc1}),
		"notmap":   lz4Frame(t, []byte{0x93, 1, 2, 3}),
		"trailing": lz4Frame(t, []byte{0x80, 0x01}),
		"cut":      lz4Frame(t, []byte{0x82, 0xa1, 'a'}),
	})
	db, err := OpenTxtDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for key, want := range map[string]string{
		"badlz4":   "lz4",
		"badmp":    "0xc1",
		"notmap":   "want a map",
		"trailing": "trailing",
		"cut":      "truncated",
		"missing":  "not found",
	} {
		_, err := db.Get(key)
		wantErr(t, err, dir, `"`+key+`"`, want)
	}

	ex, err := db.Get("q1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = ex.Ints("question_id")
	wantErr(t, err, dir, `"q1"`, `"question_id"`, "want a list of integers", "int 262148000")
	_, err = ex.String("nope")
	wantErr(t, err, `"nope"`, "missing", "input_ids")
	tgt, _ := ex.Map("target")
	_, err = tgt.Ints("scores")
	wantErr(t, err, `"target"`, `"scores"`, "element 0 is float 1,")
	_, err = ex.IntLists("input_ids")
	wantErr(t, err, `"input_ids"`, "element 0")
	_, err = ex.Map("input_ids")
	wantErr(t, err, "want a dict")
	_, err = ex.Float("img_fname")
	wantErr(t, err, "want a number", "str coco_val2014")
}

func TestTxtDBSideFileErrors(t *testing.T) {
	base := filepath.Join(t.TempDir(), "txt")
	writeTxtDB(t, base)
	for _, tc := range []struct {
		file, content string
		want          []string
	}{
		{"meta.json", "", []string{"meta.json", "no such file"}},
		{"meta.json", `{"CLS": 101, "SEP": 102}`, []string{"meta.json", `"MASK"`}},
		{"meta.json", `{"CLS": 101, "SEP": 102, "MASK": "x", "v_range": [1, 2]}`, []string{"meta.json", `"MASK"`, "x"}},
		{"meta.json", `{"CLS": 101, "SEP": 102, "MASK": 103, "v_range": [1]}`, []string{"meta.json", "v_range"}},
		{"id2len.json", `{"a": "x"}`, []string{"id2len.json"}},
		{"id2len.json", `{"a": -3}`, []string{"id2len.json", `"a"`, "-3"}},
		{"txt2img.json", `{"a": 3}`, []string{"txt2img.json", `"a"`, "3"}},
		{"img2txts.json", `[1]`, []string{"img2txts.json"}},
		{"data.mdb", "", []string{"data.mdb"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "txt")
			copyDir(t, base, dir)
			path := filepath.Join(dir, tc.file)
			if tc.content == "" {
				os.Remove(path)
			} else if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := OpenTxtDB(dir)
			wantErr(t, err, append(tc.want, dir)...)
		})
	}
	// Optional side files: img2txts is derived from txt2img.
	dir := filepath.Join(t.TempDir(), "txt")
	copyDir(t, base, dir)
	os.Remove(filepath.Join(dir, "img2txts.json"))
	db, err := OpenTxtDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := db.Texts("nlvr2_dev-1-img1.npz"); len(got) != 1 || got[0] != "dev-1-0-0" {
		t.Errorf("derived img2txts = %v", got)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

func TestTxtWriterErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "txt")
	w, err := CreateTxtDB(dir, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, w.Put("a", map[string]any{"img_fname": "x.npz"}), dir, `"a"`, `"input_ids"`, "missing")
	wantErr(t, w.Put("b", map[string]any{"input_ids": []int{1}}), `"b"`, `"img_fname"`)
	wantErr(t, w.Put("c", map[string]any{"input_ids": []string{"x"}, "img_fname": "x.npz"}), `"c"`, "str x")
	wantErr(t, w.Put("d", map[string]any{"input_ids": []int{1}, "img_fname": 7}), `"d"`, "int 7")
	wantErr(t, w.Put("", map[string]any{"input_ids": []int{1}, "img_fname": "x.npz"}), "key length 0")
	if err := w.Put("e", map[string]any{"input_ids": []int{1}, "img_fname": "x.npz"}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, w.Put("e", map[string]any{"input_ids": []int{1}, "img_fname": "x.npz"}), `"e"`, "duplicate")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, w.Put("f", nil), "closed")
	_, err = CreateTxtDB(dir, Meta{})
	wantErr(t, err, dir, "already")
	db, err := OpenTxtDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if ids := db.IDs(0); len(ids) != 1 || ids[0] != "e" {
		t.Errorf("ids after failed puts = %v", ids)
	}
}

func TestImgDBValueErrors(t *testing.T) {
	for _, compressed := range []bool{false, true} {
		opts := DefaultImgDBOptions()
		dir := t.TempDir()
		w, err := CreateImgDB(dir, opts, compressed)
		if err != nil {
			t.Fatal(err)
		}
		raws := imgRaws()
		if _, err := w.Put("a.npz", raws["a.npz"]); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		good, err := EncodeImgValue(map[string]Array{"features": f16Array(raws["a.npz"].Features, 12, 16)}, compressed)
		if err != nil {
			t.Fatal(err)
		}
		ragged := map[string]Array{
			"features": f16Array(raws["a.npz"].Features, 12, 16),
			"norm_bb":  f16Array(raws["a.npz"].NormBB, 11, 6),
		}
		raggedVal, err := EncodeImgValue(ragged, compressed)
		if err != nil {
			t.Fatal(err)
		}
		wide := map[string]Array{
			"features": f16Array(raws["c.npz"].Features, 12, 32),
			"norm_bb":  f16Array(raws["a.npz"].NormBB, 12, 6),
		}
		wideVal, err := EncodeImgValue(wide, compressed)
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, w.Path()[len(dir)+1:])
		overwrite(t, sub, map[string][]byte{
			"garbage.npz": []byte("\x93garbage"),
			"cut.npz":     good[:len(good)/2],
			"nobb.npz":    good,
			"ragged.npz":  raggedVal,
			"wide.npz":    wideVal,
		})
		db, err := OpenImgDB(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		corrupt := "corrupt value"
		if compressed {
			corrupt = "npz"
		}
		for key, want := range map[string]string{
			"garbage.npz": corrupt,
			"cut.npz":     corrupt,
			"nobb.npz":    "no norm_bb",
			"ragged.npz":  "norm_bb shape [11 6], want [12, 6]",
			"wide.npz":    "feature size 32, want 16 (from other images in the db)",
			"missing.npz": "image not in db",
			"__keys__":    "not an image name",
		} {
			if key == "wide.npz" {
				if _, err := db.Get("a.npz"); err != nil {
					t.Fatal(err)
				}
			}
			_, err := db.Get(key)
			wantErr(t, err, sub, `"`+key+`"`, want)
		}
		db.Close()

		opts.ImgDim = 2048
		db, err = OpenImgDB(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		_, err = db.Get("a.npz")
		wantErr(t, err, `"a.npz"`, "feature size 16, want 2048 (from --img-dim)")
		db.Close()
	}
}

func TestMsgpackNumpyErrors(t *testing.T) {
	arr := func(m map[string]any) []byte {
		var b bytes.Buffer
		enc := newTestEncoder(&b)
		if err := enc.Encode(map[string]any{"features": m}); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	for name, tc := range map[string]struct {
		m    map[string]any
		want string
	}{
		"not nd":     {map[string]any{"nd": false}, "not a msgpack-numpy ndarray"},
		"bad type":   {map[string]any{"nd": true, "type": 3}, "want a dtype string"},
		"bad dtype":  {map[string]any{"nd": true, "type": "<i8", "shape": []int{1}, "data": make([]byte, 8)}, `unsupported dtype "<i8"`},
		"bad shape":  {map[string]any{"nd": true, "type": "<f2", "shape": "x", "data": []byte{}}, "shape is str x"},
		"neg dim":    {map[string]any{"nd": true, "type": "<f2", "shape": []int{-1}, "data": []byte{}}, "bad dimension int -1"},
		"size":       {map[string]any{"nd": true, "type": "<f2", "shape": []int{2, 3}, "data": make([]byte, 10)}, "needs 12 bytes, data has 10"},
		"huge shape": {map[string]any{"nd": true, "type": "<f2", "shape": []int{1 << 30, 1 << 30}, "data": make([]byte, 4)}, "needs more than"},
		"no data":    {map[string]any{"nd": true, "type": "<f2", "shape": []int{1}}, "data is null"},
	} {
		_, err := DecodeImgValue(arr(tc.m), false)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"features"`) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
}

func TestNBBErrors(t *testing.T) {
	// An "all" db whose image has fewer regions than min_bb: the official
	// reader would silently return fewer rows; we refuse.
	dir := t.TempDir()
	opts := DefaultImgDBOptions()
	opts.KeepAll = true
	w, err := CreateImgDB(dir, opts, false)
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand()
	if _, err := w.Put("small.npz", randRaw(rng, 6, 8, 0, 6)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := OpenImgDB(dir, DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Get("small.npz")
	wantErr(t, err, `"small.npz"`, "nbb 10 exceeds the 6 stored regions")
	db.Close()

	// An nbb json claiming more rows than stored.
	dir = t.TempDir()
	w, err = CreateImgDB(dir, DefaultImgDBOptions(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Put("a.npz", randRaw(rng, 12, 8, 0, 11)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	nbbFile := filepath.Join(dir, DefaultImgDBOptions().NBBFile())
	if err := os.WriteFile(nbbFile, []byte(`{"a.npz": 50}`), 0o644); err != nil {
		t.Fatal(err)
	}
	db, err = OpenImgDB(dir, DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Get("a.npz")
	wantErr(t, err, `"a.npz"`, "nbb 50 exceeds the 11 stored regions")
	db.Close()
	if err := os.WriteFile(nbbFile, []byte(`{"a.npz": "x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = OpenImgDB(dir, DefaultImgDBOptions())
	wantErr(t, err, nbbFile)
}

func TestImgWriterErrors(t *testing.T) {
	dir := t.TempDir()
	numbb := DefaultImgDBOptions()
	numbb.ConfTh, numbb.NumBB = -1, 8
	numbb.ImgDim = 8
	w, err := CreateImgDB(dir, numbb, false)
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand()
	// The official converter keeps every row of an image with fewer
	// boxes than num_bb (ground-truth dbs).
	if _, err = w.Put("few.npz", randRaw(rng, 5, 8, 0, 5)); err != nil {
		t.Fatalf("5 regions with num_bb 8: %v, want them stored", err)
	}
	_, err = w.Put("dim.npz", randRaw(rng, 9, 4, 0, 5))
	wantErr(t, err, `"dim.npz"`, "feature size 4, want 8")
	bad := randRaw(rng, 9, 8, 3, 5)
	bad.SoftLabels = bad.SoftLabels[1:]
	_, err = w.Put("bad.npz", bad)
	wantErr(t, err, `"bad.npz"`, "soft_labels has 26 values, want 27")
	_, err = w.Put("empty.npz", RawImage{})
	wantErr(t, err, "N=0")
	_, err = w.Put("__keys__", randRaw(rng, 9, 8, 0, 5))
	wantErr(t, err, "not an image name")
	if _, err := w.Put("ok.npz", randRaw(rng, 9, 8, 0, 5)); err != nil {
		t.Fatal(err)
	}
	_, err = w.Put("ok.npz", randRaw(rng, 9, 8, 0, 5))
	wantErr(t, err, "duplicate")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = CreateImgDB(dir, numbb, false)
	wantErr(t, err, "feat_numbb8", "already")
}

func TestCountNBB(t *testing.T) {
	f := func(vals ...float32) Array {
		v := make([]float16.Float16, len(vals))
		for i, x := range vals {
			v[i] = float16.Fromfloat32(x)
		}
		return f16Array(v, len(v), 1)
	}
	many := func(n int, c float32) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = c
		}
		return out
	}
	o := DefaultImgDBOptions()
	small := ImgDBOptions{ConfTh: 0.5, MaxBB: 3, MinBB: 1}
	th03 := ImgDBOptions{ConfTh: 0.3, MaxBB: 100, MinBB: 0}
	for _, tc := range []struct {
		name string
		conf Array
		opts ImgDBOptions
		want int
	}{
		{"min_bb", f(0.9, 0.1, 0.1), o, 10},
		{"between", f(append(many(25, 0.9), many(40, 0.1)...)...), o, 25},
		{"max_bb", f(many(150, 0.9)...), o, 100},
		{"strict >", f(0.5, 0.5, 0.6), small, 1},
		{"clamp max", f(0.9, 0.9, 0.9, 0.9, 0.9), small, 3},
		{"clamp min", f(0.1), small, 1},
		// numpy compares fp16 against fp16(0.3) = 0.30005: a stored 0.3 is
		// not above it, though 0.30005 > 0.3 in float64.
		{"fp16 threshold", f(0.3, 0.3, 0.31), th03, 1},
		{"fp32 conf", Array{Dtype: "<f4", Shape: []int{2}, Data: []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0}}, th03, 1},
	} {
		got, err := CountNBB(tc.conf, tc.opts)
		if err != nil || got != tc.want {
			t.Errorf("%s: CountNBB = %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}

func TestFindLayout(t *testing.T) {
	numbb := DefaultImgDBOptions()
	numbb.ConfTh = -1
	th05 := DefaultImgDBOptions()
	th05.ConfTh = 0.5
	with := func(o ImgDBOptions, c Compression) ImgDBOptions { o.Compressed = c; return o }
	def := DefaultImgDBOptions()
	for _, tc := range []struct {
		name    string
		present []string
		opts    ImgDBOptions
		want    string // sub-dir, or error text
		isErr   bool
	}{
		{"th", []string{"feat_th0.2_max100_min10"}, def, "feat_th0.2_max100_min10", false},
		{"both auto", []string{"feat_th0.2_max100_min10", "feat_th0.2_max100_min10_compressed"}, def, "feat_th0.2_max100_min10", false},
		{"both yes", []string{"feat_th0.2_max100_min10", "feat_th0.2_max100_min10_compressed"}, with(def, CompressYes), "feat_th0.2_max100_min10_compressed", false},
		{"compressed only auto", []string{"feat_th0.2_max100_min10_compressed"}, def, "feat_th0.2_max100_min10_compressed", false},
		{"compressed only no", []string{"feat_th0.2_max100_min10_compressed"}, with(def, CompressNo), "looked for feat_th0.2_max100_min10, all; found feat_th0.2_max100_min10_compressed/", true},
		{"all", []string{"all"}, def, "all", false},
		{"th before all", []string{"all", "feat_th0.2_max100_min10"}, def, "feat_th0.2_max100_min10", false},
		{"all compressed", []string{"all_compressed"}, def, "all_compressed", false},
		{"numbb", []string{"feat_numbb36", "feat_th0.2_max100_min10"}, numbb, "feat_numbb36", false},
		{"numbb missing", []string{"feat_numbb10"}, numbb, "looked for feat_numbb36, feat_numbb36_compressed, all, all_compressed; found feat_numbb10/", true},
		{"th0.5", []string{"feat_th0.5_max100_min10"}, th05, "feat_th0.5_max100_min10", false},
		{"other th", []string{"feat_th0.3_max100_min10"}, def, "conf_th 0.2 max_bb 100 min_bb 10 num_bb 36: looked for feat_th0.2_max100_min10, feat_th0.2_max100_min10_compressed, all, all_compressed; found feat_th0.3_max100_min10/", true},
		{"empty", nil, def, "found nothing", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, p := range tc.present {
				if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, p, "data.mdb"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			d := &ImgDB{dir: dir, opts: tc.opts}
			err := d.findLayout()
			if tc.isErr {
				wantErr(t, err, dir, tc.want)
				return
			}
			if err != nil || d.sub != tc.want {
				t.Errorf("found %q, %v; want %q", d.sub, err, tc.want)
			}
		})
	}
	_, err := OpenImgDB(filepath.Join(t.TempDir(), "nope"), def)
	wantErr(t, err, "nope", "no such file")
}

func TestPyFloat(t *testing.T) {
	for f, want := range map[float64]string{
		0.2: "0.2", 1: "1.0", 0: "0.0", -1: "-1.0", 0.5: "0.5", 1e-5: "1e-05", 0.0001: "0.0001",
		1e16: "1e+16", 123456789: "123456789.0", 2.5e-7: "2.5e-07", math.Nextafter(0.3, 1): "0.30000000000000004",
	} {
		if got := PyFloat(f); got != want {
			t.Errorf("PyFloat(%v) = %q, want %q", f, got, want)
		}
	}
}
