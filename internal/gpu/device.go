//go:build cuda

package gpu

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"gorgonia.org/cu"

	"uniter/kernels"
)

// Device is one GPU: its context, its stream, the loaded kernels and the
// memory cache. All driver calls run on the device's own goroutine, which is
// locked to one OS thread with the context current, because a CUDA context
// is per thread and Go moves goroutines between threads.
type Device struct {
	Ordinal int
	Name    string
	SMs     int
	CC      [2]int
	// syncEach synchronises after every launch (UNITER_CUDA_SYNC=1): slow,
	// but an asynchronous fault is then blamed on the kernel that made it.
	syncEach bool

	work   chan func()
	ctx    cu.CUContext
	stream cu.Stream
	mod    cu.Module
	fns    map[string]cu.Function
	mem    *allocator
	// FatbinSource names where the kernels came from (embedded or a path).
	FatbinSource string
}

var (
	devMu   sync.Mutex
	devices = map[int]*Device{}
)

// Open returns the device with the given ordinal, starting it on first use:
// its goroutine, primary context, a non-blocking stream and the kernels
// (from the fatbin at $UNITER_FATBIN if set, else the embedded one).
func Open(ordinal int) (*Device, error) {
	devMu.Lock()
	defer devMu.Unlock()
	if d, ok := devices[ordinal]; ok {
		return d, nil
	}
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda: counting devices: %w", err)
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: device %d: %d device(s) present", ordinal, n)
	}
	d := &Device{Ordinal: ordinal, work: make(chan func()), fns: map[string]cu.Function{},
		syncEach: os.Getenv("UNITER_CUDA_SYNC") == "1"}
	d.mem = newAllocator(d)
	started := make(chan error)
	go d.loop(started)
	if err := <-started; err != nil {
		return nil, err
	}
	devices[ordinal] = d
	return d, nil
}

// loop is the device goroutine: it binds the context to its thread, loads
// the module and then runs submitted functions in order, forever.
func (d *Device) loop(started chan<- error) {
	runtime.LockOSThread()
	err := d.start()
	started <- err
	if err != nil {
		return
	}
	for f := range d.work {
		f()
	}
}

func (d *Device) start() error {
	dev, err := cu.GetDevice(d.Ordinal)
	if err != nil {
		return fmt.Errorf("cuda: device %d: %w", d.Ordinal, err)
	}
	if d.Name, err = dev.Name(); err != nil {
		return fmt.Errorf("cuda: device %d name: %w", d.Ordinal, err)
	}
	attrs, err := dev.Attributes(cu.MultiprocessorCount, cu.ComputeCapabilityMajor, cu.ComputeCapabilityMinor)
	if err != nil {
		return fmt.Errorf("cuda: device %d attributes: %w", d.Ordinal, err)
	}
	d.SMs, d.CC = attrs[0], [2]int{attrs[1], attrs[2]}
	if d.ctx, err = dev.RetainPrimaryCtx(); err != nil {
		return fmt.Errorf("cuda: device %d primary context: %w", d.Ordinal, err)
	}
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return fmt.Errorf("cuda: device %d set context: %w", d.Ordinal, err)
	}
	if d.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return fmt.Errorf("cuda: device %d stream: %w", d.Ordinal, err)
	}
	image, src := kernels.Fatbin, "embedded"
	if p := os.Getenv("UNITER_FATBIN"); p != "" {
		if image, err = os.ReadFile(p); err != nil {
			return fmt.Errorf("cuda: UNITER_FATBIN: %w", err)
		}
		src = p
	}
	if len(image) == 0 {
		return fmt.Errorf("cuda: fatbin from %s is empty (run make -C kernels)", src)
	}
	if d.mod, err = cu.LoadData(string(image)); err != nil {
		return fmt.Errorf("cuda: loading fatbin from %s on %s (sm_%d%d): %w", src, d.Name, d.CC[0], d.CC[1], err)
	}
	d.FatbinSource = src
	for _, name := range kernelNames {
		fn, err := d.mod.Function(name)
		if err != nil {
			return fmt.Errorf("cuda: fatbin from %s has no kernel %s: %w", src, name, err)
		}
		d.fns[name] = fn
	}
	return d.setupHGemm()
}

// Do runs f on the device goroutine and waits for it. A panic in f is
// re-raised in the caller so that Backend misuse reports where it happened.
func (d *Device) Do(f func() error) error {
	var err error
	var perr any
	done := make(chan struct{})
	d.work <- func() {
		defer close(done)
		defer func() { perr = recover() }()
		err = f()
	}
	<-done
	if perr != nil {
		panic(perr)
	}
	return err
}

// Sync waits for all work queued on the device's stream.
func (d *Device) Sync() error {
	return d.Do(func() error { return d.sync("synchronize") })
}

// sync synchronises the stream; on the device goroutine only.
func (d *Device) sync(what string) error {
	if err := d.stream.Synchronize(); err != nil {
		return fmt.Errorf("cuda: %s: %w", what, err)
	}
	return nil
}

// Summary describes the driver and every GPU for `uniter version`-style
// output.
func Summary() string {
	n, err := cu.NumDevices()
	if err != nil {
		return fmt.Sprintf("cuda: %v", err)
	}
	s := fmt.Sprintf("cuda driver %d, %d device(s)", cu.Version(), n)
	for i := 0; i < n; i++ {
		dev, err := cu.GetDevice(i)
		if err != nil {
			continue
		}
		name, _ := dev.Name()
		mem, _ := dev.TotalMem()
		at, _ := dev.Attributes(cu.ComputeCapabilityMajor, cu.ComputeCapabilityMinor, cu.MultiprocessorCount)
		if len(at) == 3 {
			s += fmt.Sprintf("; %d: %s sm_%d%d %d SMs %.1f GiB", i, name, at[0], at[1], at[2], float64(mem)/(1<<30))
		}
	}
	return s
}
