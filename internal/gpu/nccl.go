//go:build cuda

package gpu

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "nccl_shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"uniter/internal/compute"
)

// ErrNoNCCL is wrapped by every error that comes from libnccl.so.2 being
// absent, so that a launcher can fall back to a single replica.
var ErrNoNCCL = errors.New("libnccl.so.2 not found: the CUDA binary runs one replica without NCCL")

// DefaultNCCLTimeout bounds NewNCCL's rendezvous with the other ranks and
// is the Timeout of each new communicator. A peer that died or stalled
// then surfaces as an error instead of a hang.
var DefaultNCCLTimeout = 60 * time.Second

// ncclGrace is how much longer than Timeout a caller waits for the NCCL
// thread itself before giving up on it: the thread bounds its own waits,
// so only a host call blocked inside NCCL (a connection to a dead peer)
// runs past it.
const ncclGrace = 10 * time.Second

var ncclLib struct {
	once sync.Once
	err  error
}

// loadNCCL opens the library once per process: $UNITER_NCCL_LIB when set
// (a file path, for hosts where NCCL sits in a Python wheel), else
// libnccl.so.2 from the loader's search path (LD_LIBRARY_PATH included).
func loadNCCL() error {
	ncclLib.once.Do(func() {
		path, env := "libnccl.so.2", os.Getenv("UNITER_NCCL_LIB")
		if env != "" {
			path = env
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var msg [1024]C.char
		switch C.uniter_nccl_load(cpath, &msg[0], C.size_t(len(msg))) {
		case 0:
		case 1:
			if env != "" {
				ncclLib.err = fmt.Errorf("%w (UNITER_NCCL_LIB=%s: %s)", ErrNoNCCL, env, C.GoString(&msg[0]))
			} else {
				ncclLib.err = fmt.Errorf("%w (%s)", ErrNoNCCL, C.GoString(&msg[0]))
			}
		default:
			ncclLib.err = fmt.Errorf("nccl: %s lacks an entry point the trainer needs: %s", path, C.GoString(&msg[0]))
		}
	})
	return ncclLib.err
}

// NCCLAvailable reports whether NCCL can be used: nil, or why not (an error
// wrapping ErrNoNCCL when the library is absent).
func NCCLAvailable() error { return loadNCCL() }

// NCCLVersion is the loaded library's NCCL_VERSION_CODE (22805 for 2.28.5).
func NCCLVersion() (int, error) {
	if err := loadNCCL(); err != nil {
		return 0, err
	}
	var v C.int
	if err := ncclCheck("ncclGetVersion", C.uniter_nccl_get_version(&v)); err != nil {
		return 0, err
	}
	return int(v), nil
}

// NCCLUniqueID makes the id that names a new communicator. One rank (by
// convention rank 0) calls it and hands the bytes to all the others, which
// pass the same id to NewNCCL.
func NCCLUniqueID() ([128]byte, error) {
	var id [128]byte
	if err := loadNCCL(); err != nil {
		return id, err
	}
	var raw [C.UNITER_NCCL_UNIQUE_ID_BYTES]C.char
	if err := ncclCheck("ncclGetUniqueId", C.uniter_nccl_get_unique_id(&raw[0])); err != nil {
		return id, err
	}
	for i := range id {
		id[i] = byte(raw[i])
	}
	return id, nil
}

// ncclError is a failed NCCL call: its result code, NCCL's name for it and
// the library's last message, which says what actually went wrong.
type ncclError struct {
	call string
	code int
	name string
	last string
}

func (e *ncclError) Error() string {
	s := fmt.Sprintf("%s: %s (ncclResult %d)", e.call, e.name, e.code)
	if e.last != "" {
		s += ": " + e.last
	}
	return s
}

func ncclCheck(call string, r C.int) error {
	if r == C.UNITER_NCCL_SUCCESS {
		return nil
	}
	return &ncclError{call: call, code: int(r), name: C.GoString(C.uniter_nccl_get_error_string(r)),
		last: C.GoString(C.uniter_nccl_get_last_error(nil))}
}

var errNCCLClosed = errors.New("communicator closed")

// NCCL is a compute.Collective between CUDA replicas, one rank per GPU.
//
// Every call into NCCL and every wait runs on one goroutine of its own,
// locked to an OS thread with the backend's context current: AllReduceSum
// is called from a goroutine other than the one that queues the backward,
// and NCCL and the driver both bind state to the calling thread. Work runs
// on a communication stream of its own so that the backward keeps running
// on the compute stream while a bucket is summed.
//
// After any failure (an NCCL error, a peer's asynchronous error, a
// timeout) the communicator is aborted and every later call returns that
// first error: collectives are in lockstep across ranks, so a rank that
// misses one can never rejoin, and aborting makes the peers fail fast too.
type NCCL struct {
	// Timeout bounds each AllReduceSum, from its call to the sum being in
	// place. Set it before the first call; zero means DefaultNCCLTimeout.
	Timeout time.Duration

	rank, world int
	dev         *Device
	work        chan func()
	quit        chan struct{}
	stream      cu.Stream // the communication stream
	ready       cu.Event  // marks the compute stream's work before a call

	mu sync.Mutex
	// comm is nil before init succeeds and after destroy or abort.
	comm   C.uniter_nccl_comm
	failed error
	// reported and abandoned settle a race between NewNCCL timing out and
	// the NCCL thread finishing its init: whoever comes second cleans up.
	reported, abandoned bool

	closeOnce sync.Once
	closeErr  error
}

var _ compute.Collective = (*NCCL)(nil)

// NewNCCL creates the communicator of rank in a world of world ranks on
// backend be's device. Every rank calls it with the same id (from
// NCCLUniqueID on one of them); it returns once all have joined, or with an
// error after DefaultNCCLTimeout. NCCL before 2.30 refuses two ranks on one
// GPU.
func NewNCCL(be *Backend, id [128]byte, rank, world int) (compute.Collective, error) {
	if be == nil {
		return nil, fmt.Errorf("nccl rank %d of %d: nil backend", rank, world)
	}
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("nccl: rank %d of %d is out of range", rank, world)
	}
	if err := loadNCCL(); err != nil {
		return nil, fmt.Errorf("nccl rank %d of %d: %w", rank, world, err)
	}
	n := &NCCL{Timeout: DefaultNCCLTimeout, rank: rank, world: world, dev: be.Device(),
		work: make(chan func()), quit: make(chan struct{})}
	limit := DefaultNCCLTimeout
	started := make(chan error, 1)
	go n.loop(id, started)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case err := <-started:
		if err != nil {
			return nil, n.wrap("init", err)
		}
		return n, nil
	case <-timer.C:
	}
	n.mu.Lock()
	if n.reported {
		n.mu.Unlock()
		if err := <-started; err != nil {
			return nil, n.wrap("init", err)
		}
		return n, nil
	}
	err := fmt.Errorf("ncclCommInitRank did not return within %v: not every rank joined (a peer is dead, or was given another id)", limit)
	// If the init ever returns, the thread aborts what it made.
	n.abandoned, n.failed = true, err
	n.mu.Unlock()
	return nil, n.wrap("init", err)
}

