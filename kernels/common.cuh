// Shared device helpers for the uniter kernels.
//
// Argument convention: gorgonia.org/cu's Function.Launch copies every kernel
// argument as 8 bytes, so every __global__ parameter here is 8 bytes wide:
// pointers, long long, unsigned long long or double. Scalars that the
// Backend passes as float32 travel as double and are narrowed on the device
// (a float32 round-trips through double exactly).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

typedef long long i64;
typedef unsigned long long u64;

// dropout_uniform is compute.DropoutUniform: the splitmix64 finaliser of
// seed + (i+1)*golden, top 24 bits scaled to [0,1). Bit-exact with the Go
// code, which is what lets the backward regenerate the forward's mask.
__device__ __forceinline__ float dropout_uniform(u64 seed, u64 i) {
  u64 z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// keep_scale is the CPU backend's keepScale: scale when element i survives,
// else 0. p <= 0 keeps everything with scale 1.
__device__ __forceinline__ float keep_scale(u64 seed, u64 i, float p, float scale) {
  if (p <= 0.f) return 1.f;
  return dropout_uniform(seed, i) >= p ? scale : 0.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum_d reduces a double over a block of at most 1024 threads whose
// size is a multiple of 32; every thread gets the result. sh must hold 32
// doubles. The two __syncthreads make back-to-back calls on the same sh
// safe.
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum_d(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0;
  return warp_sum_d(v);
}

// block_max reduces a float maximum the same way.
__device__ __forceinline__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(v);
}

// Grid-stride loop over [0, n).
#define FOR_N(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
