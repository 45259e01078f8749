//go:build cuda

package gpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/model"
)

// This test binary links gorgonia.org/cu, whose package init exits the
// process when there is no CUDA driver or GPU, before TestMain could skip
// anything: build it with `go test -tags cuda -c` and run it on a GPU host
// only (scripts/gpu-check.sh does). TestMain still turns on per-launch
// synchronisation so that a faulting kernel is named.
func TestMain(m *testing.M) {
	if os.Getenv("UNITER_CUDA_SYNC") == "" {
		os.Setenv("UNITER_CUDA_SYNC", "1")
	}
	os.Exit(m.Run())
}

// gpuBackend opens device 0 or skips the test.
func gpuBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(0)
	if err != nil {
		t.Skipf("no CUDA device: %v", err)
	}
	return b
}

var cpuRef = compute.NewCPU(0)

// spec is one tensor of an op test: its host contents (for inputs and
// accumulated outputs) or poison (overwritten outputs are filled with NaN
// first, so that an element the kernel forgets to write fails the test).
type spec struct {
	dt     compute.DType
	shape  []int
	f32    []float32
	i32    []int32
	poison bool
}

func (s spec) make(be compute.Backend) *compute.Tensor {
	if s.dt == compute.I32 {
		return be.FromI32(s.i32, s.shape...)
	}
	h := s.f32
	if s.poison {
		h = make([]float32, compute.Numel(s.shape))
		for i := range h {
			h[i] = float32(math.NaN())
		}
	}
	return be.FromF32(h, s.shape...)
}

// randNZ is uniform in ±[0.1, 1.1) scaled by mag: random and never zero.
func randNZ(r *rand.Rand, mag float64, shape ...int) spec {
	h := make([]float32, compute.Numel(shape))
	for i := range h {
		v := 0.1 + r.Float64()
		if r.IntN(2) == 0 {
			v = -v
		}
		h[i] = float32(v * mag)
	}
	return spec{dt: compute.F32, shape: shape, f32: h}
}

func out(shape ...int) spec { return spec{dt: compute.F32, shape: shape, poison: true} }

func idx(vals []int32) spec {
	return spec{dt: compute.I32, shape: []int{len(vals)}, i32: vals}
}

// relErr is max|got-want| / max|want| (the normwise infinity error), or
// +Inf when got has a NaN or Inf where want is finite.
func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		w := float64(want[i])
		g := float64(got[i])
		if math.IsNaN(w) || math.IsInf(w, 0) {
			if !(math.IsNaN(w) && math.IsNaN(g)) && g != w {
				return math.Inf(1)
			}
			continue
		}
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num = max(num, math.Abs(g-w))
		den = max(den, math.Abs(w))
	}
	if den == 0 {
		return num
	}
	return num / den
}

// opCase runs fn on both backends over tensors built from specs and
// compares every tensor afterwards (outputs, accumulators and inputs).
type opCase struct {
	name  string
	specs []spec
	fn    func(be compute.Backend, ts []*compute.Tensor)
	tol   float64
}

func runCases(t *testing.T, cases []opCase) {
	g := gpuBackend(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tol := c.tol
			if tol == 0 {
				tol = 1e-5
			}
			cts := make([]*compute.Tensor, len(c.specs))
			gts := make([]*compute.Tensor, len(c.specs))
			for i, s := range c.specs {
				cts[i], gts[i] = s.make(cpuRef), s.make(g)
			}
			c.fn(cpuRef, cts)
			c.fn(g, gts)
			for i, s := range c.specs {
				if s.dt == compute.I32 {
					cw, gw := cpuRef.ToI32(cts[i]), g.ToI32(gts[i])
					for j := range cw {
						if cw[j] != gw[j] {
							t.Fatalf("tensor %d element %d: got %d, want %d", i, j, gw[j], cw[j])
						}
					}
					continue
				}
				want, got := cpuRef.ToF32(cts[i]), g.ToF32(gts[i])
				if e := relErr(got, want); e > tol {
					t.Errorf("tensor %d %v: relative error %.3g > %.0e", i, s.shape, e, tol)
				} else {
					t.Logf("tensor %d %v: relative error %.3g", i, s.shape, e)
				}
			}
		})
	}
}

