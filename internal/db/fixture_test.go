package db

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The fixtures under testdata/ are written by scripts/make_db_fixtures.py
// with the official Python code paths; expected.json records what Python
// decodes from them.

type digest struct {
	SHA256 string    `json:"sha256"`
	Head   []float64 `json:"head"`
	Shape  []int     `json:"shape"`
}

type imgExpect struct {
	NBB        int     `json:"nbb"`
	Dim        int     `json:"dim"`
	Features   digest  `json:"features"`
	NormBB     digest  `json:"norm_bb"`
	Box7       digest  `json:"box7"`
	Conf       digest  `json:"conf"`
	SoftLabels *digest `json:"soft_labels"`
}

func loadExpected(t testing.TB) (txt map[string]any, img map[string]map[string]imgExpect) {
	t.Helper()
	b, err := os.ReadFile("testdata/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(all["txt_db"], &txt); err != nil {
		t.Fatal(err)
	}
	img = map[string]map[string]imgExpect{}
	for k, v := range all {
		if k == "txt_db" {
			continue
		}
		var m map[string]imgExpect
		if err := json.Unmarshal(v, &m); err != nil {
			t.Fatal(err)
		}
		img[k] = m
	}
	return txt, img
}

// jsonable renders a decoded value the way make_db_fixtures.py renders
// Python's: bytes as {"__bytes__": hex}, long integer lists hashed.
func jsonable(v any) any { return render(v, true) }

// render is jsonable with the hashing of long integer lists optional.
func render(v any, hashLong bool) any {
	switch v := v.(type) {
	case []byte:
		return map[string]any{"__bytes__": hex.EncodeToString(v)}
	case map[string]any:
		out := map[string]any{}
		for k, x := range v {
			out[k] = render(x, hashLong)
		}
		return out
	case []any:
		if hashLong && len(v) > 64 {
			parts := make([]string, 0, len(v))
			for _, x := range v {
				n, ok := x.(int64)
				if !ok {
					break
				}
				parts = append(parts, strconv.FormatInt(n, 10))
			}
			if len(parts) == len(v) {
				sum := sha256.Sum256([]byte(strings.Join(parts, ",")))
				return map[string]any{"__ints__": hex.EncodeToString(sum[:]), "len": len(v)}
			}
		}
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = render(x, hashLong)
		}
		return out
	}
	return v
}

