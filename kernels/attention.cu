// Fused multi-head attention with per-example lengths (compute.Backend
// AttentionFwd/AttentionBwd), fp32, flash-style: scores never reach global
// memory. The forward keeps a running max and sum per query row (online
// softmax) over key chunks of 32; the backward recomputes the
// probabilities from the saved log-sum-exp.
//
// Layout: q, k, v, out are [B*S, H*dh]; head h of position i of sequence b
// is columns [h*dh, (h+1)*dh) of row b*S+i. lens is int32: sequence b's
// query length is lens[b] and its key length lens[b+koff], where koff is 0
// for lens [B] (shared lengths) and B for lens [2, B] (cross attention).
// Query rows and keys past their lengths are skipped entirely, and so are
// blocks whose rows all lie past them, so padding costs nothing but the
// zero-fill of its outputs.
//
// Work split: one warp per query row (forward, dq) or key row (dk/dv), 8
// warps per block sharing a 32-row chunk of the other side in shared
// memory, transposed with a stride of 33 so that both "lane = key" dot
// products and "lane = head column" accumulations are bank-conflict free.
// dh <= ATT_DHMAX (each lane owns dh/32 output columns).
//
// Dropout on the probabilities uses compute.DropoutUniform with counter
// ((b*H+h)*S+i)*S+j, the CPU reference's index, so masks agree bit for bit.
#include "common.cuh"

#define ATT_DHMAX 128
#define ATT_WARPS 8
#define ATT_CHUNK 32
#define ATT_PER_LANE (ATT_DHMAX / 32)

// AttTile is a transposed chunk of ATT_CHUNK rows of one head: [column][row],
// padded to a stride of ATT_CHUNK+1 against bank conflicts.
typedef float AttTile[ATT_DHMAX][ATT_CHUNK + 1];

// load_tiles fills Xt and Yt with rows r0..r0+ATT_CHUNK-1 of head h of
// sequence b of the [B*S, D] matrices x and y, zero past row n. The whole
// block takes part.
__device__ __forceinline__ void load_tiles(AttTile& Xt, AttTile& Yt, const float* x, const float* y, i64 b, i64 h,
                                           i64 r0, i64 n, i64 S, i64 D, i64 dh) {
  for (i64 e = threadIdx.x; e < ATT_CHUNK * dh; e += blockDim.x) {
    i64 rr = e / dh, d = e - rr * dh, row = r0 + rr;
    float xv = 0.f, yv = 0.f;
    if (row < n) {
      i64 off = (b * S + row) * D + h * dh + d;
      xv = x[off];
      yv = y[off];
    }
    Xt[d][rr] = xv;
    Yt[d][rr] = yv;
  }
}

// seq_lens reads sequence b's query and key lengths. Either being 0 makes
// both 0, as in the CPU backend: without keys there is no softmax, and
// without queries no key gets a gradient.
__device__ __forceinline__ void seq_lens(const int* lens, i64 b, i64 koff, i64& nq, i64& nk) {
  nq = lens[b];
  nk = lens[b + koff];
  if (nq == 0 || nk == 0) nq = nk = 0;
}