func TestGemm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	var cases []opCase
	const m, n, k = 67, 45, 131
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			for _, beta := range []float32{0, 1, 0.5} {
				as := []int{m, k}
				if ta {
					as = []int{k, m}
				}
				bs := []int{k, n}
				if tb {
					bs = []int{n, k}
				}
				cs := out(m, n)
				if beta != 0 {
					cs = randNZ(r, 1, m, n)
				}
				cases = append(cases, opCase{
					name:  fmt.Sprintf("ta=%v,tb=%v,beta=%v", ta, tb, beta),
					specs: []spec{randNZ(r, 1, as...), randNZ(r, 1, bs...), cs},
					fn: func(be compute.Backend, ts []*compute.Tensor) {
						be.Gemm(ta, tb, 0.75, ts[0], ts[1], beta, ts[2])
					},
				})
			}
		}
	}
	cases = append(cases, opCase{name: "k=0", specs: []spec{randNZ(r, 1, 5, 0), randNZ(r, 1, 0, 7), out(5, 7)},
		fn: func(be compute.Backend, ts []*compute.Tensor) { be.Gemm(false, false, 1, ts[0], ts[1], 0, ts[2]) }})
	cases = append(cases, opCase{name: "large", specs: []spec{randNZ(r, 1, 300, 768), randNZ(r, 1, 2304, 768), out(300, 2304)},
		fn: func(be compute.Backend, ts []*compute.Tensor) { be.Gemm(false, true, 1, ts[0], ts[1], 0, ts[2]) }})
	runCases(t, cases)
}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 1))
	const rows, cols = 37, 203
	n := rows * cols
	un := func(name string, f func(be compute.Backend, o, x *compute.Tensor)) opCase {
		return opCase{name: name, specs: []spec{out(rows, cols), randNZ(r, 3, rows, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { f(be, ts[0], ts[1]) }}
	}
	bin := func(name string, f func(be compute.Backend, dx, y, dout *compute.Tensor)) opCase {
		return opCase{name: name, specs: []spec{out(rows, cols), randNZ(r, 3, rows, cols), randNZ(r, 1, rows, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { f(be, ts[0], ts[1], ts[2]) }}
	}
	inplace := func(name string, f func(be compute.Backend, dout, y *compute.Tensor)) opCase {
		return opCase{name: name, specs: []spec{randNZ(r, 1, rows, cols), randNZ(r, 3, rows, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { f(be, ts[0], ts[1]) }}
	}
	big := randNZ(r, 1, n)
	for i := 0; i < n; i += 17 {
		big.f32[i] *= 1e5 // past the float16 range
	}
	big.f32[3] = 65519 // rounds down to 65504
	big.f32[5] = 65520 // rounds up to Inf
	cases := []opCase{
		{name: "Add", specs: []spec{out(n), randNZ(r, 1, n), randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Add(ts[0], ts[1], ts[2]) }},
		{name: "AddAlias", specs: []spec{randNZ(r, 1, n), randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Add(ts[0], ts[0], ts[1]) }},
		{name: "Axpy", specs: []spec{randNZ(r, 1, n), randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Axpy(-0.3, ts[0], ts[1]) }},
		{name: "Scale", specs: []spec{randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Scale(ts[0], 1.7) }},
		{name: "Zero", specs: []spec{randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Zero(ts[0]) }},
		{name: "Copy", specs: []spec{out(n), randNZ(r, 1, n)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Copy(ts[0], ts[1]) }},
		un("GeluFwd", func(be compute.Backend, o, x *compute.Tensor) { be.GeluFwd(o, x) }),
		bin("GeluBwd", func(be compute.Backend, dx, x, d *compute.Tensor) { be.GeluBwd(dx, x, d) }),
		inplace("GeluBwdAlias", func(be compute.Backend, d, x *compute.Tensor) { be.GeluBwd(d, x, d) }),
		un("TanhFwd", func(be compute.Backend, o, x *compute.Tensor) { be.TanhFwd(o, x) }),
		bin("TanhBwd", func(be compute.Backend, dx, y, d *compute.Tensor) { be.TanhBwd(dx, y, d) }),
		un("ReluFwd", func(be compute.Backend, o, x *compute.Tensor) { be.ReluFwd(o, x) }),
		bin("ReluBwd", func(be compute.Backend, dx, y, d *compute.Tensor) { be.ReluBwd(dx, y, d) }),
		un("DropoutFwd", func(be compute.Backend, o, x *compute.Tensor) { be.DropoutFwd(o, x, 0.1, 42) }),
		un("DropoutFwdP0", func(be compute.Backend, o, x *compute.Tensor) { be.DropoutFwd(o, x, 0, 42) }),
		inplace("DropoutBwdAlias", func(be compute.Backend, d, _ *compute.Tensor) { be.DropoutBwd(d, d, 0.37, 1<<40+3) }),
		{name: "RoundFP16", specs: []spec{big},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.RoundFP16(ts[0]) }},
		{name: "AddBias", specs: []spec{randNZ(r, 1, rows, cols), randNZ(r, 1, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.AddBias(ts[0], ts[1]) }},
		{name: "SumRowsBeta0", specs: []spec{out(cols), randNZ(r, 1, 1001, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SumRows(ts[0], ts[1], 0) }},
		{name: "SumRowsBeta1", specs: []spec{randNZ(r, 1, cols), randNZ(r, 1, 1001, cols)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SumRows(ts[0], ts[1], 1) }},
	}
	runCases(t, cases)
}

func TestGatherScatter(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 1))
	const vocab, d, n = 53, 97, 211
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(r.IntN(vocab)) // repeats on purpose
	}
	runCases(t, []opCase{
		{name: "Gather", specs: []spec{out(n, d), randNZ(r, 1, vocab, d), idx(ids)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.Gather(ts[0], ts[1], ts[2]) }},
		{name: "ScatterAdd", specs: []spec{randNZ(r, 1, vocab, d), randNZ(r, 1, n, d), idx(ids)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.ScatterAdd(ts[0], ts[1], ts[2]) }},
	})
}

func TestLayerNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 1))
	for _, sz := range [][2]int{{33, 768}, {7, 131}, {5, 3001}} {
		m, n := sz[0], sz[1]
		x := randNZ(r, 2, m, n)
		for i := range x.f32 {
			x.f32[i] += 5 // a large row mean
		}
		gamma, beta := randNZ(r, 1, n), randNZ(r, 1, n)
		runCases(t, []opCase{
			{name: fmt.Sprintf("Fwd%dx%d", m, n), specs: []spec{out(m, n), out(m), out(m), x, gamma, beta},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					be.LayerNormFwd(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], 1e-12)
				}},
			{name: fmt.Sprintf("Bwd%dx%d", m, n),
				specs: []spec{out(m, n), randNZ(r, 1, n), randNZ(r, 1, n), randNZ(r, 1, m, n), x, out(m), out(m), gamma, beta},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					tmp := be.Alloc(compute.F32, m, n)
					be.LayerNormFwd(tmp, ts[5], ts[6], ts[4], ts[7], ts[8], 1e-5)
					be.LayerNormBwd(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7])
				}},
			{name: fmt.Sprintf("BwdAlias%dx%d", m, n),
				specs: []spec{randNZ(r, 1, n), randNZ(r, 1, n), randNZ(r, 1, m, n), x, out(m), out(m), gamma, beta},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					tmp := be.Alloc(compute.F32, m, n)
					be.LayerNormFwd(tmp, ts[4], ts[5], ts[3], ts[6], ts[7], 1e-5)
					be.LayerNormBwd(ts[2], ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6])
				}},
		})
	}
}

func TestAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 1))
	for _, tc := range []struct {
		b, s, heads, dh int
		lens, klens     []int32 // klens: key lengths, nil when shared
		p               float32
	}{
		{3, 37, 2, 8, []int32{37, 0, 19}, nil, 0},
		{3, 37, 2, 8, []int32{37, 1, 19}, nil, 0.1},
		{2, 70, 3, 64, []int32{70, 45}, nil, 0.1},
		{2, 41, 2, 80, []int32{33, 41}, nil, 0.2},
		{1, 33, 1, 128, []int32{33}, nil, 0},
		// Cross lengths: queries past the key length (over several key
		// chunks and whole skipped blocks), fewer queries than keys, and
		// a sequence without keys.
		{3, 37, 2, 8, []int32{37, 5, 9}, []int32{20, 37, 0}, 0},
		{4, 70, 3, 64, []int32{70, 45, 3, 0}, []int32{41, 70, 70, 33}, 0.1},
	} {
		d := tc.heads * tc.dh
		rows := tc.b * tc.s
		scale := float32(1 / math.Sqrt(float64(tc.dh)))
		q, k, v := randNZ(r, 1, rows, d), randNZ(r, 1, rows, d), randNZ(r, 1, rows, d)
		name := fmt.Sprintf("b%d_s%d_h%d_dh%d_p%v", tc.b, tc.s, tc.heads, tc.dh, tc.p)
		lens := idx(tc.lens)
		if tc.klens != nil {
			name += "_cross"
			lens = spec{dt: compute.I32, shape: []int{2, tc.b}, i32: append(append([]int32(nil), tc.lens...), tc.klens...)}
		}
		runCases(t, []opCase{
			{name: "Fwd_" + name, specs: []spec{out(rows, d), out(tc.b * tc.heads * tc.s), q, k, v, lens},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					be.AttentionFwd(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], tc.heads, scale, tc.p, 77)
				}},
			{name: "Bwd_" + name,
				specs: []spec{out(rows, d), out(rows, d), out(rows, d), randNZ(r, 1, rows, d), out(rows, d),
					out(tc.b * tc.heads * tc.s), q, k, v, lens},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					be.AttentionFwd(ts[4], ts[5], ts[6], ts[7], ts[8], ts[9], tc.heads, scale, tc.p, 77)
					be.AttentionBwd(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7], ts[8], ts[9], tc.heads, scale, tc.p, 77)
				}},
		})
	}
}

