package tasks

import (
	"math"
	"math/rand/v2"
	"testing"
)

// otRef unpacks the WRA reference: padded [B, M, H] text and [B, N, H]
// region rows with their lengths.
type otRef struct {
	r                *ref
	txtLens, nbb     []int
	labels           []int32
	b, mMax, nMax, h int
	txt, img         []float32
	cost, plan, dist []float32
	gradTxt, gradImg []float32
}

func loadOTRef(t *testing.T) *otRef {
	r := loadRef(t, "losses.pt")
	sh := r.tensor("ot/txt").Shape
	o := &otRef{r: r, txtLens: r.ints("ot/txt_lens"), nbb: r.ints("ot/nbb"), labels: r.i32("ot/labels"),
		b: sh[0], mMax: sh[1], nMax: r.tensor("ot/img").Shape[1], h: sh[2],
		txt: r.f32("ot/txt"), img: r.f32("ot/img"), cost: r.f32("ot/cost"), plan: r.f32("ot/plan"),
		dist: r.f32("ot/dist"), gradTxt: r.f32("ot/grad_txt"), gradImg: r.f32("ot/grad_img")}
	return o
}

// rows returns example b's unpadded text and region rows.
func (o *otRef) rows(b int) (x, y []float32) {
	m, n, h := o.txtLens[b], o.nbb[b], o.h
	return o.txt[b*o.mMax*h : (b*o.mMax+m)*h], o.img[b*o.nMax*h : (b*o.nMax+n)*h]
}

// TestOTMatchesPyTorch compares the cost, the IPOT plan and the distance of
// each example with the reference's padded batch computation.
func TestOTMatchesPyTorch(t *testing.T) {
	o := loadOTRef(t)
	for b := range o.b {
		m, n := o.txtLens[b], o.nbb[b]
		x, y := o.rows(b)
		e := newOTExample(x, y, m, n, o.h)
		var wantC, wantT []float32
		for i := range m {
			wantC = append(wantC, o.cost[(b*o.mMax+i)*o.nMax:(b*o.mMax+i)*o.nMax+n]...)
		}
		for j := range n {
			wantT = append(wantT, o.plan[(b*o.nMax+j)*o.mMax:(b*o.nMax+j)*o.mMax+m]...)
		}
		checkRel(t, "cost", e.c, wantC, refTol)
		checkRel(t, "plan", e.t, wantT, refTol)
		checkScalar(t, "dist", e.dist(), float64(o.dist[b]), refTol)
		// The padded entries of the reference are exactly 0.
		for k, v := range o.cost[b*o.mMax*o.nMax : (b+1)*o.mMax*o.nMax] {
			if (k/o.nMax >= m || k%o.nMax >= n) && v != 0 {
				t.Fatalf("reference cost of example %d is %v at padded entry %d", b, v, k)
			}
		}
	}
}

// TestWRAGradientMatchesPyTorch runs the packed batch path (all examples,
// both labels) and compares ot_loss and its gradient w.r.t. every text and
// region row, row by row: the row whose norm is below eps has gradients
// 1e5 times larger than the others.
func TestWRAGradientMatchesPyTorch(t *testing.T) {
	o := loadOTRef(t)
	var rows []float32
	coef := make([]float64, o.b)
	for b := range o.b {
		x, y := o.rows(b)
		rows = append(append(rows, x...), y...)
		coef[b] = float64(2*o.labels[b]-1) / float64(o.b)
	}
	grad := make([]float32, len(rows))
	dist := wraDist(rows, o.h, o.txtLens, o.nbb, coef, grad)
	var loss float64
	for b, d := range dist {
		loss += coef[b] * d
	}
	checkScalar(t, "ot_loss", loss, o.r.scalar("ot/loss"), refTol)

	h, off, worst := o.h, 0, 0.0
	check := func(got, want []float32) {
		e := relErr(got, want)
		worst = math.Max(worst, e)
		if !(e <= refTol) {
			t.Errorf("gradient row at %d: relative error %.3g", off/h, e)
		}
	}
	for b := range o.b {
		m, n := o.txtLens[b], o.nbb[b]
		for i := range o.mMax {
			want := o.gradTxt[(b*o.mMax+i)*h : (b*o.mMax+i+1)*h]
			if i >= m {
				check(make([]float32, h), want) // padding gets no gradient
				continue
			}
			check(grad[off:off+h], want)
			off += h
		}
		for j := range o.nMax {
			want := o.gradImg[(b*o.nMax+j)*h : (b*o.nMax+j+1)*h]
			if j >= n {
				check(make([]float32, h), want)
				continue
			}
			check(grad[off:off+h], want)
			off += h
		}
	}
	t.Logf("gradient rows: worst relative error %.3g", worst)
}

// TestOTGradientFiniteDifferences checks the backward against central
// differences of trace(C T) with the plan held at its value, the quantity
// the reference differentiates.
func TestOTGradientFiniteDifferences(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const m, n, h = 4, 6, 8
	x, y := make([]float32, m*h), make([]float32, n*h)
	for i := range x {
		x[i] = float32(r.NormFloat64() + 0.2)
	}
	for i := range y {
		y[i] = float32(r.NormFloat64() + 0.2)
	}
	e := newOTExample(x, y, m, n, h)
	dx, dy := make([]float32, m*h), make([]float32, n*h)
	const coef = 3
	e.backward(coef, dx, dy)
	// Recomputing the cost keeps e.t, the plan of the unperturbed rows.
	frozen := func() float64 {
		e.cost()
		return coef * e.dist()
	}
	for _, v := range []struct {
		name string
		x    []float32
		g    []float32
	}{{"text", x, dx}, {"regions", y, dy}} {
		var maxG float64
		for _, g := range v.g {
			maxG = math.Max(maxG, math.Abs(float64(g)))
		}
		for k := range v.x {
			const eps = 1e-2
			x0 := v.x[k]
			v.x[k] = x0 + eps
			lp := frozen()
			v.x[k] = x0 - eps
			lm := frozen()
			v.x[k] = x0
			num := (lp - lm) / (2 * eps)
			if d := math.Abs(num - float64(v.g[k])); d > 1e-2*maxG {
				t.Errorf("%s[%d]: analytic %.6g, numeric %.6g", v.name, k, v.g[k], num)
			}
		}
	}
}

// BenchmarkWRA times the host WRA of a base-model ITM batch of 10240
// tokens (160 examples of 16 word pieces and 48 regions, H 768), forward
// and backward.
func BenchmarkWRA(b *testing.B) {
	const examples, tl, nbb, h = 160, 16, 48, 768
	r := rand.New(rand.NewPCG(1, 2))
	rows := make([]float32, examples*(tl+nbb)*h)
	for i := range rows {
		rows[i] = float32(r.NormFloat64())
	}
	txtLens, nbbs, coef := make([]int, examples), make([]int, examples), make([]float64, examples)
	for i := range txtLens {
		txtLens[i], nbbs[i], coef[i] = tl, nbb, 1
	}
	grad := make([]float32, len(rows))
	for b.Loop() {
		wraDist(rows, h, txtLens, nbbs, coef, grad)
	}
}
