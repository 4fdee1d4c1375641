"""Keep the host memory that XLA:CPU frees, so that each training step does not page-fault its buffers in again.

glibc's malloc serves large blocks with fresh `mmap` pages (and every thread other than the main one from a
separate arena that does the same above 64 MB), and gives them back to the kernel on `free`. XLA:CPU allocates
the large buffers of a compiled step for each call, so the kernel maps and zeroes them again at every step. At
d_model 512 on 2 cores that was 165,000 page faults (645 MB) and 0.25 s of system CPU time per training step.
A [128, 256, 256] batched score product alone ran 5x slower than with its memory kept (docs/benchmarks.md,
"Training throughput"). The settings here make every thread allocate from the main heap and never shrink it,
so freed blocks are reused without faults. The process keeps its peak heap until it exits, which suits a
training or sweep worker process. `release_freed_memory` hands back what is free after a run's first step,
when compiling (and, in a sweep worker, the previous run) has left the heap larger than the steps need.

They must be set before JAX starts its thread pools: an arena, once given to a thread, stays with it. The
`scaling` package applies them when it is imported. Set SCALING_KEEP_FREED_MEMORY=0 to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT_ENV = "SCALING_KEEP_FREED_MEMORY"

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = {
    M_ARENA_MAX: 1,  # every thread allocates from the main heap, which grows without mmap
    M_MMAP_MAX: 0,  # no block gets its own mapping, whatever its size
    M_TRIM_THRESHOLD: 2**31 - 1,  # never return the top of the heap to the kernel
}

_applied: bool | None = None
_libc = None


def keep_freed_memory() -> bool:
    """Apply SETTINGS through glibc's `mallopt` once per process; return whether they are in effect.

    Returns False, changing nothing, on systems without glibc (macOS, musl) and when SCALING_KEEP_FREED_MEMORY
    is 0.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    global _libc
    try:
        _libc = ctypes.CDLL("libc.so.6")
        mallopt = _libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    return _applied


def release_freed_memory() -> None:
    """Return the heap's free pages to the kernel (glibc's `malloc_trim`), once, when the settings are on.

    Compiling a step leaves hundreds of MB free in the heap, which the settings would otherwise keep for
    the life of the process. At d_model 512 the resident set after 12 steps was 2.6 GB without this call
    after the first step and 1.8 GB with it. With glibc's defaults it peaked at 1.4 GB. Pages that later
    steps use again fault back in once.
    """
    if _applied:
        _libc.malloc_trim(0)
