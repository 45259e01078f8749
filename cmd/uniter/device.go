package main

import (
	"fmt"
	"runtime"

	"uniter/internal/compute"
)

// cudaBackend opens the CUDA backend; the cuda-tagged build sets it. It is a
// variable so that the default build never links gorgonia.org/cu, whose
// package init exits the process on machines without a GPU.
var cudaBackend func() (compute.Backend, error)

// cudaSummary describes the CUDA driver and GPUs; set by the cuda build.
var cudaSummary func() string

// defaultDevice is cuda when the binary has CUDA support and a GPU is
// present, else cpu (CLI.md).
func defaultDevice() string {
	if cudaBackend != nil {
		if _, err := cudaBackend(); err == nil {
			return "cuda"
		}
	}
	return "cpu"
}

// openBackend returns the backend for --device ("" picks the default).
func openBackend(device string, threads int) (compute.Backend, error) {
	if device == "" {
		device = defaultDevice()
	}
	switch device {
	case "cpu":
		return compute.NewCPU(threads), nil
	case "cuda":
		if cudaBackend == nil {
			return nil, fmt.Errorf("--device cuda: this binary was built without CUDA support (build it with `make cuda`)")
		}
		return cudaBackend()
	}
	return nil, fmt.Errorf("--device %q: want cpu or cuda", device)
}

func deviceSummary() string {
	s := fmt.Sprintf("cpu (%d threads)", runtime.NumCPU())
	if cudaSummary != nil {
		s += "; " + cudaSummary()
	} else {
		s += "; cuda: not built in"
	}
	return s
}