extern "C" {

// attn_fwd_f32: grid (ceil(S/8), H, B), block 256.
__global__ void __launch_bounds__(256) attn_fwd_f32(float* out, float* lse, const float* q, const float* k,
                                                    const float* v, const int* lens, i64 koff, i64 S, i64 H,
                                                    i64 dh, double scale_d, double p_d, double dscale_d,
                                                    u64 seed) {
  __shared__ AttTile Kt, Vt;
  __shared__ float Qs[ATT_WARPS][ATT_DHMAX];
  const float scale = (float)scale_d, p = (float)p_d, dscale = (float)dscale_d;
  const i64 b = blockIdx.z, h = blockIdx.y, D = H * dh;
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * ATT_WARPS + w;
  i64 nq, nk;
  seq_lens(lens, b, koff, nq, nk);
  const bool valid = i < nq;
  // A block whose rows all lie past the query length skips the key loop;
  // the test is block-uniform, so the loop's __syncthreads stay safe.
  const i64 nloop = (i64)blockIdx.x * ATT_WARPS < nq ? nk : 0;
  const i64 rowoff = (b * S + i) * D + h * dh;
  if (valid)
    for (i64 d = lane; d < dh; d += 32) Qs[w][d] = q[rowoff + d];
  float o[ATT_PER_LANE];
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) o[t] = 0.f;
  float m = -INFINITY, l = 0.f;
  const u64 cbase = (u64)(((b * H + h) * S + i) * S);
  for (i64 j0 = 0; j0 < nloop; j0 += ATT_CHUNK) {
    __syncthreads();
    load_tiles(Kt, Vt, k, v, b, h, j0, nk, S, D, dh);
    __syncthreads();
    if (!valid) continue;
    const i64 key = j0 + lane;
    float s = -INFINITY;
    if (key < nk) {
      float acc = 0.f;
      for (i64 d = 0; d < dh; d++) acc += Qs[w][d] * Kt[d][lane];
      s = acc * scale;
    }
    float mnew = fmaxf(m, warp_max(s));
    float corr = expf(m - mnew);
    float e = key < nk ? expf(s - mnew) : 0.f;
    l = l * corr + warp_sum(e);
    m = mnew;
    float pd = key < nk ? e * keep_scale(seed, cbase + (u64)key, p, dscale) : 0.f;
#pragma unroll
    for (int t = 0; t < ATT_PER_LANE; t++) o[t] *= corr;
    const int lim = (int)min((i64)ATT_CHUNK, nk - j0);
    for (int jj = 0; jj < lim; jj++) {
      float pj = __shfl_sync(0xffffffffu, pd, jj);
#pragma unroll
      for (int t = 0; t < ATT_PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < dh) o[t] += pj * Vt[d][jj];
      }
    }
  }
  if (i >= S) return;
  float inv = valid ? 1.f / l : 0.f;
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) {
    int d = lane + 32 * t;
    if (d < dh) out[rowoff + d] = valid ? o[t] * inv : 0.f;
  }
  if (lane == 0) lse[(b * H + h) * S + i] = valid ? m + logf(l) : 0.f;
}

// attn_bwd_dot_f32: delta[(b*H+h)*S+i] = dot(dout_i, out_i) over head h's
// columns, which equals rowsum(P'*dP') (see AttentionBwd in the CPU
// backend). One warp per (row, head); grid (ceil(B*S*H/8)), block 256.
__global__ void attn_bwd_dot_f32(float* delta, const float* dout, const float* out, i64 B, i64 S, i64 H,
                                 i64 dh) {
  i64 gw = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (gw >= B * S * H) return;
  i64 h = gw % H, row = gw / H;  // row = b*S+i
  i64 b = row / S, i = row - b * S;
  const i64 off = row * H * dh + h * dh;
  float acc = 0.f;
  for (i64 d = lane; d < dh; d += 32) acc += dout[off + d] * out[off + d];
  acc = warp_sum(acc);
  if (lane == 0) delta[(b * H + h) * S + i] = acc;
}

// attn_bwd_dq_f32: dq_i = scale * sum_j dS_ij k_j with
// dS = P'*dP - P*delta_i, P = exp(scale*q.k - lse_i), P' = P*keep/(1-p),
// dP = dout_i.v_j. Grid (ceil(S/8), H, B), block 256.
__global__ void __launch_bounds__(256) attn_bwd_dq_f32(float* dq, const float* dout, const float* lse,
                                                       const float* delta, const float* q, const float* k,
                                                       const float* v, const int* lens, i64 koff, i64 S, i64 H,
                                                       i64 dh, double scale_d, double p_d, double dscale_d,
                                                       u64 seed) {
  __shared__ AttTile Kt, Vt;
  __shared__ float Qs[ATT_WARPS][ATT_DHMAX];
  __shared__ float Gs[ATT_WARPS][ATT_DHMAX];
  const float scale = (float)scale_d, p = (float)p_d, dscale = (float)dscale_d;
  const i64 b = blockIdx.z, h = blockIdx.y, D = H * dh;
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * ATT_WARPS + w;
  i64 nq, nk;
  seq_lens(lens, b, koff, nq, nk);
  const bool valid = i < nq;
  const i64 nloop = (i64)blockIdx.x * ATT_WARPS < nq ? nk : 0;
  const i64 rowoff = (b * S + i) * D + h * dh;
  float li = 0.f, di = 0.f;
  if (valid) {
    for (i64 d = lane; d < dh; d += 32) {
      Qs[w][d] = q[rowoff + d];
      Gs[w][d] = dout[rowoff + d];
    }
    li = lse[(b * H + h) * S + i];
    di = delta[(b * H + h) * S + i];
  }
  float acc[ATT_PER_LANE];
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) acc[t] = 0.f;
  const u64 cbase = (u64)(((b * H + h) * S + i) * S);
  for (i64 j0 = 0; j0 < nloop; j0 += ATT_CHUNK) {
    __syncthreads();
    load_tiles(Kt, Vt, k, v, b, h, j0, nk, S, D, dh);
    __syncthreads();
    if (!valid) continue;
    const i64 key = j0 + lane;
    float ds = 0.f;
    if (key < nk) {
      float s = 0.f, dp = 0.f;
      for (i64 d = 0; d < dh; d++) {
        s += Qs[w][d] * Kt[d][lane];
        dp += Gs[w][d] * Vt[d][lane];
      }
      float pr = expf(s * scale - li);
      float pk = pr * keep_scale(seed, cbase + (u64)key, p, dscale);
      ds = pk * dp - pr * di;
    }
    const int lim = (int)min((i64)ATT_CHUNK, nk - j0);
    for (int jj = 0; jj < lim; jj++) {
      float dj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
      for (int t = 0; t < ATT_PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < dh) acc[t] += dj * Kt[d][jj];
      }
    }
  }
  if (i >= S) return;
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) {
    int d = lane + 32 * t;
    if (d < dh) dq[rowoff + d] = valid ? acc[t] * scale : 0.f;
  }
}

