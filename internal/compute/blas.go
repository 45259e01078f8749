package compute

/*
#cgo LDFLAGS: -lopenblas
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>

// Only DYNAMIC_ARCH builds of OpenBLAS (Debian's among them) export these;
// weak references keep other builds linkable.
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));
extern void openblas_read_env(void) __attribute__((weak));
extern int blas_thread_shutdown_(void) __attribute__((weak));
extern int blas_thread_init(void) __attribute__((weak));

// uniter_blas_short_spin restarts OpenBLAS's worker threads with
// OPENBLAS_THREAD_TIMEOUT=2^exp cycles unless the user set one. After each
// threaded call the workers otherwise busy-wait for 2^28 cycles (about a
// tenth of a second), competing with the goroutines that run every other
// operation between two products. Returns 1 if it restarted them.
static int uniter_blas_short_spin(int exp) {
	char buf[8];
	if (getenv("OPENBLAS_THREAD_TIMEOUT") != NULL || !openblas_read_env || !blas_thread_shutdown_ || !blas_thread_init)
		return 0;
	snprintf(buf, sizeof buf, "%d", exp);
	setenv("OPENBLAS_THREAD_TIMEOUT", buf, 1);
	openblas_read_env();
	unsetenv("OPENBLAS_THREAD_TIMEOUT");
	blas_thread_shutdown_();
	blas_thread_init();
	return 1;
}

// uniter_blas_retarget re-runs OpenBLAS's kernel selection when it fell back
// to the SSE3 "Prescott" kernels on a CPU it does not recognise (0.3.21 does
// not know Emerald Rapids, for one) although the CPU has AVX2 or AVX-512: the
// fallback is about seven times slower. An explicit OPENBLAS_CORETYPE is
// respected. It returns the core it switched to, or NULL.
static const char *uniter_blas_retarget(void) {
	const char *core;
	if (getenv("OPENBLAS_CORETYPE") != NULL || !gotoblas_dynamic_init || !gotoblas_dynamic_quit)
		return NULL;
	if (strcmp(openblas_get_corename(), "Prescott") != 0)
		return NULL;
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
		core = "SkylakeX";
	else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		core = "Haswell";
	else
		return NULL;
	// OPENBLAS_CORETYPE is the library's own override, read only by
	// gotoblas_dynamic_init; it is removed again so that child processes
	// make their own choice.
	setenv("OPENBLAS_CORETYPE", core, 1);
	gotoblas_dynamic_quit();
	gotoblas_dynamic_init();
	unsetenv("OPENBLAS_CORETYPE");
	return core;
}
*/
import "C"

import (
	"sync"
	"unsafe"
)

var retargetOnce sync.Once

// retargetBLAS fixes OpenBLAS's kernel choice once per process, before the
// first CPU backend uses it.
func retargetBLAS() {
	retargetOnce.Do(func() { C.uniter_blas_retarget() })
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

// setBLASThreads sets OpenBLAS's process-wide thread count.
func setBLASThreads(n int) { C.openblas_set_num_threads(C.int(n)) }

func shortSpin(exp int) int { return int(C.uniter_blas_short_spin(C.int(exp))) }
