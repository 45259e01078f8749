package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"uniter/internal/compute"
)

// cudaBackend opens the CUDA backend of a GPU ordinal (among the GPUs
// CUDA_VISIBLE_DEVICES leaves visible; the driver applies it); the
// cuda-tagged build sets it. It is a variable so that the default build
// never links gorgonia.org/cu, whose package init exits the process on
// machines without a GPU.
var cudaBackend func(ordinal int) (compute.Backend, error)

// cudaSummary describes the CUDA driver and GPUs; set by the cuda build.
var cudaSummary func() string

// defaultDevice is cuda when the binary has CUDA support and a GPU is
// present, else cpu.
func defaultDevice() string {
	if cudaBackend != nil {
		if _, err := cudaBackend(0); err == nil {
			return "cuda"
		}
	}
	return "cpu"
}

// deviceHelp is the help of every --device flag.
const deviceHelp = "cpu, cuda or cuda:N (GPU N among those CUDA_VISIBLE_DEVICES shows; default: cuda when built in and present, else cpu)"

// deviceNames are what --device completes to.
var deviceNames = []string{"cpu", "cuda", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:4", "cuda:5", "cuda:6", "cuda:7"}

// parseDevice splits --device into cpu or cuda and the GPU ordinal
// ("cuda" is GPU 0, "cuda:N" GPU N); "" picks the default.
func parseDevice(device string) (kind string, ordinal int, err error) {
	if device == "" {
		device = defaultDevice()
	}
	kind, n, hasN := strings.Cut(device, ":")
	switch {
	case kind == "cpu" && !hasN:
		return kind, 0, nil
	case kind == "cuda" && !hasN:
		return kind, 0, nil
	case kind == "cuda":
		if ordinal, err = strconv.Atoi(n); err == nil && ordinal >= 0 {
			return kind, ordinal, nil
		}
	}
	return "", 0, fmt.Errorf("--device %q: want cpu, cuda or cuda:N (N a GPU number among those CUDA_VISIBLE_DEVICES leaves visible)", device)
}

// openBackend returns the backend for --device ("" picks the default).
func openBackend(device string, threads int) (compute.Backend, error) {
	kind, ordinal, err := parseDevice(device)
	if err != nil {
		return nil, err
	}
	if kind == "cpu" {
		return compute.NewCPU(threads), nil
	}
	return openCUDA(device, ordinal)
}

// openCUDA opens GPU ordinal for the --device value device, saying which
// GPUs were visible when it does not exist.
func openCUDA(device string, ordinal int) (compute.Backend, error) {
	if cudaBackend == nil {
		return nil, fmt.Errorf("--device %s: this binary was built without CUDA support (build it with `make cuda`)", device)
	}
	be, err := cudaBackend(ordinal)
	if err != nil {
		if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
			return nil, fmt.Errorf("--device %s (CUDA_VISIBLE_DEVICES=%q): %w", device, v, err)
		}
		return nil, fmt.Errorf("--device %s: %w", device, err)
	}
	return be, nil
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
