package compute

import (
	"math"
	"math/rand"
	"testing"

	"github.com/x448/float16"
)

// Matrix sizes: odd, and one large enough to be split between workers.
var testSizes = [][2]int{{1, 1}, {7, 13}, {33, 65}, {300, 257}}

// TestStorageAndCopies covers allocation, host transfers, Zero and Copy,
// including views whose storage extends past their shape.
func TestStorageAndCopies(t *testing.T) {
	c := newTestCPU()
	x := c.FromF32([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	if x.Rows() != 2 || x.Cols() != 3 || x.DType != F32 {
		t.Fatalf("FromF32: shape %v dtype %v", x.Shape, x.DType)
	}
	got := c.ToF32(x.RowRange(1, 2))
	if len(got) != 3 || got[0] != 4 || got[2] != 6 {
		t.Fatalf("RowRange(1,2) = %v", got)
	}
	got[0] = 99 // ToF32 must copy
	if F32s(x)[3] != 4 {
		t.Fatal("ToF32 shares memory with the tensor")
	}
	ids := c.FromI32([]int32{3, 1, 2}, 3)
	if v := c.ToI32(ids); len(v) != 3 || v[0] != 3 {
		t.Fatalf("ToI32 = %v", v)
	}
	a := c.Alloc(F32, 4, 5)
	if len(F32s(a)) != 20 || c.SumSq(a) != 0 {
		t.Fatal("Alloc is not a zero [4,5] tensor")
	}
	if c.Alloc(I32, 3).Data.(HostI32).Len() != 3 {
		t.Fatal("Alloc(I32) storage length")
	}
	src := padded([]float32{1, 2, 3, 4}, 5, 4)
	dst := padded(make([]float32, 4), 3, 2, 2)
	c.Copy(dst, src)
	if F32s(dst)[3] != 4 {
		t.Fatal("Copy")
	}
	checkTail(t, "Copy dst", dst)
	c.Zero(src)
	if c.SumSq(src) != 0 {
		t.Fatal("Zero")
	}
	checkTail(t, "Zero", src)
	ic := c.Alloc(I32, 3)
	c.Copy(ic, ids)
	c.Zero(ids)
	if I32s(ic)[0] != 3 || I32s(ids)[0] != 0 {
		t.Fatal("I32 Copy/Zero")
	}
}

// TestStoragePanics checks that programmer errors fail loudly.
func TestStoragePanics(t *testing.T) {
	c := newTestCPU()
	for name, f := range map[string]func(){
		"F32s on I32":    func() { F32s(c.Alloc(I32, 2)) },
		"I32s on F32":    func() { I32s(c.Alloc(F32, 2)) },
		"FromF32 length": func() { c.FromF32([]float32{1, 2, 3}, 2, 2) },
		"Gemm shapes":    func() { c.Gemm(false, false, 1, c.Alloc(F32, 2, 3), c.Alloc(F32, 4, 5), 0, c.Alloc(F32, 2, 5)) },
		"Add lengths":    func() { c.Add(c.Alloc(F32, 3), c.Alloc(F32, 3), c.Alloc(F32, 4)) },
		"attention lens": func() {
			q := c.Alloc(F32, 4, 6)
			c.AttentionFwd(q, c.Alloc(F32, 8), q, q, q, c.FromI32([]int32{3, 2}, 2), 2, 1, 0, 0)
		},
		"attention key lens": func() {
			q := c.Alloc(F32, 4, 6)
			c.AttentionFwd(q, c.Alloc(F32, 8), q, q, q, c.FromI32([]int32{1, 2, 2, 3}, 2, 2), 2, 1, 0, 0)
		},
		"attention layout": func() {
			q := c.Alloc(F32, 4, 6)
			c.AttentionFwd(q, c.Alloc(F32, 8), q, q, q, c.FromI32([]int32{1, 1}, 2), 4, 1, 0, 0)
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// TestGemm compares all four transpose combinations, several alpha/beta
// pairs and odd shapes with a float64 product.
func TestGemm(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(1))
	shapes := [][3]int{{1, 1, 1}, {7, 13, 5}, {33, 65, 17}, {64, 3, 129}, {130, 70, 96}}
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				for _, ab := range [][2]float32{{1, 0}, {0.7, 1}, {-1.3, 0.4}} {
					alpha, beta := ab[0], ab[1]
					a, b, c0 := randF32(rng, m*k, 1), randF32(rng, k*n, 1), randF32(rng, m*n, 1)
					ashape, bshape := []int{m, k}, []int{k, n}
					if ta {
						ashape = []int{k, m}
					}
					if tb {
						bshape = []int{n, k}
					}
					want, scale := refGemm(ta, tb, m, n, k, float64(alpha), a, b, float64(beta), c0)
					ct := padded(append([]float32(nil), c0...), 7, m, n)
					if beta == 0 {
						// beta 0 must overwrite, not scale what was there.
						for i := range F32s(ct) {
							F32s(ct)[i] = float32(math.NaN())
						}
					}
					at, bt := padded(a, 3, ashape...), padded(b, 5, bshape...)
					c.Gemm(ta, tb, alpha, at, bt, beta, ct)
					name := "Gemm" + map[bool]string{false: "N", true: "T"}[ta] + map[bool]string{false: "N", true: "T"}[tb]
					checkClose(t, name, F32s(ct), want, scale, 1e-5, 0)
					checkTail(t, name+" c", ct)
					checkTail(t, name+" a", at)
				}
			}
		}
	}
	// Higher-rank tensors are their [Rows, Cols] matrices; K = 0 leaves
	// beta*c.
	a := c.FromF32(randF32(rng, 2*3*5, 1), 2, 3, 5)
	b := c.FromF32(randF32(rng, 5*4, 1), 5, 4)
	out := c.Alloc(F32, 6, 4)
	c.Gemm(false, false, 1, a, b, 0, out)
	want, scale := refGemm(false, false, 6, 4, 5, 1, F32s(a), F32s(b), 0, nil)
	checkClose(t, "Gemm rank 3", F32s(out), want, scale, 1e-5, 0)
	empty := c.FromF32(F32s(out), 6, 4)
	c.Gemm(true, false, 1, c.Alloc(F32, 0, 6), c.Alloc(F32, 0, 4), 2, empty)
	for i, v := range F32s(empty) {
		if v != 2*F32s(out)[i] {
			t.Fatalf("Gemm K=0: %v, want %v", v, 2*F32s(out)[i])
		}
	}
}

// TestAddBiasSumRows checks the bias forward and its row-sum backward.
func TestAddBiasSumRows(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(2))
	for _, s := range testSizes {
		m, n := s[0], s[1]
		x, bias := randF32(rng, m*n, 1), randF32(rng, n, 1)
		want := make([]float64, m*n)
		for i := range want {
			want[i] = float64(x[i]) + float64(bias[i%n])
		}
		xt := padded(append([]float32(nil), x...), 4, m, n)
		c.AddBias(xt, c.FromF32(bias, n))
		checkRel(t, "AddBias", F32s(xt), want, 6e-8)
		checkTail(t, "AddBias", xt)

		for _, beta := range []float32{0, 1, 0.5} {
			d0 := randF32(rng, n, 1)
			want, scale := make([]float64, n), make([]float64, n)
			for j := range n {
				want[j] = float64(beta) * float64(d0[j])
				scale[j] = math.Abs(want[j])
				for i := range m {
					want[j] += float64(x[i*n+j])
					scale[j] += math.Abs(float64(x[i*n+j]))
				}
			}
			dt := padded(append([]float32(nil), d0...), 2, n)
			if beta == 0 {
				F32s(dt)[0] = float32(math.Inf(1))
			}
			c.SumRows(dt, c.FromF32(x, m, n), beta)
			checkClose(t, "SumRows", F32s(dt), want, scale, 1e-6, 0)
			checkTail(t, "SumRows", dt)
		}
	}
}

