"""Keep the host memory that XLA:CPU frees, so that each training step does not page-fault its buffers in again.

glibc's malloc serves large blocks with fresh `mmap` pages and gives them back to the kernel on `free`.
XLA:CPU allocates the large buffers of a compiled step for each call, so the kernel maps and zeroes them
again at every step. At d_model 512 on 2 cores that was 165,000 page faults (645 MB) and 0.25 s of system
CPU time per training step. A [128, 256, 256] batched score product alone ran 5x slower than with its
memory kept (docs/benchmarks.md, "Training throughput"). Turning off `mmap` blocks and trimming alone did
not speed up that step, presumably because XLA's threads allocate from arenas of their own. The settings
here make every thread allocate from the main heap and never shrink it, so freed blocks are reused without
faults. The process keeps its peak heap until it exits, which suits a training or sweep worker process.
`release_freed_memory` hands back what is free after a run's first step, when compiling (and, in a sweep
worker, the previous run) has left the heap larger than the steps need.

The settings only help a step whose temporary buffers exceed glibc's largest `mmap` threshold (32 MB on
64-bit systems, mallopt(3)). Below it glibc raises the threshold as blocks are freed, so they stop faulting
anyway.
There the single arena only costs: the demo sweep's models (temporaries of 8-22 MB, one core) ran 10-20%
slower with it, probably because XLA's threads then share one lock. `train()` therefore applies the
settings when `estimated_step_temp_bytes` reaches that threshold. SCALING_KEEP_FREED_MEMORY=1 applies them
always, and 0 never.

They must be set before JAX starts its thread pools, because an arena, once given to a thread, stays with
it. So the first run a process trains decides for all later runs of that process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import TYPE_CHECKING

from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.config import TrainConfig

log = logging.getLogger(__name__)

SWITCH_ENV = "SCALING_KEEP_FREED_MEMORY"  # "1": always, "0": never, unset or "auto": by step size
LARGE_BLOCK_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems (mallopt(3))

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = {
    M_ARENA_MAX: 1,  # every thread allocates from the main heap, which grows without mmap
    M_MMAP_MAX: 0,  # no block gets its own mapping, whatever its size
    M_TRIM_THRESHOLD: 2**31 - 1,  # never return the top of the heap to the kernel
}

_applied: bool | None = None  # None until the first call decides
_libc = None


def keep_freed_memory(step_temp_bytes: int | None = None) -> bool:
    """Apply SETTINGS through glibc's `mallopt` once per process; return whether they are in effect.

    `step_temp_bytes` is the size of a step's temporary buffers (see `estimated_step_temp_bytes`). With
    SCALING_KEEP_FREED_MEMORY unset, the settings apply when it reaches LARGE_BLOCK_BYTES. The first call
    decides, and later calls return that decision. Nothing changes on systems without glibc (macOS, musl).
    """
    global _applied, _libc
    if _applied is not None:
        return _applied
    switch = switch_setting()
    apply = switch == "1" or (switch == "auto" and (step_temp_bytes or 0) >= LARGE_BLOCK_BYTES)
    _applied = False
    if not apply or not sys.platform.startswith("linux"):
        return False
    try:
        _libc = ctypes.CDLL("libc.so.6")
        mallopt = _libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    if _applied and step_temp_bytes is not None:
        log.info("keeping freed host memory in the heap (step temporaries about %.0f MB)", step_temp_bytes / 2**20)
    elif _applied:
        log.info("keeping freed host memory in the heap (%s=1)", SWITCH_ENV)
    else:
        log.warning("glibc rejected a mallopt setting; freed host memory goes back to the kernel as before")
    return _applied


def switch_setting() -> str:
    """Return SCALING_KEEP_FREED_MEMORY as "1", "0" or "auto" (unset); raise UserError for any other value."""
    switch = os.environ.get(SWITCH_ENV, "auto").strip().lower()
    if switch not in ("0", "1", "auto"):
        raise UserError(f"invalid {SWITCH_ENV}={switch!r}: use 1, 0 or auto, or unset it to decide by model size")
    return switch


def estimated_step_temp_bytes(config: TrainConfig) -> int:
    """Return an estimate of one training step's temporary buffers in bytes (float32 activations).

    Per token and layer the backward pass keeps about 36 d_model values (norms, projections, the MLP's
    hidden units) and 2 attention weights per head and key. Against XLA's own count
    (`memory_analysis().temp_size_in_bytes`) it gave 8.6 MB for 8.3, 26 MB for 22, 143 MB for 109 and
    285 MB for 209, over d_model 48-128 and 64-256 positions.
    """
    model = config.model
    tokens = config.data.batch_size * config.data.seq_len
    per_token_layer = 36 * model.d_model + 2 * model.n_heads * config.data.seq_len
    return 4 * tokens * model.n_layers * per_token_layer


def release_freed_memory() -> None:
    """Return the heap's free pages to the kernel (glibc's `malloc_trim`) when the settings are on.

    `train()` calls it after each run's first step, because compiling a step leaves hundreds of MB free in
    the heap, which the settings would otherwise keep for the life of the process. At d_model 512 the
    resident set after 12 steps was 2.6 GB without this call after the first step and 1.8 GB with it.
    With glibc's defaults it peaked at 1.4 GB. Pages that later steps use again fault back in once.
    """
    if _applied:
        _libc.malloc_trim(0)
