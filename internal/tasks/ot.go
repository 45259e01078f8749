package tasks

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// Word-region alignment (WRA) scores how well a sentence's words align
// with an image's regions by the optimal transport distance between the
// two sets of last-layer rows, as the official model/ot.py computes it:
// cosine costs, a transport plan from 50 IPOT iterations taken as a
// constant, and the distance trace(C T). Each example is small (tens of
// rows), so this runs on the host in float32 like the reference's fp32
// region.
const (
	otBeta  = 0.5  // IPOT proximal step
	otIters = 50   // IPOT iterations (the reference's inner k is 1)
	otEps   = 1e-5 // F.normalize's eps
)

// otExample is one example's transport problem: m text rows x (including
// [CLS] and [SEP]) and n region rows y of width h, padding excluded.
type otExample struct {
	m, n, h      int
	x, y         []float32
	xn, yn       []float32 // rows divided by max(norm, eps)
	xNorm, yNorm []float64 // unclamped row norms
	c            []float32 // [m, n] cost 1 - cos
	t            []float32 // [n, m] plan, the reference's T layout
}

// newOTExample computes the cost matrix and the IPOT plan.
func newOTExample(x, y []float32, m, n, h int) *otExample {
	e := &otExample{m: m, n: n, h: h, x: x, y: y}
	e.cost()
	e.t = ipot(e.c, m, n)
	return e
}

// cost sets the normalised rows and the cost matrix from x and y.
func (e *otExample) cost() {
	m, n, h := e.m, e.n, e.h
	e.xn, e.xNorm = normalizeRows(e.x, m, h)
	e.yn, e.yNorm = normalizeRows(e.y, n, h)
	e.c = make([]float32, m*n)
	for i := range m {
		xi := e.xn[i*h : (i+1)*h]
		for j := range n {
			e.c[i*n+j] = 1 - dot32(xi, e.yn[j*h:(j+1)*h])
		}
	}
}

// normalizeRows is F.normalize(x, p=2, dim=-1, eps=otEps) in float32; it
// also returns each row's norm for the backward.
func normalizeRows(x []float32, rows, h int) ([]float32, []float64) {
	xn := make([]float32, len(x))
	norms := make([]float64, rows)
	for i := range rows {
		row := x[i*h : (i+1)*h]
		norms[i] = float64(float32(math.Sqrt(dot(row, row))))
		den := float32(max(norms[i], otEps))
		for k, v := range row {
			xn[i*h+k] = v / den
		}
	}
	return xn, norms
}

// dot is sum(a*b) accumulated in float64; four partial sums keep the
// additions from waiting on each other.
func dot(a, b []float32) float64 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float64
	k := 0
	for ; k+4 <= len(a); k += 4 {
		s0 += float64(a[k]) * float64(b[k])
		s1 += float64(a[k+1]) * float64(b[k+1])
		s2 += float64(a[k+2]) * float64(b[k+2])
		s3 += float64(a[k+3]) * float64(b[k+3])
	}
	for ; k < len(a); k++ {
		s0 += float64(a[k]) * float64(b[k])
	}
	return (s0 + s1) + (s2 + s3)
}

