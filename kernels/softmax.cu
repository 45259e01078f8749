// Softmax over the valid prefix of each row (the fine-tuning heads'
// attention pooling, compute.Backend SoftmaxRows) and its backward. One
// block per row with double sums, as the CPU backend; rows are a sequence
// long (a few hundred at most) and few, so these are a small share of a
// step.
#include "common.cuh"

extern "C" {

// softmax_rows_f32: out[r,j] = exp(x[r,j]-m)/sum for j < n = lens[r], where
// m and sum run over the prefix, and 0 beyond it. The exponential is
// rounded to float before scaling, as the CPU backend does, so the two
// agree to the last bit wherever exp does. Each thread writes only elements
// it alone reads, after the block reductions, so out may alias x.
__global__ void softmax_rows_f32(float* out, const float* x, const int* lens, i64 rows, i64 cols) {
  __shared__ double sh[32];
  __shared__ float shf[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const i64 n = lens[r];
  const float* xr = x + r * cols;
  float* o = out + r * cols;
  float mx = -INFINITY;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, xr[j]);
  double m = block_max(mx, shf);
  double sum = 0.0;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) sum += exp((double)xr[j] - m);
  sum = block_sum_d(sum, sh);
  double inv = 1.0 / sum;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    o[j] = j < n ? (float)((double)(float)exp((double)xr[j] - m) * inv) : 0.f;
}

// softmax_rows_bwd_f32: dx = y*(dy - sum_j dy_j*y_j) per row. The dot
// product is complete (block_sum_d synchronises) before any element is
// written, so dx may alias dy.
__global__ void softmax_rows_bwd_f32(float* dx, const float* y, const float* dy, i64 rows, i64 cols) {
  __shared__ double sh[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* yr = y + r * cols;
  const float* dyr = dy + r * cols;
  double dot = 0.0;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) dot += (double)yr[j] * (double)dyr[j];
  dot = block_sum_d(dot, sh);
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    dx[r * cols + j] = (float)((double)yr[j] * ((double)dyr[j] - dot));
}

}  // extern "C"
