"""Keep freed memory in the process, as Caffe does by allocating its blobs once.

A train step frees and re-allocates the same large activation and gradient
buffers every iteration. glibc serves buffers above its mmap threshold with
fresh ``mmap`` calls and returns freed heap tops to the kernel, so every step
page-faults its whole working set in again: ~400k minor faults and ~10% of
the front-end's step time at crop 500 (benchmarks/bench_frontend.py). Turning
mmap allocation off and never trimming the heap makes the second step reuse
the first step's pages; peak RSS stays what the step needs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # musl and others have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
