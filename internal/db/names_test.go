package db

import (
	"strings"
	"testing"
)

// TestMissingImageSuggestsNames looks up names an img_db lacks: the error
// lists the closest names it holds, a case-only difference first.
func TestMissingImageSuggestsNames(t *testing.T) {
	dir := t.TempDir()
	w, err := CreateImgDB(dir, DefaultImgDBOptions(), false)
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand()
	for _, n := range []string{
		"coco_train2014_000000000025.npz", "coco_train2014_000000000009.npz",
		"coco_train2014_000000000030.npz", "coco_train2014_000000000042.npz", "nlvr2_dev-850-0-img0.npz",
	} {
		if _, err := w.Put(n, randRaw(rng, 12, 8, 3, 5)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := OpenImgDB(dir, DefaultImgDBOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for name, want := range map[string]string{
		"COCO_train2014_000000000009.npz": `image not in db; closest of its 5 names: "coco_train2014_000000000009.npz", "coco_train2014_000000000025.npz", "coco_train2014_000000000030.npz"`,
		"coco_train2014_000000000042":     `closest of its 5 names: "coco_train2014_000000000042.npz", `,
		"nlvr2_dev-850-0-img1.npz":        `closest of its 5 names: "nlvr2_dev-850-0-img0.npz", `,
	} {
		_, err := d.Get(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Get(%q): %v\nwant %s", name, err, want)
		}
		if _, err := d.NBB(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NBB(%q): %v\nwant %s", name, err, want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b        string
		bound, want int
	}{
		{"kitten", "sitting", 100, 3},
		{"", "abc", 100, 3},
		{"abc", "abc", 100, 0},
		{"kitten", "sitting", 2, 2},
		{"a", "abcdef", 3, 3},
	} {
		if got := editDistance([]rune(tc.a), []rune(tc.b), tc.bound); got != tc.want {
			t.Errorf("editDistance(%q, %q, %d) = %d, want %d", tc.a, tc.b, tc.bound, got, tc.want)
		}
	}
}
