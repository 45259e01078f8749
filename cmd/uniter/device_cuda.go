//go:build cuda

package main

import (
	"uniter/internal/compute"
	"uniter/internal/gpu"
)

// The cuda build wires the GPU backend into --device. Linking
// gorgonia.org/cu means the binary exits at start-up on a machine without
// a CUDA driver and GPU (its package init calls cuInit), so `make cuda`
// binaries are for GPU hosts only.
func init() {
	cudaBackend = func() (compute.Backend, error) { return gpu.New(0) }
	cudaSummary = gpu.Summary
}
