//go:build cuda

package gpu

import (
	"fmt"
	"math"
	"unsafe"

	"gorgonia.org/cu"

	"uniter/internal/compute"
)

// storage is a view of n 4-byte elements starting at element off of a
// device buffer; it is the compute.Storage of every CUDA tensor.
type storage struct {
	buf    *buffer
	off, n int
}

// Slice returns elements [off, off+n) sharing the buffer.
func (s storage) Slice(off, n int) compute.Storage {
	if off < 0 || n < 0 || off+n > s.n {
		panic(fmt.Sprintf("gpu: slice [%d, %d) of %d elements", off, off+n, s.n))
	}
	return storage{buf: s.buf, off: s.off + off, n: n}
}

// Len is the number of elements the view holds.
func (s storage) Len() int { return s.n }

// elemBytes is the size of F32 and I32 elements alike.
const elemBytes = 4

// Backend is the CUDA compute.Backend: F32 and I32 tensors live on one GPU
// and every operation is a kernel queued on the device's stream. It is
// exact to fp32 rounding against the CPU backend (no TF32, fp64
// accumulation where the CPU uses it); only reductions with atomics
// (ScatterAdd) sum in a different order.
type Backend struct {
	dev *Device
}

var _ compute.Backend = (*Backend)(nil)

// New opens device ordinal and returns a backend on it.
func New(ordinal int) (*Backend, error) {
	d, err := Open(ordinal)
	if err != nil {
		return nil, err
	}
	return &Backend{dev: d}, nil
}

// Device is the GPU the backend runs on.
func (b *Backend) Device() *Device { return b.dev }

// Name is "cuda".
func (b *Backend) Name() string { return "cuda" }

// dptr is the device address of t's first element.
func dptr(t *compute.Tensor) cu.DevicePtr {
	s, ok := t.Data.(storage)
	if !ok {
		panic(fmt.Sprintf("gpu: tensor %v has %T storage, not CUDA memory", t.Shape, t.Data))
	}
	return s.buf.ptr + cu.DevicePtr(s.off*elemBytes)
}

// dptrOpt is dptr, or 0 for a nil tensor (optional kernel outputs).
func dptrOpt(t *compute.Tensor) cu.DevicePtr {
	if t == nil {
		return 0
	}
	return dptr(t)
}

// run executes f on the device goroutine; CUDA errors panic, as shape
// errors do on the CPU backend: both are programming errors or a lost
// device, and the Backend interface has no error results.
func (b *Backend) run(op string, f func(d *Device) error) {
	if err := b.dev.Do(func() error { return f(b.dev) }); err != nil {
		panic(fmt.Sprintf("gpu: %s: %v", op, err))
	}
}

func mustType(op, name string, t *compute.Tensor, dt compute.DType) {
	if t.DType != dt {
		panic(fmt.Sprintf("gpu: %s: %s is %v, want %v", op, name, t.DType, dt))
	}
}

// Alloc returns a zero-filled tensor.
func (b *Backend) Alloc(dt compute.DType, shape ...int) *compute.Tensor {
	if dt != compute.F32 && dt != compute.I32 {
		panic(fmt.Sprintf("gpu: Alloc: unsupported dtype %v", dt))
	}
	n := compute.Numel(shape)
	var t *compute.Tensor
	b.run("Alloc", func(d *Device) error {
		buf, err := d.newBuffer(int64(n) * elemBytes)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := cu.MemsetD32Async(buf.ptr, 0, int64(n), d.stream); err != nil {
				return fmt.Errorf("memset %d words: %w", n, err)
			}
		}
		t = &compute.Tensor{Shape: append([]int(nil), shape...), DType: dt, Data: storage{buf: buf, n: n}}
		return nil
	})
	return t
}

