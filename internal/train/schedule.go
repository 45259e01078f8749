package train

// MinLR is the learning rate the reference uses once the schedule reaches
// zero (get_lr_sched), so that the optimizer never runs with lr 0.
const MinLR = 1e-8

// LR is the reference's warmup-linear schedule (optim/sched.py) at optimizer
// step t, counted from 1: a linear warmup over warmup steps, then a linear
// decay to zero at total; non-positive values become MinLR.
func LR(base float64, t, warmup, total int) float64 {
	var f float64
	if t < warmup {
		f = float64(t) / float64(warmup)
	} else {
		f = max(0, float64(total-t)/float64(total-warmup))
	}
	lr := base * f
	if lr <= 0 {
		lr = MinLR
	}
	return lr
}
