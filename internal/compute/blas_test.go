package compute

import (
	"os"
	"strings"
	"testing"
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