func (n *NCCL) wrap(what string, err error) error {
	return fmt.Errorf("nccl rank %d of %d: %s: %w", n.rank, n.world, what, err)
}

// loop is the NCCL thread: context, stream and communicator, then the
// calls AllReduceSum and Close hand it, in order.
func (n *NCCL) loop(id [128]byte, started chan<- error) {
	runtime.LockOSThread()
	err := n.start(id)
	n.mu.Lock()
	if n.abandoned {
		n.mu.Unlock()
		if err == nil {
			_ = n.shutdown()
		}
		return
	}
	n.reported = true
	n.mu.Unlock()
	started <- err
	if err != nil {
		return
	}
	for {
		select {
		case f := <-n.work:
			f()
		case <-n.quit:
			return
		}
	}
}

// start runs on the NCCL thread. ncclCommInitRank takes the device from the
// thread's current context (through the CUDA runtime, which shares the
// primary context the backend uses), so the context is made current first.
func (n *NCCL) start(id [128]byte) error {
	if err := cu.SetCurrentContext(n.dev.ctx); err != nil {
		return fmt.Errorf("cuda: device %d set context: %w", n.dev.Ordinal, err)
	}
	var err error
	if n.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return fmt.Errorf("cuda: device %d communication stream: %w", n.dev.Ordinal, err)
	}
	if n.ready, err = cu.MakeEvent(cu.DisableTiming); err != nil {
		_ = n.stream.Destroy()
		return fmt.Errorf("cuda: device %d event: %w", n.dev.Ordinal, err)
	}
	var comm C.uniter_nccl_comm
	r := C.uniter_nccl_comm_init_rank(&comm, C.int(n.world), (*C.char)(unsafe.Pointer(&id[0])), C.int(n.rank))
	if err := ncclCheck("ncclCommInitRank", r); err != nil {
		// A communicator whose blocking init failed may be half built;
		// it is left alone rather than risk aborting it, since the run
		// stops on this error anyway.
		_ = cu.DestroyEvent(&n.ready)
		_ = n.stream.Destroy()
		return err
	}
	n.mu.Lock()
	n.comm = comm
	n.mu.Unlock()
	return nil
}

