//go:build cuda

package gpu

import (
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"uniter/internal/compute"
)

// TestNCCLOneRank checks the NCCL plumbing with a 1-rank communicator (NCCL
// before 2.30 refuses two ranks on one GPU; the sums themselves are tested
// on the CPU backend): loading, the by-value id of ncclCommInitRank, the
// ordering after the compute stream, the wait, views and Close.
func TestNCCLOneRank(t *testing.T) {
	if err := NCCLAvailable(); err != nil {
		// gpu-check's NCCL stage sets UNITER_NCCL_REQUIRE=1: there a missing
		// library is a failure, not a skip that would pass unnoticed.
		if os.Getenv("UNITER_NCCL_REQUIRE") == "1" {
			t.Fatalf("NCCL required: %v", err)
		}
		t.Skipf("NCCL unavailable (point LD_LIBRARY_PATH or UNITER_NCCL_LIB at libnccl.so.2): %v", err)
	}
	be := gpuBackend(t)
	v, err := NCCLVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NCCL version code %d", v)
	id, err := NCCLUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewNCCL(be, id, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.(*NCCL).Timeout = 20 * time.Second

	// The tensor is written by kernels queued just before the call, and
	// the call comes from another goroutine, as in the overlapped backward.
	r := rand.New(rand.NewPCG(7, 11))
	n := 1<<20 + 37
	h := randNZ(r, 1, n).f32
	x := be.FromF32(h, n)
	y := be.Alloc(compute.F32, n)
	be.Copy(y, x)
	be.Scale(y, 2)
	done := make(chan error, 1)
	go func() { done <- c.AllReduceSum(y) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := be.ToF32(y)
	for i := range h {
		if got[i] != 2*h[i] {
			t.Fatalf("element %d: got %v, want %v (a 1-rank sum is the identity)", i, got[i], 2*h[i])
		}
	}

	// A view starts inside its buffer: the all-reduce must use the view's
	// address and length and leave the rest alone.
	m := randNZ(r, 1, 9, 33).f32
	z := be.FromF32(m, 9, 33)
	if err := c.AllReduceSum(z.RowRange(3, 7)); err != nil {
		t.Fatal(err)
	}
	gz := be.ToF32(z)
	for i := range m {
		if gz[i] != m[i] {
			t.Fatalf("view: element %d: got %v, want %v", i, gz[i], m[i])
		}
	}

	if err := c.AllReduceSum(be.Alloc(compute.F32, 0)); err != nil {
		t.Fatalf("empty tensor: %v", err)
	}
	if err := c.AllReduceSum(be.FromI32([]int32{1, 2}, 2)); err == nil {
		t.Fatal("I32 tensor: want an error")
	}

	// The host-side cost of a call on a 25 MB bucket (the DDP bucket size):
	// with one rank NCCL moves nothing, so this is the event, the enqueue
	// and the polling.
	b := be.Alloc(compute.F32, 25<<20/4)
	const reps = 20
	start := time.Now()
	for range reps {
		if err := c.AllReduceSum(b); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("1-rank all-reduce of 25 MB: %v per call", time.Since(start)/reps)

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.AllReduceSum(y); err == nil {
		t.Fatal("after Close: want an error")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
