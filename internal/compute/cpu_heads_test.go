package compute

import (
	"math"
	"math/rand"
	"testing"
)

// Tests of the ops that fine-tuning heads add: BCEWithLogits (VQA),
// SoftmaxRows and its backward (attention pooling over a valid prefix)
// and Argmax (predictions).

// bceLogits returns n*cols logits of scale 3 with saturated entries of
// growing size on row 0, where a naive log(1+exp(x)) or 1/(1+exp(-x))
// would overflow.
func bceLogits(rng *rand.Rand, n, cols int) []float32 {
	x := randF32(rng, n*cols, 3)
	for j, v := range []float32{40, -40, 100, -100, 1e4, -1e4} {
		if j < cols {
			x[j] = v
		}
	}
	return x
}

// bceTargets returns soft targets in [0, 1] (VQA's scores), with exact 0s
// and 1s mixed in.
func bceTargets(rng *rand.Rand, n int) []float32 {
	t := make([]float32, n)
	for i := range t {
		switch rng.Intn(3) {
		case 0:
			t[i] = float32(rng.Intn(2))
		default:
			t[i] = rng.Float32()
		}
	}
	return t
}

// refBCE is BCEWithLogits in float64 with math.Exp and math.Log1p, plus
// the sums of absolute terms each loss and gradient is formed from.
func refBCE(logits, targets []float32, n, cols int, gs float64) (loss, lossMag, grad, gradMag []float64) {
	loss, lossMag = make([]float64, n), make([]float64, n)
	grad, gradMag = make([]float64, n*cols), make([]float64, n*cols)
	for i := range n {
		for j := i * cols; j < (i+1)*cols; j++ {
			x, t := float64(logits[j]), float64(targets[j])
			sp := math.Log1p(math.Exp(-math.Abs(x)))
			loss[i] += max(x, 0) - x*t + sp
			lossMag[i] += max(x, 0) + math.Abs(x*t) + sp
			var sig float64
			if x >= 0 {
				sig = 1 / (1 + math.Exp(-x))
			} else {
				sig = math.Exp(x) / (1 + math.Exp(x))
			}
			grad[j] = (sig - t) * gs
			gradMag[j] = (sig + t) * math.Abs(gs)
		}
	}
	return loss, lossMag, grad, gradMag
}

// TestBCEWithLogits compares losses and gradients with a float64
// reference, including saturated logits, soft targets, in-place use and a
// loss-only call.
func TestBCEWithLogits(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(31))
	for _, s := range [][2]int{{1, 1}, {7, 13}, {33, 65}, {40, 3129}} {
		n, cols := s[0], s[1]
		logits, targets := bceLogits(rng, n, cols), bceTargets(rng, n*cols)
		const gs = 0.25
		wantLoss, lossMag, wantGrad, gradMag := refBCE(logits, targets, n, cols, gs)

		tt := c.FromF32(targets, n, cols)
		loss := padded(randF32(rng, n, 1), 2, n)
		grad := padded(randF32(rng, n*cols, 1), 2, n, cols)
		c.BCEWithLogits(loss, grad, c.FromF32(logits, n, cols), tt, gs)
		// The floor admits float32 denormals (sigmoid(-100)), which hold
		// few digits.
		checkClose(t, "BCEWithLogits loss", F32s(loss), wantLoss, lossMag, 1e-6, 1e-30)
		checkClose(t, "BCEWithLogits dlogits", F32s(grad), wantGrad, gradMag, 1e-6, 1e-30)
		checkTail(t, "BCEWithLogits loss", loss)
		checkTail(t, "BCEWithLogits dlogits", grad)

		inplace := c.FromF32(logits, n, cols)
		c.BCEWithLogits(loss, inplace, inplace, tt, gs)
		checkClose(t, "BCEWithLogits dlogits (aliased)", F32s(inplace), wantGrad, gradMag, 1e-6, 1e-30)
		checkClose(t, "BCEWithLogits loss (aliased)", F32s(loss), wantLoss, lossMag, 1e-6, 1e-30)
		clear(F32s(loss))
		c.BCEWithLogits(loss, nil, c.FromF32(logits, n, cols), tt, gs)
		checkClose(t, "BCEWithLogits loss only", F32s(loss), wantLoss, lossMag, 1e-6, 1e-30)
	}
}

// TestBCEWithLogitsGradient checks dlogits against finite differences of
// the scaled loss.
func TestBCEWithLogitsGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(32))
	const n, cols, gs = 6, 9, 0.5
	lt := c.FromF32(randF32(rng, n*cols, 2), n, cols)
	tt := c.FromF32(bceTargets(rng, n*cols), n, cols)
	loss, grad := c.Alloc(F32, n), c.Alloc(F32, n, cols)
	c.BCEWithLogits(loss, grad, lt, tt, gs)
	gradCheck(t, "BCEWithLogits", F32s(lt), F32s(grad), 1e-2, func() float64 {
		c.BCEWithLogits(loss, nil, lt, tt, gs)
		return gs * c.Sum(loss)
	})
}

// softmaxRowsLens returns b lengths in [0, s] that include 1 and s (and 0
// when b > 2).
func softmaxRowsLens(rng *rand.Rand, b, s int) []int32 {
	lens := make([]int32, b)
	for i := range lens {
		lens[i] = int32(1 + rng.Intn(s))
	}
	lens[0] = int32(s)
	if b > 1 {
		lens[1] = 1
	}
	if b > 2 {
		lens[2] = 0
	}
	return lens
}

