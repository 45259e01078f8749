//go:build cuda

package gpu

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"uniter/internal/compute"
)

// Kernel benchmarks for scripts/gpu-check.sh. Each times its op with CUDA
// events (3 warm-up runs, median of 20) and prints one line
// "GPUBENCH {json}" that the check's report joins with the PyTorch numbers
// of the same shapes (scripts/gpu_torch_bench.py). Run with
// -test.benchtime=1x and UNITER_CUDA_SYNC=0: the Go harness's own timing
// (host side, including marshalling) is not the number of interest.

type benchLine struct {
	Name   string  `json:"name"`
	Ms     float64 `json:"ms"`
	TFLOPs float64 `json:"tflops,omitempty"`
	GBs    float64 `json:"gbs,omitempty"`
}

func report(b *testing.B, g *Backend, name string, flops, bytes float64, f func()) {
	ms, err := g.Device().TimeMedian(3, 20, f)
	if err != nil {
		b.Fatal(err)
	}
	l := benchLine{Name: name, Ms: ms}
	if flops > 0 {
		l.TFLOPs = flops / (ms / 1e3) / 1e12
	}
	if bytes > 0 {
		l.GBs = bytes / (ms / 1e3) / 1e9
	}
	j, _ := json.Marshal(l)
	fmt.Printf("GPUBENCH %s\n", j)
	b.ReportMetric(ms, "ms/median")
}

func randDev(g *Backend, seed uint64, shape ...int) *compute.Tensor {
	return randNZ(rand.New(rand.NewPCG(seed, 3)), 1, shape...).make(g)
}

var gemmShapes = []int{768, 2304, 3072}

func BenchmarkHGemm(b *testing.B) {
	g := gpuBackend(b)
	const m = 8192
	for _, n := range gemmShapes {
		for _, k := range gemmShapes {
			a := g.ToHalf(randDev(g, 1, m, k))
			bn := g.ToHalf(randDev(g, 2, k, n))
			bt := g.ToHalf(randDev(g, 3, n, k))
			c := g.NewHalf(m, n)
			bias := randDev(g, 4, n)
			fl := 2.0 * m * float64(n) * float64(k)
			report(b, g, fmt.Sprintf("gemm_f16_nn %dx%dx%d", m, n, k), fl, 0, func() {
				g.HGemmHalf(false, false, 1, a, bn, 0, c, nil, EpiNone)
			})
			report(b, g, fmt.Sprintf("gemm_f16_nt %dx%dx%d", m, n, k), fl, 0, func() {
				g.HGemmHalf(false, true, 1, a, bt, 0, c, nil, EpiNone)
			})
			if k == 768 && n == 3072 {
				report(b, g, fmt.Sprintf("gemm_f16_nt_bias_gelu %dx%dx%d", m, n, k), fl, 0, func() {
					g.HGemmHalf(false, true, 1, a, bt, 0, c, bias, EpiBiasGELU)
				})
			}
		}
	}
}

func BenchmarkSGemm(b *testing.B) {
	g := gpuBackend(b)
	const m = 8192
	for _, nk := range [][2]int{{2304, 768}, {3072, 768}, {768, 3072}} {
		n, k := nk[0], nk[1]
		a, w, c := randDev(g, 1, m, k), randDev(g, 2, n, k), g.Alloc(compute.F32, m, n)
		report(b, g, fmt.Sprintf("gemm_f32_nt %dx%dx%d", m, n, k), 2.0*m*float64(n)*float64(k), 0, func() {
			g.Gemm(false, true, 1, a, w, 0, c)
		})
	}
}

func BenchmarkAttention(b *testing.B) {
	g := gpuBackend(b)
	const heads, dh = 12, 64
	for _, bs := range [][2]int{{64, 220}, {128, 160}, {256, 100}} {
		nb, s := bs[0], bs[1]
		rows, d := nb*s, heads*dh
		q, k, v := randDev(g, 1, rows, d), randDev(g, 2, rows, d), randDev(g, 3, rows, d)
		o, dout := g.Alloc(compute.F32, rows, d), randDev(g, 4, rows, d)
		dq, dk, dv := g.Alloc(compute.F32, rows, d), g.Alloc(compute.F32, rows, d), g.Alloc(compute.F32, rows, d)
		lse := g.Alloc(compute.F32, nb*heads*s)
		l := make([]int32, nb)
		for i := range l {
			l[i] = int32(s)
		}
		lens := g.FromI32(l, nb)
		scale := float32(1 / math.Sqrt(dh))
		fl := 4.0 * float64(nb*heads) * float64(s*s) * dh
		tag := fmt.Sprintf("B%d H%d T%d dh%d", nb, heads, s, dh)
		report(b, g, "attn_fwd_f32 "+tag, fl, 0, func() {
			g.AttentionFwd(o, lse, q, k, v, lens, heads, scale, 0, 1)
		})
		report(b, g, "attn_bwd_f32 "+tag, 2.5*fl, 0, func() {
			g.AttentionBwd(dq, dk, dv, dout, o, lse, q, k, v, lens, heads, scale, 0, 1)
		})
	}
}

func BenchmarkLayerNorm(b *testing.B) {
	g := gpuBackend(b)
	const m, n = 32768, 768
	x, gamma, beta := randDev(g, 1, m, n), randDev(g, 2, n), randDev(g, 3, n)
	o, mean, rstd := g.Alloc(compute.F32, m, n), g.Alloc(compute.F32, m), g.Alloc(compute.F32, m)
	dout, dx := randDev(g, 4, m, n), g.Alloc(compute.F32, m, n)
	dg, db := g.Alloc(compute.F32, n), g.Alloc(compute.F32, n)
	tag := fmt.Sprintf("%dx%d", m, n)
	report(b, g, "layernorm_fwd_f32 "+tag, 0, 2*4*m*n, func() {
		g.LayerNormFwd(o, mean, rstd, x, gamma, beta, 1e-12)
	})
	report(b, g, "layernorm_bwd_f32 "+tag, 0, 3*4*m*n, func() {
		g.LayerNormBwd(dx, dg, db, dout, x, mean, rstd, gamma)
	})
}

func BenchmarkElementwise(b *testing.B) {
	g := gpuBackend(b)
	const n = 8192 * 3072
	x, y := randDev(g, 1, n), g.Alloc(compute.F32, n)
	report(b, g, "gelu_fwd_f32 25M", 0, 8*n, func() { g.GeluFwd(y, x) })
	report(b, g, "dropout_f32 25M", 0, 8*n, func() { g.DropoutFwd(y, x, 0.1, 7) })
	report(b, g, "sumsq_f32 25M", 0, 4*n, func() { g.SumSq(x) })
	const np = 110_000_000
	p, gr, m, v := randDev(g, 1, np), randDev(g, 2, np), g.Alloc(compute.F32, np), g.Alloc(compute.F32, np)
	report(b, g, "adamw_f32 110M", 0, 28*np, func() {
		g.AdamW(p, gr, m, v, 1, 1e-4, 0.9, 0.98, 1e-6, 0.01, 1)
	})
}
