package data

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/x448/float16"

	"uniter/internal/db"
)

// The synthetic world: images are sets of objects, each an instance of a
// class with a colour, a size and a position. Region features are class and
// colour prototypes plus noise, so every attribute a caption states is
// recoverable from the regions and every relation from the boxes.
var (
	synthClasses = []string{"cube", "ball", "cylinder", "cone", "pyramid", "ring", "star", "disk",
		"tree", "car", "dog", "cat", "chair", "cup", "book", "lamp"}
	synthColours   = []string{"red", "blue", "green", "yellow", "purple", "orange", "white", "black"}
	synthSizes     = []string{"small", "large"}
	synthNumbers   = []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"}
	synthMaterials = []string{"wood", "metal", "plastic", "glass", "stone", "paper"}
	synthOwners    = []string{"child", "teacher", "farmer", "doctor", "neighbour"}
	synthFeelings  = []string{"new", "old", "heavy", "expensive", "cheap", "fragile"}
	synthRelations = []string{"left of", "right of", "above", "below"}
	// synthFiller are the function words of every template.
	synthFiller = []string{"a", "an", "the", "there", "is", "are", "and", "of", "in", "with", "image", "picture",
		"objects", "object", "what", "color", "how", "many", "it", "yes", "no", "made", "belongs", "to",
		"exactly", "both", "images", "contain", "contains", "more", "than", "left", "right", "because",
		"looks", "thing", "leftmost", "rightmost", "total", "one", "other", "does", "not", "shows"}
	// synthPunct are the punctuation tokens; '!' first so that v_range
	// starts at it as in BERT's vocabularies.
	synthPunct = []string{"!", ",", ".", "?", "'", "-"}
)

// Reserved ids of the BERT layout the synthetic vocabulary keeps.
const (
	synthUNK  = 100
	synthCLS  = 101
	synthSEP  = 102
	synthMASK = 103
)

// SynthVocab returns the synthetic world's vocabulary in id order: [PAD] 0,
// [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then
// the punctuation starting with "!" at 104, the words (sorted) and "##s"
// (plurals are word pieces, as in BERT).
func SynthVocab() []string {
	v := []string{TokPAD}
	for i := 0; i < 99; i++ {
		v = append(v, fmt.Sprintf("[unused%d]", i))
	}
	v = append(v, TokUNK, TokCLS, TokSEP, TokMASK)
	v = append(v, synthPunct...)
	seen := map[string]bool{}
	var words []string
	for _, list := range [][]string{synthClasses, synthColours, synthSizes, synthNumbers, synthMaterials,
		synthOwners, synthFeelings, synthFiller, {"above", "below", "of"}} {
		for _, w := range list {
			if !seen[w] {
				seen[w] = true
				words = append(words, w)
			}
		}
	}
	slices.Sort(words)
	v = append(v, words...)
	return append(v, "##s")
}

// Geometry of the world's images, in pixels, for the RE side files.
const (
	synthWidth  = 640
	synthHeight = 480
)

// synthObject is one object: indices into the class, colour and size
// tables and a box normalised to [0,1].
type synthObject struct {
	class, colour, size int
	x1, y1, x2, y2      float64
}

func (o synthObject) cx() float64 { return (o.x1 + o.x2) / 2 }
func (o synthObject) cy() float64 { return (o.y1 + o.y2) / 2 }

// synthImage is an image's contents. objects are in region order
// (confidence descending).
type synthImage struct {
	name    string
	objects []synthObject
	conf    []float64
	// clutter are low-confidence fragments of objects (index into
	// objects), which pad the detections up to min_bb as real detectors'
	// background proposals do.
	clutter     []int
	clutterConf []float64
}

// synthWorld holds the prototypes every image is rendered from.
type synthWorld struct {
	dim            int
	noise          float64
	classProto     [][]float32
	colourProto    [][]float32
	sizeProto      [][]float32
	minObj, maxObj int
}

func newSynthWorld(seed uint64, dim, minObj, maxObj int, noise float64) *synthWorld {
	rng := newRNG(seed, streamSynth, 0)
	protos := func(n int, scale float64) [][]float32 {
		p := make([][]float32, n)
		for i := range p {
			p[i] = make([]float32, dim)
			for j := range p[i] {
				p[i][j] = float32(rng.NormFloat64() * scale)
			}
		}
		return p
	}
	return &synthWorld{dim: dim, noise: noise, minObj: minObj, maxObj: maxObj,
		classProto: protos(len(synthClasses), 1), colourProto: protos(len(synthColours), 0.8),
		sizeProto: protos(len(synthSizes), 0.5)}
}

