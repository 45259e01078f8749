// Whole-tensor reductions. Two stages with a fixed grid so that the result
// does not depend on timing: stage one writes one double per block, stage
// two (one block) sums those in order. fp64 accumulation keeps global
// gradient norms of ~1e8 elements exact to float32 precision.
#include "common.cuh"

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

}  // extern "C"
