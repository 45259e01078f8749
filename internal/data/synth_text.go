package data

import (
	"math"
	"math/rand/v2"
	"strings"
)

// Attribute sets a noun phrase may state.
const (
	attrSize = 1 << iota
	attrColour
)

// phrase is "small red cube" with the attributes in attrs.
func phrase(o synthObject, attrs int) string {
	var w []string
	if attrs&attrSize != 0 {
		w = append(w, synthSizes[o.size])
	}
	if attrs&attrColour != 0 {
		w = append(w, synthColours[o.colour])
	}
	return strings.Join(append(w, synthClasses[o.class]), " ")
}

// indefinite prefixes "a" or "an".
func indefinite(p string) string {
	if strings.ContainsRune("aeiou", rune(p[0])) {
		return "an " + p
	}
	return "a " + p
}

// plural is the class name plus "s" (a word piece in the vocabulary).
func plural(class int) string { return synthClasses[class] + "s" }

func number(n int) string {
	if n < len(synthNumbers) {
		return synthNumbers[n]
	}
	return "many"
}

// matches reports whether p fits the description of o with attrs.
func matches(p, o synthObject, attrs int) bool {
	return p.class == o.class &&
		(attrs&attrSize == 0 || p.size == o.size) &&
		(attrs&attrColour == 0 || p.colour == o.colour)
}

// count is the number of objects fitting o's description with attrs.
func (im synthImage) count(o synthObject, attrs int) int {
	n := 0
	for _, p := range im.objects {
		if matches(p, o, attrs) {
			n++
		}
	}
	return n
}

func (im synthImage) countClass(class int) int {
	return im.count(synthObject{class: class}, 0)
}

func (im synthImage) has(class, colour int) bool {
	return im.count(synthObject{class: class, colour: colour}, attrColour) > 0
}

// uniqueAttrs returns the fewest attributes that single out object i, or
// -1 when none do.
func (im synthImage) uniqueAttrs(i int) int {
	for _, attrs := range []int{0, attrColour, attrSize, attrSize | attrColour} {
		if im.count(im.objects[i], attrs) == 1 {
			return attrs
		}
	}
	return -1
}

// relation is where a lies relative to b ("left of", "above", ...) when
// the boxes make it clear, else "". y grows downwards.
func relation(a, b synthObject) string {
	dx, dy := b.cx()-a.cx(), b.cy()-a.cy()
	switch {
	case math.Abs(dx) >= math.Abs(dy) && math.Abs(dx) > 0.15:
		if dx > 0 {
			return "left of"
		}
		return "right of"
	case math.Abs(dy) > math.Abs(dx) && math.Abs(dy) > 0.15:
		if dy > 0 {
			return "above"
		}
		return "below"
	}
	return ""
}

// captionOpeners start a caption's list of objects.
var captionOpeners = []string{"a picture of", "an image with", "there is", "the image shows"}

// caption draws one true description of im: every object by its class, in
// random order. Naming every object makes the caption a full account of
// the regions: a random ITM negative is almost never also true, and MLM,
// MRC and WRA have an aligned word for every object. Captions that named
// two of five objects, stated counts or relations, or gave sizes and
// colours left the demo's tiny model at chance on ITM for thousands of
// steps (the other texts of the world carry the attributes and relations).
func (im synthImage) caption(rng *rand.Rand) string {
	n := len(im.objects)
	parts := make([]string, n)
	for j, i := range rng.Perm(n) {
		parts[j] = indefinite(synthClasses[im.objects[i].class])
	}
	return captionOpeners[rng.IntN(len(captionOpeners))] + " " + strings.Join(parts[:n-1], " , ") + " and " + parts[n-1] + " ."
}

// vqaItem is a question with its answers and VQA soft scores.
type vqaItem struct {
	question string
	answers  []string
	scores   []float64
}

