// Package gpu is the CUDA backend of uniter: a compute.Backend whose
// tensors live in GPU memory and whose operations are the kernels of the
// repository's kernels/ directory, loaded from the fatbin embedded in the
// cuda build.
//
// Everything but this file is built only with the `cuda` build tag, because
// gorgonia.org/cu (the driver API binding used here) calls cuInit in its
// package init and exits the process when no GPU is present. A binary or
// test binary built with the tag must therefore only be run on a GPU host;
// scripts/gpu-check.sh is the runner of this package's tests.
//
// Structure: one Device per GPU owns a context and a stream on a goroutine
// locked to its OS thread; every CUDA call is marshalled to that goroutine.
// Device memory comes from a caching allocator with size-class free lists,
// returned to it when the Go tensors that view it become unreachable. Each
// kernel has a typed Go launcher (launch.go) that checks the launch and,
// with UNITER_CUDA_SYNC=1, synchronises after it so that an asynchronous
// fault is reported with the kernel's name.
package gpu
