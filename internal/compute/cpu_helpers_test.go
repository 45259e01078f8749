package compute

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// testThreads is more than the cores of a small CI machine so that chunking
// is exercised everywhere.
const testThreads = 3

func newTestCPU() *CPU { return NewCPU(testThreads) }

// randF32 returns n normal values scaled by s, none exactly zero.
func randF32(rng *rand.Rand, n int, s float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		for x[i] == 0 {
			x[i] = float32(rng.NormFloat64() * s)
		}
	}
	return x
}

func f64s(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func maxAbs(x []float64) float64 {
	var m float64
	for _, v := range x {
		m = max(m, math.Abs(v))
	}
	return m
}

// checkClose requires |got-want| <= rtol*max(|want|, scale[i], floor), with
// scale nil meaning 0. scale carries the magnitude of the terms a result was
// summed from, so that cancellation is not mistaken for error.
func checkClose(t *testing.T, name string, got []float32, want, scale []float64, rtol, floor float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	bad := 0
	worst, worstAt := 0.0, -1
	for i, g := range got {
		ref := math.Abs(want[i])
		if scale != nil {
			ref = max(ref, scale[i])
		}
		ref = max(ref, floor, 1e-30)
		e := math.Abs(float64(g)-want[i]) / ref
		if !(e <= rtol) {
			bad++
		}
		if !(e <= worst) {
			worst, worstAt = e, i
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values off; worst relative error %.3g at %d (got %v, want %v)", name, bad, len(got), worst, worstAt, got[worstAt], want[worstAt])
	} else {
		t.Logf("%s: worst relative error %.3g", name, worst)
	}
}

// checkRel is checkClose for results that are one rounding of an exact
// value.
func checkRel(t *testing.T, name string, got []float32, want []float64, rtol float64) {
	t.Helper()
	checkClose(t, name, got, want, nil, rtol, 0)
}

// checkNorm is checkClose with a floor at frac of the largest |want|, for
// composite results whose error is relative to their overall magnitude.
func checkNorm(t *testing.T, name string, got []float32, want []float64, rtol, frac float64) {
	t.Helper()
	checkClose(t, name, got, want, nil, rtol, frac*maxAbs(want))
}

// padded returns an F32 tensor of the given shape holding data, whose
// storage continues past Len() with sentinel values.
func padded(data []float32, extra int, shape ...int) *Tensor {
	if len(data) != Numel(shape) {
		panic(fmt.Sprintf("padded: %d values for %v", len(data), shape))
	}
	buf := make(Host32, len(data)+extra)
	copy(buf, data)
	for i := len(data); i < len(buf); i++ {
		buf[i] = sentinel
	}
	return &Tensor{Shape: shape, DType: F32, Data: buf}
}

const sentinel = 12345.5

// checkTail verifies that storage past Len() still holds the sentinel.
func checkTail(t *testing.T, name string, x *Tensor) {
	t.Helper()
	buf := x.Data.(Host32)
	for i := x.Len(); i < len(buf); i++ {
		if buf[i] != sentinel {
			t.Errorf("%s: element %d past Len %d was written (%v)", name, i, x.Len(), buf[i])
			return
		}
	}
}

// gradCheck compares an analytic gradient with float64 central differences
// of loss() with respect to x's elements. loss must recompute everything
// from x's current contents. Differences use the actual float32 step.
func gradCheck(t *testing.T, name string, x []float32, analytic []float32, eps float32, loss func() float64) {
	t.Helper()
	num := make([]float64, len(x))
	for i := range x {
		x0 := x[i]
		xp, xm := x0+eps, x0-eps
		x[i] = xp
		lp := loss()
		x[i] = xm
		lm := loss()
		x[i] = x0
		num[i] = (lp - lm) / (float64(xp) - float64(xm))
	}
	// Finite differences of float32 computations carry an absolute noise
	// floor, hence the floor at a fraction of the largest gradient.
	checkNorm(t, name+" vs finite differences", analytic, num, 1e-2, 1e-2)
}

// dot64 is sum(a*b) in float64.
func dot64(a []float32, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// refGemm is c = alpha*op(a)*op(b) + beta*c in float64, plus the matching
// sum of absolute terms for error scaling.
func refGemm(transA, transB bool, m, n, k int, alpha float64, a, b []float32, beta float64, c []float32) (want, scale []float64) {
	want, scale = make([]float64, m*n), make([]float64, m*n)
	at := func(i, p int) float64 {
		if transA {
			return float64(a[p*m+i])
		}
		return float64(a[i*k+p])
	}
	bt := func(p, j int) float64 {
		if transB {
			return float64(b[j*k+p])
		}
		return float64(b[p*n+j])
	}
	for i := range m {
		for j := range n {
			var s, sa float64
			for p := range k {
				s += at(i, p) * bt(p, j)
				sa += math.Abs(at(i, p) * bt(p, j))
			}
			want[i*n+j] = alpha * s
			scale[i*n+j] = math.Abs(alpha) * sa
			if beta != 0 {
				want[i*n+j] += beta * float64(c[i*n+j])
				scale[i*n+j] += math.Abs(beta * float64(c[i*n+j]))
			}
		}
	}
	return want, scale
}

// refGelu is x*Phi(x) and its derivative in float64 from math.Erfc.
func refGelu(x float64) (y, dy float64) {
	cdf := 0.5 * math.Erfc(-x/math.Sqrt2)
	pdf := math.Exp(-0.5*x*x) / math.Sqrt(2*math.Pi)
	return x * cdf, cdf + x*pdf
}

// refAttn is the float64 reference of AttentionFwd and AttentionBwd for
// one layout. qlens are the query lengths and klens the key lengths (nil:
// the query lengths).
type refAttn struct {
	b, s, heads, dh int
	qlens, klens    []int32
	scale, p        float64
	seed            uint64
}

func (r refAttn) d() int { return r.heads * r.dh }

// lens returns sequence b's query and key lengths; the Backend contract
// makes a sequence with no queries or no keys empty on both sides.
func (r refAttn) lens(b int) (nq, nk int) {
	nq, nk = int(r.qlens[b]), int(r.qlens[b])
	if r.klens != nil {
		nk = int(r.klens[b])
	}
	if nq == 0 || nk == 0 {
		return 0, 0
	}
	return nq, nk
}

// probs returns sequence b's head h probabilities [nq][nk] and lse [nq].
func (r refAttn) probs(q, k []float32, b, h int) (prob [][]float64, lse []float64) {
	nq, nk := r.lens(b)
	d := r.d()
	prob, lse = make([][]float64, nq), make([]float64, nq)
	for i := range nq {
		sc := make([]float64, nk)
		mx := math.Inf(-1)
		for j := range nk {
			var s float64
			for e := range r.dh {
				s += float64(q[(b*r.s+i)*d+h*r.dh+e]) * float64(k[(b*r.s+j)*d+h*r.dh+e])
			}
			sc[j] = s * r.scale
			mx = max(mx, sc[j])
		}
		var sum float64
		for j := range nk {
			sum += math.Exp(sc[j] - mx)
		}
		lse[i] = mx + math.Log(sum)
		for j := range nk {
			sc[j] = math.Exp(sc[j] - lse[i])
		}
		prob[i] = sc
	}
	return prob, lse
}

func (r refAttn) keep(b, h, i, j int) float64 {
	if r.p <= 0 {
		return 1
	}
	if DropoutKeep(r.seed, ((b*r.heads+h)*r.s+i)*r.s+j, float32(r.p)) {
		return 1 / (1 - r.p)
	}
	return 0
}

// forward also returns mag, the sum of the absolute terms of each output.
func (r refAttn) forward(q, k, v []float32) (out, mag, lse []float64) {
	d := r.d()
	out, mag, lse = make([]float64, r.b*r.s*d), make([]float64, r.b*r.s*d), make([]float64, r.b*r.heads*r.s)
	for b := range r.b {
		for h := range r.heads {
			prob, l := r.probs(q, k, b, h)
			copy(lse[(b*r.heads+h)*r.s:], l)
			for i := range prob {
				for j := range prob[i] {
					w := prob[i][j] * r.keep(b, h, i, j)
					for e := range r.dh {
						o := (b*r.s+i)*d + h*r.dh + e
						vv := float64(v[(b*r.s+j)*d+h*r.dh+e])
						out[o] += w * vv
						mag[o] += math.Abs(w * vv)
					}
				}
			}
		}
	}
	return out, mag, lse
}

// backward returns the gradients and, in the same order, the sums of the
// absolute terms each was formed from.
func (r refAttn) backward(q, k, v, dout []float32) (grads, mags [3][]float64) {
	d := r.d()
	for i := range 3 {
		grads[i], mags[i] = make([]float64, len(q)), make([]float64, len(q))
	}
	dq, dk, dv := grads[0], grads[1], grads[2]
	mq, mk, mv := mags[0], mags[1], mags[2]
	at := func(x []float32, b, i, h, e int) float64 { return float64(x[(b*r.s+i)*d+h*r.dh+e]) }
	for b := range r.b {
		for h := range r.heads {
			prob, _ := r.probs(q, k, b, h)
			nq, nk := r.lens(b)
			for i := range nq {
				dp, dpAbs := make([]float64, nk), make([]float64, nk)
				var dsum, dsumAbs float64
				for j := range nk {
					kp := r.keep(b, h, i, j)
					var g, gAbs float64
					for e := range r.dh {
						g += at(dout, b, i, h, e) * at(v, b, j, h, e)
						gAbs += math.Abs(at(dout, b, i, h, e) * at(v, b, j, h, e))
						t := prob[i][j] * kp * at(dout, b, i, h, e)
						dv[(b*r.s+j)*d+h*r.dh+e] += t
						mv[(b*r.s+j)*d+h*r.dh+e] += math.Abs(t)
					}
					dp[j], dpAbs[j] = g*kp, gAbs*kp
					dsum += prob[i][j] * dp[j]
					dsumAbs += prob[i][j] * dpAbs[j]
				}
				for j := range nk {
					ds := prob[i][j] * (dp[j] - dsum) * r.scale
					dsAbs := prob[i][j] * (dpAbs[j] + dsumAbs) * r.scale
					for e := range r.dh {
						qi, kj := (b*r.s+i)*d+h*r.dh+e, (b*r.s+j)*d+h*r.dh+e
						dq[qi] += ds * float64(k[kj])
						mq[qi] += dsAbs * math.Abs(float64(k[kj]))
						dk[kj] += ds * float64(q[qi])
						mk[kj] += dsAbs * math.Abs(float64(q[qi]))
					}
				}
			}
		}
	}
	return grads, mags
}