// vqaQuestion draws a question about im. Counting answers give the
// neighbouring counts partial credit, like disagreeing VQA annotators.
func (im synthImage) vqaQuestion(rng *rand.Rand) vqaItem {
	n := len(im.objects)
	for {
		switch rng.IntN(5) {
		case 0:
			i := rng.IntN(n)
			if attrs := im.uniqueAttrs(i); attrs >= 0 && attrs&attrColour == 0 {
				o := im.objects[i]
				return vqaItem{"what color is the " + phrase(o, attrs) + " ?", []string{synthColours[o.colour]}, []float64{1}}
			}
		case 1:
			class := rng.IntN(len(synthClasses))
			c := im.countClass(class)
			return countItem("how many "+plural(class)+" are there ?", c)
		case 2:
			class, colour := rng.IntN(len(synthClasses)), rng.IntN(len(synthColours))
			if rng.IntN(2) == 0 {
				o := im.objects[rng.IntN(n)]
				class, colour = o.class, o.colour
			}
			ans := "no"
			if im.has(class, colour) {
				ans = "yes"
			}
			return vqaItem{"is there " + indefinite(synthColours[colour]+" "+synthClasses[class]) + " ?", []string{ans}, []float64{1}}
		case 3:
			return countItem("how many objects are there ?", n)
		case 4:
			o := im.objects[rng.IntN(n)]
			onlyColour := true
			for _, p := range im.objects {
				if p.colour == o.colour && p.class != o.class {
					onlyColour = false
				}
			}
			if onlyColour {
				return vqaItem{"what is the " + synthColours[o.colour] + " object ?", []string{synthClasses[o.class]}, []float64{1}}
			}
		}
	}
}

func countItem(q string, c int) vqaItem {
	it := vqaItem{question: q, answers: []string{number(c)}, scores: []float64{1}}
	for _, d := range []int{c - 1, c + 1} {
		if d >= 0 && d < len(synthNumbers) {
			it.answers = append(it.answers, number(d))
			it.scores = append(it.scores, 0.3)
		}
	}
	return it
}

// vqaAnswers is the answer vocabulary, in label order.
func vqaAnswers() []string {
	a := []string{"yes", "no"}
	a = append(a, synthColours...)
	a = append(a, synthNumbers...)
	return append(a, synthClasses...)
}

// SNLI-VE labels as the official VE heads order them.
const (
	veContradiction = 0
	veEntailment    = 1
	veNeutral       = 2
)

// veHypothesis draws a hypothesis with the given label about im: a true
// caption (entailment), a claim the image refutes (contradiction) or one
// it cannot settle (neutral).
func (im synthImage) veHypothesis(rng *rand.Rand, label int) string {
	switch label {
	case veEntailment:
		return im.caption(rng)
	case veContradiction:
		for {
			if rng.IntN(2) == 0 {
				class, colour := rng.IntN(len(synthClasses)), rng.IntN(len(synthColours))
				if !im.has(class, colour) {
					return "there is " + indefinite(synthColours[colour]+" "+synthClasses[class]) + " ."
				}
				continue
			}
			o := im.objects[rng.IntN(len(im.objects))]
			c := im.countClass(o.class)
			wrong := c + 1 + rng.IntN(3)
			if rng.IntN(2) == 0 && c > 1 {
				wrong = rng.IntN(c - 1)
			}
			return "there are exactly " + number(wrong) + " " + plural(o.class) + " ."
		}
	}
	o := im.objects[rng.IntN(len(im.objects))]
	p := "the " + phrase(o, attrColour)
	switch rng.IntN(3) {
	case 0:
		return p + " is made of " + synthMaterials[rng.IntN(len(synthMaterials))] + " ."
	case 1:
		return p + " belongs to " + indefinite(synthOwners[rng.IntN(len(synthOwners))]) + " ."
	}
	return p + " is " + synthFeelings[rng.IntN(len(synthFeelings))] + " ."
}

// nlvr2Statement draws a statement about the pair (left, right) and
// returns it with its truth.
func nlvr2Statement(rng *rand.Rand, left, right synthImage) (string, bool) {
	pick := func() synthObject {
		im := left
		if rng.IntN(2) == 0 {
			im = right
		}
		return im.objects[rng.IntN(len(im.objects))]
	}
	switch rng.IntN(4) {
	case 0:
		side, im := "left", left
		if rng.IntN(2) == 0 {
			side, im = "right", right
		}
		class := pick().class
		c := im.countClass(class)
		n := max(0, c+rng.IntN(3)-1)
		return "the " + side + " image contains exactly " + number(n) + " " + plural(class) + " .", c == n
	case 1:
		o := pick()
		return "both images contain " + indefinite(synthColours[o.colour]+" "+synthClasses[o.class]) + " .",
			left.has(o.class, o.colour) && right.has(o.class, o.colour)
	case 2:
		class := pick().class
		return "there are more " + plural(class) + " in the left image than in the right image .",
			left.countClass(class) > right.countClass(class)
	}
	o := pick()
	side, im := "left", left
	if rng.IntN(2) == 0 {
		side, im = "right", right
	}
	return "the " + side + " image contains " + indefinite(synthColours[o.colour]+" "+synthClasses[o.class]) + " .",
		im.has(o.class, o.colour)
}

