//go:build cuda

package gpu

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestHGemm checks the tensor-core matmul against the CPU's fp32 Gemm of
// the same fp16-rounded operands, for every transpose, epilogue and output
// type, on odd shapes (elementwise loads) and multiple-of-8 shapes (the
// cp.async path), with NaN-poisoned outputs where beta is 0.
func TestHGemm(t *testing.T) {
	g := gpuBackend(t)
	r := rand.New(rand.NewPCG(9, 1))
	for _, sz := range [][3]int{{131, 77, 45}, {256, 384, 192}, {200, 136, 520}, {1, 1, 1}} {
		m, n, k := sz[0], sz[1], sz[2]
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				for _, epi := range []Epilogue{EpiNone, EpiBias, EpiBiasGELU} {
					for _, outF16 := range []bool{false, true} {
						name := fmt.Sprintf("%dx%dx%d_ta%v_tb%v_epi%d_f16out%v", m, n, k, ta, tb, epi, outF16)
						t.Run(name, func(t *testing.T) {
							checkHGemm(t, g, r, m, n, k, ta, tb, epi, outF16)
						})
					}
				}
			}
		}
	}
}

func checkHGemm(t *testing.T, g *Backend, r *rand.Rand, m, n, k int, ta, tb bool, epi Epilogue, outF16 bool) {
	as, bs := []int{m, k}, []int{k, n}
	if ta {
		as = []int{k, m}
	}
	if tb {
		bs = []int{n, k}
	}
	a, b, bias := randNZ(r, 1, as...), randNZ(r, 1, bs...), randNZ(r, 1, n)
	beta := float32(0)
	c0 := out(m, n)
	if epi == EpiNone && !outF16 {
		beta, c0 = 0.5, randNZ(r, 1, m, n)
	}
	// CPU reference on the rounded operands.
	ca, cb, cc := a.make(cpuRef), b.make(cpuRef), c0.make(cpuRef)
	cpuRef.RoundFP16(ca)
	cpuRef.RoundFP16(cb)
	if beta == 0 {
		cpuRef.Zero(cc)
	}
	cpuRef.Gemm(ta, tb, 1.25, ca, cb, beta, cc)
	if epi != EpiNone {
		cpuRef.AddBias(cc, bias.make(cpuRef))
	}
	if epi == EpiBiasGELU {
		cpuRef.GeluFwd(cc, cc)
	}
	want := cpuRef.ToF32(cc)

	ga, gb := g.ToHalf(a.make(g)), g.ToHalf(b.make(g))
	var got []float32
	if outF16 {
		h := g.ToHalf(c0.make(g)) // NaN-poisoned
		g.HGemmHalf(ta, tb, 1.25, ga, gb, beta, h, bias.make(g), epi)
		got = g.ToF32(g.HalfToF32(h))
	} else {
		gc := c0.make(g)
		g.HGemm(ta, tb, 1.25, ga, gb, beta, gc, bias.make(g), epi)
		got = g.ToF32(gc)
	}
	if e := relErr(got, want); e > 1e-2 {
		t.Errorf("relative error %.3g > 1e-2", e)
	} else {
		t.Logf("relative error %.3g", e)
	}
}
