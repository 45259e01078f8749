package train

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"uniter/internal/compute"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// replica is one data-parallel copy of the model with its task head and
// optimizer, on its own backend. Every replica applies the same reduced
// gradients, so all hold the same weights without ever exchanging them.
type replica struct {
	be   compute.Backend
	m    *model.Model
	task tasks.Task
	pt   *tasks.Pretrain  // pretraining runs
	down tasks.Downstream // fine-tuning runs
	upd  *Updater
	// grads is the flat gradient buffer, in GradStages order, and buckets
	// are its all-reduce units (data parallel only).
	grads   *compute.Tensor
	buckets []*compute.Tensor
	sent    int // buckets of this window handed to the all-reduce
	work    *worker
}

// worker runs a replica's calls on one locked OS thread: a GPU context is
// current on one thread, and Gloo's and NCCL's blocking calls tie up the
// thread they run on.
type worker struct {
	calls chan func()
	done  chan struct{}
}

func newWorker() *worker {
	w := &worker{calls: make(chan func()), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer close(w.done)
		for f := range w.calls {
			f()
		}
	}()
	return w
}

// run calls f on the worker's thread and waits for it.
func (w *worker) run(f func() error) error {
	var err error
	ran := make(chan struct{})
	w.calls <- func() {
		defer close(ran)
		err = f()
	}
	<-ran
	return err
}

func (w *worker) close() {
	close(w.calls)
	<-w.done
}

// onAll runs f(i, r) for every replica at once, each on its own worker
// (inline with a single replica), and returns the first error by replica
// order.
func onAll(reps []*replica, f func(i int, r *replica) error) error {
	if len(reps) == 1 && reps[0].work == nil {
		return f(0, reps[0])
	}
	errs := make([]error, len(reps))
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.work.run(func() error { return f(i, r) })
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			if len(reps) > 1 {
				return fmt.Errorf("replica %d: %w", i, err)
			}
			return err
		}
	}
	return nil
}

// BucketBytes is the size data-parallel gradients are all-reduced in: big
// enough that a bucket's latency is small next to its transfer, small
// enough that the first buckets go out early in the backward.
const BucketBytes = 25 << 20

// layout is where each all-reduce bucket lies in a replica's flat gradient
// buffer and which stage of the backward completes it.
type layout struct {
	offsets, sizes []int
	// last[b] is the stage whose end makes bucket b final.
	last []int
	// first[s] is the first bucket stage s can complete, so that a stage
	// completes buckets first[s] .. first[s+1]-1.
	first []int
}

// flattenGrads moves r's gradients into one flat buffer in backward order
// and cuts it into buckets of about bucketBytes, never splitting a stage's
// last parameter from the bucket it ends.
func flattenGrads(r *replica, bucketBytes int) (layout, error) {
	stages := r.m.GradStages()
	var order []*model.Param
	var stageEnd []int // element offset where each stage ends
	n := 0
	for _, ps := range stages {
		order = append(order, ps...)
		for _, p := range ps {
			n += p.Numel()
		}
		stageEnd = append(stageEnd, n)
	}
	flat, err := r.m.Params.FlattenGrads(order)
	if err != nil {
		return layout{}, err
	}
	r.grads = flat
	per := max(bucketBytes/4, 1)
	var l layout
	for off := 0; off < n; off += per {
		size := min(per, n-off)
		l.offsets = append(l.offsets, off)
		l.sizes = append(l.sizes, size)
	}
	// A bucket is final when the stage holding its last element ends.
	s := 0
	l.first = make([]int, len(stages)+1)
	for b := range l.offsets {
		end := l.offsets[b] + l.sizes[b]
		for stageEnd[s] < end {
			s++
		}
		l.last = append(l.last, s)
	}
	b := 0
	for s := range stages {
		l.first[s] = b
		for b < len(l.last) && l.last[b] == s {
			b++
		}
	}
	l.first[len(stages)] = len(l.last)
	r.buckets = r.buckets[:0]
	for i := range l.offsets {
		r.buckets = append(r.buckets, &compute.Tensor{Shape: []int{l.sizes[i]}, DType: compute.F32, Data: flat.Data.Slice(l.offsets[i], l.sizes[i])})
	}
	return l, nil
}

// gradSync all-reduces the replicas' gradient buckets over the whole world
// while the backward of the window's last micro-batch goes on.
type gradSync interface {
	// ready says replica i's bucket b is final; it is called on the
	// replica's worker, in bucket order.
	ready(i, b int)
	// wait blocks until every bucket of replica i is reduced.
	wait(i int) error
	// stats returns the window's communication time and the part of it
	// that ran before end, then starts the next window.
	stats(end time.Time) (total, hidden time.Duration)
	close()
}

// commClock records the intervals a window spent communicating.
type commClock struct {
	mu    sync.Mutex
	spans [][2]time.Time
}

func (c *commClock) add(start time.Time) {
	c.mu.Lock()
	c.spans = append(c.spans, [2]time.Time{start, time.Now()})
	c.mu.Unlock()
}

func (c *commClock) stats(end time.Time) (total, hidden time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.spans {
		total += s[1].Sub(s[0])
		stop := s[1]
		if end.Before(stop) {
			stop = end
		}
		if stop.After(s[0]) {
			hidden += stop.Sub(s[0])
		}
	}
	c.spans = c.spans[:0]
	return total, hidden
}

