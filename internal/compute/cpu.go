package compute

import (
	"fmt"
	"runtime"
	"sync"
)

// Host32 is CPU storage for F32 tensors.
type Host32 []float32

// Slice returns elements [off, off+n) sharing memory.
func (h Host32) Slice(off, n int) Storage { return h[off : off+n : off+n] }

// Len is the number of elements held.
func (h Host32) Len() int { return len(h) }

// HostI32 is CPU storage for I32 tensors.
type HostI32 []int32

// Slice returns elements [off, off+n) sharing memory.
func (h HostI32) Slice(off, n int) Storage { return h[off : off+n : off+n] }

// Len is the number of elements held.
func (h HostI32) Len() int { return len(h) }

// F32s returns the first t.Len() elements of a CPU F32 tensor, sharing
// memory.
func F32s(t *Tensor) []float32 {
	h, ok := t.Data.(Host32)
	if !ok || t.DType != F32 {
		panic(fmt.Sprintf("compute: F32s: tensor %v is %v with %T storage, not CPU f32", t.Shape, t.DType, t.Data))
	}
	return h[:t.Len()]
}

// I32s returns the first t.Len() elements of a CPU I32 tensor, sharing
// memory.
func I32s(t *Tensor) []int32 {
	h, ok := t.Data.(HostI32)
	if !ok || t.DType != I32 {
		panic(fmt.Sprintf("compute: I32s: tensor %v is %v with %T storage, not CPU i32", t.Shape, t.DType, t.Data))
	}
	return h[:t.Len()]
}

// CPU is the reference Backend: float32 host memory, OpenBLAS for the
// matrix products and Go for everything else. Its goroutines are the only
// threads doing its work: OpenBLAS runs single-threaded inside them, each
// worker computing its block of a product. Operations are synchronous and
// may be called from several goroutines on disjoint outputs.
type CPU struct {
	threads int
	// scratch holds per-worker attention buffers between calls.
	scratch sync.Pool
}

var _ Backend = (*CPU)(nil)

// NewCPU returns a CPU backend using threads goroutines (threads <= 0 means
// runtime.NumCPU()).
func NewCPU(threads int) *CPU {
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	configureBLAS()
	startWorkers(threads - 1)
	return &CPU{threads: threads}
}

// Threads is the degree of parallelism the backend uses.
func (c *CPU) Threads() int { return c.threads }

// Name is "cpu".
func (c *CPU) Name() string { return "cpu" }

// Alloc returns a zero-filled tensor.
func (c *CPU) Alloc(dt DType, shape ...int) *Tensor {
	n := Numel(shape)
	t := &Tensor{Shape: append([]int(nil), shape...), DType: dt}
	switch dt {
	case F32:
		t.Data = make(Host32, n)
	case I32:
		t.Data = make(HostI32, n)
	default:
		panic(fmt.Sprintf("compute: Alloc: unsupported dtype %v", dt))
	}
	return t
}

// FromF32 copies data into a new F32 tensor; len(data) must match shape.
func (c *CPU) FromF32(data []float32, shape ...int) *Tensor {
	if len(data) != Numel(shape) {
		panic(fmt.Sprintf("compute: FromF32: %d values for shape %v", len(data), shape))
	}
	return &Tensor{Shape: append([]int(nil), shape...), DType: F32, Data: append(Host32(nil), data...)}
}

// FromI32 copies data into a new I32 tensor; len(data) must match shape.
func (c *CPU) FromI32(data []int32, shape ...int) *Tensor {
	if len(data) != Numel(shape) {
		panic(fmt.Sprintf("compute: FromI32: %d values for shape %v", len(data), shape))
	}
	return &Tensor{Shape: append([]int(nil), shape...), DType: I32, Data: append(HostI32(nil), data...)}
}

// ToF32 copies the first Len() elements into a new slice.
func (c *CPU) ToF32(t *Tensor) []float32 { return append([]float32(nil), F32s(t)...) }

// ToI32 copies the first Len() elements into a new slice.
func (c *CPU) ToI32(t *Tensor) []int32 { return append([]int32(nil), I32s(t)...) }

// Zero sets the first Len() elements to zero.
func (c *CPU) Zero(t *Tensor) {
	switch t.DType {
	case I32:
		clear(I32s(t))
	default:
		x := F32s(t)
		c.parallelFor(len(x), grainMemory, func(lo, hi int) { clear(x[lo:hi]) })
	}
}

// Copy copies src into dst; both must have the same element count and dtype.
func (c *CPU) Copy(dst, src *Tensor) {
	if dst.Len() != src.Len() || dst.DType != src.DType {
		panic(fmt.Sprintf("compute: Copy: dst %v %v, src %v %v", dst.Shape, dst.DType, src.Shape, src.DType))
	}
	if src.DType == I32 {
		copy(I32s(dst), I32s(src))
		return
	}
	d, s := F32s(dst), F32s(src)
	c.parallelFor(len(d), grainMemory, func(lo, hi int) { copy(d[lo:hi], s[lo:hi]) })
}

// Grains are the least work, in elements, worth a chunk of its own: handing
// a chunk to a worker costs microseconds, so each should take several.
const (
	grainMemory  = 1 << 16 // copies and one-flop-per-element loops
	grainCheap   = 1 << 14 // a few flops per element
	grainCostly  = 1 << 11 // transcendental functions per element
	sumBlockSize = 1 << 12 // fixed reduction blocks keep sums independent of threads
)