// TestElementwise checks Add, Axpy and Scale.
func TestElementwise(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(3))
	for _, s := range testSizes {
		n := s[0] * s[1]
		a, b := randF32(rng, n, 1), randF32(rng, n, 2)
		want := make([]float64, n)

		for i := range want {
			want[i] = float64(a[i]) + float64(b[i])
		}
		at := padded(append([]float32(nil), a...), 3, s[0], s[1])
		c.Add(at, at, c.FromF32(b, n))
		checkRel(t, "Add (aliased)", F32s(at), want, 6e-8)
		checkTail(t, "Add", at)

		scale := make([]float64, n)
		for i := range want {
			want[i] = float64(b[i]) + 0.3*float64(a[i])
			scale[i] = math.Abs(float64(b[i])) + math.Abs(0.3*float64(a[i]))
		}
		bt := padded(append([]float32(nil), b...), 3, n)
		c.Axpy(0.3, c.FromF32(a, n), bt)
		checkClose(t, "Axpy", F32s(bt), want, scale, 2e-7, 0)
		checkTail(t, "Axpy", bt)

		for i := range want {
			want[i] = -1.7 * float64(a[i])
		}
		at = padded(append([]float32(nil), a...), 3, n)
		c.Scale(at, -1.7)
		checkRel(t, "Scale", F32s(at), want, 2e-7)
		checkTail(t, "Scale", at)
	}
}

// TestActivations compares GELU, tanh and ReLU forwards and backwards with
// float64 references.
func TestActivations(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(4))
	for _, s := range testSizes {
		n := s[0] * s[1]
		x, dout := randF32(rng, n, 2.5), randF32(rng, n, 1)
		xt := c.FromF32(x, s[0], s[1])
		y, dy, scale := make([]float64, n), make([]float64, n), make([]float64, n)

		for i, v := range x {
			g, dg := refGelu(float64(v))
			y[i] = g
			dy[i] = float64(dout[i]) * dg
			cdf, _ := refGelu(math.Abs(float64(v)))
			scale[i] = math.Abs(float64(dout[i])) * (cdf/math.Abs(float64(v)) + math.Abs(dg))
		}
		out := padded(make([]float32, n), 5, n)
		c.GeluFwd(out, xt)
		checkRel(t, "GeluFwd", F32s(out), y, 1e-7)
		checkTail(t, "GeluFwd", out)
		dx := padded(append([]float32(nil), dout...), 5, n)
		c.GeluBwd(dx, xt, dx)
		checkClose(t, "GeluBwd (aliased)", F32s(dx), dy, scale, 1e-7, 0)
		checkTail(t, "GeluBwd", dx)

		for i, v := range x {
			y[i] = math.Tanh(float64(v))
		}
		c.TanhFwd(out, xt)
		checkRel(t, "TanhFwd", F32s(out), y, 1e-7)
		yt := c.FromF32(F32s(out), n)
		for i, v := range F32s(yt) {
			yy := float64(v)
			dy[i] = float64(dout[i]) * (1 - yy*yy)
			scale[i] = math.Abs(float64(dout[i])) * (1 + yy*yy)
		}
		copy(F32s(dx), dout)
		c.TanhBwd(dx, yt, dx)
		checkClose(t, "TanhBwd (aliased)", F32s(dx), dy, scale, 1e-7, 0)
		checkTail(t, "TanhBwd", dx)

		for i, v := range x {
			y[i] = max(float64(v), 0)
		}
		c.ReluFwd(out, xt)
		checkRel(t, "ReluFwd", F32s(out), y, 0)
		for i, v := range y {
			dy[i] = 0
			if v > 0 {
				dy[i] = float64(dout[i])
			}
		}
		copy(F32s(dx), dout)
		c.ReluBwd(dx, c.FromF32(F32s(out), n), dx)
		checkRel(t, "ReluBwd (aliased)", F32s(dx), dy, 0)
		checkTail(t, "ReluBwd", dx)
	}
}

