// Pointwise and row/column kernels: arithmetic, activations (forward and
// backward), dropout, bias, gather/scatter, casts and fp16 rounding.
// Everything here is memory-bound (a few flops per 4-8 bytes), so the only
// goals are coalesced access and enough blocks in flight; transcendental
// functions are evaluated in double to match the CPU reference, which costs
// nothing measurable at these arithmetic intensities.
#include "common.cuh"

extern "C" {

__global__ void add_f32(float* dst, const float* a, const float* b, i64 n) {
  FOR_N(i, n) dst[i] = a[i] + b[i];
}

__global__ void axpy_f32(float* y, const float* x, double alpha, i64 n) {
  float a = (float)alpha;
  FOR_N(i, n) y[i] += a * x[i];
}

__global__ void scale_f32(float* x, double alpha, i64 n) {
  float a = (float)alpha;
  FOR_N(i, n) x[i] *= a;
}

// gelu_fwd_f32: out = x*Phi(x), Phi(x) = erfc(-x/sqrt 2)/2 (exact erf GELU).
__global__ void gelu_fwd_f32(float* out, const float* x, i64 n) {
  FOR_N(i, n) {
    double v = x[i];
    out[i] = (float)(v * 0.5 * erfc(-v * 0.70710678118654752440));
  }
}

// gelu_bwd_f32: dx = dout*(Phi(x) + x*phi(x)); dx may alias dout.
__global__ void gelu_bwd_f32(float* dx, const float* x, const float* dout, i64 n) {
  FOR_N(i, n) {
    double v = x[i];
    double cdf = 0.5 * erfc(-v * 0.70710678118654752440);
    double pdf = exp(-0.5 * v * v) * 0.39894228040143267794;
    dx[i] = (float)((double)dout[i] * (cdf + v * pdf));
  }
}

__global__ void tanh_fwd_f32(float* out, const float* x, i64 n) {
  FOR_N(i, n) out[i] = (float)tanh((double)x[i]);
}

__global__ void tanh_bwd_f32(float* dx, const float* y, const float* dout, i64 n) {
  FOR_N(i, n) {
    double yy = y[i];
    dx[i] = (float)((double)dout[i] * (1.0 - yy * yy));
  }
}

__global__ void relu_fwd_f32(float* out, const float* x, i64 n) {
  FOR_N(i, n) out[i] = fmaxf(x[i], 0.f);
}

__global__ void relu_bwd_f32(float* dx, const float* y, const float* dout, i64 n) {
  FOR_N(i, n) dx[i] = y[i] > 0.f ? dout[i] : 0.f;
}

// dropout_f32: out = x*keep/(1-p) with the element index as the hash
// counter; scale is 1/(1-p) rounded to float32 on the host, as the CPU does.
// Used for both directions (the mask is a pure function of seed and index).
__global__ void dropout_f32(float* out, const float* x, double p, double scale, u64 seed, i64 n) {
  float pf = (float)p, sf = (float)scale;
  FOR_N(i, n) out[i] = x[i] * keep_scale(seed, (u64)i, pf, sf);
}

// add_bias_f32: x[r, c] += bias[c] over rows*cols elements.
__global__ void add_bias_f32(float* x, const float* bias, i64 rows, i64 cols) {
  FOR_N(i, rows * cols) x[i] += bias[i % cols];
}

// sum_rows_f32: dst[c] = beta*dst[c] + sum_r x[r, c], summed in double.
// Block (32, 8): the 32 lanes take adjacent columns (coalesced rows), the 8
// warps stride over rows and are combined through shared memory in a fixed
// order. beta == 0 overwrites without reading dst (stale NaNs must not
// survive, as in BLAS).
__global__ void sum_rows_f32(float* dst, const float* x, double beta, i64 rows, i64 cols) {
  __shared__ double part[8][33];
  i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
  double acc = 0.0;
  if (c < cols)
    for (i64 r = threadIdx.y; r < rows; r += 8) acc += (double)x[r * cols + c];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double s = 0.0;
    for (int k = 0; k < 8; k++) s += part[k][threadIdx.x];
    if (beta != 0.0) s += (double)(float)beta * (double)dst[c];
    dst[c] = (float)s;
  }
}

// gather_f32: out[i, :] = src[idx[i], :].
__global__ void gather_f32(float* out, const float* src, const int* idx, i64 rows, i64 cols) {
  FOR_N(e, rows * cols) {
    i64 i = e / cols, c = e - i * cols;
    out[e] = src[(i64)idx[i] * cols + c];
  }
}

// scatter_add_f32: dst[idx[i], :] += src[i, :]. Repeated indices are
// resolved with atomicAdd, so their summation order is not fixed: results
// may differ from the CPU's index-order sums in the last bits.
__global__ void scatter_add_f32(float* dst, const float* src, const int* idx, i64 rows, i64 cols) {
  FOR_N(e, rows * cols) {
    i64 i = e / cols, c = e - i * cols;
    atomicAdd(&dst[(i64)idx[i] * cols + c], src[e]);
  }
}

__global__ void cast_f32_f16(__half* out, const float* x, i64 n) {
  FOR_N(i, n) out[i] = __float2half_rn(x[i]);
}

__global__ void cast_f16_f32(float* out, const __half* x, i64 n) {
  FOR_N(i, n) out[i] = __half2float(x[i]);
}

// round_fp16_f32 rounds in place to the nearest float16 (ties to even);
// values past the float16 range become +-Inf.
__global__ void round_fp16_f32(float* x, i64 n) {
  FOR_N(i, n) x[i] = __half2float(__float2half_rn(x[i]));
}

}  // extern "C"
