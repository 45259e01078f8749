package data

import (
	"slices"
	"testing"
)

// TestSynthVCRDeterminedByImage checks what makes the synthetic VCR
// learnable (the old colour questions, four choices one word apart with
// relations as rationales, left the tiny model at chance with its loss at
// the 25%-positive floor): the right answer names every object of its
// image by its class, as the captions ITM learns from; every wrong answer
// names only classes the image lacks, and no two answers are alike; the
// right rationale names a class of the image and of the right answer,
// each wrong one a class the image lacks; the targets are uniform.
func TestSynthVCRDeterminedByImage(t *testing.T) {
	o := DefaultSynthOptions()
	w := newSynthWorld(5, 8, o.MinObjects, o.MaxObjects, o.Noise)
	var ansAt, ratAt [4]int
	n := 0
	for i := range 400 {
		im := w.image(newRNG(5, uint64(i)), "x")
		it, ok := im.vcrQuestion(newRNG(7, uint64(i)))
		if !ok {
			t.Fatalf("image %d (%d objects): no VCR question", i, len(im.objects))
		}
		n++
		ansAt[it.ans]++
		ratAt[it.rat]++
		var want []int
		for _, o := range im.objects {
			want = append(want, o.class)
		}
		slices.Sort(want)
		for a, text := range it.answers {
			got := captionClasses(text)
			slices.Sort(got)
			if a == it.ans && !slices.Equal(got, want) {
				t.Fatalf("image %d: right answer %q names %v, the image has %v", i, text, got, want)
			}
			if a != it.ans {
				if len(got) != len(want) {
					t.Fatalf("image %d: wrong answer %q names %d classes, the right one %d", i, text, len(got), len(want))
				}
				for _, c := range got {
					if im.countClass(c) > 0 {
						t.Fatalf("image %d: wrong answer %q names %s, which the image has", i, text, synthClasses[c])
					}
				}
			}
			for b := range a {
				if it.answers[b] == text {
					t.Fatalf("image %d: answers %d and %d are both %q", i, b, a, text)
				}
			}
		}
		for r, text := range it.rationales {
			got := captionClasses(text)
			if len(got) != 1 {
				t.Fatalf("image %d: rationale %q names %v, want one class", i, text, got)
			}
			if present := im.countClass(got[0]) > 0; present != (r == it.rat) {
				t.Fatalf("image %d: rationale %d %q (right %d): class present %v", i, r, text, it.rat, present)
			}
		}
	}
	for k := range 4 {
		if ansAt[k] < n/8 || ratAt[k] < n/8 {
			t.Errorf("targets not uniform: answers %v rationales %v of %d", ansAt, ratAt, n)
		}
	}
}