// TestActivationGradients checks the activation and dropout backwards
// against finite differences of their forwards.
func TestActivationGradients(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(5))
	const n = 200
	x, r := randF32(rng, n, 2), randF32(rng, n, 1)
	for i := range x {
		// ReLU is checked away from its kink.
		if math.Abs(float64(x[i])) < 0.05 {
			x[i] += 0.1
		}
	}
	xt, rt := c.FromF32(x, n), c.FromF32(r, n)
	out, dx := c.Alloc(F32, n), c.Alloc(F32, n)
	xs := F32s(xt)
	loss := func(fwd func(out, x *Tensor)) func() float64 {
		return func() float64 {
			fwd(out, xt)
			return dot64(F32s(out), r)
		}
	}

	c.GeluBwd(dx, xt, rt)
	gradCheck(t, "GeluBwd", xs, F32s(dx), 1e-2, loss(c.GeluFwd))

	c.TanhFwd(out, xt)
	c.TanhBwd(dx, c.FromF32(F32s(out), n), rt)
	gradCheck(t, "TanhBwd", xs, F32s(dx), 1e-2, loss(c.TanhFwd))

	c.ReluFwd(out, xt)
	c.ReluBwd(dx, c.FromF32(F32s(out), n), rt)
	gradCheck(t, "ReluBwd", xs, F32s(dx), 1e-3, loss(c.ReluFwd))

	drop := func(out, x *Tensor) { c.DropoutFwd(out, x, 0.3, 77) }
	c.DropoutBwd(dx, rt, 0.3, 77)
	gradCheck(t, "DropoutBwd", xs, F32s(dx), 1e-2, loss(drop))
}

// TestDropout checks the mask, the rescaling, in-place use and that the
// backward reuses the forward's mask.
func TestDropout(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(6))
	const n = 100003
	x := randF32(rng, n, 1)
	xt := c.FromF32(x, n)
	for _, p := range []float32{0, 0.1, 0.5} {
		out := padded(make([]float32, n), 4, n)
		c.DropoutFwd(out, xt, p, 42)
		checkTail(t, "DropoutFwd", out)
		kept := 0
		for i, v := range F32s(out) {
			want := float32(0)
			if DropoutKeep(42, i, p) {
				want = x[i] * (1 / (1 - p))
				kept++
			}
			if v != want {
				t.Fatalf("DropoutFwd p=%v: element %d = %v, want %v", p, i, v, want)
			}
		}
		if frac := float64(kept) / n; math.Abs(frac-(1-float64(p))) > 0.01 {
			t.Errorf("DropoutFwd p=%v kept %.4f", p, frac)
		}
		// In place and backward use the same mask.
		in := c.FromF32(x, n)
		c.DropoutFwd(in, in, p, 42)
		bwd := c.FromF32(x, n)
		c.DropoutBwd(bwd, bwd, p, 42)
		for i := range x {
			if F32s(in)[i] != F32s(out)[i] || F32s(bwd)[i] != F32s(out)[i] {
				t.Fatalf("dropout p=%v: in-place or backward mask differs at %d", p, i)
			}
		}
	}
}

