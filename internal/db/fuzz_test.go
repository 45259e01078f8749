package db

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"uniter/internal/lmdb"
)

// fixtureValues returns every raw value of the LMDB environment under
// testdata/sub, to seed the fuzzers with real official values.
func fixtureValues(f *testing.F, sub string) [][]byte {
	f.Helper()
	env, err := lmdb.Open(filepath.Join("testdata", sub))
	if err != nil {
		f.Fatal(err)
	}
	defer env.Close()
	var vals [][]byte
	err = env.ForEach(func(k, v []byte) error {
		if string(k) != keysKey {
			vals = append(vals, v)
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	return vals
}

func FuzzTxtValue(f *testing.F) {
	for _, v := range fixtureValues(f, "txt_db") {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := DecodeTxtValue(b)
		if err != nil {
			return
		}
		ex := NewExample(fields, "fuzz")
		ex.InputIDs()
		ex.ImgFnames()
		ex.IntLists("input_ids_as")
		if tgt, err := ex.Map("target"); err == nil {
			tgt.Floats("scores")
		}
		// What decodes must re-encode to the same value.
		enc, err := EncodeTxtValue(fields)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := DecodeTxtValue(enc)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if fmt.Sprint(back) != fmt.Sprint(fields) {
			t.Fatalf("round trip changed the value:\n%v\n%v", fields, back)
		}
	})
}

// fuzzImage runs the whole read path of an img_db value without LMDB.
func fuzzImage(t *testing.T, b []byte, compressed bool) {
	if compressed {
		if raw, err := ReadRawNpz(b); err == nil {
			if err := raw.validate(); err != nil {
				t.Fatalf("ReadRawNpz gave an invalid image: %v", err)
			}
		}
	}
	arrays, err := DecodeImgValue(b, compressed)
	if err != nil {
		return
	}
	for _, nbb := range []int{-1, 10} {
		d := &ImgDB{path: "fuzz", opts: DefaultImgDBOptions(), compressed: compressed}
		im, err := d.decode("x", arrays, nbb, imgArrays)
		if err != nil {
			continue
		}
		if len(im.Features) != im.NBB*im.Dim || len(im.NormBB) != im.NBB*6 || len(im.Box7()) != im.NBB*7 {
			t.Fatalf("inconsistent image: nbb %d dim %d features %d norm_bb %d", im.NBB, im.Dim, len(im.Features), len(im.NormBB))
		}
		if im.SoftLabels != nil && len(im.SoftLabels) != im.NBB*im.NumLabels {
			t.Fatalf("soft labels %d for nbb %d x %d", len(im.SoftLabels), im.NBB, im.NumLabels)
		}
	}
	enc, err := EncodeImgValue(arrays, compressed)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	back, err := DecodeImgValue(enc, compressed)
	if err != nil {
		t.Fatalf("decode re-encoded: %v", err)
	}
	for n, a := range arrays {
		if c := back[n]; c.Dtype != a.Dtype || fmt.Sprint(c.Shape) != fmt.Sprint(a.Shape) || !bytes.Equal(c.Data, a.Data) {
			t.Fatalf("array %q changed in a round trip", n)
		}
	}
}

func FuzzImgValue(f *testing.F) {
	for _, sub := range []string{"img_db/feat_th0.2_max100_min10", "img_db_all/all"} {
		for _, v := range fixtureValues(f, sub) {
			f.Add(v)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { fuzzImage(t, b, false) })
}

func FuzzNpz(f *testing.F) {
	for _, sub := range []string{"img_db/feat_th0.2_max100_min10_compressed", "img_db_numbb/feat_numbb4_compressed"} {
		for _, v := range fixtureValues(f, sub) {
			f.Add(v)
		}
	}
	// Raw extractor output: float32, 1-d conf, stored and deflated.
	for _, n := range []string{"img_a.npz", "img_b.npz"} {
		b, err := os.ReadFile(filepath.Join("testdata", "npz", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { fuzzImage(t, b, true) })
}
