package compute

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBLASCore guards against OpenBLAS's SSE3 fallback on CPUs it does not
// recognise, which made every product about seven times slower.
func TestBLASCore(t *testing.T) {
	NewCPU(1)
	core := BLASCore()
	t.Logf("OpenBLAS core: %s", core)
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip("no /proc/cpuinfo")
	}
	if os.Getenv("OPENBLAS_CORETYPE") == "" && strings.Contains(string(info), " avx2 ") && core == "Prescott" {
		t.Errorf("OpenBLAS uses the Prescott kernels on an AVX2 CPU")
	}
}

// TestBLASWorkersSleep checks that OpenBLAS's workers stop busy-waiting soon
// after a product instead of holding a core for a tenth of a second.
func TestBLASWorkersSleep(t *testing.T) {
	if os.Getenv("OPENBLAS_THREAD_TIMEOUT") != "" {
		t.Skip("OPENBLAS_THREAD_TIMEOUT chosen by the user")
	}
	c := NewCPU(2)
	a, b, out := c.Alloc(F32, 256, 256), c.Alloc(F32, 256, 256), c.Alloc(F32, 256, 256)
	c.Gemm(false, false, 1, a, b, 0, out)
	before, err := threadCPUTicks()
	if err != nil {
		t.Skip(err)
	}
	time.Sleep(300 * time.Millisecond)
	after, err := threadCPUTicks()
	if err != nil {
		t.Skip(err)
	}
	for tid, ticks := range after {
		// A spinning worker gathers up to 30 ticks (10 ms each) here; an
		// idle thread none.
		if d := ticks - before[tid]; d >= 5 {
			t.Errorf("thread %s used %d ticks of CPU while the process slept", tid, d)
		}
	}
}

// threadCPUTicks maps each thread of the process to its user+system time.
func threadCPUTicks() (map[string]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	ticks := map[string]int{}
	for _, task := range tasks {
		stat, err := os.ReadFile("/proc/self/task/" + task.Name() + "/stat")
		if err != nil {
			continue // the thread exited
		}
		// Fields after the parenthesised command: utime and stime are the
		// 12th and 13th.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		utime, err1 := strconv.Atoi(f[11])
		stime, err2 := strconv.Atoi(f[12])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("unexpected /proc stat line %q", s)
		}
		ticks[task.Name()] = utime + stime
	}
	return ticks, nil
}