// TestLayerNorm compares LayerNorm's outputs, statistics and gradients with
// float64 references.
func TestLayerNorm(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(7))
	const eps = 1e-12
	for _, s := range testSizes[1:] {
		m, n := s[0], s[1]
		x := randF32(rng, m*n, 2)
		for i := range x {
			x[i] += 3 // a non-zero mean exercises the two-pass variance
		}
		gamma, beta := randF32(rng, n, 1), randF32(rng, n, 1)
		want, wantMean, wantRstd, scale := make([]float64, m*n), make([]float64, m), make([]float64, m), make([]float64, m*n)
		for i := range m {
			var mu, v float64
			for j := range n {
				mu += float64(x[i*n+j])
			}
			mu /= float64(n)
			for j := range n {
				d := float64(x[i*n+j]) - mu
				v += d * d
			}
			r := 1 / math.Sqrt(v/float64(n)+eps)
			wantMean[i], wantRstd[i] = mu, r
			for j := range n {
				xh := (float64(x[i*n+j]) - mu) * r
				want[i*n+j] = xh*float64(gamma[j]) + float64(beta[j])
				scale[i*n+j] = math.Abs(xh*float64(gamma[j])) + math.Abs(float64(beta[j]))
			}
		}
		xt := padded(x, 3, m, n)
		out, mean, rstd := padded(make([]float32, m*n), 3, m, n), padded(make([]float32, m), 2, m), padded(make([]float32, m), 2, m)
		c.LayerNormFwd(out, mean, rstd, xt, c.FromF32(gamma, n), c.FromF32(beta, n), eps)
		checkClose(t, "LayerNormFwd", F32s(out), want, scale, 1e-6, 0)
		checkRel(t, "LayerNormFwd mean", F32s(mean), wantMean, 1e-7)
		checkRel(t, "LayerNormFwd rstd", F32s(rstd), wantRstd, 1e-7)
		for _, p := range []*Tensor{out, mean, rstd} {
			checkTail(t, "LayerNormFwd", p)
		}

		dout, dg0, db0 := randF32(rng, m*n, 1), randF32(rng, n, 1), randF32(rng, n, 1)
		wantDx, wantDg, wantDb := make([]float64, m*n), f64s(dg0), f64s(db0)
		magDx, magDg, magDb := make([]float64, m*n), make([]float64, n), make([]float64, n)
		for j := range n {
			magDg[j], magDb[j] = math.Abs(wantDg[j]), math.Abs(wantDb[j])
		}
		for i := range m {
			var sg, sgx, sgAbs, sgxAbs float64
			for j := range n {
				g := float64(gamma[j]) * float64(dout[i*n+j])
				xh := (float64(x[i*n+j]) - wantMean[i]) * wantRstd[i]
				sg += g
				sgx += g * xh
				sgAbs += math.Abs(g)
				sgxAbs += math.Abs(g * xh)
			}
			for j := range n {
				xh := (float64(x[i*n+j]) - wantMean[i]) * wantRstd[i]
				g := float64(gamma[j]) * float64(dout[i*n+j])
				wantDx[i*n+j] = wantRstd[i] * (g - sg/float64(n) - xh*sgx/float64(n))
				magDx[i*n+j] = wantRstd[i] * (math.Abs(g) + sgAbs/float64(n) + math.Abs(xh)*sgxAbs/float64(n))
				wantDg[j] += float64(dout[i*n+j]) * xh
				magDg[j] += math.Abs(float64(dout[i*n+j]) * xh)
				wantDb[j] += float64(dout[i*n+j])
				magDb[j] += math.Abs(float64(dout[i*n+j]))
			}
		}
		dx, dg, db := padded(make([]float32, m*n), 3, m, n), padded(dg0, 2, n), padded(db0, 2, n)
		c.LayerNormBwd(dx, dg, db, c.FromF32(dout, m, n), xt, mean, rstd, c.FromF32(gamma, n))
		checkClose(t, "LayerNormBwd dx", F32s(dx), wantDx, magDx, 1e-5, 0)
		checkClose(t, "LayerNormBwd dgamma", F32s(dg), wantDg, magDg, 1e-5, 0)
		checkClose(t, "LayerNormBwd dbeta", F32s(db), wantDb, magDb, 1e-5, 0)
		for _, p := range []*Tensor{dx, dg, db} {
			checkTail(t, "LayerNormBwd", p)
		}
	}
}

// TestLayerNormGradient checks dx, dgamma and dbeta against finite
// differences.
func TestLayerNormGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(8))
	const m, n, eps = 5, 11, 1e-5
	x, gamma, beta, r := randF32(rng, m*n, 1), randF32(rng, n, 1), randF32(rng, n, 1), randF32(rng, m*n, 1)
	xt, gt, bt := c.FromF32(x, m, n), c.FromF32(gamma, n), c.FromF32(beta, n)
	out, mean, rstd := c.Alloc(F32, m, n), c.Alloc(F32, m), c.Alloc(F32, m)
	loss := func() float64 {
		c.LayerNormFwd(out, mean, rstd, xt, gt, bt, eps)
		return dot64(F32s(out), r)
	}
	loss()
	dx, dg, db := c.Alloc(F32, m, n), c.Alloc(F32, n), c.Alloc(F32, n)
	c.LayerNormBwd(dx, dg, db, c.FromF32(r, m, n), xt, mean, rstd, gt)
	gradCheck(t, "LayerNormBwd dx", F32s(xt), F32s(dx), 1e-2, loss)
	gradCheck(t, "LayerNormBwd dgamma", F32s(gt), F32s(dg), 1e-2, loss)
	gradCheck(t, "LayerNormBwd dbeta", F32s(bt), F32s(db), 1e-2, loss)
}

// attnCase is a batch layout for the attention tests: query lengths lens
// and, for cross attention, key lengths klens.
type attnCase struct {
	s, heads, dh int
	lens, klens  []int32
}

// tensor returns the lens operand: [B], or [2, B] with the key lengths.
func (tc attnCase) tensor(c *CPU) *Tensor {
	b := len(tc.lens)
	if tc.klens == nil {
		return c.FromI32(tc.lens, b)
	}
	return c.FromI32(append(append([]int32(nil), tc.lens...), tc.klens...), 2, b)
}

var attnCases = []attnCase{
	{s: 7, heads: 3, dh: 5, lens: []int32{7, 1, 4}},
	{s: 33, heads: 2, dh: 64, lens: []int32{33, 20, 0, 1}},
	{s: 1, heads: 1, dh: 3, lens: []int32{1}},
	// Cross lengths: queries shorter than, longer than and as long as the
	// keys, queries without keys and keys without queries.
	{s: 9, heads: 2, dh: 7, lens: []int32{9, 3, 6, 2, 0, 5}, klens: []int32{4, 9, 6, 1, 5, 0}},
	{s: 37, heads: 3, dh: 16, lens: []int32{37, 11, 1}, klens: []int32{20, 37, 37}},
}

