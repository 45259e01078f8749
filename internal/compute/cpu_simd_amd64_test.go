package compute

import (
	"math"
	"math/rand"
	"testing"
)

// withoutAVX2 runs f with the AVX2 loops switched off, so that the Go loops
// do all the work.
func withoutAVX2(f func()) {
	defer func(v bool) { haveAVX2 = v }(haveAVX2)
	haveAVX2 = false
	f()
}

// TestSIMDMatchesGo checks that the AVX2 loops give the Go loops' results
// bit for bit: GELU forward and backward inside and outside the table's
// range (NaN, infinities, the range's edges, subnormals, chunks of any
// length and alignment, dst aliasing its input), AdamW, SumSq, the
// LayerNorm passes (rows of widths with and without a tail, dx aliasing
// dout), Add, AddBias, SumRows and ScatterAdd.
func TestSIMDMatchesGo(t *testing.T) {
	if !haveAVX2 {
		t.Skip("no AVX2")
	}
	rng := rand.New(rand.NewSource(23))
	const n = 1031
	x, dout := randF32(rng, n, 3), randF32(rng, n, 1) // about 5% of x beyond ±6
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	copy(x[40:], []float32{nan, inf, -inf, 6, -6, math.Nextafter32(6, 0), math.Nextafter32(-6, 0),
		0, float32(math.Copysign(0, -1)), 1e-40, -1e-40, math.MaxFloat32, -math.MaxFloat32, -30, 30})
	same := func(what string, got, want []float32) {
		t.Helper()
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s: element %d (x = %v): AVX2 %v, Go %v", what, i, x[i], got[i], want[i])
			}
		}
	}
	for _, bwd := range []bool{false, true} {
		var d []float32
		name := "gelu forward"
		if bwd {
			d, name = dout, "gelu backward"
		}
		want := make([]float32, n)
		withoutAVX2(func() { gelu(want, x, d) })
		for _, span := range [][2]int{{0, n}, {1, n}, {3, 7}, {5, 9}, {0, 3}, {38, 60}} {
			lo, hi := span[0], span[1]
			got := make([]float32, n)
			var ds []float32
			if d != nil {
				ds = d[lo:hi]
			}
			gelu(got[lo:hi], x[lo:hi], ds)
			same(name, got[lo:hi], want[lo:hi])
		}
		// In place: the forward overwrites x, the backward dout.
		got := append([]float32(nil), x...)
		if bwd {
			got = append([]float32(nil), dout...)
			gelu(got, x, got)
		} else {
			gelu(got, got, nil)
		}
		same(name+" in place", got, want)
	}

	c := NewCPU(1)
	adam := func() []float32 {
		p, g := c.FromF32(x[:n-1], n-1), c.FromF32(dout[:n-1], n-1)
		m, v := c.FromF32(randF32(rand.New(rand.NewSource(1)), n-1, 0.1), n-1), c.Alloc(F32, n-1)
		for step := 1; step <= 3; step++ {
			c.AdamW(p, g, m, v, 0.5, 1e-3, 0.9, 0.98, 1e-6, 0.01, step)
		}
		return append(append(F32s(p), F32s(m)...), F32s(v)...)
	}
	var want []float32
	withoutAVX2(func() { want = adam() })
	got := adam()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) && !(got[i] != got[i] && want[i] != want[i]) {
			t.Fatalf("AdamW: element %d: AVX2 %v, Go %v", i, got[i], want[i])
		}
	}

	for _, shape := range [][2]int{{37, 131}, {5, 128}, {3, 2}} {
		m, w := shape[0], shape[1]
		x, dout, gamma, beta := randF32(rng, m*w, 2), randF32(rng, m*w, 1), randF32(rng, w, 1), randF32(rng, w, 1)
		for i := range x[:w] {
			x[i] += 100 // a row with a large mean
		}
		ln := func() ([]float32, float64) {
			xt := c.FromF32(x, m, w)
			out, mean, rstd := c.Alloc(F32, m, w), c.Alloc(F32, m), c.Alloc(F32, m)
			c.LayerNormFwd(out, mean, rstd, xt, c.FromF32(gamma, w), c.FromF32(beta, w), 1e-12)
			dg, db := c.FromF32(beta, w), c.FromF32(gamma, w)
			dx := c.FromF32(dout, m, w)
			c.LayerNormBwd(dx, dg, db, dx, xt, mean, rstd, c.FromF32(gamma, w))
			var all []float32
			for _, r := range [][]float32{F32s(out), F32s(mean), F32s(rstd), F32s(dx), F32s(dg), F32s(db)} {
				all = append(all, r...)
			}
			return all, c.SumSq(xt)
		}
		var want []float32
		var wantSq float64
		withoutAVX2(func() { want, wantSq = ln() })
		got, gotSq := ln()
		if math.Float64bits(gotSq) != math.Float64bits(wantSq) {
			t.Fatalf("SumSq %dx%d: AVX2 %v, Go %v", m, w, gotSq, wantSq)
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("LayerNorm %dx%d: value %d: AVX2 %v, Go %v", m, w, i, got[i], want[i])
			}
		}
	}

	for _, shape := range [][2]int{{37, 131}, {300, 128}, {2, 3}} {
		m, w := shape[0], shape[1]
		x, y, bias, acc := randF32(rng, m*w, 1), randF32(rng, m*w, 1), randF32(rng, w, 1), randF32(rng, 3*w, 1)
		rows := func() []float32 {
			xt, yt := c.FromF32(x, m, w), c.FromF32(y, m, w)
			sum := c.Alloc(F32, m, w)
			c.Add(sum, xt, yt)
			c.Add(xt, xt, yt) // in place
			c.AddBias(yt, c.FromF32(bias, w))
			s0, s1 := c.Alloc(F32, w), c.FromF32(bias, w)
			c.SumRows(s0, sum, 0)
			c.SumRows(s1, sum, 1)
			idx := make([]int32, m)
			for i := range idx {
				idx[i] = int32(i * 7 % 3) // repeated rows
			}
			sc := c.FromF32(acc, 3, w)
			c.ScatterAdd(sc, sum, c.FromI32(idx, m))
			var all []float32
			for _, r := range [][]float32{F32s(sum), F32s(xt), F32s(yt), F32s(s0), F32s(s1), F32s(sc)} {
				all = append(all, r...)
			}
			return all
		}
		var want []float32
		withoutAVX2(func() { want = rows() })
		got := rows()
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("Add/AddBias/SumRows/ScatterAdd %dx%d: value %d: AVX2 %v, Go %v", m, w, i, got[i], want[i])
			}
		}
	}
}
