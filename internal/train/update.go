package train

import (
	"fmt"
	"maps"
	"math"

	"uniter/internal/compute"
	"uniter/internal/model"
)

// Updater turns a window's accumulated gradients into an optimizer update
// as the reference's step does: overflow check against the task's loss
// scaler (mixed precision), unscaling, global-norm clipping, AdamW.
type Updater struct {
	Opt *AdamW

	be        compute.Backend
	params    []*model.Param
	maxNorm   float64
	fp16      bool
	initScale float64
	window    int
	scalers   map[string]*LossScaler
}

// UpdateInfo describes one update.
type UpdateInfo struct {
	// LossScale is the scale the window's gradients were computed with.
	LossScale float64
	// GradNorm is the unscaled global gradient norm before clipping (0 on
	// a skipped step).
	GradNorm float64
	// Skipped is set when the gradients overflowed and the step was not
	// taken.
	Skipped bool
}

// NewUpdater returns an updater over params. With fp16 each task key gets a
// dynamic loss scaler starting at initScale that doubles after window clean
// steps; without it the scale is 1. maxNorm -1 disables clipping.
func NewUpdater(be compute.Backend, params []*model.Param, opt *AdamW, maxNorm float64, fp16 bool, initScale float64, window int) *Updater {
	return &Updater{Opt: opt, be: be, params: params, maxNorm: maxNorm, fp16: fp16,
		initScale: initScale, window: window, scalers: map[string]*LossScaler{}}
}

func (u *Updater) scaler(key string) *LossScaler {
	s, ok := u.scalers[key]
	if !ok {
		s = NewLossScaler(u.initScale, u.window)
		u.scalers[key] = s
	}
	return s
}

// Scale is the loss scale the next window of task key must multiply its
// loss by.
func (u *Updater) Scale(key string) float64 {
	if !u.fp16 {
		return 1
	}
	return u.scaler(key).Scale
}

// Apply performs the update of a window of task key whose gradients (times
// Scale(key)) are in the parameters, with learning rate lr. In fp32 a
// non-finite gradient is an error: nothing would rescue the run.
func (u *Updater) Apply(key string, lr float64) (UpdateInfo, error) {
	scale := u.Scale(key)
	info := UpdateInfo{LossScale: scale}
	// One pass over the gradients serves the overflow check and the norm.
	sumSq := gradSumSq(u.be, u.params)
	finite := !math.IsNaN(sumSq) && !math.IsInf(sumSq, 0)
	if u.fp16 {
		if !finite && scale <= minLossScale {
			return info, fmt.Errorf("%s: gradients overflow at the minimum loss scale %d: the run diverged (lower learning_rate or check the data)", key, minLossScale)
		}
		if u.scaler(key).Update(finite) {
			info.Skipped = true
			return info, nil
		}
	} else if !finite {
		return info, fmt.Errorf("non-finite gradients in fp32 training at lr %g: the run diverged", lr)
	}
	info.GradNorm = math.Sqrt(sumSq) * (1 / scale)
	u.Opt.Step(lr, ClipCoef(info.GradNorm, u.maxNorm)/scale)
	return info, nil
}

// Scalers returns a copy of the loss scalers by task key (nil in fp32).
func (u *Updater) Scalers() map[string]*LossScaler {
	if !u.fp16 {
		return nil
	}
	out := map[string]*LossScaler{}
	for k, s := range u.scalers {
		c := *s
		out[k] = &c
	}
	return out
}

// SetScalers restores scalers saved by Scalers.
func (u *Updater) SetScalers(s map[string]*LossScaler) {
	u.scalers = map[string]*LossScaler{}
	maps.Copy(u.scalers, s)
}
