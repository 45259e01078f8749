package npy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestHeaderAlignment(t *testing.T) {
	for _, shape := range [][]int{{3}, {2, 768}, {100000, 1024}, {1, 2, 3}} {
		h := Header(shape)
		if len(h)%64 != 0 {
			t.Errorf("shape %v: header %d bytes, want a multiple of 64", shape, len(h))
		}
		if h[len(h)-1] != '\n' {
			t.Errorf("shape %v: header does not end in a newline", shape)
		}
	}
	if h := string(Header([]int{3})); !strings.Contains(h, "'shape': (3,)") {
		t.Errorf("1-d shape tuple: %q", h)
	}
}

// TestNumpyReads checks the file with NumPy itself when it is installed.
func TestNumpyReads(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		t.Skip("python3-numpy not installed")
	}
	p := filepath.Join(t.TempDir(), "x.npy")
	if err := WriteFloat32(p, []int{2, 3}, []float32{1, 2, 3, 4, 5, -6.5}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-c", "import numpy as np, sys; a = np.load(sys.argv[1]); print(a.dtype, a.shape, a.sum())", p).CombinedOutput()
	if err != nil {
		t.Fatalf("numpy: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "float32 (2, 3) 8.5" {
		t.Errorf("numpy read %q", got)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFloat32(filepath.Join(dir, "bad.npy"), []int{2, 2}, []float32{1}); err == nil {
		t.Error("shape mismatch accepted")
	}
	if err := WriteFloat32(filepath.Join(dir, "missing", "x.npy"), []int{1}, []float32{1}); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed writes left %d files", len(entries))
	}
}
