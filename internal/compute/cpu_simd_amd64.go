package compute

/*
#include <immintrin.h>
#include <stdint.h>

// AVX2 versions of the CPU backend's hottest loops (GELU, AdamW, LayerNorm,
// SumSq, Add, AddBias, SumRows, ScatterAdd). They perform the Go loops' IEEE operations
// in the same order, several elements at a time, so their results are bit
// for bit those of the Go loops (TestSIMDMatchesGo), which remain the
// reference and the fallback. The target enables AVX2 without FMA so that
// the compiler cannot fuse a multiply and an add.

static int uniter_have_avx2(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2");
}

// uniter_horner_phi is phiPoly at u for four elements in range.
__attribute__((target("avx2")))
static inline __m256d uniter_horner_phi(__m256d u, const double *phi) {
	__m128i j = _mm256_cvttpd_epi32(u);
	__m256d s = _mm256_sub_pd(_mm256_sub_pd(u, _mm256_cvtepi32_pd(j)), _mm256_set1_pd(0.5));
	__m128i row = _mm_slli_epi32(j, 3);
	__m256d c = _mm256_i32gather_pd(phi + 7, row, 8);
	for (int d = 6; d >= 0; d--)
		c = _mm256_add_pd(_mm256_i32gather_pd(phi + d, row, 8), _mm256_mul_pd(s, c));
	return c;
}

// uniter_exp_poly is expPoly for four elements in its range; k holds
// expPoly's constants 32/ln2, 1.5*2^52, expLn2Hi and expLn2Lo, tab the bits
// of expTable.
__attribute__((target("avx2")))
static inline __m256d uniter_exp_poly(__m256d x, const double *k, const long long *tab) {
	__m256d shift = _mm256_set1_pd(k[1]);
	__m256d kf = _mm256_add_pd(_mm256_mul_pd(x, _mm256_set1_pd(k[0])), shift);
	__m256i bits = _mm256_castpd_si256(kf);
	kf = _mm256_sub_pd(kf, shift);
	__m256d r = _mm256_sub_pd(_mm256_sub_pd(x, _mm256_mul_pd(kf, _mm256_set1_pd(k[2]))), _mm256_mul_pd(kf, _mm256_set1_pd(k[3])));
	__m256d one = _mm256_set1_pd(1);
	__m256d p = _mm256_add_pd(_mm256_set1_pd(1.0 / 24), _mm256_mul_pd(r, _mm256_set1_pd(1.0 / 120)));
	p = _mm256_add_pd(_mm256_set1_pd(1.0 / 6), _mm256_mul_pd(r, p));
	p = _mm256_add_pd(_mm256_set1_pd(1.0 / 2), _mm256_mul_pd(r, p));
	p = _mm256_add_pd(one, _mm256_mul_pd(r, p));
	p = _mm256_add_pd(one, _mm256_mul_pd(r, p));
	__m256i t = _mm256_i64gather_epi64(tab, _mm256_and_si256(bits, _mm256_set1_epi64x(31)), 8);
	t = _mm256_add_epi64(t, _mm256_slli_epi64(_mm256_srli_epi64(bits, 5), 52));
	return _mm256_mul_pd(_mm256_castsi256_pd(t), p);
}

// uniter_gelu_avx2 is gelu over n elements, n a multiple of 4, except that
// elements outside the tabulated range (and NaNs) are left unwritten; it
// returns how many were. dout NULL selects the forward. k holds
// uniter_exp_poly's constants, then 1/sqrt(2 pi), phiRange and phiSteps.
__attribute__((target("avx2")))
static long uniter_gelu_avx2(float *dst, const float *xs, const float *dout, long n,
                             const double *phi, const long long *tab, const double *k) {
	const __m128 lo = _mm_set1_ps(-k[5]), hi = _mm_set1_ps(k[5]);
	long skipped = 0;
	for (long i = 0; i < n; i += 4) {
		// The range test is exact in float32, which holds phiRange.
		__m128 xf = _mm_loadu_ps(xs + i);
		__m128 in = _mm_and_ps(_mm_cmpgt_ps(xf, lo), _mm_cmplt_ps(xf, hi));
		int mask = _mm_movemask_ps(in);
		if (mask != 15) {
			// Lanes out of range take x = 0 so that their table rows
			// exist; their results are not stored.
			skipped += 4 - __builtin_popcount(mask);
			xf = _mm_and_ps(xf, in);
		}
		__m256d x = _mm256_cvtps_pd(xf);
		__m256d u = _mm256_mul_pd(_mm256_add_pd(x, _mm256_set1_pd(k[5])), _mm256_set1_pd(k[6]));
		__m256d cdf = uniter_horner_phi(u, phi);
		__m256d y;
		if (!dout) {
			y = _mm256_mul_pd(x, cdf);
		} else {
			__m256d h = _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(-0.5), x), x);
			__m256d pdf = _mm256_mul_pd(uniter_exp_poly(h, k, tab), _mm256_set1_pd(k[4]));
			y = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(dout + i)), _mm256_add_pd(cdf, _mm256_mul_pd(x, pdf)));
		}
		__m128 out = _mm256_cvtpd_ps(y);
		if (mask == 15)
			_mm_storeu_ps(dst + i, out);
		else
			_mm_maskstore_ps(dst + i, _mm_castps_si128(in), out);
	}
	return skipped;
}

// uniter_adamw_avx2 is the loop of CPU.AdamW over n elements, n a multiple
// of 4; c holds gradScale, beta1, 1-beta1, beta2, 1-beta2, the step size,
// eps and the decay factor.
__attribute__((target("avx2")))
static void uniter_adamw_avx2(float *p, const float *g, float *m, float *v, long n, const double *c) {
	const __m256d scale = _mm256_set1_pd(c[0]), b1 = _mm256_set1_pd(c[1]), c1 = _mm256_set1_pd(c[2]);
	const __m256d b2 = _mm256_set1_pd(c[3]), c2 = _mm256_set1_pd(c[4]), step = _mm256_set1_pd(c[5]);
	const __m256d eps = _mm256_set1_pd(c[6]), decay = _mm256_set1_pd(c[7]);
	for (long i = 0; i < n; i += 4) {
		__m256d gi = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(g + i)), scale);
		__m256d mi = _mm256_add_pd(_mm256_mul_pd(b1, _mm256_cvtps_pd(_mm_loadu_ps(m + i))), _mm256_mul_pd(c1, gi));
		__m256d vi = _mm256_add_pd(_mm256_mul_pd(b2, _mm256_cvtps_pd(_mm_loadu_ps(v + i))), _mm256_mul_pd(_mm256_mul_pd(c2, gi), gi));
		_mm_storeu_ps(m + i, _mm256_cvtpd_ps(mi));
		_mm_storeu_ps(v + i, _mm256_cvtpd_ps(vi));
		__m256d upd = _mm256_div_pd(_mm256_mul_pd(step, mi), _mm256_add_pd(_mm256_sqrt_pd(vi), eps));
		__m256d pi = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + i)), upd);
		_mm_storeu_ps(p + i, _mm256_cvtpd_ps(_mm256_sub_pd(pi, _mm256_mul_pd(decay, pi))));
	}
}

// uniter_sum64 is sum64: four float64 partial sums, the tail added to the
// first, combined as (s0+s1)+(s2+s3). With sq set it is sumSqDev64 instead
// (the sum of (x-mu)^2).
__attribute__((target("avx2")))
static inline double uniter_sum64(const float *x, long n, int sq, double mu) {
	__m256d acc = _mm256_setzero_pd(), m = _mm256_set1_pd(mu);
	long i = 0;
	for (; i + 4 <= n; i += 4) {
		__m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
		if (sq) {
			v = _mm256_sub_pd(v, m);
			v = _mm256_mul_pd(v, v);
		}
		acc = _mm256_add_pd(acc, v);
	}
	double s[4];
	_mm256_storeu_pd(s, acc);
	for (; i < n; i++) {
		double v = x[i];
		if (sq) {
			v -= mu;
			v *= v;
		}
		s[0] += v;
	}
	return (s[0] + s[1]) + (s[2] + s[3]);
}

// uniter_sumsq_avx2 is sumSqDev64(x, 0).
__attribute__((target("avx2")))
static double uniter_sumsq_avx2(const float *x, long n) { return uniter_sum64(x, n, 1, 0); }

// uniter_layernorm_fwd_avx2 is the row loop of CPU.LayerNormFwd over rows
// [0, m) of width n.
__attribute__((target("avx2")))
static void uniter_layernorm_fwd_avx2(float *out, float *mean, float *rstd, const float *x,
                                      const float *gamma, const float *beta, long m, long n, double eps) {
	for (long i = 0; i < m; i++) {
		const float *row = x + i * n;
		float *o = out + i * n;
		double mu = uniter_sum64(row, n, 0, 0) / (double)n;
		// _mm_sqrt_sd is IEEE sqrt without libm's errno path.
		__m128d var = _mm_set_sd(uniter_sum64(row, n, 1, mu) / (double)n + eps);
		double r = 1 / _mm_cvtsd_f64(_mm_sqrt_sd(var, var));
		mean[i] = (float)mu;
		rstd[i] = (float)r;
		__m256d vmu = _mm256_set1_pd(mu), vr = _mm256_set1_pd(r);
		long j = 0;
		for (; j + 4 <= n; j += 4) {
			__m256d v = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(row + j)), vmu), vr);
			v = _mm256_add_pd(_mm256_mul_pd(v, _mm256_cvtps_pd(_mm_loadu_ps(gamma + j))), _mm256_cvtps_pd(_mm_loadu_ps(beta + j)));
			_mm_storeu_ps(o + j, _mm256_cvtpd_ps(v));
		}
		for (; j < n; j++)
			o[j] = (float)(((double)row[j] - mu) * r * (double)gamma[j] + (double)beta[j]);
	}
}

// uniter_layernorm_dparams_avx2 is the column pass of CPU.LayerNormBwd for
// columns [lo, lo+w) of an [m, n] matrix: acc[j] += dout*xhat and
// acc[w+j] += dout, row by row.
__attribute__((target("avx2")))
static void uniter_layernorm_dparams_avx2(double *acc, const float *dout, const float *x,
                                          const float *mean, const float *rstd, long m, long n, long lo, long w) {
	double *dg = acc, *db = acc + w;
	for (long i = 0; i < m; i++) {
		double mu = mean[i], r = rstd[i];
		const float *xr = x + i * n + lo, *gr = dout + i * n + lo;
		__m256d vmu = _mm256_set1_pd(mu), vr = _mm256_set1_pd(r);
		long j = 0;
		for (; j + 4 <= w; j += 4) {
			__m256d g = _mm256_cvtps_pd(_mm_loadu_ps(gr + j));
			__m256d t = _mm256_mul_pd(_mm256_mul_pd(g, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xr + j)), vmu)), vr);
			_mm256_storeu_pd(dg + j, _mm256_add_pd(_mm256_loadu_pd(dg + j), t));
			_mm256_storeu_pd(db + j, _mm256_add_pd(_mm256_loadu_pd(db + j), g));
		}
		for (; j < w; j++) {
			double g = gr[j];
			dg[j] += g * ((double)xr[j] - mu) * r;
			db[j] += g;
		}
	}
}

// uniter_layernorm_dx_avx2 is the row pass of CPU.LayerNormBwd over rows
// [0, m) of width n. The two row sums run element by element in the Go
// loop's order; only the products around them are vectorized.
__attribute__((target("avx2")))
static void uniter_layernorm_dx_avx2(float *dx, const float *dout, const float *x, const float *mean,
                                     const float *rstd, const float *gamma, long m, long n) {
	for (long i = 0; i < m; i++) {
		double mu = mean[i], r = rstd[i];
		const float *xr = x + i * n, *gr = dout + i * n;
		float *d = dx + i * n;
		__m256d vmu = _mm256_set1_pd(mu), vr = _mm256_set1_pd(r);
		double sg = 0, sgx = 0;
		long j = 0;
		for (; j + 4 <= n; j += 4) {
			__m256d gg = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(gamma + j)), _mm256_cvtps_pd(_mm_loadu_ps(gr + j)));
			__m256d ggx = _mm256_mul_pd(_mm256_mul_pd(gg, _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xr + j)), vmu)), vr);
			double a[4], b[4];
			_mm256_storeu_pd(a, gg);
			_mm256_storeu_pd(b, ggx);
			for (int l = 0; l < 4; l++) {
				sg += a[l];
				sgx += b[l];
			}
		}
		for (; j < n; j++) {
			double gg = (double)gamma[j] * (double)gr[j];
			sg += gg;
			sgx += gg * ((double)xr[j] - mu) * r;
		}
		sg /= (double)n;
		sgx /= (double)n;
		__m256d vsg = _mm256_set1_pd(sg), vsgx = _mm256_set1_pd(sgx);
		for (j = 0; j + 4 <= n; j += 4) {
			__m256d xhat = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xr + j)), vmu), vr);
			__m256d gg = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(gamma + j)), _mm256_cvtps_pd(_mm_loadu_ps(gr + j)));
			__m256d v = _mm256_sub_pd(_mm256_sub_pd(gg, vsg), _mm256_mul_pd(xhat, vsgx));
			_mm_storeu_ps(d + j, _mm256_cvtpd_ps(_mm256_mul_pd(vr, v)));
		}
		for (; j < n; j++) {
			double xhat = ((double)xr[j] - mu) * r;
			d[j] = (float)(r * ((double)gamma[j] * (double)gr[j] - sg - xhat * sgx));
		}
	}
}

// uniter_add_avx2 is CPU.Add's loop: d = a + b over n floats; d may alias
// a or b.
__attribute__((target("avx2")))
static void uniter_add_avx2(float *d, const float *a, const float *b, long n) {
	long i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
	for (; i < n; i++)
		d[i] = a[i] + b[i];
}

// uniter_add_bias_avx2 is CPU.AddBias's loop over m rows of width n.
__attribute__((target("avx2")))
static void uniter_add_bias_avx2(float *x, const float *bias, long m, long n) {
	for (long i = 0; i < m; i++)
		uniter_add_avx2(x + i * n, x + i * n, bias, n);
}

// uniter_sum_cols_avx2 is CPU.SumRows's column pass: acc[j] += x[i, lo+j]
// in float64 for columns [lo, lo+w) of an [m, n] matrix, row by row.
__attribute__((target("avx2")))
static void uniter_sum_cols_avx2(double *acc, const float *x, long m, long n, long lo, long w) {
	for (long i = 0; i < m; i++) {
		const float *row = x + i * n + lo;
		long j = 0;
		for (; j + 4 <= w; j += 4)
			_mm256_storeu_pd(acc + j, _mm256_add_pd(_mm256_loadu_pd(acc + j), _mm256_cvtps_pd(_mm_loadu_ps(row + j))));
		for (; j < w; j++)
			acc[j] += row[j];
	}
}

// uniter_scatter_add_avx2 is CPU.ScatterAdd's loop for columns [lo, lo+w):
// dst[idx[i], :] += src[i, :] for i in order, rows of width d.
__attribute__((target("avx2")))
static void uniter_scatter_add_avx2(float *dst, const float *src, const int32_t *idx, long n, long d, long lo, long w) {
	for (long i = 0; i < n; i++) {
		float *row = dst + (long)idx[i] * d + lo;
		uniter_add_avx2(row, row, src + i * d + lo, w);
	}
}
*/
import "C"

