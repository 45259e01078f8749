package compute

/*
#cgo LDFLAGS: -lopenblas
#include <stdlib.h>
#include <string.h>
#include <cblas.h>

// Internals of OpenBLAS's pthread and DYNAMIC_ARCH builds (Debian's among
// them). Weak references keep other builds linkable; the helpers below then
// do nothing.
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));
extern int blas_thread_shutdown_(void) __attribute__((weak));

// uniter_blas_retarget re-runs OpenBLAS's kernel selection when it fell back
// to the SSE3 "Prescott" kernels on a CPU it does not recognise (0.3.21 does
// not know Emerald Rapids, for one) although the CPU has AVX2 or AVX-512: the
// fallback is about seven times slower. An explicit OPENBLAS_CORETYPE is
// respected.
static void uniter_blas_retarget(void) {
	const char *core;
	if (getenv("OPENBLAS_CORETYPE") != NULL || !gotoblas_dynamic_init || !gotoblas_dynamic_quit)
		return;
	if (strcmp(openblas_get_corename(), "Prescott") != 0)
		return;
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
		core = "SkylakeX";
	else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		core = "Haswell";
	else
		return;
	// OPENBLAS_CORETYPE is the library's own override, read only by
	// gotoblas_dynamic_init; it is removed again so that child processes
	// make their own choice.
	setenv("OPENBLAS_CORETYPE", core, 1);
	gotoblas_dynamic_quit();
	gotoblas_dynamic_init();
	unsetenv("OPENBLAS_CORETYPE");
}

// uniter_blas_single makes every OpenBLAS call run in its caller's thread
// and stops the library's worker threads, which would otherwise busy-wait
// after start-up. The CPU backend splits products between its own
// goroutines (Gemm), so the workers are never needed.
static void uniter_blas_single(void) {
	openblas_set_num_threads(1);
	if (blas_thread_shutdown_)
		blas_thread_shutdown_();
}
*/
import "C"

import (
	"sync"
	"unsafe"
)

var configureOnce sync.Once

// configureBLAS fixes OpenBLAS's kernel choice and makes it single-threaded
// once per process, before the first CPU backend uses it.
func configureBLAS() {
	configureOnce.Do(func() {
		C.uniter_blas_retarget()
		C.uniter_blas_single()
	})
}

// BLASCore reports the OpenBLAS kernel family in use (for benchmark logs).
func BLASCore() string { return C.GoString(C.openblas_get_corename()) }

// sgemm is a row-major cblas_sgemm on host slices. The slices start at the
// first element of each (sub)matrix; leading dimensions are in elements.
// Callers guarantee m, n, k > 0 so that the first elements exist.
func sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ta, tb := uint32(C.CblasNoTrans), uint32(C.CblasNoTrans)
	if transA {
		ta = C.CblasTrans
	}
	if transB {
		tb = C.CblasTrans
	}
	C.cblas_sgemm(C.CblasRowMajor, ta, tb,
		C.blasint(m), C.blasint(n), C.blasint(k),
		C.float(alpha), (*C.float)(unsafe.Pointer(&a[0])), C.blasint(lda),
		(*C.float)(unsafe.Pointer(&b[0])), C.blasint(ldb),
		C.float(beta), (*C.float)(unsafe.Pointer(&c[0])), C.blasint(ldc))
}
