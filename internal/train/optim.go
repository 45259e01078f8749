package train

import (
	"fmt"
	"math"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/compute"
	"uniter/internal/model"
)

// AdamWOptions are the optimizer's hyperparameters.
type AdamWOptions struct {
	Beta1, Beta2, Eps float64
	// WeightDecay applies to parameters whose Decay() is true; the others
	// form the reference's no-decay group.
	WeightDecay float64
	// LRMul multiplies the learning rate of head parameters.
	LRMul float64
	// IsHead selects the parameters LRMul applies to; nil means every
	// parameter outside the uniter. backbone.
	IsHead func(*model.Param) bool
}

// AdamW is the reference's optimizer (optim/adamw.py, from
// pytorch-transformers): Adam with bias correction and decoupled weight
// decay applied after the Adam step, p -= lr*wd*p. Moments are fp32 and
// live on the backend next to the weights.
type AdamW struct {
	opt    AdamWOptions
	be     compute.Backend
	params []*model.Param
	m, v   []*compute.Tensor
	lrMul  []float64
	steps  int
}

// NewAdamW returns an optimizer over params with zero moments.
func NewAdamW(be compute.Backend, params []*model.Param, o AdamWOptions) *AdamW {
	if o.IsHead == nil {
		o.IsHead = func(p *model.Param) bool { return !strings.HasPrefix(p.Name, "uniter.") }
	}
	if o.LRMul == 0 {
		o.LRMul = 1
	}
	a := &AdamW{opt: o, be: be, params: params}
	for _, p := range params {
		a.m = append(a.m, be.Alloc(compute.F32, p.Shape...))
		a.v = append(a.v, be.Alloc(compute.F32, p.Shape...))
		mul := 1.0
		if o.IsHead(p) {
			mul = o.LRMul
		}
		a.lrMul = append(a.lrMul, mul)
	}
	return a
}

// Steps is the number of updates applied (skipped steps do not count, as
// apex skips optimizer.step on overflow).
func (a *AdamW) Steps() int { return a.steps }

// Step applies one update with learning rate lr to every parameter, using
// p.G*gradScale as the gradient (gradScale folds in loss unscaling and
// clipping).
func (a *AdamW) Step(lr, gradScale float64) {
	a.steps++
	o := a.opt
	for i, p := range a.params {
		wd := 0.0
		if p.Decay() {
			wd = o.WeightDecay
		}
		a.be.AdamW(p.W, p.G, a.m[i], a.v[i], float32(gradScale), float32(lr*a.lrMul[i]),
			float32(o.Beta1), float32(o.Beta2), float32(o.Eps), float32(wd), a.steps)
	}
}

// moment is one optimizer state tensor of a parameter and its key prefix.
type moment struct {
	prefix string
	x      *compute.Tensor
}

// moments lists parameter i's state under the reference's state names.
func (a *AdamW) moments(i int) []moment {
	return []moment{{"exp_avg.", a.m[i]}, {"exp_avg_sq.", a.v[i]}}
}

// StateDict returns the moments as exp_avg.NAME and exp_avg_sq.NAME (the
// reference's state names).
func (a *AdamW) StateDict() *ckpt.StateDict {
	sd := &ckpt.StateDict{Tensors: map[string]*ckpt.Tensor{}}
	for i, p := range a.params {
		for _, t := range a.moments(i) {
			k := t.prefix + p.Name
			sd.Keys = append(sd.Keys, k)
			sd.Tensors[k] = &ckpt.Tensor{Shape: append([]int(nil), p.Shape...), DType: "float32", Float: a.be.ToF32(t.x)}
		}
	}
	return sd
}

// Load restores the moments and update count written by StateDict; source
// names the file in errors.
func (a *AdamW) Load(sd *ckpt.StateDict, steps int, source string) error {
	for i, p := range a.params {
		for _, t := range a.moments(i) {
			k := t.prefix + p.Name
			st, ok := sd.Tensors[k]
			if !ok {
				return fmt.Errorf("optimizer state %s: missing %q", source, k)
			}
			if !compute.SameShape(st.Shape, p.Shape) || st.Float == nil {
				return fmt.Errorf("optimizer state %s: %q has shape %v (%s), want %v float", source, k, st.Shape, st.DType, p.Shape)
			}
			a.be.Copy(t.x, a.be.FromF32(st.Float, p.Shape...))
		}
	}
	a.steps = steps
	return nil
}

// GradNorm is the global L2 norm of the parameters' gradients times scale.
func GradNorm(be compute.Backend, params []*model.Param, scale float64) float64 {
	return math.Sqrt(gradSumSq(be, params)) * scale
}

// gradSumSq is the sum of the squares of every gradient element, in
// float64. It is NaN or +Inf exactly when some element is: the square of a
// finite float32 is below 2^256, so no finite sum of them overflows.
func gradSumSq(be compute.Backend, params []*model.Param) float64 {
	s := 0.0
	for _, p := range params {
		s += be.SumSq(p.G)
	}
	return s
}

// ClipCoef is torch's clip_grad_norm_ factor for a gradient of norm total:
// maxNorm/(total+1e-6) when that is below 1, else 1; maxNorm -1 disables
// clipping.
func ClipCoef(total, maxNorm float64) float64 {
	if maxNorm < 0 {
		return 1
	}
	if c := maxNorm / (total + 1e-6); c < 1 {
		return c
	}
	return 1
}
