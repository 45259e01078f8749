//go:build cuda

// NCCL loaded at run time. The build machines have no NCCL headers or
// library and the GPU host has NCCL only inside a Python wheel, so the few
// types used are declared here with nccl.h's values (NVIDIA/nccl
// src/nccl.h.in) and every entry point is resolved with dlsym. Included by
// nccl.go only: the functions are static.

#ifndef UNITER_NCCL_SHIM_H
#define UNITER_NCCL_SHIM_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// ncclResult_t values the Go side tells apart.
enum {
	UNITER_NCCL_SUCCESS = 0,
	UNITER_NCCL_INVALID_USAGE = 5,
	UNITER_NCCL_IN_PROGRESS = 7,
};

// ncclDataType_t and ncclRedOp_t: both enums are int-sized in every NCCL 2.x.
enum { UNITER_NCCL_FLOAT16 = 6, UNITER_NCCL_FLOAT32 = 7 };
enum { UNITER_NCCL_SUM = 0 };

#define UNITER_NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[UNITER_NCCL_UNIQUE_ID_BYTES]; } uniter_nccl_unique_id;
typedef void *uniter_nccl_comm;

static int (*uniter_p_get_version)(int *);
static int (*uniter_p_get_unique_id)(uniter_nccl_unique_id *);
// The id is passed by value: declaring the pointer with the struct type
// lets the C compiler place its 128 bytes on the stack as the ABI wants.
static int (*uniter_p_comm_init_rank)(uniter_nccl_comm *, int, uniter_nccl_unique_id, int);
static int (*uniter_p_all_reduce)(const void *, void *, size_t, int, int, uniter_nccl_comm, void *);
static int (*uniter_p_comm_destroy)(uniter_nccl_comm);
static int (*uniter_p_comm_abort)(uniter_nccl_comm);
static const char *(*uniter_p_get_error_string)(int);
static int (*uniter_p_comm_get_async_error)(uniter_nccl_comm, int *);
// Optional (NCCL >= 2.13): NULL when the library predates it.
static const char *(*uniter_p_get_last_error)(uniter_nccl_comm);

// uniter_nccl_load opens the library at path and resolves every entry
// point. It returns 0, 1 when dlopen fails or 2 when a symbol is missing,
// with the reason in msg. Called once, under Go's sync.Once.
static int uniter_nccl_load(const char *path, char *msg, size_t msglen) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		snprintf(msg, msglen, "%s", e ? e : "dlopen failed");
		return 1;
	}
	struct {
		void **fn;
		const char *name;
	} syms[] = {
		{(void **)&uniter_p_get_version, "ncclGetVersion"},
		{(void **)&uniter_p_get_unique_id, "ncclGetUniqueId"},
		{(void **)&uniter_p_comm_init_rank, "ncclCommInitRank"},
		{(void **)&uniter_p_all_reduce, "ncclAllReduce"},
		{(void **)&uniter_p_comm_destroy, "ncclCommDestroy"},
		{(void **)&uniter_p_comm_abort, "ncclCommAbort"},
		{(void **)&uniter_p_get_error_string, "ncclGetErrorString"},
		{(void **)&uniter_p_comm_get_async_error, "ncclCommGetAsyncError"},
	};
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		*syms[i].fn = dlsym(h, syms[i].name);
		if (*syms[i].fn == NULL) {
			const char *e = dlerror();
			snprintf(msg, msglen, "%s: %s", syms[i].name, e ? e : "missing");
			for (size_t j = 0; j <= i; j++) {
				*syms[j].fn = NULL;
			}
			dlclose(h);
			return 2;
		}
	}
	*(void **)&uniter_p_get_last_error = dlsym(h, "ncclGetLastError");
	return 0;
}

static int uniter_nccl_get_version(int *v) { return uniter_p_get_version(v); }

static int uniter_nccl_get_unique_id(char *id) {
	uniter_nccl_unique_id u;
	int r = uniter_p_get_unique_id(&u);
	memcpy(id, u.internal, sizeof u.internal);
	return r;
}

// uniter_nccl_comm_init_rank copies the id out of Go memory into a C value
// so that the call through uniter_p_comm_init_rank passes it by value.
static int uniter_nccl_comm_init_rank(uniter_nccl_comm *comm, int nranks, const char *id, int rank) {
	uniter_nccl_unique_id u;
	memcpy(u.internal, id, sizeof u.internal);
	return uniter_p_comm_init_rank(comm, nranks, u, rank);
}

// Device addresses travel as integers so that Go never turns a uintptr
// into an unsafe.Pointer.
static int uniter_nccl_all_reduce(uint64_t send, uint64_t recv, size_t count, int dtype, int op,
                                  uniter_nccl_comm comm, void *stream) {
	return uniter_p_all_reduce((const void *)(uintptr_t)send, (void *)(uintptr_t)recv, count, dtype, op, comm,
	                           stream);
}

static int uniter_nccl_comm_destroy(uniter_nccl_comm comm) { return uniter_p_comm_destroy(comm); }

static int uniter_nccl_comm_abort(uniter_nccl_comm comm) { return uniter_p_comm_abort(comm); }

static int uniter_nccl_comm_get_async_error(uniter_nccl_comm comm, int *async_err) {
	return uniter_p_comm_get_async_error(comm, async_err);
}

static const char *uniter_nccl_get_error_string(int r) {
	const char *s = uniter_p_get_error_string ? uniter_p_get_error_string(r) : NULL;
	return s ? s : "";
}

static const char *uniter_nccl_get_last_error(uniter_nccl_comm comm) {
	const char *s = uniter_p_get_last_error ? uniter_p_get_last_error(comm) : NULL;
	return s ? s : "";
}

#endif