// hostSync reduces CPU replicas: the buckets of this process's replicas
// are summed in memory in replica order by one communication goroutine,
// all-reduced with the other processes (Gloo) when there are any, and
// copied back, so that every replica of the world gets the same bits.
type hostSync struct {
	reps   []*replica
	peers  HostComm // nil in a single process
	count  []int
	mu     sync.Mutex
	queue  chan int
	done   []chan error // per bucket, closed (after err is set) when reduced
	errs   []error
	clock  commClock
	worker *worker
}

// HostComm is a collective between the processes of a run on host memory:
// the gradients of CPU replicas, and the small sums every step needs (loss
// units, metrics, the stop decision).
type HostComm interface {
	AllReduceF32(buf []float32) error
	AllReduceF64(buf []float64) error
	AllGather(local []byte) ([][]byte, error)
}

func newHostSync(reps []*replica, peers HostComm) *hostSync {
	nb := len(reps[0].buckets)
	s := &hostSync{reps: reps, peers: peers, count: make([]int, nb), queue: make(chan int, nb), worker: newWorker()}
	s.arm()
	go s.loop()
	return s
}

// arm readies the per-bucket state for the next window.
func (s *hostSync) arm() {
	nb := len(s.count)
	s.done = make([]chan error, nb)
	s.errs = make([]error, nb)
	for b := range s.done {
		s.done[b] = make(chan error)
		s.count[b] = 0
	}
}

func (s *hostSync) ready(_, b int) {
	s.mu.Lock()
	s.count[b]++
	full := s.count[b] == len(s.reps)
	s.mu.Unlock()
	if full {
		s.queue <- b
	}
}

func (s *hostSync) loop() {
	for b := range s.queue {
		done := s.done[b]
		_ = s.worker.run(func() error {
			start := time.Now()
			s.errs[b] = s.reduce(b)
			s.clock.add(start)
			return nil
		})
		close(done)
	}
}

func (s *hostSync) reduce(b int) error {
	dst := compute.F32s(s.reps[0].buckets[b])
	for _, r := range s.reps[1:] {
		src := compute.F32s(r.buckets[b])
		for i, v := range src {
			dst[i] += v
		}
	}
	if s.peers != nil {
		if err := s.peers.AllReduceF32(dst); err != nil {
			return fmt.Errorf("gradient all-reduce: %w", err)
		}
	}
	for _, r := range s.reps[1:] {
		copy(compute.F32s(r.buckets[b]), dst)
	}
	return nil
}

func (s *hostSync) wait(i int) error {
	var first error
	for b, d := range s.done {
		<-d
		if first == nil && s.errs[b] != nil {
			first = s.errs[b]
		}
	}
	return first
}

func (s *hostSync) stats(end time.Time) (time.Duration, time.Duration) {
	t, h := s.clock.stats(end)
	s.arm()
	return t, h
}

func (s *hostSync) close() {
	close(s.queue)
	s.worker.close()
}

// deviceSync reduces device replicas with one collective each (CUDA:
// NCCL, which sums within and across processes alike), each on its own
// communication worker so that the reduction overlaps the backward.
type deviceSync struct {
	reps  []*replica
	colls []compute.Collective
	queue []chan int
	done  [][]chan struct{}
	errs  [][]error
	clock commClock
	wg    sync.WaitGroup
	work  []*worker
}

func newDeviceSync(reps []*replica, colls []compute.Collective) *deviceSync {
	nb := len(reps[0].buckets)
	s := &deviceSync{reps: reps, colls: colls}
	for range reps {
		s.queue = append(s.queue, make(chan int, nb))
		s.work = append(s.work, newWorker())
	}
	s.arm()
	for i := range reps {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for b := range s.queue[i] {
				done := s.done[i][b]
				_ = s.work[i].run(func() error {
					start := time.Now()
					s.errs[i][b] = s.colls[i].AllReduceSum(s.reps[i].buckets[b])
					s.clock.add(start)
					return nil
				})
				close(done)
			}
		}()
	}
	return s
}

func (s *deviceSync) arm() {
	nb := len(s.reps[0].buckets)
	s.done = make([][]chan struct{}, len(s.reps))
	s.errs = make([][]error, len(s.reps))
	for i := range s.reps {
		s.done[i] = make([]chan struct{}, nb)
		s.errs[i] = make([]error, nb)
		for b := range s.done[i] {
			s.done[i][b] = make(chan struct{})
		}
	}
}

func (s *deviceSync) ready(i, b int) { s.queue[i] <- b }

func (s *deviceSync) wait(i int) error {
	for b, d := range s.done[i] {
		<-d
		if err := s.errs[i][b]; err != nil {
			return fmt.Errorf("gradient all-reduce: %w", err)
		}
	}
	return nil
}

func (s *deviceSync) stats(end time.Time) (time.Duration, time.Duration) {
	t, h := s.clock.stats(end)
	// The clock summed every replica's reductions, which run side by side.
	n := time.Duration(len(s.reps))
	s.arm()
	return t / n, h / n
}

func (s *deviceSync) close() {
	for _, q := range s.queue {
		close(q)
	}
	s.wg.Wait()
	for i, w := range s.work {
		w.close()
		_ = s.colls[i].Close()
	}
}
