//go:build cuda

package gpu

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

// set_max_dynamic_smem lets fn use more than the default 48 KB of dynamic
// shared memory (the hgemm pipeline needs 60 KB); gorgonia.org/cu v0.9.6
// has no binding for cuFuncSetAttribute.
static CUresult set_max_dynamic_smem(CUfunction fn, int bytes) {
	return cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"

	"uniter/internal/compute"
)

// hgemmSmem is HG_SMEM_BYTES in kernels/hgemm.cu: 3 stages x 2 operands x
// 128x40 halves.
const hgemmSmem = 3 * 2 * 128 * 40 * 2

// hgemmKernels are the four transpose instantiations, indexed by
// transA*2 + transB.
var hgemmKernels = [4]string{"hgemm_nn", "hgemm_nt", "hgemm_tn", "hgemm_tt"}

// setupHGemm raises the dynamic shared memory limit of the hgemm kernels;
// on the device goroutine, after the module is loaded. cu.Function wraps a
// single CUfunction, which is what the unsafe conversion relies on.
func (d *Device) setupHGemm() error {
	for _, name := range hgemmKernels {
		fn := d.fns[name]
		cfn := *(*C.CUfunction)(unsafe.Pointer(&fn))
		if r := C.set_max_dynamic_smem(cfn, C.int(hgemmSmem)); r != C.CUDA_SUCCESS {
			return fmt.Errorf("cuda: %s: cuFuncSetAttribute(max dynamic shared memory %d): error %d", name, hgemmSmem, int(r))
		}
	}
	return nil
}

// Half is a row-major fp16 matrix in device memory: the operand type of
// the tensor-core matmul (mixed precision keeps fp32 master tensors and
// casts copies of them to Half for the products).
type Half struct {
	buf        *buffer
	Rows, Cols int
}

func (h *Half) ptr() cu.DevicePtr { return h.buf.ptr }

// NewHalf allocates an uninitialised rows x cols fp16 matrix.
func (b *Backend) NewHalf(rows, cols int) *Half {
	h := &Half{Rows: rows, Cols: cols}
	b.run("NewHalf", func(d *Device) error {
		var err error
		h.buf, err = d.newBuffer(int64(rows*cols) * 2)
		return err
	})
	return h
}

// ToHalf returns t, seen as a [Rows, Cols] matrix, rounded to fp16 (nearest,
// ties to even; beyond the range becomes ±Inf).
func (b *Backend) ToHalf(t *compute.Tensor) *Half {
	h := b.NewHalf(t.Rows(), t.Cols())
	b.run("ToHalf", func(d *Device) error { return d.castF32F16(h.ptr(), dptr(t), t.Len()) })
	return h
}

// HalfToF32 widens h into a new F32 tensor [Rows, Cols].
func (b *Backend) HalfToF32(h *Half) *compute.Tensor {
	t := b.Alloc(compute.F32, h.Rows, h.Cols)
	b.run("HalfToF32", func(d *Device) error { return d.castF16F32(dptr(t), h.ptr(), h.Rows*h.Cols) })
	return t
}

// Epilogue is what the matmul applies to alpha*op(a)*op(b) + beta*c before
// storing it.
type Epilogue int

const (
	// EpiNone stores the product.
	EpiNone Epilogue = iota
	// EpiBias adds bias[N] to every row.
	EpiBias
	// EpiBiasGELU adds the bias, then applies the exact erf GELU.
	EpiBiasGELU
)

// hgemmShape checks that op(a) [M,K] and op(b) [K,N] conform to c [m,n].
func hgemmShape(transA, transB bool, a, bm *Half, m, n int) int {
	am, k := a.Rows, a.Cols
	if transA {
		am, k = k, am
	}
	bk, bn := bm.Rows, bm.Cols
	if transB {
		bk, bn = bn, bk
	}
	if am != m || bk != k || bn != n {
		panic(fmt.Sprintf("gpu: HGemm(transA=%v, transB=%v): a [%d %d], b [%d %d], c [%d %d] do not conform",
			transA, transB, a.Rows, a.Cols, bm.Rows, bm.Cols, m, n))
	}
	return k
}

// HGemm computes c = epi(alpha*op(a)*op(b) + beta*c) on the tensor cores
// with fp16 inputs and fp32 accumulation, into the F32 tensor c [M,N].
// bias [N] is required by EpiBias and EpiBiasGELU.
func (b *Backend) HGemm(transA, transB bool, alpha float32, a, bm *Half, beta float32, c *compute.Tensor, bias *compute.Tensor, epi Epilogue) {
	m, n := c.Rows(), c.Cols()
	k := hgemmShape(transA, transB, a, bm, m, n)
	if epi != EpiNone {
		compute.MustLen("HGemm", "bias", bias, n)
	}
	b.run("HGemm", func(d *Device) error {
		return d.hgemm(dptr(c), false, a.ptr(), bm.ptr(), dptrOpt(bias), m, n, k, a.Cols, bm.Cols, n, transA, transB, alpha, beta, epi)
	})
}

// HGemmHalf is HGemm with an fp16 output matrix c (rounded once, after the
// epilogue).
func (b *Backend) HGemmHalf(transA, transB bool, alpha float32, a, bm *Half, beta float32, c *Half, bias *compute.Tensor, epi Epilogue) {
	k := hgemmShape(transA, transB, a, bm, c.Rows, c.Cols)
	if epi != EpiNone {
		compute.MustLen("HGemmHalf", "bias", bias, c.Cols)
	}
	b.run("HGemmHalf", func(d *Device) error {
		return d.hgemm(c.ptr(), true, a.ptr(), bm.ptr(), dptrOpt(bias), c.Rows, c.Cols, k, a.Cols, bm.Cols, c.Cols, transA, transB, alpha, beta, epi)
	})
}

// hgemm launches the matching instantiation. 16-byte cp.async loads need
// both operands' row pitches to be multiples of 8 halves (the buffers
// themselves are 256-byte aligned); otherwise the kernel loads elementwise.
func (d *Device) hgemm(c cu.DevicePtr, outF16 bool, a, bm, bias cu.DevicePtr, m, n, k, lda, ldb, ldc int, ta, tb bool, alpha, beta float32, epi Epilogue) error {
	if m == 0 || n == 0 {
		return nil
	}
	vec := lda%8 == 0 && ldb%8 == 0
	name := hgemmKernels[b2i(ta)*2+b2i(tb)]
	return d.launch(name, dim3{(n + 127) / 128, (m + 127) / 128, 1}, blk256, hgemmSmem,
		ptr(c), ptr(a), ptr(bm), ptr(bias), i64(m), i64(n), i64(k), i64(lda), i64(ldb), i64(ldc),
		f64(float64(alpha)), f64(float64(beta)), i64(int(epi)), i64(b2i(outF16)), i64(b2i(vec)))
}