import (
	"math"
	"unsafe"
)

// haveAVX2 selects the AVX2 loops; without it the Go loops do all the work.
var haveAVX2 = C.uniter_have_avx2() != 0

// geluConst are uniter_gelu_avx2's constants, as expPoly and gelu use them.
var geluConst = [...]float64{32 / math.Ln2, 0x1.8p52, expLn2Hi, expLn2Lo, 1 / math.Sqrt(2*math.Pi), phiRange, phiSteps}

// geluVector runs gelu on the longest prefix of xs that the AVX2 loop
// takes and returns its length n, and whether it wrote all n elements:
// those outside the table's range are left to the caller.
func geluVector(dst, xs, dout []float32) (n int, complete bool) {
	n = len(xs) &^ 3
	if !haveAVX2 || n == 0 {
		return 0, true
	}
	var d *C.float
	if dout != nil {
		d = (*C.float)(&dout[0])
	}
	skipped := C.uniter_gelu_avx2((*C.float)(&dst[0]), (*C.float)(&xs[0]), d, C.long(n),
		(*C.double)(&phiTable[0][0]), (*C.longlong)(unsafe.Pointer(&expTable[0])), (*C.double)(&geluConst[0]))
	return n, skipped == 0
}

// adamwVector runs AdamW's update on the longest prefix the AVX2 loop
// takes and returns its length; c is as for uniter_adamw_avx2.
func adamwVector(p, g, m, v []float32, c *[8]float64) int {
	n := len(p) &^ 3
	if !haveAVX2 || n == 0 {
		return 0
	}
	C.uniter_adamw_avx2((*C.float)(&p[0]), (*C.float)(&g[0]), (*C.float)(&m[0]), (*C.float)(&v[0]), C.long(n), (*C.double)(&c[0]))
	return n
}