// upload copies n 4-byte host elements at src into a new tensor.
func (b *Backend) upload(op string, dt compute.DType, src unsafe.Pointer, n int, shape []int) *compute.Tensor {
	if n != compute.Numel(shape) {
		panic(fmt.Sprintf("gpu: %s: %d values for shape %v", op, n, shape))
	}
	var t *compute.Tensor
	b.run(op, func(d *Device) error {
		buf, err := d.newBuffer(int64(n) * elemBytes)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := cu.MemcpyHtoDAsync(buf.ptr, src, int64(n)*elemBytes, d.stream); err != nil {
				return fmt.Errorf("copy %d elements to the device: %w", n, err)
			}
			// The host slice may be reused as soon as we return.
			if err := d.sync(op); err != nil {
				return err
			}
		}
		t = &compute.Tensor{Shape: append([]int(nil), shape...), DType: dt, Data: storage{buf: buf, n: n}}
		return nil
	})
	return t
}

// FromF32 copies data into a new F32 tensor; len(data) must match shape.
func (b *Backend) FromF32(data []float32, shape ...int) *compute.Tensor {
	return b.upload("FromF32", compute.F32, unsafe.Pointer(unsafe.SliceData(data)), len(data), shape)
}

// FromI32 copies data into a new I32 tensor; len(data) must match shape.
func (b *Backend) FromI32(data []int32, shape ...int) *compute.Tensor {
	return b.upload("FromI32", compute.I32, unsafe.Pointer(unsafe.SliceData(data)), len(data), shape)
}

// download copies t's first Len() elements to dst (after all queued work).
func (b *Backend) download(op string, dst unsafe.Pointer, t *compute.Tensor) {
	n := t.Len()
	if n == 0 {
		return
	}
	b.run(op, func(d *Device) error {
		if err := cu.MemcpyDtoHAsync(dst, dptr(t), int64(n)*elemBytes, d.stream); err != nil {
			return fmt.Errorf("copy %d elements to the host: %w", n, err)
		}
		return d.sync(op)
	})
}

// ToF32 copies the first Len() elements into a new slice.
func (b *Backend) ToF32(t *compute.Tensor) []float32 {
	mustType("ToF32", "t", t, compute.F32)
	out := make([]float32, t.Len())
	b.download("ToF32", unsafe.Pointer(unsafe.SliceData(out)), t)
	return out
}

// ToI32 copies the first Len() elements into a new slice.
func (b *Backend) ToI32(t *compute.Tensor) []int32 {
	mustType("ToI32", "t", t, compute.I32)
	out := make([]int32, t.Len())
	b.download("ToI32", unsafe.Pointer(unsafe.SliceData(out)), t)
	return out
}

// Zero sets the first Len() elements to zero.
func (b *Backend) Zero(t *compute.Tensor) {
	n := t.Len()
	if n == 0 {
		return
	}
	b.run("Zero", func(d *Device) error {
		return cu.MemsetD32Async(dptr(t), 0, int64(n), d.stream)
	})
}

// Copy copies src into dst (same element count and dtype).
func (b *Backend) Copy(dst, src *compute.Tensor) {
	if dst.Len() != src.Len() || dst.DType != src.DType {
		panic(fmt.Sprintf("gpu: Copy: dst %v %v, src %v %v", dst.Shape, dst.DType, src.Shape, src.DType))
	}
	n := dst.Len()
	if n == 0 || dptr(dst) == dptr(src) {
		return
	}
	b.run("Copy", func(d *Device) error {
		return cu.MemcpyDtoDAsync(dptr(dst), dptr(src), int64(n)*elemBytes, d.stream)
	})
}

// Gemm computes c = alpha*op(a)*op(b) + beta*c in fp32 (no TF32).
func (b *Backend) Gemm(transA, transB bool, alpha float32, a, bm *compute.Tensor, beta float32, c *compute.Tensor) {
	m, n, k := compute.GemmDims(transA, transB, a, bm, c)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		// The product is empty; only the beta term remains (beta 0 clears,
		// as BLAS does, rather than scaling stale values).
		if beta == 0 {
			b.Zero(c)
		} else {
			b.Scale(c, beta)
		}
		return
	}
	b.run("Gemm", func(d *Device) error {
		return d.sgemmF32(dptr(c), dptr(a), dptr(bm), m, n, k, a.Cols(), bm.Cols(), n, transA, transB, alpha, beta)
	})
}

// AddBias adds bias [N] to every row of x [M,N] in place.
func (b *Backend) AddBias(x, bias *compute.Tensor) {
	n := x.Cols()
	compute.MustLen("AddBias", "bias", bias, n)
	b.run("AddBias", func(d *Device) error { return d.addBiasF32(dptr(x), dptr(bias), x.Rows(), n) })
}

