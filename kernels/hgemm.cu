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

// ---------------------------------------------------------------------------
// hgemm: fp16 inputs, fp32 accumulation on the tensor cores.
//
// c = epilogue(alpha*op(a)*op(b) + beta*c) with epilogue none, +bias or
// +bias then exact-erf GELU; c is fp32 or fp16. Block tile 128x128x32, 8
// warps as 2 (M) x 4 (N), warp tile 64x32 = 4x4 mma.sync.m16n8k16. Tiles
// move global -> shared with 16-byte cp.async.cg in a 3-stage pipeline
// (dynamic shared memory, 60 KB: the launcher raises the 48 KB default)
// and shared -> registers with ldmatrix (.trans for operands whose
// contiguous dimension is not k). Shared rows are padded by 16 bytes so
// that the 8 row addresses of every ldmatrix phase hit distinct banks.
//
// The transposes are template parameters: NN, NT, TN and TT each get their
// own instantiation (extern "C" names hgemm_nn ... hgemm_tt). 16-byte copies
// need the operand's row pitch to be a multiple of 8 halves and 16-byte
// aligned bases; otherwise (vec = 0) tiles are loaded element by element,
// still correct, just slower. On sm_90a a wgmma/TMA version would replace
// the mainloop (nvcc 11.8 cannot emit it); the epilogue and launcher stay.
#define HG_BM 128
#define HG_BN 128
#define HG_BK 32
#define HG_STAGES 3
#define HG_PAD 8
// Halves per stage and operand: max of 128 rows x (32+8) and 32 rows x
// (128+8).
#define HG_TILE (HG_BM * (HG_BK + HG_PAD))

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void* sdst, const void* gsrc, bool valid) {
  // src-size 0 zero-fills the 16 bytes, which is how tile edges are padded.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(sdst)), "l"(gsrc),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma16816(float* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// hg_load_tile copies one operand tile into shared memory. KMAJOR: the
// operand's rows run over the tile's `rows` (m or n) with k contiguous,
// stored [rows][BK+PAD]; otherwise rows run over k with m or n contiguous,
// stored [BK][128+PAD].
template <bool KMAJOR>
__device__ __forceinline__ void hg_load_tile(__half* s, const __half* g, i64 ld, i64 rows_total, i64 K, i64 r0,
                                             i64 k0, bool vec) {
#pragma unroll
  for (int l = 0; l < 2; l++) {
    int c = threadIdx.x + 256 * l;  // 512 chunks of 8 halves
    int tr, tc;                     // tile row, tile column (halves)
    i64 gr, gc;                     // global row, column
    __half* sp;
    if (KMAJOR) {
      tr = c >> 2;
      tc = (c & 3) * 8;
      gr = r0 + tr;
      gc = k0 + tc;
      sp = s + tr * (HG_BK + HG_PAD) + tc;
    } else {
      tr = c >> 4;
      tc = (c & 15) * 8;
      gr = k0 + tr;
      gc = r0 + tc;
      sp = s + tr * (HG_BM + HG_PAD) + tc;
    }
    const i64 rlim = KMAJOR ? rows_total : K, clim = KMAJOR ? K : rows_total;
    const __half* gp = g + gr * ld + gc;
    if (vec && (gc + 8 <= clim || gr >= rlim)) {
      cp_async16(sp, gr < rlim ? gp : g, gr < rlim);
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) sp[e] = (gr < rlim && gc + e < clim) ? gp[e] : __float2half(0.f);
    }
  }
}