// attn_bwd_dkdv_f32: for key j, dv_j = sum_i P'_ij dout_i and
// dk_j = scale * sum_i dS_ij q_i. One warp per key row, query chunks of 32
// in shared memory. Grid (ceil(S/8), H, B), block 256.
__global__ void __launch_bounds__(256) attn_bwd_dkdv_f32(float* dk, float* dv, const float* dout,
                                                         const float* lse, const float* delta, const float* q,
                                                         const float* k, const float* v, const int* lens,
                                                         i64 koff, i64 S, i64 H, i64 dh, double scale_d,
                                                         double p_d, double dscale_d, u64 seed) {
  __shared__ AttTile Qt, Gt;
  __shared__ float Ks[ATT_WARPS][ATT_DHMAX];
  __shared__ float Vs[ATT_WARPS][ATT_DHMAX];
  __shared__ float Ls[ATT_CHUNK], Ds[ATT_CHUNK];
  const float scale = (float)scale_d, p = (float)p_d, dscale = (float)dscale_d;
  const i64 b = blockIdx.z, h = blockIdx.y, D = H * dh;
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 j = (i64)blockIdx.x * ATT_WARPS + w;
  i64 nq, nk;
  seq_lens(lens, b, koff, nq, nk);
  const bool valid = j < nk;
  const i64 nloop = (i64)blockIdx.x * ATT_WARPS < nk ? nq : 0;
  const i64 rowoff = (b * S + j) * D + h * dh;
  if (valid)
    for (i64 d = lane; d < dh; d += 32) {
      Ks[w][d] = k[rowoff + d];
      Vs[w][d] = v[rowoff + d];
    }
  float ak[ATT_PER_LANE], av[ATT_PER_LANE];
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) ak[t] = av[t] = 0.f;
  const u64 hbase = (u64)((b * H + h) * S);
  for (i64 i0 = 0; i0 < nloop; i0 += ATT_CHUNK) {
    __syncthreads();
    load_tiles(Qt, Gt, q, dout, b, h, i0, nq, S, D, dh);
    if (threadIdx.x < ATT_CHUNK) {
      i64 row = i0 + threadIdx.x;
      Ls[threadIdx.x] = row < nq ? lse[hbase + row] : 0.f;
      Ds[threadIdx.x] = row < nq ? delta[hbase + row] : 0.f;
    }
    __syncthreads();
    if (!valid) continue;
    const i64 qi = i0 + lane;
    float pk = 0.f, ds = 0.f;
    if (qi < nq) {
      float s = 0.f, dp = 0.f;
      for (i64 d = 0; d < dh; d++) {
        s += Ks[w][d] * Qt[d][lane];
        dp += Vs[w][d] * Gt[d][lane];
      }
      float pr = expf(s * scale - Ls[lane]);
      pk = pr * keep_scale(seed, (hbase + (u64)qi) * (u64)S + (u64)j, p, dscale);
      ds = pk * dp - pr * Ds[lane];
    }
    const int lim = (int)min((i64)ATT_CHUNK, nq - i0);
    for (int ii = 0; ii < lim; ii++) {
      float pi = __shfl_sync(0xffffffffu, pk, ii);
      float di = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
      for (int t = 0; t < ATT_PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < dh) {
          av[t] += pi * Gt[d][ii];
          ak[t] += di * Qt[d][ii];
        }
      }
    }
  }
  if (j >= S) return;
#pragma unroll
  for (int t = 0; t < ATT_PER_LANE; t++) {
    int d = lane + 32 * t;
    if (d < dh) {
      dk[rowoff + d] = valid ? ak[t] * scale : 0.f;
      dv[rowoff + d] = valid ? av[t] : 0.f;
    }
  }
}

}  // extern "C"