func TestLosses(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 1))
	const n, c = 29, 1601
	labels := make([]int32, n)
	for i := range labels {
		labels[i] = int32(r.IntN(c))
	}
	labels[3], labels[10] = -1, -1
	logits := randNZ(r, 4, n, c)
	logits.f32[5*c+int(labels[5])] = 40 // a confident row
	target := randNZ(r, 1, n, c)
	for i := range target.f32 {
		target.f32[i] = float32(math.Abs(float64(target.f32[i])))
		if i%7 == 0 {
			target.f32[i] = 0
		}
	}
	runCases(t, []opCase{
		{name: "Xent", specs: []spec{out(n), out(n, c), logits, idx(labels)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxXent(ts[0], ts[1], ts[2], ts[3], -1, 0.25) }},
		{name: "XentLossOnly", specs: []spec{out(n), logits, idx(labels)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxXent(ts[0], nil, ts[1], ts[2], -1, 1) }},
		{name: "XentAlias", specs: []spec{out(n), logits, idx(labels)},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxXent(ts[0], ts[1], ts[1], ts[2], -1, 1) }},
		{name: "KL", specs: []spec{out(n), out(n, c), logits, target},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxKL(ts[0], ts[1], ts[2], ts[3], 0.5) }},
		{name: "KLAlias", specs: []spec{out(n), logits, target},
			fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxKL(ts[0], ts[1], ts[1], ts[2], 1) }},
	})
}