// SumRows sets dst[j] = beta*dst[j] + sum_i x[i,j], summing in float64.
func (b *Backend) SumRows(dst, x *compute.Tensor, beta float32) {
	m, n := x.Rows(), x.Cols()
	compute.MustLen("SumRows", "dst", dst, n)
	b.run("SumRows", func(d *Device) error { return d.sumRowsF32(dptr(dst), dptr(x), beta, m, n) })
}

// Add sets dst = a + b; dst may alias a or b.
func (b *Backend) Add(dst, a, bb *compute.Tensor) {
	n := dst.Len()
	compute.MustLen("Add", "a", a, n)
	compute.MustLen("Add", "b", bb, n)
	b.run("Add", func(d *Device) error { return d.addF32(dptr(dst), dptr(a), dptr(bb), n) })
}

// Axpy sets y += alpha*x.
func (b *Backend) Axpy(alpha float32, x, y *compute.Tensor) {
	compute.MustLen("Axpy", "x", x, y.Len())
	b.run("Axpy", func(d *Device) error { return d.axpyF32(dptr(y), dptr(x), alpha, y.Len()) })
}

// Scale sets x *= alpha.
func (b *Backend) Scale(x *compute.Tensor, alpha float32) {
	b.run("Scale", func(d *Device) error { return d.scaleF32(dptr(x), alpha, x.Len()) })
}

func (b *Backend) unary(op, kernel string, out, x *compute.Tensor) {
	compute.MustLen(op, "x", x, out.Len())
	b.run(op, func(d *Device) error { return d.unaryF32(kernel, dptr(out), dptr(x), out.Len()) })
}

func (b *Backend) binary(op, kernel string, dx, y, dout *compute.Tensor) {
	compute.MustLen(op, "input", y, dx.Len())
	compute.MustLen(op, "dout", dout, dx.Len())
	b.run(op, func(d *Device) error { return d.binaryF32(kernel, dptr(dx), dptr(y), dptr(dout), dx.Len()) })
}

// GeluFwd sets out = x*Phi(x) (exact erf GELU, evaluated in double).
func (b *Backend) GeluFwd(out, x *compute.Tensor) { b.unary("GeluFwd", "gelu_fwd_f32", out, x) }

// GeluBwd sets dx = dout*gelu'(x); dx may alias dout.
func (b *Backend) GeluBwd(dx, x, dout *compute.Tensor) {
	b.binary("GeluBwd", "gelu_bwd_f32", dx, x, dout)
}

// TanhFwd sets out = tanh(x).
func (b *Backend) TanhFwd(out, x *compute.Tensor) { b.unary("TanhFwd", "tanh_fwd_f32", out, x) }

// TanhBwd sets dx = dout*(1-y^2); dx may alias dout.
func (b *Backend) TanhBwd(dx, y, dout *compute.Tensor) {
	b.binary("TanhBwd", "tanh_bwd_f32", dx, y, dout)
}

// ReluFwd sets out = max(x, 0).
func (b *Backend) ReluFwd(out, x *compute.Tensor) { b.unary("ReluFwd", "relu_fwd_f32", out, x) }

// ReluBwd sets dx = dout where y > 0, else 0; dx may alias dout.
func (b *Backend) ReluBwd(dx, y, dout *compute.Tensor) {
	b.binary("ReluBwd", "relu_bwd_f32", dx, y, dout)
}

// dropoutScale is 1/(1-p) in float32, as the CPU backend (and PyTorch)
// compute it.
func dropoutScale(p float32) float32 { return 1 / (1 - p) }

func (b *Backend) dropout(op string, out, x *compute.Tensor, p float32, seed uint64) {
	compute.MustLen(op, "input", x, out.Len())
	if p <= 0 {
		b.Copy(out, x)
		return
	}
	b.run(op, func(d *Device) error {
		return d.dropoutF32(dptr(out), dptr(x), p, dropoutScale(p), seed, out.Len())
	})
}

// DropoutFwd sets out = x*keep/(1-p) with compute.DropoutKeep's mask; out
// may alias x.
func (b *Backend) DropoutFwd(out, x *compute.Tensor, p float32, seed uint64) {
	b.dropout("DropoutFwd", out, x, p, seed)
}

