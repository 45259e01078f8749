package compute

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// Benchmarks use UNITER-base shapes: 720 token rows (a batch of 8 sequences
// of 90), hidden 768, intermediate 3072, 12 heads of 64.
const (
	benchRows   = 720
	benchHidden = 768
	benchInter  = 3072
	benchBatch  = 8
	benchSeq    = 90
	benchHeads  = 12
	benchHeadD  = 64
)

func benchTensor(c *CPU, rng *rand.Rand, shape ...int) *Tensor {
	return c.FromF32(randF32(rng, Numel(shape), 1), shape...)
}

// BenchmarkGemm covers each linear layer's three products with PyTorch's
// weight layout W [out, in]: forward y = x.W^T, input gradient dx = dy.W,
// weight gradient dW += dy^T.x.
func BenchmarkGemm(b *testing.B) {
	c := NewCPU(0)
	b.Logf("OpenBLAS core %s, %d threads", BLASCore(), c.Threads())
	rng := rand.New(rand.NewSource(1))
	for _, io := range [][2]int{{benchHidden, benchHidden}, {benchHidden, benchInter}, {benchInter, benchHidden}} {
		in, out := io[0], io[1]
		x, w := benchTensor(c, rng, benchRows, in), benchTensor(c, rng, out, in)
		y, dw := benchTensor(c, rng, benchRows, out), benchTensor(c, rng, out, in)
		run := func(name string, f func()) {
			b.Run(fmt.Sprintf("%s/%dx%d", name, in, out), func(b *testing.B) {
				for b.Loop() {
					f()
				}
				flops := 2 * float64(benchRows) * float64(in) * float64(out) * float64(b.N)
				b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
		run("fwd_NT", func() { c.Gemm(false, true, 1, x, w, 0, y) })
		run("dx_NN", func() { c.Gemm(false, false, 1, y, w, 0, x) })
		run("dw_TN", func() { c.Gemm(true, false, 1, y, x, 1, dw) })
	}
}

func benchAttention(b *testing.B, bwd bool) {
	c := NewCPU(0)
	rng := rand.New(rand.NewSource(2))
	rows, d := benchBatch*benchSeq, benchHeads*benchHeadD
	q, k, v := benchTensor(c, rng, rows, d), benchTensor(c, rng, rows, d), benchTensor(c, rng, rows, d)
	out, lse := c.Alloc(F32, rows, d), c.Alloc(F32, benchBatch, benchHeads, benchSeq)
	dout, dq, dk, dv := benchTensor(c, rng, rows, d), c.Alloc(F32, rows, d), c.Alloc(F32, rows, d), c.Alloc(F32, rows, d)
	full := make([]int32, benchBatch)
	for i := range full {
		full[i] = benchSeq
	}
	scale := float32(1 / math.Sqrt(benchHeadD))
	for _, p := range []float32{0, 0.1} {
		lens := c.FromI32(full, benchBatch)
		b.Run(fmt.Sprintf("p=%v", p), func(b *testing.B) {
			c.AttentionFwd(out, lse, q, k, v, lens, benchHeads, scale, p, 1)
			for b.Loop() {
				if bwd {
					c.AttentionBwd(dq, dk, dv, dout, out, lse, q, k, v, lens, benchHeads, scale, p, 1)
				} else {
					c.AttentionFwd(out, lse, q, k, v, lens, benchHeads, scale, p, 1)
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/op")
		})
	}
}

// BenchmarkAttentionFwd is B=8, S=90, 12 heads of 64, every key valid.
func BenchmarkAttentionFwd(b *testing.B) { benchAttention(b, false) }

// BenchmarkAttentionBwd is BenchmarkAttentionFwd's backward.
func BenchmarkAttentionBwd(b *testing.B) { benchAttention(b, true) }

// BenchmarkLayerNorm is LayerNorm over 720 rows of the hidden and
// intermediate widths.
func BenchmarkLayerNorm(b *testing.B) {
	c := NewCPU(0)
	rng := rand.New(rand.NewSource(3))
	for _, n := range []int{benchHidden, benchInter} {
		x, g, be := benchTensor(c, rng, benchRows, n), benchTensor(c, rng, n), benchTensor(c, rng, n)
		out, mean, rstd := c.Alloc(F32, benchRows, n), c.Alloc(F32, benchRows), c.Alloc(F32, benchRows)
		dx, dg, db := c.Alloc(F32, benchRows, n), c.Alloc(F32, n), c.Alloc(F32, n)
		b.Run(fmt.Sprintf("fwd/%dx%d", benchRows, n), func(b *testing.B) {
			for b.Loop() {
				c.LayerNormFwd(out, mean, rstd, x, g, be, 1e-12)
			}
		})
		b.Run(fmt.Sprintf("bwd/%dx%d", benchRows, n), func(b *testing.B) {
			for b.Loop() {
				c.LayerNormBwd(dx, dg, db, out, x, mean, rstd, g)
			}
		})
	}
}

// BenchmarkGelu is the GELU over the intermediate activations [720, 3072].
func BenchmarkGelu(b *testing.B) {
	c := NewCPU(0)
	rng := rand.New(rand.NewSource(4))
	x, dout, out := benchTensor(c, rng, benchRows, benchInter), benchTensor(c, rng, benchRows, benchInter), c.Alloc(F32, benchRows, benchInter)
	b.Run("fwd", func(b *testing.B) {
		for b.Loop() {
			c.GeluFwd(out, x)
		}
	})
	b.Run("bwd", func(b *testing.B) {
		for b.Loop() {
			c.GeluBwd(out, x, dout)
		}
	})
}

// BenchmarkSoftmaxXent is the masked-LM head: ~15% of 720 tokens over the
// 28996-word vocabulary.
func BenchmarkSoftmaxXent(b *testing.B) {
	c := NewCPU(0)
	rng := rand.New(rand.NewSource(5))
	const n, vocab = 108, 28996
	logits := benchTensor(c, rng, n, vocab)
	labels := make([]int32, n)
	for i := range labels {
		labels[i] = int32(rng.Intn(vocab))
	}
	lt, loss, grad := c.FromI32(labels, n), c.Alloc(F32, n), c.Alloc(F32, n, vocab)
	for b.Loop() {
		c.SoftmaxXent(loss, grad, logits, lt, -1, 1)
	}
}