// call hands f to the NCCL thread and waits up to limit for it, for its
// turn included.
func (n *NCCL) call(limit time.Duration, f func() error) error {
	done := make(chan error, 1)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case n.work <- func() { done <- f() }:
	case <-n.quit:
		return errNCCLClosed
	case <-timer.C:
		return fmt.Errorf("the NCCL thread is still busy with an earlier call after %v", limit)
	}
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("no answer from the NCCL thread within %v: it is blocked inside NCCL (a peer is dead or stalled)", limit)
	}
}

// AllReduceSum replaces the F32 tensor t by its sum over all ranks. The
// work that produces t must already be queued on the backend, that is the
// Backend calls that wrote t have returned (on any goroutine) before this
// call; the sum waits for that work on the GPU, not on the host. When it
// returns, t holds the sum; t must not be written by other work until then.
// Calls must come in the same order on every rank, so concurrent calls on
// one rank need an order of their own.
func (n *NCCL) AllReduceSum(t *compute.Tensor) error {
	if t.DType != compute.F32 {
		return n.wrap("all-reduce", fmt.Errorf("tensor %v is %v, want %v", t.Shape, t.DType, compute.F32))
	}
	if _, ok := t.Data.(storage); !ok {
		return n.wrap("all-reduce", fmt.Errorf("tensor %v has %T storage, not CUDA memory", t.Shape, t.Data))
	}
	count := t.Len()
	if err := n.sticky(); err != nil {
		return n.wrap("all-reduce", err)
	}
	if count == 0 {
		return nil
	}
	limit := n.Timeout
	if limit <= 0 {
		limit = DefaultNCCLTimeout
	}
	p := dptr(t)
	err := n.call(limit+ncclGrace, func() error { return n.allReduce(p, count, limit) })
	// t's memory goes back to the allocator when t is collected, and the
	// allocator does not know about the communication stream: t must stay
	// reachable until NCCL is done with it.
	runtime.KeepAlive(t)
	if err != nil {
		n.mu.Lock()
		if n.failed == nil {
			// The thread did not answer; it aborts the communicator when
			// it gets back from NCCL, and no call waits on it meanwhile.
			n.failed = err
		}
		n.mu.Unlock()
		return n.wrap(fmt.Sprintf("all-reduce of %d floats", count), err)
	}
	return nil
}

// sticky is the error that ended the communicator, if any.
func (n *NCCL) sticky() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.failed
}

// live returns the communicator to use, or the error that ended it; on the
// NCCL thread only, which then carries out an abort a caller asked for.
func (n *NCCL) live() (C.uniter_nccl_comm, error) {
	n.mu.Lock()
	comm, failed := n.comm, n.failed
	n.mu.Unlock()
	if failed != nil {
		return nil, n.fail(failed)
	}
	if comm == nil {
		return nil, errNCCLClosed
	}
	return comm, nil
}

// fail records err as the communicator's end and aborts it; on the NCCL
// thread only, so that no NCCL call on the communicator is in flight when
// it is freed.
func (n *NCCL) fail(err error) error {
	n.mu.Lock()
	if n.failed == nil {
		n.failed = err
	}
	first := n.failed
	comm := n.comm
	n.comm = nil
	n.mu.Unlock()
	if comm != nil {
		if aerr := ncclCheck("ncclCommAbort", C.uniter_nccl_comm_abort(comm)); aerr != nil {
			return fmt.Errorf("%w (and then %v)", first, aerr)
		}
	}
	return first
}