// DropoutBwd applies the forward's mask and scale to dout; dx may alias
// dout.
func (b *Backend) DropoutBwd(dx, dout *compute.Tensor, p float32, seed uint64) {
	b.dropout("DropoutBwd", dx, dout, p, seed)
}

// LayerNormFwd normalises each row of x with double-precision statistics.
func (b *Backend) LayerNormFwd(out, mean, rstd, x, gamma, beta *compute.Tensor, eps float32) {
	m, n := compute.LayerNormFwdShape(out, mean, rstd, x, gamma, beta)
	if m == 0 {
		return
	}
	b.run("LayerNormFwd", func(d *Device) error {
		return d.layernormFwdF32(dptr(out), dptr(mean), dptr(rstd), dptr(x), dptr(gamma), dptr(beta), eps, m, n)
	})
}

// LayerNormBwd sets dx (overwrite) and accumulates dgamma, dbeta. The
// parameter gradients are reduced first because dx may alias dout.
func (b *Backend) LayerNormBwd(dx, dgamma, dbeta, dout, x, mean, rstd, gamma *compute.Tensor) {
	m, n := compute.LayerNormBwdShape(dx, dgamma, dbeta, dout, x, mean, rstd, gamma)
	if m == 0 {
		return
	}
	b.run("LayerNormBwd", func(d *Device) error {
		if err := d.layernormBwdParamsF32(dptr(dgamma), dptr(dbeta), dptr(dout), dptr(x), dptr(mean), dptr(rstd), m, n); err != nil {
			return err
		}
		return d.layernormBwdDxF32(dptr(dx), dptr(dout), dptr(x), dptr(mean), dptr(rstd), dptr(gamma), m, n)
	})
}

// attnGeometry checks the layout (compute.AttentionShape) against what the
// kernel supports.
func attnGeometry(op string, q, k, v, out, lens *compute.Tensor, heads int) compute.AttnShape {
	g := compute.AttentionShape(op, q, k, v, out, lens, heads)
	if g.Dh > attnMaxDh {
		panic(fmt.Sprintf("gpu: %s: head size %d exceeds the kernel's %d", op, g.Dh, attnMaxDh))
	}
	return g
}

// AttentionFwd is masked multi-head attention; see compute.Backend. lens
// ([B] or [2, B]) is read on the device, so its range is the caller's to
// check.
func (b *Backend) AttentionFwd(out, lse, q, k, v, lens *compute.Tensor, heads int, scale, p float32, seed uint64) {
	g := attnGeometry("AttentionFwd", q, k, v, out, lens, heads)
	compute.MustLen("AttentionFwd", "lse", lse, g.B*heads*g.S)
	if g.S == 0 {
		return
	}
	b.run("AttentionFwd", func(d *Device) error {
		return d.attnFwdF32(dptr(out), dptr(lse), dptr(q), dptr(k), dptr(v), dptr(lens), g, scale, p, dropoutScale(p), seed)
	})
}

// AttentionBwd overwrites dq, dk, dv, recomputing the probabilities from
// lse. delta_i = dout_i.out_i is computed once into scratch memory.
func (b *Backend) AttentionBwd(dq, dk, dv, dout, out, lse, q, k, v, lens *compute.Tensor, heads int, scale, p float32, seed uint64) {
	g := attnGeometry("AttentionBwd", q, k, v, out, lens, heads)
	compute.MustMatrix("AttentionBwd", "dq", dq, q.Rows(), g.D)
	compute.MustMatrix("AttentionBwd", "dk", dk, q.Rows(), g.D)
	compute.MustMatrix("AttentionBwd", "dv", dv, q.Rows(), g.D)
	compute.MustMatrix("AttentionBwd", "dout", dout, q.Rows(), g.D)
	compute.MustLen("AttentionBwd", "lse", lse, g.B*heads*g.S)
	if g.S == 0 {
		return
	}
	ds := dropoutScale(p)
	b.run("AttentionBwd", func(d *Device) error {
		delta, err := d.scratch(int64(g.B*heads*g.S) * 4)
		if err != nil {
			return err
		}
		defer d.done(delta)
		if err := d.attnBwdDotF32(delta.ptr, dptr(dout), dptr(out), g); err != nil {
			return err
		}
		if err := d.attnBwdDqF32(dptr(dq), dptr(dout), dptr(lse), delta.ptr, dptr(q), dptr(k), dptr(v), dptr(lens),
			g, scale, p, ds, seed); err != nil {
			return err
		}
		return d.attnBwdDkDvF32(dptr(dk), dptr(dv), dptr(dout), dptr(lse), delta.ptr, dptr(q), dptr(k), dptr(v), dptr(lens),
			g, scale, p, ds, seed)
	})
}

