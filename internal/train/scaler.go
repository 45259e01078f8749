package train

// apex's dynamic loss scaler bounds the scale above by 2^24. Below, the
// scale stops at 1: gradients that overflow unscaled are a diverged run,
// which halving further would only hide behind skipped steps.
const (
	maxLossScale = 1 << 24
	minLossScale = 1
)

// LossScaler is apex's dynamic loss scaler: losses are multiplied by Scale
// before the backward so that fp16 gradients do not underflow; a window
// whose gradients overflow is skipped and halves the scale, and Window
// clean steps in a row double it. The reference keeps one per task.
type LossScaler struct {
	Scale  float64 `json:"scale"`
	Window int     `json:"window"`
	// Clean counts the steps since the last overflow or growth.
	Clean int `json:"clean"`
}

// NewLossScaler returns a scaler starting at scale that grows after window
// clean steps.
func NewLossScaler(scale float64, window int) *LossScaler {
	return &LossScaler{Scale: scale, Window: window}
}

// Update records whether a window's gradients were finite and reports
// whether its optimizer step must be skipped. The scale changes only after
// the window that was computed with it.
func (s *LossScaler) Update(finite bool) (skip bool) {
	if !finite {
		s.Scale = max(minLossScale, s.Scale/2)
		s.Clean = 0
		return true
	}
	s.Clean++
	if s.Clean == s.Window {
		s.Scale = min(maxLossScale, s.Scale*2)
		s.Clean = 0
	}
	return false
}