// vcrItem is a multiple-choice question with four answers and four
// rationales; ans and rat index the right ones.
type vcrItem struct {
	question   string
	answers    [4]string
	rationales [4]string
	ans, rat   int
}

// vcrQuestion asks what the image shows. The right answer names every
// object by its class, as the pretraining captions do ("it shows a cube ,
// a ball and a dog ."); each wrong one names as many classes the image
// lacks. The right rationale names a class of the image ("because there
// is a ball ."), each wrong one a class it lacks, so that it is the one
// both the image and the true answer support. Asking the colour of an
// object singled out by size and class, with relations as rationales (the
// four choices one word apart, every one plausible without the regions),
// left a two-layer model at chance on both tasks, its loss at the
// 25%-positive floor, whether or not it was pretrained. ok is false when
// the image has no class it lacks.
func (im synthImage) vcrQuestion(rng *rand.Rand) (vcrItem, bool) {
	present := map[int]bool{}
	for _, o := range im.objects {
		present[o.class] = true
	}
	var absent []int
	for c := range synthClasses {
		if !present[c] {
			absent = append(absent, c)
		}
	}
	n := len(im.objects)
	if len(absent) == 0 {
		return vcrItem{}, false
	}
	list := func(classes []int) string {
		parts := make([]string, len(classes))
		for j, c := range classes {
			parts[j] = indefinite(synthClasses[c])
		}
		if len(parts) == 1 {
			return parts[0]
		}
		return strings.Join(parts[:len(parts)-1], " , ") + " and " + parts[len(parts)-1]
	}
	it := vcrItem{question: "what does the image show ?", ans: rng.IntN(4), rat: rng.IntN(4)}
	// Wrong answers take disjoint runs of the absent classes while they
	// last, so that no two are alike.
	order := rng.Perm(len(absent))
	next := 0
	for a := range it.answers {
		classes := make([]int, n)
		if a == it.ans {
			for j, i := range rng.Perm(n) {
				classes[j] = im.objects[i].class
			}
		} else {
			if next+n > len(order) {
				order, next = rng.Perm(len(absent)), 0
			}
			for j := range classes {
				classes[j] = absent[order[next%len(order)]]
				next++
			}
		}
		it.answers[a] = "it shows " + list(classes) + " ."
	}
	lies := rng.Perm(len(absent))
	k := 0
	for r := range it.rationales {
		c := im.objects[rng.IntN(n)].class
		if r != it.rat {
			c = absent[lies[k%len(lies)]]
			k++
		}
		it.rationales[r] = "because there is " + indefinite(synthClasses[c]) + " ."
	}
	return it, true
}

// referringExpression describes object i uniquely, or returns "".
func (im synthImage) referringExpression(rng *rand.Rand, i int) string {
	o := im.objects[i]
	if attrs := im.uniqueAttrs(i); attrs >= 0 && rng.IntN(3) > 0 {
		return "the " + phrase(o, attrs)
	}
	// "the leftmost/rightmost <class>" among several of its class.
	if im.countClass(o.class) > 1 {
		left, right := true, true
		for _, p := range im.objects {
			if p.class == o.class && p != o {
				left = left && p.cx() > o.cx()
				right = right && p.cx() < o.cx()
			}
		}
		switch {
		case left:
			return "the leftmost " + synthClasses[o.class]
		case right:
			return "the rightmost " + synthClasses[o.class]
		}
	}
	if attrs := im.uniqueAttrs(i); attrs >= 0 {
		return "the " + phrase(o, attrs)
	}
	return ""
}