// image draws the contents of image i of a split. Objects are placed by
// rejection so that no two overlap much, which keeps relations and
// referring expressions well defined.
func (w *synthWorld) image(rng *rand.Rand, name string) synthImage {
	n := w.minObj + rng.IntN(w.maxObj-w.minObj+1)
	im := synthImage{name: name}
	for len(im.objects) < n {
		var o synthObject
		for try := 0; ; try++ {
			o = synthObject{class: rng.IntN(len(synthClasses)), colour: rng.IntN(len(synthColours)), size: rng.IntN(len(synthSizes))}
			side := 0.08 + 0.06*rng.Float64()
			if o.size == 1 {
				side = 0.2 + 0.1*rng.Float64()
			}
			bw, bh := side*(0.8+0.4*rng.Float64()), side*(0.8+0.4*rng.Float64())
			o.x1, o.y1 = rng.Float64()*(1-bw), rng.Float64()*(1-bh)
			o.x2, o.y2 = o.x1+bw, o.y1+bh
			if try >= 30 || !slices.ContainsFunc(im.objects, func(p synthObject) bool { return iou(o, p) > 0.2 }) {
				break
			}
		}
		im.objects = append(im.objects, o)
	}
	for range im.objects {
		im.conf = append(im.conf, 0.3+0.7*rng.Float64())
	}
	// Keep objects and their confidences together while sorting.
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmpDesc(im.conf[a], im.conf[b]) })
	objs, conf := make([]synthObject, n), make([]float64, n)
	for i, j := range idx {
		objs[i], conf[i] = im.objects[j], im.conf[j]
	}
	im.objects, im.conf = objs, conf
	nClutter := max(0, 10-n) + 2 + rng.IntN(3)
	for range nClutter {
		im.clutter = append(im.clutter, rng.IntN(n))
		im.clutterConf = append(im.clutterConf, 0.02+0.17*rng.Float64())
	}
	slices.SortFunc(im.clutterConf, cmpDesc)
	return im
}

func cmpDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

func iou(a, b synthObject) float64 {
	ix := math.Max(0, math.Min(a.x2, b.x2)-math.Max(a.x1, b.x1))
	iy := math.Max(0, math.Min(a.y2, b.y2)-math.Max(a.y1, b.y1))
	inter := ix * iy
	union := (a.x2-a.x1)*(a.y2-a.y1) + (b.x2-b.x1)*(b.y2-b.y1) - inter
	return inter / union
}

// render turns an image into detector output. With gt it renders exactly
// the objects (ground-truth boxes, confidence 1); otherwise the objects
// with jittered boxes followed by clutter, padded or cut to rows when rows
// is positive. Features are relu(class + colour + size prototypes + noise),
// non-negative like pooled CNN features; soft labels put most mass on the
// object's class id (1 + class index).
func (w *synthWorld) render(rng *rand.Rand, im synthImage, gt bool, rows int) db.RawImage {
	type region struct {
		obj   synthObject
		conf  float64
		frag  bool
		other int
	}
	var regs []region
	for i, o := range im.objects {
		c := im.conf[i]
		if gt {
			c = 1
		} else {
			o = jitter(rng, o, 0.01)
		}
		regs = append(regs, region{obj: o, conf: c, other: rng.IntN(len(synthClasses))})
	}
	if !gt {
		clutter, cconf := im.clutter, im.clutterConf
		for rows > 0 && len(regs)+len(clutter) < rows {
			clutter = append(clutter, rng.IntN(len(im.objects)))
			cconf = append(cconf, 0.01*rng.Float64())
		}
		for k, j := range clutter {
			regs = append(regs, region{obj: jitter(rng, im.objects[j], 0.05), conf: cconf[k], frag: true, other: rng.IntN(len(synthClasses))})
		}
		if rows > 0 {
			regs = regs[:rows]
		}
	}
	n, d := len(regs), w.dim
	raw := db.RawImage{N: n, D: d, L: LabelDim,
		Features:   make([]float16.Float16, n*d),
		NormBB:     make([]float16.Float16, n*6),
		Conf:       make([]float16.Float16, n),
		SoftLabels: make([]float16.Float16, n*LabelDim)}
	for r, g := range regs {
		o := g.obj
		ws, wc, wz := float32(1), float32(1), float32(1)
		if g.frag {
			ws, wc, wz = 0.5, 0.5, 0
		}
		cp, kp, sp := w.classProto[o.class], w.colourProto[o.colour], w.sizeProto[o.size]
		feat := raw.Features[r*d : (r+1)*d]
		for j := range feat {
			v := ws*cp[j] + wc*kp[j] + wz*sp[j] + float32(w.noise*rng.NormFloat64())
			feat[j] = float16.Fromfloat32(max(v, 0))
		}
		bb := [6]float64{o.x1, o.y1, o.x2, o.y2, o.x2 - o.x1, o.y2 - o.y1}
		for j, v := range bb {
			raw.NormBB[r*6+j] = float16.Fromfloat32(float32(v))
		}
		raw.Conf[r] = float16.Fromfloat32(float32(g.conf))
		soft := make([]float64, LabelDim)
		// Add rather than assign: other may equal the object's class, and
		// every row must stay a distribution.
		if g.frag {
			soft[0] = 0.5
			soft[1+o.class] += 0.3
			soft[1+g.other] += 0.2
		} else {
			p := 0.55 + 0.4*rng.Float64()
			soft[1+o.class] = p
			soft[0] += (1 - p) * 0.3
			soft[1+g.other] += (1 - p) * 0.7
		}
		for c, v := range soft {
			if v != 0 {
				raw.SoftLabels[r*LabelDim+c] = float16.Fromfloat32(float32(v))
			}
		}
	}
	return raw
}

// jitter moves a box's corners by up to amount, keeping it inside the image
// and non-empty.
func jitter(rng *rand.Rand, o synthObject, amount float64) synthObject {
	j := func(v float64) float64 { return v + amount*(2*rng.Float64()-1) }
	x1, y1 := math.Max(0, j(o.x1)), math.Max(0, j(o.y1))
	x2, y2 := math.Min(1, j(o.x2)), math.Min(1, j(o.y2))
	if x2-x1 > 0.01 && y2-y1 > 0.01 {
		o.x1, o.y1, o.x2, o.y2 = x1, y1, x2, y2
	}
	return o
}