// TestAttention compares attention forward and backward with float64
// references over ragged lengths (full, 1 and 0) and cross lengths, with
// and without dropout.
func TestAttention(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(9))
	for _, tc := range attnCases {
		for _, p := range []float32{0, 0.3} {
			b, d := len(tc.lens), tc.heads*tc.dh
			rows := b * tc.s
			ref := refAttn{b: b, s: tc.s, heads: tc.heads, dh: tc.dh, qlens: tc.lens, klens: tc.klens, scale: 1 / math.Sqrt(float64(tc.dh)), p: float64(p), seed: 1234}
			q, k, v, dout := randF32(rng, rows*d, 1), randF32(rng, rows*d, 1), randF32(rng, rows*d, 1), randF32(rng, rows*d, 1)
			wantOut, outMag, wantLse := ref.forward(q, k, v)
			qt, kt, vt := padded(q, 3, rows, d), padded(k, 3, rows, d), padded(v, 3, rows, d)
			lens := tc.tensor(c)
			// Garbage in the outputs must be overwritten, including the rows
			// past each sequence's length.
			out, lse := padded(randF32(rng, rows*d, 1), 3, rows, d), padded(randF32(rng, b*tc.heads*tc.s, 1), 3, b, tc.heads, tc.s)
			c.AttentionFwd(out, lse, qt, kt, vt, lens, tc.heads, float32(ref.scale), p, ref.seed)
			checkClose(t, "AttentionFwd out", F32s(out), wantOut, outMag, 1e-5, 0)
			checkNorm(t, "AttentionFwd lse", F32s(lse), wantLse, 1e-6, 1)

			grads, mags := ref.backward(q, k, v, dout)
			dq, dk, dv := padded(randF32(rng, rows*d, 1), 3, rows, d), padded(randF32(rng, rows*d, 1), 3, rows, d), padded(randF32(rng, rows*d, 1), 3, rows, d)
			c.AttentionBwd(dq, dk, dv, c.FromF32(dout, rows, d), out, lse, qt, kt, vt, lens, tc.heads, float32(ref.scale), p, ref.seed)
			for i, g := range []*Tensor{dq, dk, dv} {
				checkClose(t, "AttentionBwd d"+"qkv"[i:i+1], F32s(g), grads[i], mags[i], 1e-5, 0)
			}
			for _, x := range []*Tensor{out, lse, dq, dk, dv, qt, kt, vt} {
				checkTail(t, "attention", x)
			}
			if tc.klens == nil {
				checkSharedAsCross(t, c, tc, []*Tensor{out, lse, dq, dk, dv}, qt, kt, vt, c.FromF32(dout, rows, d), float32(ref.scale), p, ref.seed)
			}
		}
	}
}

// checkSharedAsCross requires [2, B] lengths holding the shared lengths
// twice to reproduce the [B] results want (out, lse, dq, dk, dv) bit for
// bit.
func checkSharedAsCross(t *testing.T, c *CPU, tc attnCase, want []*Tensor, q, k, v, dout *Tensor, scale, p float32, seed uint64) {
	t.Helper()
	tc.klens = tc.lens
	lens := tc.tensor(c)
	got := make([]*Tensor, len(want))
	for i, w := range want {
		got[i] = c.Alloc(F32, w.Shape...)
	}
	c.AttentionFwd(got[0], got[1], q, k, v, lens, tc.heads, scale, p, seed)
	c.AttentionBwd(got[2], got[3], got[4], dout, got[0], got[1], q, k, v, lens, tc.heads, scale, p, seed)
	for i, w := range want {
		for j, x := range F32s(w) {
			if g := F32s(got[i])[j]; g != x {
				t.Fatalf("attention result %d element %d with [2, B] lens: %v, [B] lens: %v", i, j, g, x)
			}
		}
	}
}

// TestAttentionGradient checks dq, dk and dv against finite differences,
// with and without dropout, for shared and cross lengths.
func TestAttentionGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(10))
	for _, tc := range []attnCase{
		{s: 5, heads: 2, dh: 3, lens: []int32{5, 3, 1}},
		{s: 5, heads: 2, dh: 3, lens: []int32{5, 2, 1, 4}, klens: []int32{3, 5, 4, 4}},
	} {
		for _, p := range []float32{0, 0.3} {
			gradCheckAttention(t, c, rng, tc, p)
		}
	}
}