// TestHeadOps covers the fine-tuning heads' ops: BCEWithLogits with
// saturated logits and soft targets, SoftmaxRows over prefixes of length
// 0, 1 and S and its backward, in place and not, and Argmax with ties and
// NaNs spread over different threads and warps of a row's block.
func TestHeadOps(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 1))
	var cases []opCase
	for _, sz := range [][2]int{{7, 13}, {29, 3129}} {
		n, c := sz[0], sz[1]
		logits := randNZ(r, 3, n, c)
		copy(logits.f32, []float32{40, -40, 100, -100, 1e4, -1e4})
		targets := randNZ(r, 1, n, c)
		for i, v := range targets.f32 {
			targets.f32[i] = float32(math.Abs(float64(v)) / 1.1) // soft scores in [0, 1)
			if i%5 == 0 {
				targets.f32[i] = float32(i % 2)
			}
		}
		name := fmt.Sprintf("%dx%d", n, c)
		cases = append(cases,
			opCase{name: "BCE" + name, specs: []spec{out(n), out(n, c), logits, targets},
				fn: func(be compute.Backend, ts []*compute.Tensor) { be.BCEWithLogits(ts[0], ts[1], ts[2], ts[3], 0.25) }},
			opCase{name: "BCELossOnly" + name, specs: []spec{out(n), logits, targets},
				fn: func(be compute.Backend, ts []*compute.Tensor) { be.BCEWithLogits(ts[0], nil, ts[1], ts[2], 1) }},
			opCase{name: "BCEAlias" + name, specs: []spec{out(n), logits, targets},
				fn: func(be compute.Backend, ts []*compute.Tensor) { be.BCEWithLogits(ts[0], ts[1], ts[1], ts[2], 1) }})
	}

	for _, sz := range [][2]int{{3, 1}, {37, 61}, {9, 700}} {
		b, s := sz[0], sz[1]
		x := randNZ(r, 3, b, s)
		for j := range s {
			x.f32[j] += 100 // overflows exp unless the maximum is subtracted
		}
		lens := make([]int32, b)
		for i := range lens {
			lens[i] = int32(1 + r.IntN(s))
		}
		lens[0], lens[1], lens[2] = int32(s), 1, 0
		name := fmt.Sprintf("%dx%d", b, s)
		cases = append(cases,
			opCase{name: "SoftmaxRows" + name, specs: []spec{out(b, s), x, idx(lens)},
				fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxRows(ts[0], ts[1], ts[2]) }},
			opCase{name: "SoftmaxRowsAlias" + name, specs: []spec{x, idx(lens)},
				fn: func(be compute.Backend, ts []*compute.Tensor) { be.SoftmaxRows(ts[0], ts[0], ts[1]) }},
			opCase{name: "SoftmaxRowsBwd" + name, specs: []spec{out(b, s), out(b, s), randNZ(r, 1, b, s), x, idx(lens)},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					be.SoftmaxRows(ts[1], ts[3], ts[4])
					be.SoftmaxRowsBwd(ts[0], ts[1], ts[2])
				}},
			opCase{name: "SoftmaxRowsBwdAlias" + name, specs: []spec{out(b, s), randNZ(r, 1, b, s), x, idx(lens)},
				fn: func(be compute.Backend, ts []*compute.Tensor) {
					be.SoftmaxRows(ts[0], ts[2], ts[3])
					be.SoftmaxRowsBwd(ts[1], ts[0], ts[1])
				}})
	}

	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, sz := range [][2]int{{6, 1}, {9, 13}, {37, 3129}} {
		n, c := sz[0], sz[1]
		x := randNZ(r, 1, n, c)
		row := func(i int) []float32 { return x.f32[i*c : (i+1)*c] }
		if c > 3 {
			for _, j := range []int{c - 1, c / 2, 1} { // a three-way tie
				row(0)[j] = 9
			}
			clear(row(1)) // every element ties
			row(2)[0], row(2)[c-2], row(2)[c/3] = 9, nan, nan
			for j := range row(3) {
				row(3)[j] = -inf
			}
			row(4)[c-1] = inf
		}
		stale := make([]int32, n)
		for i := range stale {
			stale[i] = -1
		}
		cases = append(cases, opCase{name: fmt.Sprintf("Argmax%dx%d", n, c),
			specs: []spec{{dt: compute.I32, shape: []int{n}, i32: stale}, x},
			fn:    func(be compute.Backend, ts []*compute.Tensor) { be.Argmax(ts[0], ts[1]) }})
	}
	runCases(t, cases)
}