// sumSqVector is sumSqDev64(x, 0) by the AVX2 loop; ok is false without
// AVX2.
func sumSqVector(x []float32) (s float64, ok bool) {
	if !haveAVX2 || len(x) == 0 {
		return 0, false
	}
	return float64(C.uniter_sumsq_avx2((*C.float)(&x[0]), C.long(len(x)))), true
}

// layerNormFwdVector runs the rows of out, mean and rstd (m of them, width
// n) through the AVX2 loop; it reports false, doing nothing, without AVX2.
func layerNormFwdVector(out, mean, rstd, x, gamma, beta []float32, m, n int, eps float32) bool {
	if !haveAVX2 || m == 0 || n == 0 {
		return false
	}
	C.uniter_layernorm_fwd_avx2((*C.float)(&out[0]), (*C.float)(&mean[0]), (*C.float)(&rstd[0]), (*C.float)(&x[0]),
		(*C.float)(&gamma[0]), (*C.float)(&beta[0]), C.long(m), C.long(n), C.double(eps))
	return true
}

// layerNormParamGradsVector is the AVX2 column pass of LayerNormBwd over
// columns [lo, lo+len(acc)/2) of [m, n] matrices; it reports false, doing
// nothing, without AVX2.
func layerNormParamGradsVector(acc []float64, dout, x, mean, rstd []float32, m, n, lo int) bool {
	if !haveAVX2 || m == 0 || len(acc) == 0 {
		return false
	}
	C.uniter_layernorm_dparams_avx2((*C.double)(&acc[0]), (*C.float)(&dout[0]), (*C.float)(&x[0]),
		(*C.float)(&mean[0]), (*C.float)(&rstd[0]), C.long(m), C.long(n), C.long(lo), C.long(len(acc)/2))
	return true
}

