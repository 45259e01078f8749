package data

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Pretraining probabilities of the original.
const (
	// MaskProb is the chance a word token (MLM) or a region (MRM) is masked.
	MaskProb = 0.15
	// ITMNegProb is the chance an ITM example gets a mismatched image.
	ITMNegProb = 0.5
)

// NewRand returns a generator determined only by seed and the coordinates
// (for example epoch and example index), so that a task reproduces an
// example's randomness whichever worker builds it and in whatever order.
func NewRand(seed uint64, coords ...uint64) *rand.Rand {
	return newRNG(seed, coords...)
}

// MaskWords applies BERT masking to word ids (no specials), drawing in the
// original's order: each token is selected with p MaskProb, then becomes
// mask (80%), a uniform random id in [vRange[0], vRange[1]) (10%) or stays
// (10%). labels[i] is the original id where selected, else -1. When nothing
// is selected the first token is forced to mask.
func MaskWords(rng *rand.Rand, ids []int32, mask int32, vRange [2]int32) (masked, labels []int32, err error) {
	if vRange[1] <= vRange[0] {
		return nil, nil, fmt.Errorf("mlm: empty v_range %v", vRange)
	}
	masked = slices.Clone(ids)
	labels = make([]int32, len(ids))
	picked := false
	for i, id := range ids {
		p := rng.Float64()
		if p >= MaskProb {
			labels[i] = -1
			continue
		}
		p /= MaskProb
		switch {
		case p < 0.8:
			masked[i] = mask
		case p < 0.9:
			masked[i] = vRange[0] + rng.Int32N(vRange[1]-vRange[0])
		}
		labels[i] = id
		picked = true
	}
	if !picked && len(ids) > 0 {
		labels[0] = ids[0]
		masked[0] = mask
	}
	return masked, labels, nil
}

// MLMInput returns [CLS] masked [SEP] and the labels aligned with it (-1 on
// the specials).
func MLMInput(masked, labels []int32, cls, sep int32) (ids, lab []int32) {
	lab = make([]int32, 0, len(labels)+2)
	lab = append(lab, -1)
	lab = append(lab, labels...)
	return WithSpecials(masked, cls, sep), append(lab, -1)
}

// MaskRegions selects each of nbb regions with probability prob; when none
// is selected one uniformly random region is, as the original does.
func MaskRegions(rng *rand.Rand, nbb int, prob float64) []bool {
	m := make([]bool, nbb)
	picked := false
	for i := range m {
		m[i] = rng.Float64() < prob
		picked = picked || m[i]
	}
	if !picked && nbb > 0 {
		m[rng.IntN(nbb)] = true
	}
	return m
}

// ApplyRegionMask masks ex's regions: it records the original features of
// masked regions as MRFR targets, their detector classes and soft labels
// as MRC targets (when softLabels, nbb rows of LabelDim, is given), and
// zeroes their features, which the model then replaces by the mask
// embedding.
func ApplyRegionMask(ex *Example, mask []bool, softLabels []float32, imgDim int) error {
	if len(mask) != ex.NBB || len(ex.ImgFeat) != ex.NBB*imgDim {
		return fmt.Errorf("region mask: example %q: %d mask values and %d features for %d regions of %d",
			ex.ID, len(mask), len(ex.ImgFeat), ex.NBB, imgDim)
	}
	if softLabels != nil && len(softLabels) != ex.NBB*LabelDim {
		return fmt.Errorf("region mask: example %q: soft_labels has %d values, want %d", ex.ID, len(softLabels), ex.NBB*LabelDim)
	}
	ex.ImgMask = mask
	ex.FeatTargets, ex.MRCLabels, ex.MRCSoft = nil, nil, nil
	for r, m := range mask {
		if !m {
			continue
		}
		feat := ex.ImgFeat[r*imgDim : (r+1)*imgDim]
		ex.FeatTargets = append(ex.FeatTargets, feat...)
		clear(feat)
		if softLabels != nil {
			soft := softLabels[r*LabelDim : (r+1)*LabelDim]
			ex.MRCLabels = append(ex.MRCLabels, MRCLabel(soft))
			ex.MRCSoft = append(ex.MRCSoft, soft...)
		}
	}
	return nil
}

// MRCLabel is argmax(soft[1:])+1, a region's MRC target: the most likely
// non-background class, the first on ties as torch.max returns.
func MRCLabel(soft []float32) int32 {
	best := 1
	for c := 2; c < len(soft); c++ {
		if soft[c] > soft[best] {
			best = c
		}
	}
	return int32(best)
}

// AssignITM draws one epoch's image-text matching labels: example i keeps
// its image imgOf[i] (label 1) or, with probability negProb, gets a random
// different image from the pool of all images in imgOf (label 0). It returns
// the labels and the image each example uses this epoch.
func AssignITM(imgOf []string, negProb float64, seed uint64, epoch int) (labels []int32, imgs []string, err error) {
	pool := slices.Clone(imgOf)
	slices.Sort(pool)
	pool = slices.Compact(pool)
	labels = make([]int32, len(imgOf))
	imgs = make([]string, len(imgOf))
	for i, img := range imgOf {
		rng := newRNG(seed, streamITM, uint64(epoch), uint64(i))
		labels[i], imgs[i] = 1, img
		if rng.Float64() >= negProb {
			continue
		}
		if len(pool) < 2 {
			return nil, nil, fmt.Errorf("itm: a negative needs at least 2 distinct images, the pool has %d", len(pool))
		}
		labels[i] = 0
		// Draw from the pool without img: shift past it instead of
		// retrying, so the draw costs one step.
		j := rng.IntN(len(pool) - 1)
		if pool[j] >= img {
			j++
		}
		imgs[i] = pool[j]
	}
	return labels, imgs, nil
}

// TaskMixer picks the pretraining task of each optimizer update: uniformly
// from a pool holding each task mix-ratio times.
type TaskMixer struct {
	pool []string
	seed uint64
}

// NewTaskMixer returns a mixer over tasks with the given positive ratios.
func NewTaskMixer(tasks []string, ratios []int, seed uint64) (*TaskMixer, error) {
	if len(tasks) == 0 || len(tasks) != len(ratios) {
		return nil, fmt.Errorf("task mixer: %d tasks and %d mix ratios", len(tasks), len(ratios))
	}
	m := &TaskMixer{seed: seed}
	for i, t := range tasks {
		if ratios[i] <= 0 {
			return nil, fmt.Errorf("task mixer: task %q has mix ratio %d", t, ratios[i])
		}
		for range ratios[i] {
			m.pool = append(m.pool, t)
		}
	}
	return m, nil
}

// Task returns the task of optimizer update step. It depends only on the
// seed and step, so a resumed run continues the same sequence.
func (m *TaskMixer) Task(step int) string {
	return m.pool[newRNG(m.seed, streamMixer, uint64(step)).IntN(len(m.pool))]
}
