// Matrix products, row-major, c = alpha*op(a)*op(b) + beta*c.
//
// sgemm_f32 is the fp32-exact path behind compute.Backend.Gemm: a classic
// shared-memory tiled SGEMM (64x64 block tile, 16-deep k slices, 4x4 per
// thread) on the CUDA cores, no TF32, so results match the CPU backend to
// fp32 rounding. Transposes are folded into the tile loads so every global
// read is coalesced along the operand's contiguous dimension.
#include "common.cuh"

#define SG_BM 64
#define SG_BN 64
#define SG_BK 16

extern "C" {

// sgemm_f32: a is [M,K] (lda) or, with ta, [K,M]; b is [K,N] (ldb) or, with
// tb, [N,K]; c is [M,N] (ldc). beta == 0 overwrites c without reading it.
// Grid (ceil(N/64), ceil(M/64)), block 256.
__global__ void __launch_bounds__(256) sgemm_f32(float* c, const float* a, const float* b, i64 M, i64 N, i64 K,
                                                 i64 lda, i64 ldb, i64 ldc, i64 ta, i64 tb, double alpha_d,
                                                 double beta_d) {
  __shared__ float As[SG_BK][SG_BM + 4];
  __shared__ float Bs[SG_BK][SG_BN + 4];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const i64 m0 = (i64)blockIdx.y * SG_BM, n0 = (i64)blockIdx.x * SG_BN;
  float acc[4][4];
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int s = 0; s < 4; s++) acc[r][s] = 0.f;
  for (i64 k0 = 0; k0 < K; k0 += SG_BK) {
#pragma unroll
    for (int l = 0; l < 4; l++) {
      int e = tid + 256 * l;
      int mm, kk;
      if (ta) {
        kk = e >> 6;
        mm = e & 63;
      } else {
        mm = e >> 4;
        kk = e & 15;
      }
      i64 gm = m0 + mm, gk = k0 + kk;
      float val = 0.f;
      if (gm < M && gk < K) val = ta ? a[gk * lda + gm] : a[gm * lda + gk];
      As[kk][mm] = val;
      int nn;
      if (tb) {
        nn = e >> 4;
        kk = e & 15;
      } else {
        kk = e >> 6;
        nn = e & 63;
      }
      i64 gn = n0 + nn;
      gk = k0 + kk;
      val = 0.f;
      if (gn < N && gk < K) val = tb ? b[gn * ldb + gk] : b[gk * ldb + gn];
      Bs[kk][nn] = val;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < SG_BK; kk++) {
      float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
      float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
      float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int r = 0; r < 4; r++)
#pragma unroll
        for (int s = 0; s < 4; s++) acc[r][s] = fmaf(ar[r], br[s], acc[r][s]);
    }
    __syncthreads();
  }
  const float alpha = (float)alpha_d, beta = (float)beta_d;
#pragma unroll
  for (int r = 0; r < 4; r++) {
    i64 gm = m0 + ty * 4 + r;
    if (gm >= M) continue;
#pragma unroll
    for (int s = 0; s < 4; s++) {
      i64 gn = n0 + tx * 4 + s;
      if (gn >= N) continue;
      float* cp = c + gm * ldc + gn;
      float val = alpha * acc[r][s];
      if (beta != 0.f) val = fmaf(beta, *cp, val);
      *cp = val;
    }
  }
}

}  // extern "C"