func TestReductionsAndAdamW(t *testing.T) {
	g := gpuBackend(t)
	r := rand.New(rand.NewPCG(7, 1))
	for _, n := range []int{1, 1000, 1 << 20, 3_000_017} {
		x := randNZ(r, 1, n)
		cx, gx := x.make(cpuRef), x.make(g)
		for name, f := range map[string]func(be compute.Backend, t *compute.Tensor) float64{
			"Sum":   func(be compute.Backend, t *compute.Tensor) float64 { return be.Sum(t) },
			"SumSq": func(be compute.Backend, t *compute.Tensor) float64 { return be.SumSq(t) },
		} {
			want, got := f(cpuRef, cx), f(g, gx)
			if e := math.Abs(got-want) / math.Max(math.Abs(want), 1); e > 1e-12 {
				t.Errorf("%s n=%d: got %v, want %v (rel %.3g)", name, n, got, want, e)
			}
		}
		if !g.AllFinite(gx) {
			t.Errorf("AllFinite n=%d: false on finite data", n)
		}
		for _, bad := range []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())} {
			h := append([]float32(nil), x.f32...)
			h[n-1] = bad
			if g.AllFinite(g.FromF32(h, n)) {
				t.Errorf("AllFinite n=%d: true with %v", n, bad)
			}
		}
	}
	const n = 100_003
	v := randNZ(r, 1e-3, n)
	for i, x := range v.f32 {
		v.f32[i] = x * x // second moments are non-negative
	}
	runCases(t, []opCase{{name: "AdamW",
		specs: []spec{randNZ(r, 1, n), randNZ(r, 100, n), randNZ(r, 0.01, n), v},
		fn: func(be compute.Backend, ts []*compute.Tensor) {
			be.AdamW(ts[0], ts[1], ts[2], ts[3], 1.0/128, 1e-3, 0.9, 0.98, 1e-6, 0.01, 1)
			be.AdamW(ts[0], ts[1], ts[2], ts[3], 1.0/128, 1e-3, 0.9, 0.98, 1e-6, 0.01, 2)
		}}})
}