// layerNormDxVector is the AVX2 row pass of LayerNormBwd over m rows of
// width n; it reports false, doing nothing, without AVX2.
func layerNormDxVector(dx, dout, x, mean, rstd, gamma []float32, m, n int) bool {
	if !haveAVX2 || m == 0 || n == 0 {
		return false
	}
	C.uniter_layernorm_dx_avx2((*C.float)(&dx[0]), (*C.float)(&dout[0]), (*C.float)(&x[0]), (*C.float)(&mean[0]),
		(*C.float)(&rstd[0]), (*C.float)(&gamma[0]), C.long(m), C.long(n))
	return true
}

// addVector is CPU.Add's loop by AVX2; it reports false, doing nothing,
// without AVX2.
func addVector(d, a, b []float32) bool {
	if !haveAVX2 || len(d) == 0 {
		return false
	}
	C.uniter_add_avx2((*C.float)(&d[0]), (*C.float)(&a[0]), (*C.float)(&b[0]), C.long(len(d)))
	return true
}

// addBiasVector is CPU.AddBias's loop over the m rows of width n in x; it
// reports false, doing nothing, without AVX2.
func addBiasVector(x, bias []float32, m, n int) bool {
	if !haveAVX2 || m == 0 || n == 0 {
		return false
	}
	C.uniter_add_bias_avx2((*C.float)(&x[0]), (*C.float)(&bias[0]), C.long(m), C.long(n))
	return true
}

// sumColsVector is CPU.SumRows's column pass over columns [lo,
// lo+len(acc)) of an [m, n] matrix; it reports false, doing nothing,
// without AVX2.
func sumColsVector(acc []float64, x []float32, m, n, lo int) bool {
	if !haveAVX2 || m == 0 || len(acc) == 0 {
		return false
	}
	C.uniter_sum_cols_avx2((*C.double)(&acc[0]), (*C.float)(&x[0]), C.long(m), C.long(n), C.long(lo), C.long(len(acc)))
	return true
}

// scatterAddVector is CPU.ScatterAdd's loop over columns [lo, lo+w) of rows
// of width d; it reports false, doing nothing, without AVX2.
func scatterAddVector(dst, src []float32, idx []int32, d, lo, w int) bool {
	if !haveAVX2 || len(idx) == 0 || w == 0 {
		return false
	}
	C.uniter_scatter_add_avx2((*C.float)(&dst[0]), (*C.float)(&src[0]), (*C.int32_t)(&idx[0]), C.long(len(idx)), C.long(d), C.long(lo), C.long(w))
	return true
}
