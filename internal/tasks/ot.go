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
			e.c[i*n+j] = 1 - float32(dot(xi, e.yn[j*h:(j+1)*h]))
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

// dot is sum(a*b) accumulated in float64.
func dot(a, b []float32) float64 {
	var s float64
	for k, v := range a {
		s += float64(v) * float64(b[k])
	}
	return s
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
	dxn := make([]float64, m*h)
	dyn := make([]float64, n*h)
	for i := range m {
		xi := e.xn[i*h : (i+1)*h]
		gx := dxn[i*h : (i+1)*h]
		for j := range n {
			g := -coef * float64(e.t[j*m+i])
			yj := e.yn[j*h : (j+1)*h]
			gy := dyn[j*h : (j+1)*h]
			for k := range h {
				gx[k] += g * float64(yj[k])
				gy[k] += g * float64(xi[k])
			}
		}
	}
	normBackward(dx, dxn, e.x, e.xNorm, h)
	normBackward(dy, dyn, e.y, e.yNorm, h)
}

// normBackward adds to dx the gradient through x/max(|x|, eps) given the
// gradient dxn of the normalised rows: (dxn - u (u.dxn))/|x| with u = x/|x|,
// or dxn/eps where the clamp is active.
func normBackward(dx []float32, dxn []float64, x []float32, norms []float64, h int) {
	for i, norm := range norms {
		g := dxn[i*h : (i+1)*h]
		row := x[i*h : (i+1)*h]
		out := dx[i*h : (i+1)*h]
		if norm < otEps {
			for k, v := range g {
				out[k] += float32(v / otEps)
			}
			continue
		}
		var proj float64
		for k, v := range g {
			proj += v * float64(row[k]) / norm
		}
		for k, v := range g {
			out[k] += float32((v - proj*float64(row[k])/norm) / norm)
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
