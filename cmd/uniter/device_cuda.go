//go:build cuda

package main

import (
	"fmt"
	"time"

	"uniter/internal/compute"
	"uniter/internal/dist"
	"uniter/internal/gpu"
	"uniter/internal/train"
)

// The cuda build wires the GPU backend into --device. Linking
// gorgonia.org/cu means the binary exits at start-up on a machine without
// a CUDA driver and GPU (its package init calls cuInit), so `make cuda`
// binaries are for GPU hosts only.
func init() {
	cudaBackend = func(ordinal int) (compute.Backend, error) { return gpu.New(ordinal) }
	cudaSummary = gpu.Summary
	ncclFactory = newNCCLFactory
}

// ncclIDKey is where rank 0 publishes the NCCL id of the run.
const ncclIDKey = "uniter/nccl_id"

// newNCCLFactory makes the id of the run's NCCL communicators (process 0,
// shared through kv with the others) and returns what creates each
// replica's communicator.
func newNCCLFactory(kv dist.KV, procRank int) (train.CollectiveFunc, error) {
	if err := gpu.NCCLAvailable(); err != nil {
		return nil, fmt.Errorf("more than one CUDA replica: %w", err)
	}
	var id [128]byte
	if procRank == 0 {
		var err error
		if id, err = gpu.NCCLUniqueID(); err != nil {
			return nil, err
		}
		if kv != nil {
			if err := kv.Set(ncclIDKey, id[:]); err != nil {
				return nil, fmt.Errorf("publishing the NCCL id: %w", err)
			}
		}
	} else {
		b, err := kv.Get(ncclIDKey, 10*time.Minute)
		if err != nil {
			return nil, fmt.Errorf("rank %d: waiting for rank 0's NCCL id: %w", procRank, err)
		}
		if len(b) != len(id) {
			return nil, fmt.Errorf("rank %d: rank 0's NCCL id has %d bytes, want %d", procRank, len(b), len(id))
		}
		copy(id[:], b)
	}
	return func(i int, be compute.Backend, rank, world int) (compute.Collective, error) {
		g, ok := be.(*gpu.Backend)
		if !ok {
			return nil, fmt.Errorf("replica %d: NCCL needs a CUDA backend, got %s", i, be.Name())
		}
		return gpu.NewNCCL(g, id, rank, world)
	}, nil
}