// TestModelStep runs the tiny model (and every pretraining head) forward,
// backward and one AdamW update on both backends from the same weights and
// batch, in training mode with dropout, and compares every output,
// gradient and updated weight.
func TestModelStep(t *testing.T) {
	g := gpuBackend(t)
	cfg, err := model.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	in := stepInput(cfg)
	type result struct {
		outs  [][]float32
		grads map[string][]float32
		ws    map[string][]float32
	}
	run := func(be compute.Backend) result {
		m, err := model.New(be, cfg, 3)
		if err != nil {
			t.Fatal(err)
		}
		heads := model.NewPretrainHeads(m)
		m.SetTrain(true)
		m.SetStepSeed(11)
		if err := m.Forward(in); err != nil {
			t.Fatal(err)
		}
		s := in.SeqLen()
		mlmIdx := be.FromI32([]int32{1, 2, int32(s + 1), int32(2*s + 3), int32(3*s + 5)}, 5)
		mrmIdx := be.FromI32([]int32{int32(in.TxtLens[0] + 1), int32(s + in.TxtLens[1] + 2)}, 2)
		outs := []*compute.Tensor{m.Seq(), m.Pooled(), heads.MLM(mlmIdx), heads.MRFR(mrmIdx), heads.MRC(mrmIdx), heads.ITM()}
		res := result{grads: map[string][]float32{}, ws: map[string][]float32{}}
		douts := make([]*compute.Tensor, len(outs))
		for k, o := range outs {
			res.outs = append(res.outs, be.ToF32(o))
			rr := rand.New(rand.NewPCG(uint64(k), 9))
			h := make([]float32, o.Len())
			for i := range h {
				h[i] = float32(rr.NormFloat64())
			}
			douts[k] = be.FromF32(h, o.Shape...)
		}
		for _, p := range m.Params.List() {
			be.Zero(p.G)
		}
		be.Axpy(1, douts[0], m.GradSeq())
		be.Axpy(1, douts[1], m.GradPooled())
		heads.MLMBackward(douts[2])
		heads.MRFRBackward(douts[3])
		heads.MRCBackward(douts[4])
		heads.ITMBackward(douts[5])
		m.Backward(true)
		res.grads["img_feat"] = be.ToF32(m.GradImgFeat())
		for _, p := range m.Params.List() {
			res.grads[p.Name] = be.ToF32(p.G)
			mm, vv := be.Alloc(compute.F32, p.Shape...), be.Alloc(compute.F32, p.Shape...)
			be.AdamW(p.W, p.G, mm, vv, 1, 1e-4, 0.9, 0.98, 1e-6, 0.01, 1)
			res.ws[p.Name] = be.ToF32(p.W)
		}
		return res
	}
	want, got := run(cpuRef), run(g)
	check := func(what string, gv, wv []float32) {
		e := normErr(gv, wv)
		if e > 1e-5 || math.IsNaN(e) {
			t.Errorf("%s: relative L2 error %.3g > 1e-5", what, e)
		} else if testing.Verbose() {
			t.Logf("%s: relative L2 error %.3g", what, e)
		}
	}
	for k := range want.outs {
		check(fmt.Sprintf("output %d", k), got.outs[k], want.outs[k])
	}
	for name, w := range want.grads {
		check("grad "+name, got.grads[name], w)
	}
	for name, w := range want.ws {
		check("updated "+name, got.ws[name], w)
	}
}

// normErr is ||got-want||_2 / ||want||_2 (NaN if got has a non-finite
// value).
func normErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.NaN()
		}
		d := g - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// stepInput is 4 examples with ragged text and region counts and two
// masked regions.
func stepInput(c model.Config) *model.Input {
	r := rand.New(rand.NewPCG(8, 1))
	in := &model.Input{B: 4, T: 12, N: 9, TxtLens: []int{12, 5, 9, 7}, NBB: []int{3, 9, 1, 6}}
	in.InputIDs = make([]int32, in.B*in.T)
	for b := 0; b < in.B; b++ {
		for j := 0; j < in.TxtLens[b]; j++ {
			in.InputIDs[b*in.T+j] = int32(1 + r.IntN(c.VocabSize-1))
		}
	}
	in.ImgFeat = make([]float32, in.B*in.N*c.ImgDim)
	in.ImgPos = make([]float32, in.B*in.N*model.ImgPosDim)
	in.ImgMasks = make([]int32, in.B*in.N)
	for b := 0; b < in.B; b++ {
		for k := 0; k < in.NBB[b]; k++ {
			row := b*in.N + k
			for d := 0; d < c.ImgDim; d++ {
				in.ImgFeat[row*c.ImgDim+d] = float32(r.Float64())
			}
			for d := 0; d < model.ImgPosDim; d++ {
				in.ImgPos[row*model.ImgPosDim+d] = float32(r.Float64())
			}
		}
	}
	in.ImgMasks[1], in.ImgMasks[in.N+2] = 1, 1
	return in
}