// refSoftmaxRows is the reference's formulation in float64: add -10000 to
// the masked scores and take the softmax of the whole row. Rows without a
// valid column are 0 by the Backend contract (the reference's would be
// uniform).
func refSoftmaxRows(x []float32, lens []int32, s int) []float64 {
	out := make([]float64, len(x))
	for i, l := range lens {
		if l == 0 {
			continue
		}
		row := make([]float64, s)
		m := math.Inf(-1)
		for j := range row {
			row[j] = float64(x[i*s+j])
			if j >= int(l) {
				row[j] -= 10000
			}
			m = max(m, row[j])
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(v - m)
		}
		for j, v := range row {
			out[i*s+j] = math.Exp(v-m) / sum
		}
	}
	return out
}

// TestSoftmaxRows compares the masked softmax and its backward with
// float64 references, with lengths 0, 1 and S, a row of large scores and
// in-place use.
func TestSoftmaxRows(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(33))
	for _, sz := range [][2]int{{1, 1}, {5, 7}, {40, 37}, {300, 129}} {
		b, s := sz[0], sz[1]
		x := randF32(rng, b*s, 3)
		for j := range s {
			x[j] += 100 // exp overflows unless the maximum is subtracted
		}
		lens := softmaxRowsLens(rng, b, s)
		want := refSoftmaxRows(x, lens, s)
		lt := c.FromI32(lens, b)
		out := padded(randF32(rng, b*s, 1), 3, b, s)
		c.SoftmaxRows(out, c.FromF32(x, b, s), lt)
		checkRel(t, "SoftmaxRows", F32s(out), want, 1e-6)
		checkTail(t, "SoftmaxRows", out)
		inplace := c.FromF32(x, b, s)
		c.SoftmaxRows(inplace, inplace, lt)
		checkRel(t, "SoftmaxRows (aliased)", F32s(inplace), want, 1e-6)

		y, dy := F32s(out), randF32(rng, b*s, 1)
		wantDx, mag := make([]float64, b*s), make([]float64, b*s)
		for i := range b {
			var dot, dotAbs float64
			for j := i * s; j < (i+1)*s; j++ {
				dot += float64(y[j]) * float64(dy[j])
				dotAbs += math.Abs(float64(y[j]) * float64(dy[j]))
			}
			for j := i * s; j < (i+1)*s; j++ {
				wantDx[j] = float64(y[j]) * (float64(dy[j]) - dot)
				mag[j] = math.Abs(float64(y[j])) * (math.Abs(float64(dy[j])) + dotAbs)
			}
		}
		dx := padded(randF32(rng, b*s, 1), 3, b, s)
		c.SoftmaxRowsBwd(dx, out, c.FromF32(dy, b, s))
		checkClose(t, "SoftmaxRowsBwd", F32s(dx), wantDx, mag, 1e-6, 0)
		checkTail(t, "SoftmaxRowsBwd", dx)
		dyt := c.FromF32(dy, b, s)
		c.SoftmaxRowsBwd(dyt, out, dyt)
		checkClose(t, "SoftmaxRowsBwd (aliased)", F32s(dyt), wantDx, mag, 1e-6, 0)
	}
}

// TestSoftmaxRowsGradient checks SoftmaxRowsBwd against finite differences
// of <SoftmaxRows(x), r>, masked columns included (their gradient is 0).
func TestSoftmaxRowsGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(34))
	const b, s = 5, 8
	xt, rt := c.FromF32(randF32(rng, b*s, 2), b, s), c.FromF32(randF32(rng, b*s, 1), b, s)
	lens := c.FromI32(softmaxRowsLens(rng, b, s), b)
	y, dx := c.Alloc(F32, b, s), c.Alloc(F32, b, s)
	loss := func() float64 {
		c.SoftmaxRows(y, xt, lens)
		return dot64(F32s(y), F32s(rt))
	}
	loss()
	c.SoftmaxRowsBwd(dx, y, rt)
	gradCheck(t, "SoftmaxRowsBwd", F32s(xt), F32s(dx), 1e-2, loss)
}

// TestArgmax checks random rows and the tie rules: the lowest index among
// equal maxima, the first NaN over any number, and all--Inf rows.
func TestArgmax(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(35))
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, sz := range [][2]int{{1, 1}, {7, 13}, {33, 65}, {300, 257}, {5, 3129}} {
		n, cols := sz[0], sz[1]
		x := randF32(rng, n*cols, 1)
		row := func(i int) []float32 { return x[i*cols : (i+1)*cols] }
		if n > 1 && cols > 3 {
			r := row(0) // a tie between three maxima
			r[1], r[cols/2], r[cols-1] = 9, 9, 9
			clear(row(1)) // every element ties
			r = row(2)    // NaNs beat the maximum
			r[0], r[cols-2], r[1] = 9, nan, nan
			for j := range row(3) {
				row(3)[j] = -inf
			}
			row(4)[cols-1] = inf
		}
		want := make([]int32, n)
		for i := range n {
			// First the maximum, then its first position.
			r, m := row(i), float32(math.Inf(-1))
			for _, v := range r {
				m = max(m, v)
			}
			for j, v := range r {
				if v == m || v != v {
					want[i] = int32(j)
					break
				}
			}
		}
		// Stale indices must be overwritten; storage past Len() must not be.
		buf := make(HostI32, n+2)
		for i := range buf {
			buf[i] = -7
		}
		c.Argmax(&Tensor{Shape: []int{n}, DType: I32, Data: buf}, c.FromF32(x, n, cols))
		for i, g := range buf[:n] {
			if g != want[i] {
				t.Errorf("Argmax %dx%d row %d: %d, want %d", n, cols, i, g, want[i])
			}
		}
		if tail := buf[n:]; tail[0] != -7 || tail[1] != -7 {
			t.Errorf("Argmax %dx%d wrote past Len: %v", n, cols, tail)
		}
	}
}