// Gather sets out[i,:] = src[idx[i],:].
func (b *Backend) Gather(out, src, idx *compute.Tensor) {
	c := src.Cols()
	compute.MustMatrix("Gather", "out", out, idx.Len(), c)
	mustType("Gather", "idx", idx, compute.I32)
	b.run("Gather", func(d *Device) error { return d.gatherF32(dptr(out), dptr(src), dptr(idx), idx.Len(), c) })
}

// ScatterAdd sets dst[idx[i],:] += src[i,:]; repeated indices add (with
// atomics, so in no fixed order).
func (b *Backend) ScatterAdd(dst, src, idx *compute.Tensor) {
	c := dst.Cols()
	compute.MustMatrix("ScatterAdd", "src", src, idx.Len(), c)
	mustType("ScatterAdd", "idx", idx, compute.I32)
	b.run("ScatterAdd", func(d *Device) error { return d.scatterAddF32(dptr(dst), dptr(src), dptr(idx), idx.Len(), c) })
}

// SoftmaxXent computes per-row cross-entropy; dlogits may be nil or alias
// logits.
func (b *Backend) SoftmaxXent(loss, dlogits, logits, labels *compute.Tensor, ignore int32, gradScale float32) {
	n, cols := logits.Rows(), logits.Cols()
	compute.MustLen("SoftmaxXent", "loss", loss, n)
	compute.MustLen("SoftmaxXent", "labels", labels, n)
	mustType("SoftmaxXent", "labels", labels, compute.I32)
	if dlogits != nil {
		compute.MustMatrix("SoftmaxXent", "dlogits", dlogits, n, cols)
	}
	if n == 0 {
		return
	}
	b.run("SoftmaxXent", func(d *Device) error {
		return d.softmaxXentF32(dptr(loss), dptrOpt(dlogits), dptr(logits), dptr(labels), ignore, gradScale, n, cols)
	})
}

// SoftmaxKL computes per-row KL divergence of softmax(logits) from target.
func (b *Backend) SoftmaxKL(loss, dlogits, logits, target *compute.Tensor, gradScale float32) {
	n, cols := logits.Rows(), logits.Cols()
	compute.MustLen("SoftmaxKL", "loss", loss, n)
	compute.MustMatrix("SoftmaxKL", "target", target, n, cols)
	compute.MustMatrix("SoftmaxKL", "dlogits", dlogits, n, cols)
	if n == 0 {
		return
	}
	b.run("SoftmaxKL", func(d *Device) error {
		return d.softmaxKLF32(dptr(loss), dptr(dlogits), dptr(logits), dptr(target), gradScale, n, cols)
	})
}

// BCEWithLogits computes per-row summed binary cross-entropy with logits in
// double; dlogits may be nil or alias logits.
func (b *Backend) BCEWithLogits(loss, dlogits, logits, targets *compute.Tensor, gradScale float32) {
	n, cols := compute.RowLossShape("BCEWithLogits", loss, dlogits, logits, targets)
	if n == 0 {
		return
	}
	b.run("BCEWithLogits", func(d *Device) error {
		return d.bceLogitsF32(dptr(loss), dptrOpt(dlogits), dptr(logits), dptr(targets), gradScale, n, cols)
	})
}

// SoftmaxRows sets each row of out to the softmax of x over its first
// lens[b] columns and 0 beyond; out may alias x. lens is read on the
// device, so its range is the caller's to check.
func (b *Backend) SoftmaxRows(out, x, lens *compute.Tensor) {
	rows, s := compute.SoftmaxRowsShape(out, x, lens)
	if rows == 0 {
		return
	}
	b.run("SoftmaxRows", func(d *Device) error {
		return d.softmaxRowsF32(dptr(out), dptr(x), dptr(lens), rows, s)
	})
}