// dot32 is sum(a*b) in float32, as a float32 matmul accumulates, with
// eight partial sums: the cost matrix is most of WRA's work.
func dot32(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	k := 0
	for ; k+8 <= len(a); k += 8 {
		s0 += a[k] * b[k]
		s1 += a[k+1] * b[k+1]
		s2 += a[k+2] * b[k+2]
		s3 += a[k+3] * b[k+3]
		s4 += a[k+4] * b[k+4]
		s5 += a[k+5] * b[k+5]
		s6 += a[k+6] * b[k+6]
		s7 += a[k+7] * b[k+7]
	}
	for ; k < len(a); k++ {
		s0 += a[k] * b[k]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// axpy sets y += alpha*x in float32, unrolled by four (twice as fast as
// the plain loop).
func axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	k := 0
	for ; k+4 <= len(x); k += 4 {
		y[k] += alpha * x[k]
		y[k+1] += alpha * x[k+1]
		y[k+2] += alpha * x[k+2]
		y[k+3] += alpha * x[k+3]
	}
	for ; k < len(x); k++ {
		y[k] += alpha * x[k]
	}
}

// ipot runs the official IPOT loop on the cost c [m, n] and returns the
// plan T [n, m], in float32 with float64 sums (a float32 matmul's
// accumulation). Padding is already excluded, which is what the
// reference's masks achieve: its padded entries of A and T are 0 and add
// nothing to any sum.
func ipot(c []float32, m, n int) []float32 {
	a := make([]float32, n*m)
	t := make([]float32, n*m)
	q := make([]float32, n*m)
	for j := range n {
		for i := range m {
			a[j*m+i] = float32(math.Exp(float64(-c[i*n+j] / otBeta)))
			t[j*m+i] = 1
		}
	}
	sigma := make([]float32, m)
	for i := range sigma {
		sigma[i] = 1 / float32(m)
	}
	delta := make([]float32, n)
	col := make([]float64, m)
	fm, fn := float32(m), float32(n)
	for range otIters {
		for k, v := range a {
			q[k] = v * t[k]
		}
		// delta = 1/(n * Q sigma), then sigma = 1/(m * delta^T Q).
		for j := range n {
			delta[j] = 1 / (fn * float32(dot(q[j*m:(j+1)*m], sigma)))
		}
		clear(col)
		for j := range n {
			dj := float64(delta[j])
			for i, v := range q[j*m : (j+1)*m] {
				col[i] += dj * float64(v)
			}
		}
		for i := range m {
			sigma[i] = 1 / (fm * float32(col[i]))
		}
		for j := range n {
			for i := range m {
				t[j*m+i] = delta[j] * q[j*m+i] * sigma[i]
			}
		}
	}
	return t
}

// dist is trace(C T) = sum_ij C[i,j] T[j,i].
func (e *otExample) dist() float64 {
	var s float64
	for i := range e.m {
		for j := range e.n {
			s += float64(e.c[i*e.n+j]) * float64(e.t[j*e.m+i])
		}
	}
	return s
}

// backward adds to dx [m, h] and dy [n, h] the gradient of coef*dist with
// the plan held constant: dC = coef*T^T, then through 1 - cos and the
// normalisation.
func (e *otExample) backward(coef float64, dx, dy []float32) {
	m, n, h := e.m, e.n, e.h
	// dC[i,j] = coef*T[j,i]; the normalised rows get -dC Yn and -dC^T Xn,
	// each accumulated row by row so that the row being summed stays in
	// cache.
	dxn := make([]float32, m*h)
	for i := range m {
		gx := dxn[i*h : (i+1)*h]
		for j := range n {
			axpy(float32(-coef*float64(e.t[j*m+i])), e.yn[j*h:(j+1)*h], gx)
		}
	}
	dyn := make([]float32, n*h)
	for j := range n {
		gy := dyn[j*h : (j+1)*h]
		for i := range m {
			axpy(float32(-coef*float64(e.t[j*m+i])), e.xn[i*h:(i+1)*h], gy)
		}
	}
	normBackward(dx, dxn, e.x, e.xNorm, h)
	normBackward(dy, dyn, e.y, e.yNorm, h)
}

// normBackward adds to dx the gradient through x/max(|x|, eps) given the
// gradient dxn of the normalised rows: (dxn - u (u.dxn))/|x| with u = x/|x|,
// or dxn/eps where the clamp is active.
func normBackward(dx, dxn, x []float32, norms []float64, h int) {
	for i, norm := range norms {
		g := dxn[i*h : (i+1)*h]
		row := x[i*h : (i+1)*h]
		out := dx[i*h : (i+1)*h]
		if norm < otEps {
			for k, v := range g {
				out[k] += float32(float64(v) / otEps)
			}
			continue
		}
		proj := dot(g, row) / norm
		for k, v := range g {
			out[k] += float32((float64(v) - proj*float64(row[k])/norm) / norm)
		}
	}
}

// wraDist computes the OT distance of every example of a batch from its
// last-layer rows, packed per example as [text (txtLens[b] rows); regions
// (nbb[b] rows)] of width h. With coef non-nil it also sets grad (same
// layout as rows) to the gradient of sum_b coef[b]*dist_b with the plans
// held constant. Examples run in parallel.
func wraDist(rows []float32, h int, txtLens, nbb []int, coef []float64, grad []float32) []float64 {
	off := make([]int, len(txtLens)+1)
	for b, tl := range txtLens {
		off[b+1] = off[b] + (tl+nbb[b])*h
	}
	dist := make([]float64, len(txtLens))
	if grad != nil {
		clear(grad)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(txtLens)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := int(next.Add(1) - 1); b < len(txtLens); b = int(next.Add(1) - 1) {
				m, n := txtLens[b], nbb[b]
				split := off[b] + m*h
				e := newOTExample(rows[off[b]:split], rows[split:off[b+1]], m, n, h)
				dist[b] = e.dist()
				if coef != nil {
					e.backward(coef[b], grad[off[b]:split], grad[split:off[b+1]])
				}
			}
		}()
	}
	wg.Wait()
	return dist
}