// viaJSON normalises a value through encoding/json so that Go and Python
// renderings compare with reflect.DeepEqual.
func viaJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTxtDBFixture(t *testing.T) {
	want, _ := loadExpected(t)
	db, err := OpenTxtDB("testdata/txt_db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	m := db.Meta()
	if m.CLS != 101 || m.SEP != 102 || m.MASK != 103 || m.UNK != 100 || m.VRange != [2]int{999, 28996} || m.Tokenizer != "bert-base-cased" {
		t.Fatalf("meta = %+v", m)
	}
	// The ids come in id2len.json's key order, as Python's json.load and
	// with it the original's datasets list them.
	raw, err := os.ReadFile("testdata/txt_db/id2len.json")
	if err != nil {
		t.Fatal(err)
	}
	var fileOrder []string
	for _, m := range regexp.MustCompile(`"([^"]+)":`).FindAllStringSubmatch(string(raw), -1) {
		fileOrder = append(fileOrder, m[1])
	}
	ids := db.IDs(-1)
	if len(ids) != len(want) || !slices.Equal(ids, fileOrder) {
		t.Fatalf("IDs(-1) = %v, want id2len.json's order %v", ids, fileOrder)
	}
	for _, id := range ids {
		ex, err := db.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		got := viaJSON(t, jsonable(ex.Fields))
		if !reflect.DeepEqual(got, want[id]) {
			t.Errorf("example %s:\n got %v\nwant %v", id, got, want[id])
		}
		in, err := ex.InputIDs()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := db.Len(id); n != len(in) {
			t.Errorf("id2len[%s] = %d, input_ids has %d", id, n, len(in))
		}
	}
	// The ids of length <= 4, still in the file's order.
	if got := db.IDs(4); !reflect.DeepEqual(got, []string{"dev-850-0-0", "test1-0-1-1", "val-0", "1337"}) {
		t.Errorf("IDs(4) = %v", got)
	}

	vqa, _ := db.Get("262148000")
	target, err := vqa.Map("target")
	if err != nil {
		t.Fatal(err)
	}
	labels, err1 := target.Ints("labels")
	scores, err2 := target.Floats("scores")
	if err1 != nil || err2 != nil || !reflect.DeepEqual(labels, []int32{17, 2044}) || !reflect.DeepEqual(scores, []float64{1, 0.3}) {
		t.Errorf("VQA target = %v %v (%v %v)", labels, scores, err1, err2)
	}
	if q, err := vqa.String("question"); err != nil || q != "What is the man? \u00e9\u4e2d" {
		t.Errorf("question = %q, %v", q, err)
	}
	if qid, err := vqa.Int("question_id"); err != nil || qid != 262148000 {
		t.Errorf("question_id = %d, %v", qid, err)
	}

	nlvr, _ := db.Get("dev-850-0-0")
	if f, err := nlvr.ImgFnames(); err != nil || len(f) != 2 || f[1] != "nlvr2_dev-850-0-img1.npz" {
		t.Errorf("NLVR2 img_fname = %v, %v", f, err)
	}
	if imgs, _ := db.Images("dev-850-0-0"); !reflect.DeepEqual(imgs, []string{"nlvr2_dev-850-0-img0.npz", "nlvr2_dev-850-0-img1.npz"}) {
		t.Errorf("txt2img pair = %v", imgs)
	}
	test, _ := db.Get("test1-0-1-1")
	if !test.IsNull("target") || nlvr.IsNull("target") {
		t.Error("IsNull(target) wrong")
	}

	vcr, _ := db.Get("val-0")
	as, err := vcr.IntLists("input_ids_as")
	if err != nil || len(as) != 4 || len(as[2]) != 0 || !reflect.DeepEqual(as[3], []int32{149, 150, 151}) {
		t.Errorf("input_ids_as = %v, %v", as, err)
	}
	if q, err := vcr.Int("qar_target"); err != nil || q != -1 {
		t.Errorf("qar_target = %d, %v", q, err)
	}

	re, _ := db.Get("1337")
	if bb, err := re.Floats("bbox"); err != nil || bb[0] != 103.93 {
		t.Errorf("bbox = %v, %v", bb, err)
	}
	if b, err := re.Int("big"); err != nil || b != 1<<40 {
		t.Errorf("big = %d, %v", b, err)
	}
	if f, err := re.Int("flag"); err != nil || f != 1 {
		t.Errorf("flag = %d, %v", f, err)
	}

	if got := db.Texts("coco_val2014_000000000042.npz"); !reflect.DeepEqual(got, []string{"42", "long"}) {
		t.Errorf("img2txts = %v", got)
	}
	if got := db.ImageNames(); len(got) != 9 || !slices.IsSorted(got) {
		t.Errorf("ImageNames = %v", got)
	}
}

func f32Digest(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func checkDigest(t *testing.T, what string, got []float32, want digest) {
	t.Helper()
	n := 1
	for _, d := range want.Shape {
		n *= d
	}
	if len(got) != n {
		t.Errorf("%s: %d values, want shape %v", what, len(got), want.Shape)
		return
	}
	for i, h := range want.Head {
		if float64(got[i]) != h {
			t.Errorf("%s[%d] = %v, want %v", what, i, got[i], h)
		}
	}
	if d := f32Digest(got); d != want.SHA256 {
		t.Errorf("%s: sha256 %s, want %s", what, d, want.SHA256)
	}
}

func checkImage(t *testing.T, db *ImgDB, name string, want imgExpect) {
	t.Helper()
	im, err := db.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	if im.NBB != want.NBB || im.Dim != want.Dim {
		t.Fatalf("%s: nbb %d dim %d, want %d %d", name, im.NBB, im.Dim, want.NBB, want.Dim)
	}
	if n, err := db.NBB(name); err != nil || n != want.NBB {
		t.Errorf("%s: NBB() = %d, %v; want %d", name, n, err, want.NBB)
	}
	checkDigest(t, name+" features", im.Features, want.Features)
	checkDigest(t, name+" norm_bb", im.NormBB, want.NormBB)
	checkDigest(t, name+" box7", im.Box7(), want.Box7)
	checkDigest(t, name+" conf", im.Conf, want.Conf)
	if want.SoftLabels == nil {
		if im.SoftLabels != nil {
			t.Errorf("%s: soft labels present, want none", name)
		}
	} else {
		checkDigest(t, name+" soft_labels", im.SoftLabels, *want.SoftLabels)
		if im.NumLabels != want.SoftLabels.Shape[1] {
			t.Errorf("%s: NumLabels %d", name, im.NumLabels)
		}
	}
	feat, err := db.GetFeat(name)
	if err != nil {
		t.Fatal(err)
	}
	if feat.NBB != want.NBB || f32Digest(feat.Features) != want.Features.SHA256 || feat.SoftLabels != nil {
		t.Errorf("%s: GetFeat differs from Get", name)
	}
}

func TestImgDBFixtures(t *testing.T) {
	_, want := loadExpected(t)
	numbb := DefaultImgDBOptions()
	numbb.ConfTh, numbb.NumBB = -1, 4
	only := func(c Compression) ImgDBOptions {
		o := DefaultImgDBOptions()
		o.Compressed = c
		return o
	}
	dim2048 := DefaultImgDBOptions()
	dim2048.ImgDim = 2048
	for _, tc := range []struct {
		dir, expect string
		opts        ImgDBOptions
		sub         string
	}{
		{"img_db", "img_db", DefaultImgDBOptions(), "feat_th0.2_max100_min10"},
		{"img_db", "img_db", only(CompressNo), "feat_th0.2_max100_min10"},
		{"img_db", "img_db", only(CompressYes), "feat_th0.2_max100_min10_compressed"},
		{"img_db_all", "img_db_all", DefaultImgDBOptions(), "all"},
		{"img_db_numbb", "img_db_numbb", numbb, "feat_numbb4_compressed"},
		{"img_db_2048", "img_db_2048", dim2048, "feat_th0.2_max100_min10"},
	} {
		t.Run(tc.sub, func(t *testing.T) {
			db, err := OpenImgDB("testdata/"+tc.dir, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if db.SubDir() != tc.sub || db.Compressed() != strings.HasSuffix(tc.sub, "_compressed") {
				t.Fatalf("layout %s compressed=%v, want %s", db.SubDir(), db.Compressed(), tc.sub)
			}
			names, err := db.Names()
			if err != nil {
				t.Fatal(err)
			}
			if len(names) != len(want[tc.expect]) {
				t.Fatalf("Names() = %v", names)
			}
			for _, n := range names {
				checkImage(t, db, n, want[tc.expect][n])
			}
		})
	}
}