// gradCheckAttention is one TestAttentionGradient case; the loss is
// <out, r> for a random r.
func gradCheckAttention(t *testing.T, c *CPU, rng *rand.Rand, tc attnCase, p float32) {
	t.Helper()
	b, d := len(tc.lens), tc.heads*tc.dh
	rows := b * tc.s
	scale := float32(1 / math.Sqrt(float64(tc.dh)))
	q, k, v, r := randF32(rng, rows*d, 1), randF32(rng, rows*d, 1), randF32(rng, rows*d, 1), randF32(rng, rows*d, 1)
	qt, kt, vt, lens := c.FromF32(q, rows, d), c.FromF32(k, rows, d), c.FromF32(v, rows, d), tc.tensor(c)
	out, lse := c.Alloc(F32, rows, d), c.Alloc(F32, b, tc.heads, tc.s)
	loss := func() float64 {
		c.AttentionFwd(out, lse, qt, kt, vt, lens, tc.heads, scale, p, 5)
		return dot64(F32s(out), r)
	}
	loss()
	dq, dk, dv := c.Alloc(F32, rows, d), c.Alloc(F32, rows, d), c.Alloc(F32, rows, d)
	c.AttentionBwd(dq, dk, dv, c.FromF32(r, rows, d), out, lse, qt, kt, vt, lens, tc.heads, scale, p, 5)
	gradCheck(t, "AttentionBwd dq", F32s(qt), F32s(dq), 1e-2, loss)
	gradCheck(t, "AttentionBwd dk", F32s(kt), F32s(dk), 1e-2, loss)
	gradCheck(t, "AttentionBwd dv", F32s(vt), F32s(dv), 1e-2, loss)
}

// TestGatherScatterAdd checks both directions with repeated indices and
// that they are adjoint.
func TestGatherScatterAdd(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(11))
	for _, s := range [][3]int{{7, 13, 5}, {500, 257, 40}} {
		n, d, vocab := s[0], s[1], s[2]
		src := randF32(rng, vocab*d, 1)
		idx := make([]int32, n)
		for i := range idx {
			idx[i] = int32(rng.Intn(vocab))
		}
		idx[n-1] = idx[0] // repeated indices must add
		st, it := c.FromF32(src, vocab, d), c.FromI32(idx, n)
		out := padded(make([]float32, n*d), 3, n, d)
		c.Gather(out, st, it)
		checkTail(t, "Gather", out)
		for i := range n {
			for j := range d {
				if F32s(out)[i*d+j] != src[int(idx[i])*d+j] {
					t.Fatalf("Gather row %d col %d", i, j)
				}
			}
		}
		y := randF32(rng, n*d, 1)
		d0 := randF32(rng, vocab*d, 1)
		want, scale := f64s(d0), make([]float64, vocab*d)
		for i, v := range d0 {
			scale[i] = math.Abs(float64(v))
		}
		for i := range n {
			for j := range d {
				want[int(idx[i])*d+j] += float64(y[i*d+j])
				scale[int(idx[i])*d+j] += math.Abs(float64(y[i*d+j]))
			}
		}
		dst := padded(append([]float32(nil), d0...), 3, vocab, d)
		c.ScatterAdd(dst, c.FromF32(y, n, d), it)
		checkClose(t, "ScatterAdd", F32s(dst), want, scale, 1e-6, 0)
		checkTail(t, "ScatterAdd", dst)

		// Adjoint: <Gather(src), y> = <src, ScatterAdd(0, y)>.
		zero := c.Alloc(F32, vocab, d)
		c.ScatterAdd(zero, c.FromF32(y, n, d), it)
		lhs, rhs := dot64(F32s(out), y), dot64(src, F32s(zero))
		if math.Abs(lhs-rhs) > 1e-5*math.Abs(lhs) {
			t.Errorf("Gather/ScatterAdd not adjoint: %v vs %v", lhs, rhs)
		}
	}
}

// TestSoftmaxXent compares losses and gradients with a float64 reference,
// including ignored rows, a confident row and in-place use.
func TestSoftmaxXent(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(12))
	const ignore = -1
	for _, s := range [][2]int{{7, 13}, {33, 65}, {40, 3001}} {
		n, cols := s[0], s[1]
		logits := randF32(rng, n*cols, 3)
		logits[0] += 40 // a confident row: softmax of the label close to 1
		labels := make([]int32, n)
		for i := range labels {
			labels[i] = int32(rng.Intn(cols))
			if i%5 == 3 {
				labels[i] = ignore
			}
		}
		labels[0] = 0
		const gs = 0.25
		wantLoss, wantGrad := make([]float64, n), make([]float64, n*cols)
		for i := range n {
			if labels[i] == ignore {
				continue
			}
			row := f64s(logits[i*cols : (i+1)*cols])
			y := int(labels[i])
			// Summing the other classes apart keeps confident rows exact.
			var rest float64
			for j, x := range row {
				if j != y {
					rest += math.Exp(x - row[y])
				}
			}
			wantLoss[i] = math.Log1p(rest)
			for j, x := range row {
				wantGrad[i*cols+j] = gs / (1 + rest) * math.Exp(x-row[y])
			}
			wantGrad[i*cols+y] = -gs * rest / (1 + rest)
		}
		lt := c.FromI32(labels, n)
		loss := padded(randF32(rng, n, 1), 2, n)
		grad := padded(randF32(rng, n*cols, 1), 2, n, cols)
		c.SoftmaxXent(loss, grad, c.FromF32(logits, n, cols), lt, ignore, gs)
		checkClose(t, "SoftmaxXent loss", F32s(loss), wantLoss, nil, 1e-6, 1e-6)
		checkRel(t, "SoftmaxXent dlogits", F32s(grad), wantGrad, 1e-6)
		checkTail(t, "SoftmaxXent loss", loss)
		checkTail(t, "SoftmaxXent dlogits", grad)

		// In place, and loss only.
		inplace := c.FromF32(logits, n, cols)
		c.SoftmaxXent(loss, inplace, inplace, lt, ignore, gs)
		checkRel(t, "SoftmaxXent dlogits (aliased)", F32s(inplace), wantGrad, 1e-6)
		c.SoftmaxXent(loss, nil, c.FromF32(logits, n, cols), lt, ignore, gs)
		checkClose(t, "SoftmaxXent loss only", F32s(loss), wantLoss, nil, 1e-6, 1e-6)
	}
}

