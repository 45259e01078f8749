// Package dist is what data-parallel training needs beyond one process:
// the ranks a launcher (torchrun, SLURM, Open MPI) gives, the rendezvous
// key-value store rank 0 serves, and collectives between processes (Gloo
// over TCP on the CPU).
package dist

import "time"

// KV is the rendezvous key-value store every rank of a run reaches.
type KV interface {
	// Set stores value under key, replacing any earlier value.
	Set(key string, value []byte) error
	// Get waits up to timeout for key to be set and returns its value.
	Get(key string, timeout time.Duration) ([]byte, error)
	// Add adds delta to the integer stored at key (0 when absent) and
	// returns the new value.
	Add(key string, delta int64) (int64, error)
}