template <bool TA, bool TB>
__device__ __forceinline__ void hgemm_body(void* cout, const __half* a, const __half* b, const float* bias, i64 M,
                                           i64 N, i64 K, i64 lda, i64 ldb, i64 ldc, double alpha_d, double beta_d,
                                           i64 epi, i64 out_f16, i64 vec) {
  extern __shared__ uint4 hg_smem[];
  __half* sm = reinterpret_cast<__half*>(hg_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const i64 m0 = (i64)blockIdx.y * HG_BM, n0 = (i64)blockIdx.x * HG_BN;
  const int KT = (int)((K + HG_BK - 1) / HG_BK);
  // A is k-major (k contiguous) unless transposed; B ([K,N]) is k-major
  // only when transposed ([N,K]).
  const int LDA_S = TA ? HG_BM + HG_PAD : HG_BK + HG_PAD;
  const int LDB_S = TB ? HG_BK + HG_PAD : HG_BN + HG_PAD;
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

  auto stageA = [&](int s) { return sm + s * 2 * HG_TILE; };
  auto stageB = [&](int s) { return sm + s * 2 * HG_TILE + HG_TILE; };
  auto load = [&](int s, int kt) {
    hg_load_tile<!TA>(stageA(s), a, lda, M, K, m0, (i64)kt * HG_BK, vec != 0);
    hg_load_tile<TB>(stageB(s), b, ldb, N, K, n0, (i64)kt * HG_BK, vec != 0);
  };
#pragma unroll
  for (int s = 0; s < HG_STAGES - 1; s++) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<HG_STAGES - 2>();
    __syncthreads();
    // Refill the stage computed in the previous iteration; the barrier
    // above guarantees every warp is done reading it.
    int nk = kt + HG_STAGES - 1;
    if (nk < KT) load(nk % HG_STAGES, nk);
    cp_async_commit();
    const __half* As = stageA(kt % HG_STAGES);
    const __half* Bs = stageB(kt % HG_STAGES);
#pragma unroll
    for (int kk = 0; kk < HG_BK; kk += 16) {
      unsigned af[4][4], bf[4][2];
      const int j = lane >> 3, r = lane & 7;
#pragma unroll
      for (int mt = 0; mt < 4; mt++) {
        int mb = wm * 64 + mt * 16;
        if (TA)
          ldsm_x4_t(af[mt], As + (kk + r + (j >> 1) * 8) * LDA_S + mb + (j & 1) * 8);
        else
          ldsm_x4(af[mt], As + (mb + (lane & 15)) * LDA_S + kk + (lane >> 4) * 8);
      }
#pragma unroll
      for (int np = 0; np < 2; np++) {
        int nb = wn * 32 + np * 16;
        unsigned t4[4];
        if (TB)
          ldsm_x4(t4, Bs + (nb + r + (j >> 1) * 8) * LDB_S + kk + (j & 1) * 8);
        else
          ldsm_x4_t(t4, Bs + (kk + r + (j & 1) * 8) * LDB_S + nb + (j >> 1) * 8);
        bf[np * 2][0] = t4[0];
        bf[np * 2][1] = t4[1];
        bf[np * 2 + 1][0] = t4[2];
        bf[np * 2 + 1][1] = t4[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) mma16816(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();

  const float alpha = (float)alpha_d, beta = (float)beta_d;
#pragma unroll
  for (int mt = 0; mt < 4; mt++)
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        i64 row = m0 + wm * 64 + mt * 16 + (lane >> 2) + (e >> 1) * 8;
        i64 col = n0 + wn * 32 + nt * 8 + (lane & 3) * 2 + (e & 1);
        if (row >= M || col >= N) continue;
        float v = alpha * acc[mt][nt][e];
        i64 o = row * ldc + col;
        if (beta != 0.f)
          v += beta * (out_f16 ? __half2float(reinterpret_cast<__half*>(cout)[o]) : reinterpret_cast<float*>(cout)[o]);
        if (epi >= 1) v += bias[col];
        if (epi == 2) v = v * 0.5f * erfcf(-v * 0.70710678118654752440f);
        if (out_f16)
          reinterpret_cast<__half*>(cout)[o] = __float2half_rn(v);
        else
          reinterpret_cast<float*>(cout)[o] = v;
      }
}

// Shared memory the hgemm kernels need (dynamic): HG_STAGES stages of two
// operand tiles.
#define HG_SMEM_BYTES (HG_STAGES * 2 * HG_TILE * 2)

#define HGEMM_ENTRY(name, TA, TB)                                                                                 \
  __global__ void __launch_bounds__(256) name(void* c, const __half* a, const __half* b, const float* bias, i64 M, \
                                              i64 N, i64 K, i64 lda, i64 ldb, i64 ldc, double alpha, double beta, \
                                              i64 epi, i64 out_f16, i64 vec) {                                    \
    hgemm_body<TA, TB>(c, a, b, bias, M, N, K, lda, ldb, ldc, alpha, beta, epi, out_f16, vec);                    \
  }

extern "C" {
// hgemm_xy: a is [M,K] (x = n) or [K,M] (x = t); b is [K,N] (y = n) or
// [N,K] (y = t); grid (ceil(N/128), ceil(M/128)), block 256, dynamic shared
// memory HG_SMEM_BYTES. epi: 0 none, 1 +bias[N], 2 +bias then GELU.
HGEMM_ENTRY(hgemm_nn, false, false)
HGEMM_ENTRY(hgemm_nt, false, true)
HGEMM_ENTRY(hgemm_tn, true, false)
HGEMM_ENTRY(hgemm_tt, true, true)
}