// TestSoftmaxXentGradient checks dlogits against finite differences of the
// scaled loss.
func TestSoftmaxXentGradient(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(13))
	const n, cols, gs = 6, 9, 0.5
	logits := randF32(rng, n*cols, 2)
	labels := c.FromI32([]int32{3, -100, 0, 8, -100, 5}, n)
	lt := c.FromF32(logits, n, cols)
	loss := c.Alloc(F32, n)
	grad := c.Alloc(F32, n, cols)
	c.SoftmaxXent(loss, grad, lt, labels, -100, gs)
	gradCheck(t, "SoftmaxXent", F32s(lt), F32s(grad), 1e-2, func() float64 {
		c.SoftmaxXent(loss, nil, lt, labels, -100, gs)
		return gs * c.Sum(loss)
	})
	for _, i := range []int{1, 4} {
		for j := range cols {
			if F32s(grad)[i*cols+j] != 0 || F32s(loss)[i] != 0 {
				t.Fatalf("ignored row %d has a loss or gradient", i)
			}
		}
	}
}

// TestReductions checks Sum, SumSq and AllFinite, which must ignore storage
// past Len().
func TestReductions(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(14))
	for _, n := range []int{1, 1000, 100003} {
		x := randF32(rng, n, 1)
		var s, ss float64
		for _, v := range x {
			s += float64(v)
			ss += float64(v) * float64(v)
		}
		xt := padded(x, 3, n)
		if got := c.Sum(xt); math.Abs(got-s) > 1e-12*ss+1e-12 {
			t.Errorf("Sum(%d) = %v, want %v", n, got, s)
		}
		if got := c.SumSq(xt); math.Abs(got-ss) > 1e-12*ss {
			t.Errorf("SumSq(%d) = %v, want %v", n, got, ss)
		}
		xt.Data.(Host32)[n+1] = float32(math.NaN())
		if !c.AllFinite(xt) {
			t.Errorf("AllFinite(%d) false on finite values (NaN past Len)", n)
		}
		for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			i := rng.Intn(n)
			old := x[i]
			F32s(xt)[i] = float32(bad)
			if c.AllFinite(xt) {
				t.Errorf("AllFinite(%d) true with %v at %d", n, bad, i)
			}
			F32s(xt)[i] = old
		}
	}
}

// TestAdamW checks two steps against a float64 computation and one step by
// hand.
func TestAdamW(t *testing.T) {
	c := newTestCPU()
	rng := rand.New(rand.NewSource(15))
	const n = 50001
	const gradScale, lr, b1, b2, eps, wd = 0.5, 1e-3, 0.9, 0.999, 1e-6, 0.01
	p, g1, g2 := randF32(rng, n, 1), randF32(rng, n, 1), randF32(rng, n, 1)
	pt, mt, vt := padded(append([]float32(nil), p...), 2, n), padded(make([]float32, n), 2, n), padded(make([]float32, n), 2, n)
	c.AdamW(pt, c.FromF32(g1, n), mt, vt, gradScale, lr, b1, b2, eps, wd, 1)
	c.AdamW(pt, c.FromF32(g2, n), mt, vt, gradScale, lr, b1, b2, eps, wd, 2)
	// The reference takes the hyperparameters as the float32 values the
	// backend receives and keeps p, m and v in float32 between steps, as the
	// backend stores them.
	f := func(x float64) float64 { return float64(float32(x)) }
	want, wantM, wantV := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range n {
		pp, m, v := float64(p[i]), 0.0, 0.0
		for step, g := range []float32{g1[i], g2[i]} {
			gg := float64(g) * gradScale
			beta1, beta2 := f(b1), f(b2)
			m = beta1*m + (1-beta1)*gg
			v = beta2*v + (1-beta2)*gg*gg
			// optim/adamw.py: eps on the uncorrected sqrt(v), the
			// corrections folded into the step size.
			bc1, bc2 := 1-math.Pow(beta1, float64(step+1)), 1-math.Pow(beta2, float64(step+1))
			pp -= f(lr) * math.Sqrt(bc2) / bc1 * m / (math.Sqrt(v) + f(eps))
			pp -= f(lr) * f(wd) * pp
			if step == 0 {
				pp, m, v = f(pp), f(m), f(v)
			}
		}
		want[i], wantM[i], wantV[i] = pp, m, v
	}
	checkRel(t, "AdamW p", F32s(pt), want, 1e-6)
	checkRel(t, "AdamW m", F32s(mt), wantM, 1e-6)
	checkRel(t, "AdamW v", F32s(vt), wantV, 1e-6)
	for _, x := range []*Tensor{pt, mt, vt} {
		checkTail(t, "AdamW", x)
	}

	// By hand: the first bias-corrected step moves by lr*g/(|g|+eps), about
	// lr against the gradient's sign, then decays.
	one := c.FromF32([]float32{1}, 1)
	m, v := c.Alloc(F32, 1), c.Alloc(F32, 1)
	// g = 2 after scaling: m = 1, v = 1, mhat = 2, vhat = 4, so p moves by
	// lr = 0.1 to 0.9 and decays by lr*wd to 0.9*0.95.
	c.AdamW(one, c.FromF32([]float32{4}, 1), m, v, 0.5, 0.1, 0.5, 0.75, 0, 0.5, 1)
	if got := F32s(one)[0]; math.Abs(float64(got)-0.9*0.95) > 1e-7 {
		t.Errorf("AdamW step 1 by hand: %v, want %v", got, 0.9*0.95)
	}
	if F32s(m)[0] != 1 || F32s(v)[0] != 1 {
		t.Errorf("AdamW moments after step 1: m %v v %v", F32s(m)[0], F32s(v)[0])
	}
}