// SoftmaxRowsBwd sets dx = y*(dy - <dy, y>) per row; dx may alias dy.
func (b *Backend) SoftmaxRowsBwd(dx, y, dy *compute.Tensor) {
	rows, s := compute.SoftmaxRowsBwdShape(dx, y, dy)
	if rows == 0 {
		return
	}
	b.run("SoftmaxRowsBwd", func(d *Device) error {
		return d.softmaxRowsBwdF32(dptr(dx), dptr(y), dptr(dy), rows, s)
	})
}

// Argmax sets idx[i] to the column of row i's largest value (lowest on
// ties, first NaN first, as torch.max).
func (b *Backend) Argmax(idx, x *compute.Tensor) {
	n, cols := compute.ArgmaxShape(idx, x)
	if n == 0 {
		return
	}
	b.run("Argmax", func(d *Device) error { return d.argmaxRowsF32(dptr(idx), dptr(x), n, cols) })
}

// reduce sums x (or its squares) in double on the device and returns the
// result to the host.
func (b *Backend) reduce(op string, x *compute.Tensor, sq bool) float64 {
	n := x.Len()
	if n == 0 {
		return 0
	}
	var res float64
	b.run(op, func(d *Device) error {
		part, err := d.scratch(reduceParts*8 + 8)
		if err != nil {
			return err
		}
		defer d.done(part)
		out := part.ptr + reduceParts*8
		if err := d.reducePartialF32(part.ptr, dptr(x), sq, n); err != nil {
			return err
		}
		if err := d.reduceFinalF64(out, part.ptr, reduceParts); err != nil {
			return err
		}
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&res), out, 8, d.stream); err != nil {
			return err
		}
		return d.sync(op)
	})
	return res
}

// SumSq returns sum(x^2) in float64.
func (b *Backend) SumSq(x *compute.Tensor) float64 { return b.reduce("SumSq", x, true) }

// Sum returns sum(x) in float64.
func (b *Backend) Sum(x *compute.Tensor) float64 { return b.reduce("Sum", x, false) }

// AllFinite reports whether no element is NaN or ±Inf.
func (b *Backend) AllFinite(x *compute.Tensor) bool {
	n := x.Len()
	if n == 0 {
		return true
	}
	var flag int32
	b.run("AllFinite", func(d *Device) error {
		f, err := d.scratch(4)
		if err != nil {
			return err
		}
		defer d.done(f)
		if err := cu.MemsetD32Async(f.ptr, 0, 1, d.stream); err != nil {
			return err
		}
		if err := d.nonfiniteF32(f.ptr, dptr(x), n); err != nil {
			return err
		}
		if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&flag), f.ptr, 4, d.stream); err != nil {
			return err
		}
		return d.sync("AllFinite")
	})
	return flag == 0
}

// AdamW performs one AdamW step exactly as compute.Backend documents; the
// bias corrections are computed here in float64 as the CPU backend does.
func (b *Backend) AdamW(p, g, m, v *compute.Tensor, gradScale, lr, b1, b2, eps, wd float32, step int) {
	n := p.Len()
	compute.MustLen("AdamW", "g", g, n)
	compute.MustLen("AdamW", "m", m, n)
	compute.MustLen("AdamW", "v", v, n)
	beta1, beta2 := float64(b1), float64(b2)
	bc1 := 1 - math.Pow(beta1, float64(step))
	bc2 := 1 - math.Pow(beta2, float64(step))
	stepSize := float64(lr) * math.Sqrt(bc2) / bc1
	decay := float64(lr) * float64(wd)
	b.run("AdamW", func(d *Device) error {
		return d.adamwF32(dptr(p), dptr(g), dptr(m), dptr(v), float64(gradScale), beta1, beta2, float64(eps), stepSize, decay, n)
	})
}

// RoundFP16 rounds every element to the nearest float16 (ties to even).
func (b *Backend) RoundFP16(x *compute.Tensor) {
	b.run("RoundFP16", func(d *Device) error { return d.roundFP16F32(dptr(x), x.Len()) })
}
