"""The environment of the PyTorch references' best CPU speed
(bench_torch.py, bench_itr_torch.py), set before torch, and the OpenBLAS
it loads, are imported.

OPENBLAS_CORETYPE: OpenBLAS 0.3.21 picks its kernel family from the CPU
model. On a CPU it does not know (a recent Xeon) it falls back to the SSE3
"Prescott" kernels, several times slower; only then is a family named,
from the CPU's flags (SkylakeX with AVX-512, Haswell with AVX2 and FMA),
as the Go backend's uniter_blas_retarget does. Otherwise OpenBLAS's own
choice is kept: on a Zen 4 it is Cooperlake, faster there than SkylakeX.

glibc malloc: torch's CPU allocator takes every activation from malloc
and frees it after use. glibc serves blocks over 32 MB by mmap and
returns them on free, so each forward faults its activations in anew (a
400-pair minibatch of UNITER-base: 12M page faults, half the run in the
kernel). MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_ keep freed
memory in the heap, as jemalloc or tcmalloc would (7.5 -> 10.8 pairs/s
for bench_itr_torch.py on 2 cores). glibc reads them at start-up, so
use_retained_malloc re-executes the script with them set.
"""
import ctypes
import os
import subprocess
import sys

_QUERY = ("import ctypes; l = ctypes.CDLL('libopenblas.so.0'); "
          "l.openblas_get_corename.restype = ctypes.c_char_p; "
          "print(l.openblas_get_corename().decode())")


MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def use_retained_malloc():
    """Re-execute this script with MALLOC_ENV unless the environment sets
    either variable (an explicit choice is kept)."""
    if any(k in os.environ for k in MALLOC_ENV):
        return
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable] + sys.argv)


def openblas_core():
    """OpenBLAS's own kernel family, asked of a fresh process (loading the
    library here would fix its choice before the environment is set)."""
    try:
        out = subprocess.run([sys.executable, "-c", _QUERY], capture_output=True,
                             text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_family():
    """The best kernel family the CPU's flags allow, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f
                          if ln.startswith("flags")), [])
    except OSError:
        return None
    if all(x in flags for x in ("avx512f", "avx512bw", "avx512dq", "avx512vl")):
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


def coretype():
    """The OPENBLAS_CORETYPE to set, or None to keep OpenBLAS's choice."""
    if openblas_core() != "Prescott":
        return None
    return cpu_family()


def loaded_core():
    """The kernel family of the OpenBLAS this process has loaded (torch's),
    "" if none is."""
    for name in ("libopenblas.so.0", "libopenblas.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    return ""
