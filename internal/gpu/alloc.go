//go:build cuda

package gpu

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync"

	"gorgonia.org/cu"
)

// allocator caches device memory in size classes. cuMemAlloc synchronises
// the device and costs tens of microseconds, and the model's activation
// slots and per-op scratch come and go every step, so freed blocks are kept
// on per-class free lists and handed out again.
//
// Reuse is safe without events because the device has a single stream:
// any kernel that still reads a block when it is released was queued
// before any kernel that the block's next owner queues.
type allocator struct {
	dev    *Device
	mu     sync.Mutex
	free   map[int64][]cu.DevicePtr
	inUse  int64
	cached int64
}

func newAllocator(d *Device) *allocator {
	return &allocator{dev: d, free: map[int64][]cu.DevicePtr{}}
}

// sizeClass rounds n up to 512 bytes or, above that, to one of four steps
// per power of two (at most 25% waste).
func sizeClass(n int64) int64 {
	if n <= 512 {
		return 512
	}
	top := int64(1) << (63 - bits.LeadingZeros64(uint64(n-1)))
	step := top / 4
	return (n + step - 1) / step * step
}

// get returns a block of at least n bytes; on the device goroutine only.
// When the driver is out of memory it collects garbage (returning
// unreachable tensors' blocks), then frees the cache, and retries.
func (a *allocator) get(n int64) (cu.DevicePtr, int64, error) {
	c := sizeClass(n)
	a.mu.Lock()
	if l := a.free[c]; len(l) > 0 {
		p := l[len(l)-1]
		a.free[c] = l[:len(l)-1]
		a.cached -= c
		a.inUse += c
		a.mu.Unlock()
		return p, c, nil
	}
	a.mu.Unlock()
	p, err := cu.MemAlloc(c)
	if err != nil {
		runtime.GC()
		if err := a.dev.sync("allocator"); err != nil {
			return 0, 0, err
		}
		a.trim()
		if p, err = cu.MemAlloc(c); err != nil {
			return 0, 0, fmt.Errorf("cuda: allocating %d bytes (%d in use, device %d): %w", c, a.inUse, a.dev.Ordinal, err)
		}
	}
	a.mu.Lock()
	a.inUse += c
	a.mu.Unlock()
	return p, c, nil
}

// put returns a block to its free list. It makes no driver call, so it may
// run on any goroutine (tensor cleanups run on the runtime's).
func (a *allocator) put(p cu.DevicePtr, c int64) {
	a.mu.Lock()
	a.free[c] = append(a.free[c], p)
	a.inUse -= c
	a.cached += c
	a.mu.Unlock()
}

// trim frees every cached block; on the device goroutine only.
func (a *allocator) trim() {
	a.mu.Lock()
	free := a.free
	a.free = map[int64][]cu.DevicePtr{}
	a.cached = 0
	a.mu.Unlock()
	for _, l := range free {
		for _, p := range l {
			_ = cu.MemFree(p) // a failing free leaves nothing to recover
		}
	}
}

// MemStats reports bytes handed out and bytes cached on free lists.
func (d *Device) MemStats() (inUse, cached int64) {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return d.mem.inUse, d.mem.cached
}

// buffer is one allocation. Tensors view it through storage; when the last
// view becomes unreachable a cleanup returns the block to the cache.
type buffer struct {
	ptr   cu.DevicePtr
	bytes int64
}

type release struct {
	a   *allocator
	ptr cu.DevicePtr
	c   int64
}

// newBuffer allocates n bytes; on the device goroutine only.
func (d *Device) newBuffer(n int64) (*buffer, error) {
	if n == 0 {
		return &buffer{}, nil
	}
	p, c, err := d.mem.get(n)
	if err != nil {
		return nil, err
	}
	b := &buffer{ptr: p, bytes: n}
	runtime.AddCleanup(b, func(r release) { r.a.put(r.ptr, r.c) }, release{d.mem, p, c})
	return b, nil
}

// scratch is a block for the duration of one operation: released right
// after its kernels are queued (see allocator on why that is safe).
type scratch struct {
	ptr cu.DevicePtr
	c   int64
}

func (d *Device) scratch(n int64) (scratch, error) {
	p, c, err := d.mem.get(max(n, 1))
	return scratch{p, c}, err
}

func (d *Device) done(s scratch) { d.mem.put(s.ptr, s.c) }