// TestRoundFP16 checks rounding, ties, overflow and underflow.
func TestRoundFP16(t *testing.T) {
	c := newTestCPU()
	cases := map[float32]float32{
		1:       1,
		0.1:     0.0999755859375,
		65504:   65504,
		65519:   65504,
		65520:   float32(math.Inf(1)),
		-70000:  float32(math.Inf(-1)),
		2049:    2048, // tie, to even
		2051:    2052, // tie, to even
		1e-8:    0,
		6e-8:    float32(math.Ldexp(1, -24)),
		-3.3e-5: -3.302097320556641e-05,
	}
	in, want := []float32{}, []float32{}
	for x, y := range cases {
		in, want = append(in, x), append(want, y)
	}
	xt := padded(in, 2, len(in))
	c.RoundFP16(xt)
	for i, v := range F32s(xt) {
		if v != want[i] {
			t.Errorf("RoundFP16(%v) = %v, want %v", in[i], v, want[i])
		}
	}
	checkTail(t, "RoundFP16", xt)

	rng := rand.New(rand.NewSource(16))
	x := randF32(rng, 70001, 100)
	big := c.FromF32(x, len(x))
	c.RoundFP16(big)
	for i, v := range F32s(big) {
		if w := float16.Fromfloat32(x[i]).Float32(); v != w {
			t.Fatalf("RoundFP16(%v) = %v, want %v", x[i], v, w)
		}
	}
}

// TestThreadIndependence checks that reductions, which have fixed owners
// and orders, give results that do not depend on the thread count.
func TestThreadIndependence(t *testing.T) {
	rng := rand.New(rand.NewSource(17))
	const m, n = 301, 257
	x, dout, gamma := randF32(rng, m*n, 1), randF32(rng, m*n, 1), randF32(rng, n, 1)
	run := func(c *CPU) []float32 {
		xt := c.FromF32(x, m, n)
		sr := c.Alloc(F32, n)
		c.SumRows(sr, xt, 0)
		out, mean, rstd := c.Alloc(F32, m, n), c.Alloc(F32, m), c.Alloc(F32, m)
		c.LayerNormFwd(out, mean, rstd, xt, c.FromF32(gamma, n), c.FromF32(gamma, n), 1e-5)
		dx, dg, db := c.Alloc(F32, m, n), c.Alloc(F32, n), c.Alloc(F32, n)
		c.LayerNormBwd(dx, dg, db, c.FromF32(dout, m, n), xt, mean, rstd, c.FromF32(gamma, n))
		res := append(F32s(sr), F32s(dg)...)
		res = append(res, F32s(db)...)
		return append(res, float32(c.Sum(xt)), float32(c.SumSq(xt)))
	}
	a, b := run(NewCPU(1)), run(NewCPU(4))
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("result %d differs between 1 and 4 threads: %v vs %v", i, a[i], b[i])
		}
	}
}

// TestFastMath measures exp64 and the GELU's tabulated CDF against the
// math package.
func TestFastMath(t *testing.T) {
	worst := 0.0
	for x := -750.0; x <= 709; x += 0.0137 {
		want := math.Exp(x)
		if x <= -708 {
			want = 0
		}
		if e := math.Abs(exp64(x)-want) / max(want, 1e-300); !(e <= worst) {
			worst = e
		}
	}
	if !(worst <= 3e-15) {
		t.Errorf("exp64 relative error %.3g", worst)
	}
	t.Logf("exp64 worst relative error %.3g", worst)
	if !math.IsInf(exp64(720), 1) || !math.IsInf(exp64(math.Inf(1)), 1) || !math.IsNaN(exp64(math.NaN())) || exp64(math.Inf(-1)) != 0 {
		t.Error("exp64 special values")
	}
	src := []float32{0, -1, -50, -103, -200, float32(math.NaN()), float32(math.Inf(1))}
	dst := make([]float32, len(src))
	expInto(dst, src, 0)
	for i, v := range src {
		if w := float32(math.Exp(float64(v))); dst[i] != w && !(math.IsNaN(float64(w)) && math.IsNaN(float64(dst[i]))) {
			t.Errorf("expInto(%v) = %v, want %v", v, dst[i], w)
		}
	}

	// The GELU's CDF must be far below float32 resolution (6e-8) from the
	// exact value, including the left tail where 1+erf cancels.
	worst = 0
	for x := -float64(phiRange); x < phiRange; x += 1e-4 {
		want := 0.5 * math.Erfc(-x/math.Sqrt2)
		if e := math.Abs(phiPoly((x+phiRange)*phiSteps)-want) / want; !(e <= worst) {
			worst = e
		}
	}
	if !(worst <= 1e-8) {
		t.Errorf("phiPoly relative error %.3g", worst)
	}
	t.Logf("phiPoly worst relative error %.3g", worst)
}
