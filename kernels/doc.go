// Package kernels holds the CUDA sources of the uniter GPU backend, one op
// family per .cu file, and (in the cuda build) the fatbin nvcc makes of
// them, embedded as Fatbin. See NOTES.md for the design and measurements
// of each kernel.
package kernels