// allReduce runs on the NCCL thread. The communication stream waits on an
// event recorded on the compute stream, which orders the sum after the
// kernels that produced the buffer without stopping either stream or the
// host; then the thread polls until the communication stream is done.
func (n *NCCL) allReduce(p cu.DevicePtr, count int, limit time.Duration) error {
	comm, err := n.live()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(limit)
	if err := n.ready.Record(n.dev.stream); err != nil {
		return n.fail(fmt.Errorf("cuda: recording an event on the compute stream: %w", err))
	}
	if err := n.stream.Wait(n.ready, 0); err != nil {
		return n.fail(fmt.Errorf("cuda: communication stream waiting on the compute stream: %w", err))
	}
	r := C.uniter_nccl_all_reduce(C.uint64_t(p), C.uint64_t(p), C.size_t(count), C.UNITER_NCCL_FLOAT32,
		C.UNITER_NCCL_SUM, comm, unsafe.Pointer(n.stream.C()))
	if err := ncclCheck("ncclAllReduce", r); err != nil {
		return n.fail(err)
	}
	return n.wait(deadline, limit)
}

// wait polls the communication stream rather than synchronising on it:
// a synchronise would block forever on a kernel waiting for a dead peer,
// while between polls the communicator's asynchronous error and the
// deadline are checked. It spins briefly first because most buckets finish
// within a few hundred microseconds, then backs off to millisecond sleeps.
func (n *NCCL) wait(deadline time.Time, limit time.Duration) error {
	spinUntil := time.Now().Add(200 * time.Microsecond)
	nap := 20 * time.Microsecond
	for {
		err := n.stream.Query()
		if err == nil {
			return nil
		}
		if !errors.Is(err, cu.NotReady) {
			return n.fail(fmt.Errorf("cuda: communication stream: %w", err))
		}
		if err := n.asyncError(); err != nil {
			return n.fail(err)
		}
		now := time.Now()
		if now.After(deadline) {
			return n.fail(fmt.Errorf("not done after %v: a peer is dead or stalled", limit))
		}
		if now.Before(spinUntil) {
			runtime.Gosched()
			continue
		}
		time.Sleep(nap)
		nap = min(2*nap, time.Millisecond)
	}
}

// asyncError is the communicator's asynchronous error (a peer's failure
// that NCCL's own threads noticed) or the failure a caller recorded.
func (n *NCCL) asyncError() error {
	n.mu.Lock()
	comm, failed := n.comm, n.failed
	n.mu.Unlock()
	if failed != nil {
		return failed
	}
	if comm == nil {
		return errNCCLClosed
	}
	var a C.int
	if err := ncclCheck("ncclCommGetAsyncError", C.uniter_nccl_comm_get_async_error(comm, &a)); err != nil {
		return err
	}
	if a != C.UNITER_NCCL_SUCCESS && a != C.UNITER_NCCL_IN_PROGRESS {
		return ncclCheck("asynchronous error", a)
	}
	return nil
}

// Close destroys the communicator (or aborts it after a failure) and the
// communication stream. It is bounded by Timeout like a call; later calls
// return an error.
func (n *NCCL) Close() error {
	n.closeOnce.Do(func() {
		limit := n.Timeout
		if limit <= 0 {
			limit = DefaultNCCLTimeout
		}
		if err := n.call(limit, n.shutdown); err != nil {
			n.closeErr = n.wrap("close", err)
		}
		close(n.quit)
	})
	return n.closeErr
}

// shutdown runs on the NCCL thread. After a failure the communicator was
// aborted already, or is aborted now: destroying it would wait for
// operations that will never finish.
func (n *NCCL) shutdown() error {
	n.mu.Lock()
	comm, failed := n.comm, n.failed
	n.comm = nil
	if n.failed == nil {
		n.failed = errNCCLClosed
	}
	n.mu.Unlock()
	var errs []error
	if comm != nil {
		if failed != nil {
			errs = append(errs, ncclCheck("ncclCommAbort", C.uniter_nccl_comm_abort(comm)))
		} else {
			errs = append(errs, ncclCheck("ncclCommDestroy", C.uniter_nccl_comm_destroy(comm)))
		}
	}
	// The driver defers the release of a stream that still has work
	// (an aborted kernel) until that work ends.
	if err := cu.DestroyEvent(&n.ready); err != nil {
		errs = append(errs, fmt.Errorf("cuda: destroying the event: %w", err))
	}
	if err := n.stream.Destroy(); err != nil {
		errs = append(errs, fmt.Errorf("cuda: destroying the communication stream: %w", err))
	}
	return errors.Join(errs...)
}
