// Reductions. Whole tensors (Sum, SumSq, AllFinite) in two stages with a
// fixed grid so that the result does not depend on timing: stage one
// writes one double per block, stage two (one block) sums those in order.
// fp64 accumulation keeps global gradient norms of ~1e8 elements exact to
// float32 precision. Rows (Argmax) one block each.
#include "common.cuh"

// argmax_better reports whether (v, i) ranks above (w, j) in torch.max's
// order: NaN above every number, the lower index among equals. It is a
// strict total order on distinct indices, so any reduction tree finds the
// same winner.
__device__ __forceinline__ bool argmax_better(float v, i64 i, float w, i64 j) {
  if (isnan(v)) return !isnan(w) || i < j;
  return v > w || (v == w && i < j);
}

// argmax_warp leaves the warp's best (v, i) in every lane.
__device__ __forceinline__ void argmax_warp(float& v, i64& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    i64 oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (argmax_better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

extern "C" {

// reduce_partial_f32: part[blockIdx.x] = sum over the block's grid-stride
// share of x (squared when sq != 0).
__global__ void reduce_partial_f32(double* part, const float* x, i64 sq, i64 n) {
  __shared__ double sh[32];
  double acc = 0.0;
  FOR_N(i, n) {
    double v = x[i];
    acc += sq ? v * v : v;
  }
  acc = block_sum_d(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// reduce_final_f64: out[0] = sum of part[0:nparts], one block.
__global__ void reduce_final_f64(double* out, const double* part, i64 nparts) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (i64 i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
  acc = block_sum_d(acc, sh);
  if (threadIdx.x == 0) out[0] = acc;
}

// nonfinite_f32 sets flag[0] = 1 if any element is NaN or +-Inf (an
// all-ones exponent). flag must be zeroed first; concurrent stores of the
// same value are benign.
__global__ void nonfinite_f32(int* flag, const float* x, i64 n) {
  FOR_N(i, n) {
    if ((__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u) flag[0] = 1;
  }
}

// argmax_rows_f32: idx[r] = the column of row r's best element under
// argmax_better. One block per row, at most 1024 threads in whole warps.
// (-inf, cols) starts each thread because it loses to every element.
__global__ void argmax_rows_f32(int* idx, const float* x, i64 rows, i64 cols) {
  __shared__ float sv[32];
  __shared__ i64 si[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * cols;
  float v = -INFINITY;
  i64 i = cols;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    if (argmax_better(xr[j], j, v, i)) {
      v = xr[j];
      i = j;
    }
  argmax_warp(v, i);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) {
    sv[w] = v;
    si[w] = i;
  }
  __syncthreads();
  if (w != 0) return;
  v = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
  i = lane < (int)(blockDim.x >> 5) ? si[lane] : cols;
  argmax_warp(v, i);
  if (lane == 0) idx[r] = (int)i;
}

}  // extern "C"
