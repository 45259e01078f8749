package compute

import (
	"sync"
	"sync/atomic"
)

// The chunks of parallel operations run on one process-wide set of worker
// goroutines shared by every CPU backend, and the calling goroutine takes
// chunks too: an operation never waits for a worker that has not started,
// chunks nobody picked up run on the caller. A tiny model's step is a few
// hundred operations of tens to hundreds of microseconds each, so a
// worker that is slow to wake (a virtual machine's idle core takes tens of
// microseconds) only costs that operation its help.

// workers is the shared pool: jobs offers operations to idle workers, n is
// how many have been started.
var workers struct {
	mu   sync.Mutex
	n    int
	jobs chan *job
}

// startWorkers makes sure at least n workers exist.
func startWorkers(n int) {
	workers.mu.Lock()
	defer workers.mu.Unlock()
	if workers.jobs == nil {
		workers.jobs = make(chan *job, 256)
	}
	for ; workers.n < n; workers.n++ {
		go func() {
			for j := range workers.jobs {
				j.run()
			}
		}()
	}
}

// job is one parallel operation: fn over chunks of size items of [0, n).
// Chunks are claimed in any order by the caller and the workers; which
// goroutine runs a chunk never changes its result.
type job struct {
	fn        func(lo, hi int)
	n, size   int
	chunks    int64
	next      atomic.Int64
	remaining sync.WaitGroup
}

// run claims and runs chunks until none is left.
func (j *job) run() {
	for {
		i := j.next.Add(1) - 1
		if i >= j.chunks {
			return
		}
		lo := int(i) * j.size
		j.fn(lo, min(lo+j.size, j.n))
		j.remaining.Done()
	}
}

// parallelFor runs fn over [0, n) split into at most c.threads contiguous
// chunks of at least grain items. The split depends only on n, grain and
// the thread count.
func (c *CPU) parallelFor(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	chunks := min(c.threads, (n+grain-1)/max(grain, 1))
	if chunks <= 1 {
		fn(0, n)
		return
	}
	size := (n + chunks - 1) / chunks
	j := &job{fn: fn, n: n, size: size, chunks: int64((n + size - 1) / size)}
	j.remaining.Add(int(j.chunks))
	for range j.chunks - 1 {
		select {
		case workers.jobs <- j:
		default:
			// Every worker is busy and the queue is full: the caller
			// runs what nobody takes.
		}
	}
	j.run()
	j.remaining.Wait()
}
