// LayerNorm forward and backward over rows of length n with fp32 inputs and
// double-precision statistics (the CPU reference uses two float64 passes).
// One block per row: a BERT row (768 floats) is 3 KB, so the second pass
// hits L1 and the kernels run at the cost of one read and one write
// (2*M*N*4 bytes forward; backward reads x and dout twice, once for the
// column reduction of dgamma/dbeta and once for dx).
#include "common.cuh"

extern "C" {

// layernorm_fwd_f32: out = (x-mean)*rstd*gamma + beta; saves mean, rstd.
// Variance is the biased mean of squared deviations from the mean (second
// pass), so rows with a large mean lose no precision.
__global__ void layernorm_fwd_f32(float* out, float* mean, float* rstd, const float* x, const float* gamma,
                                  const float* beta, double eps, i64 rows, i64 n) {
  __shared__ double sh[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * n;
  double s = 0.0;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)xr[j];
  double mu = block_sum_d(s, sh) / (double)n;
  double q = 0.0;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
    double d = (double)xr[j] - mu;
    q += d * d;
  }
  double rs = 1.0 / sqrt(block_sum_d(q, sh) / (double)n + (double)(float)eps);
  if (threadIdx.x == 0) {
    mean[r] = (float)mu;
    rstd[r] = (float)rs;
  }
  float* o = out + r * n;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x)
    o[j] = (float)(((double)xr[j] - mu) * rs * (double)gamma[j] + (double)beta[j]);
}

// layernorm_bwd_params_f32 accumulates dgamma += sum_r dout*xhat and
// dbeta += sum_r dout, column-parallel (block (32, 8), as sum_rows_f32) with
// a fixed summation order. It must run before layernorm_bwd_dx_f32 because
// dx may alias dout.
__global__ void layernorm_bwd_params_f32(float* dgamma, float* dbeta, const float* dout, const float* x,
                                         const float* mean, const float* rstd, i64 rows, i64 n) {
  __shared__ double pg[8][33], pb[8][33];
  i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
  double ag = 0.0, ab = 0.0;
  if (c < n)
    for (i64 r = threadIdx.y; r < rows; r += 8) {
      double g = dout[r * n + c];
      ag += g * ((double)x[r * n + c] - (double)mean[r]) * (double)rstd[r];
      ab += g;
    }
  pg[threadIdx.y][threadIdx.x] = ag;
  pb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < n) {
    double sg = 0.0, sb = 0.0;
    for (int k = 0; k < 8; k++) {
      sg += pg[k][threadIdx.x];
      sb += pb[k][threadIdx.x];
    }
    dgamma[c] = (float)((double)dgamma[c] + sg);
    dbeta[c] = (float)((double)dbeta[c] + sb);
  }
}

// layernorm_bwd_dx_f32: dx = rstd*(g - mean(g) - xhat*mean(g*xhat)) with
// g = gamma*dout; one block per row. dx may alias dout: every thread reads
// its dout elements for the sums before the block-wide barrier inside
// block_sum_d, and writes only the elements it read.
__global__ void layernorm_bwd_dx_f32(float* dx, const float* dout, const float* x, const float* mean,
                                     const float* rstd, const float* gamma, i64 rows, i64 n) {
  __shared__ double sh[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * n;
  const float* gr = dout + r * n;
  double mu = mean[r], rs = rstd[r];
  double sg = 0.0, sgx = 0.0;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
    double gg = (double)gamma[j] * (double)gr[j];
    sg += gg;
    sgx += gg * ((double)xr[j] - mu) * rs;
  }
  sg = block_sum_d(sg, sh) / (double)n;
  sgx = block_sum_d(sgx, sh) / (double)n;
  float* d = dx + r * n;
  for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
    double xhat = ((double)xr[j] - mu) * rs;
    d[j] = (float)(rs * ((double)gamma[j] * (double)gr[j] - sg - xhat * sgx));
  }
}

}  // extern "C"
