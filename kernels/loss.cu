// Row-wise losses: softmax cross-entropy against integer labels, KL
// divergence against a target distribution and summed binary cross-entropy
// with logits. One block per row; softmax rows are read three times (max,
// sums, gradient), the later passes from L1/L2. Rows are short (vocabulary
// 28996 for MLM, 1601 for MRC, 3129 VQA answers) and few, so these are a
// small share of a step.
#include "common.cuh"

extern "C" {

// softmax_xent_f32 mirrors the CPU: the label's exponential ey and the
// others' sum rest are kept apart so that the loss log1p(rest/ey) and the
// label's gradient -rest/sum avoid cancellation on confident rows. dlogits
// may be 0 (loss only) or alias logits (each thread reads its elements
// before writing them, after all block reductions).
__global__ void softmax_xent_f32(float* loss, float* dlogits, const float* logits, const int* labels, i64 ignore,
                                 double grad_scale, i64 rows, i64 cols) {
  __shared__ double sh[32];
  __shared__ float shf[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  int y = labels[r];
  float* g = dlogits ? dlogits + r * cols : 0;
  if ((i64)y == ignore) {
    if (threadIdx.x == 0) loss[r] = 0.f;
    if (g)
      for (i64 j = threadIdx.x; j < cols; j += blockDim.x) g[j] = 0.f;
    return;
  }
  const float* x = logits + r * cols;
  float mx = -INFINITY;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, x[j]);
  double m = block_max(mx, shf);
  double rest = 0.0;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    if (j != y) rest += (double)(float)exp((double)x[j] - m);
  rest = block_sum_d(rest, sh);
  double xy = x[y];
  double ey = exp(xy - m);
  double sum = ey + rest;
  if (threadIdx.x == 0) loss[r] = ey > 0.0 ? (float)log1p(rest / ey) : (float)(m + log(sum) - xy);
  if (!g) return;
  double f = grad_scale / sum;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    if (j == y)
      g[j] = (float)(-rest * f);
    else
      g[j] = (float)((double)(float)exp((double)x[j] - m) * f);
  }
}

// softmax_kl_f32: loss = sum_j t_j*(log t_j - log q_j) over t_j > 0 (0*log 0
// is 0, as torch.kl_div), dlogits = (q*sum(t) - t)*grad_scale; dlogits may
// alias logits.
__global__ void softmax_kl_f32(float* loss, float* dlogits, const float* logits, const float* target,
                               double grad_scale, i64 rows, i64 cols) {
  __shared__ double sh[32];
  __shared__ float shf[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* x = logits + r * cols;
  const float* t = target + r * cols;
  float mx = -INFINITY;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, x[j]);
  double m = block_max(mx, shf);
  double se = 0.0, ts = 0.0;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    se += (double)(float)exp((double)x[j] - m);
    ts += (double)t[j];
  }
  se = block_sum_d(se, sh);
  ts = block_sum_d(ts, sh);
  double lse = m + log(se);
  double l = 0.0;
  float* g = dlogits + r * cols;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    double logq = (double)x[j] - lse;
    double tj = t[j];
    if (tj > 0.0) l += tj * (log(tj) - logq);
    g[j] = (float)((exp(logq) * ts - tj) * grad_scale);
  }
  l = block_sum_d(l, sh);
  if (threadIdx.x == 0) loss[r] = (float)l;
}

// bce_logits_f32: loss[r] = sum_j max(x,0) - x*t + log1p(exp(-|x|)) and
// dlogits = (sigmoid(x) - t)*grad_scale, in double as the CPU backend;
// e = exp(-|x|) gives both terms without overflow. Each thread reads its
// logit before writing its gradient, so dlogits may alias logits; it may
// also be 0 (loss only).
__global__ void bce_logits_f32(float* loss, float* dlogits, const float* logits, const float* targets,
                               double grad_scale, i64 rows, i64 cols) {
  __shared__ double sh[32];
  i64 r = blockIdx.x;
  if (r >= rows) return;
  const float* x = logits + r * cols;
  const float* t = targets + r * cols;
  float* g = dlogits ? dlogits + r * cols : 0;
  double l = 0.0;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    double xj = x[j], tj = t[j];
    double e = exp(-fabs(xj));
    l += fmax(xj, 0.0) - xj * tj + log1p(e);
    if (g) {
      double sig = xj < 0.0 ? e / (1.0 + e) : 1.0 / (1.0 + e);
      g[j] = (float)((sig - tj) * grad_scale);
    }
  }
  l = block_sum_d(l, sh);
  if (threadIdx.x == 0) loss[r] = (float)l;
}

}  // extern "C"
