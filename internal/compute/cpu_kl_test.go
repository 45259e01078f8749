package compute

import (
	"math"
	"math/rand"
	"testing"

	"github.com/x448/float16"
)

// klTargets returns soft-label-like rows: a few positive classes (the rest
// exactly 0) normalised and then rounded to fp16 as the img_db stores them,
// so rows sum to 1 only approximately. The last row is all zero.
func klTargets(rng *rand.Rand, n, cols int) []float32 {
	t := make([]float32, n*cols)
	for i := 0; i < n-1; i++ {
		row := t[i*cols : (i+1)*cols]
		var s float64
		for range 1 + rng.Intn(min(cols, 12)) {
			j := rng.Intn(cols)
			row[j] = float32(rng.ExpFloat64())
			s += float64(row[j])
		}
		for j, v := range row {
			row[j] = float16.Fromfloat32(float32(float64(v) / s)).Float32()
		}
	}
	return t
}

// refSoftmaxKL is SoftmaxKL in float64. lossMag and gradMag are the sums of
// absolute terms each value is formed from, which bound the rounding error
// of a float32 computation (both results cancel when q is close to t).
func refSoftmaxKL(logits, target []float32, n, cols int, gs float64) (loss, lossMag, grad, gradMag []float64) {
	loss, lossMag = make([]float64, n), make([]float64, n)
	grad, gradMag = make([]float64, n*cols), make([]float64, n*cols)
	for i := range n {
		x, t := f64s(logits[i*cols:(i+1)*cols]), f64s(target[i*cols:(i+1)*cols])
		m := math.Inf(-1)
		for _, v := range x {
			m = max(m, v)
		}
		var sum, tsum float64
		for j, v := range x {
			sum += math.Exp(v - m)
			tsum += t[j]
		}
		lse := m + math.Log(sum)
		for j, v := range x {
			if t[j] > 0 {
				loss[i] += t[j] * (math.Log(t[j]) - (v - lse))
				lossMag[i] += t[j] * (math.Abs(math.Log(t[j])) + math.Abs(v) + math.Abs(lse))
			}
			q := math.Exp(v - lse)
			grad[i*cols+j] = gs * (q*tsum - t[j])
			gradMag[i*cols+j] = math.Abs(gs) * (q*tsum + t[j])
		}
	}
	return loss, lossMag, grad, gradMag
}

func TestSoftmaxKL(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(21))
	for _, s := range [][2]int{{7, 13}, {33, 65}, {20, 1601}} {
		n, cols := s[0], s[1]
		logits := randF32(rng, n*cols, 3)
		logits[0] += 40 // a confident row
		target := klTargets(rng, n, cols)
		// A row whose prediction matches its target: the loss cancels to 0.
		for j := range cols {
			logits[cols+j] = float32(math.Log(float64(target[cols+j]) + 1e-30))
		}
		const gs = 0.25
		wantLoss, lossMag, wantGrad, gradMag := refSoftmaxKL(logits, target, n, cols, gs)

		tt := c.FromF32(target, n, cols)
		loss := padded(randF32(rng, n, 1), 2, n)
		grad := padded(randF32(rng, n*cols, 1), 2, n, cols)
		c.SoftmaxKL(loss, grad, c.FromF32(logits, n, cols), tt, gs)
		checkClose(t, "SoftmaxKL loss", F32s(loss), wantLoss, lossMag, 1e-6, 1e-30)
		checkClose(t, "SoftmaxKL dlogits", F32s(grad), wantGrad, gradMag, 1e-6, 1e-30)
		checkTail(t, "SoftmaxKL loss", loss)
		checkTail(t, "SoftmaxKL dlogits", grad)
		if l := F32s(loss)[n-1]; l != 0 {
			t.Errorf("all-zero target row has loss %v", l)
		}

		inplace := c.FromF32(logits, n, cols)
		c.SoftmaxKL(loss, inplace, inplace, tt, gs)
		checkClose(t, "SoftmaxKL dlogits (aliased)", F32s(inplace), wantGrad, gradMag, 1e-6, 1e-30)
		checkClose(t, "SoftmaxKL loss (aliased)", F32s(loss), wantLoss, lossMag, 1e-6, 1e-30)
	}
}

// TestSoftmaxKLGradient checks dlogits against finite differences of the
// scaled loss.
func TestSoftmaxKLGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(22))
	const n, cols, gs = 5, 11, 0.5
	lt := c.FromF32(randF32(rng, n*cols, 2), n, cols)
	tt := c.FromF32(klTargets(rng, n, cols), n, cols)
	loss := c.Alloc(F32, n)
	grad := c.Alloc(F32, n, cols)
	c.SoftmaxKL(loss, grad, lt, tt, gs)
	scratch := c.Alloc(F32, n, cols)
	gradCheck(t, "SoftmaxKL", F32s(lt), F32s(grad), 1e-2, func() float64 {
		c.SoftmaxKL(loss, scratch, lt, tt, gs)
		return gs * c.Sum(loss)
	})
}
