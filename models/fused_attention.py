"""Causal self-attention for training on the CPU, from a fused C++ kernel called through XLA's FFI.

XLA:CPU runs attention as many small kernels per block of queries, each writing its result to memory, and
at small widths that made attention half of a training step (docs/benchmarks.md, finding 16).
`models/kernels/causal_attention_cpu.cc` computes each block of queries from scores to output in one pass,
forward and backward, and runs on XLA's own thread pool. Finding 17 records its effect.

The kernel is compiled on first use with the machine's C++ compiler (`$CXX`, else g++ or c++), for this
CPU (`-march=native`), and the library is cached under `$SCALING_KERNEL_CACHE` (default
`~/.cache/scaling-lab/kernels`), one file per source, compiler flags, jaxlib version and CPU. Workers
that compile at the same time each write their own temporary file and rename it into place.

Where it cannot be built (no compiler, a JAX without `jax.ffi`), `attention_impl="auto"` uses the XLA
path and logs why once; `attention_impl="fused"` stops with the reason. `SCALING_FUSED_ATTENTION=0`
turns the kernel off for "auto".

Inputs and outputs are float32 in the model's layout: queries [B, L, H, E], keys and values [B, L, K, E]
with K dividing H (grouped-query attention), output [B, L, H, E].
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "causal_attention_cpu.cc"
KERNEL_HEADERS = (Path(__file__).parent / "kernels" / "parallel_for.h",)  # part of the cache key too
# -ffp-contract=fast lets the compiler fuse multiply-adds, which ISO C++ mode otherwise forbids. It made no
# measurable difference to the kernel's speed with g++ 12 here. It stays because the README's demo numbers
# were measured with it, and dropping it may change the rounding.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 300
CACHE_ENV = "SCALING_KERNEL_CACHE"
SWITCH_ENV = "SCALING_FUSED_ATTENTION"  # "0" keeps attention_impl="auto" on the XLA path
FORWARD_TARGET = "scaling_causal_attention_forward"
BACKWARD_TARGET = "scaling_causal_attention_backward"


class KernelUnavailable(RuntimeError):
    """Error raised when the fused kernel cannot be built or loaded; its message gives the reason."""


def kernel_cache_dir() -> Path:
    """Return the folder of compiled kernels: $SCALING_KERNEL_CACHE, else ~/.cache/scaling-lab/kernels."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "scaling-lab" / "kernels"


def switched_off() -> bool:
    """Return True when SCALING_FUSED_ATTENTION is 0 (or false, no, off): "auto" then keeps XLA's path."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str:
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")


def _cpu_identity() -> str:
    """Return what -march=native depends on, so that a cache shared between machines keeps one file per CPU."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


def library_path(compiler: str) -> Path:
    """Return where the library for this source, compiler, flags, jaxlib and CPU is (or will be) cached."""
    import jaxlib

    key = hashlib.sha256()
    sources = [KERNEL_SOURCE.read_bytes(), *(header.read_bytes() for header in KERNEL_HEADERS)]
    for part in (*sources, compiler.encode(), " ".join(COMPILE_FLAGS).encode(),
                 jaxlib.__version__.encode(), _cpu_identity().encode()):
        key.update(part)
        key.update(b"\0")
    return kernel_cache_dir() / f"causal_attention_cpu-{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile the kernel into `target`, through a temporary file renamed into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as error:
        raise KernelUnavailable(f"writing to the kernel cache {target.parent} failed ({error.strerror}); "
                                f"set {CACHE_ENV} to a writable folder") from error
    os.close(handle)
    command = [compiler, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", str(KERNEL_SOURCE), "-o", temporary]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            first = lines[0] if lines else f"exit status {result.returncode}, no output"
            raise KernelUnavailable(f"compiling {KERNEL_SOURCE.name} with {compiler} failed: {first}")
        os.replace(temporary, target)
    except subprocess.TimeoutExpired as error:
        raise KernelUnavailable(f"compiling {KERNEL_SOURCE.name} took over {COMPILE_TIMEOUT_S} s") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    log.info("compiled the fused CPU attention kernel in %.1f s: %s", time.perf_counter() - started, target)


_load_failure: KernelUnavailable | None = None


@functools.cache
def _loaded_library() -> Path:
    """Return the library's path after building (where it is not cached) and registering it."""
    if not all(hasattr(jax, "ffi") and hasattr(jax.ffi, name)
               for name in ("ffi_call", "register_ffi_target", "include_dir", "pycapsule")):
        raise KernelUnavailable(f"JAX {jax.__version__} has no jax.ffi module; update JAX")
    compiler = _compiler()
    path = library_path(compiler)
    if not path.exists():
        _build(compiler, path)
    try:
        library = ctypes.cdll.LoadLibrary(str(path))
    except OSError as error:
        raise KernelUnavailable(f"loading {path} failed: {error}; delete it to rebuild") from error
    jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.ScalingCausalAttentionForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(library.ScalingCausalAttentionBackward),
                                platform="cpu")
    log.info("loaded the fused CPU attention kernel %s", path)
    return path


def load_kernel() -> Path:
    """Build the kernel (once per machine), register it with XLA and return the library's path.

    Raises KernelUnavailable with the reason when that fails. The library, or the failure, is kept for the
    process, so a failed build is not retried on every trace.
    """
    global _load_failure
    if _load_failure is not None:
        raise _load_failure
    try:
        return _loaded_library()
    except KernelUnavailable as error:
        _load_failure = error
        raise


def unavailable_reason() -> str | None:
    """Return why the kernel cannot run in this process, or None when it can (building it if needed)."""
    if jax.default_backend() != "cpu":
        return f"it runs on the CPU only, and JAX runs on {jax.default_backend()}"
    try:
        load_kernel()
    except KernelUnavailable as error:
        return str(error)
    return None


@functools.cache
def auto_uses_kernel() -> bool:
    """Return whether attention_impl="auto" may run the kernel: on the CPU where it builds.

    With several devices, `models.attention` also requires the batch split of `batch_split_over`. A
    failure to build is logged once, with the fallback.
    """
    if switched_off() or jax.default_backend() != "cpu":
        return False
    reason = unavailable_reason()
    if reason is not None:
        log.warning("fused CPU attention is unavailable, so training attention runs on XLA's path: %s", reason)
        return False
    return True


def causal_attention_fused(
    q_BxLxHxE: jax.Array,
    k_BxLxKxE: jax.Array,
    v_BxLxKxE: jax.Array,
    rope: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Return causal self-attention (query i attends to keys 0..i) from the fused kernel, float32 in and out.

    `rope` = (cos, sin) tables [B, L, E/2] (`models.rope.rope_tables`) makes the kernel rotate queries and
    keys as it loads them, so that no rotated copy is written to memory. The result equals
    `models.attention.causal_attention_xla` on rotated inputs up to float32 rounding. Raises
    KernelUnavailable where the kernel cannot be built.
    """
    load_kernel()
    if rope is None:
        no_table = jnp.zeros((0,), jnp.float32)
        rope = (no_table, no_table)
    else:  # tables shared by all rows ([1, L, E/2]) are broadcast, as on XLA's path
        batch, length, _, head_dim = q_BxLxHxE.shape
        expected = (batch, length, head_dim // 2)
        for table in rope:
            if table.ndim != 3 or table.shape[0] not in (1, batch) or table.shape[1:] != expected[1:]:
                raise ValueError(f"RoPE tables must be [B, L, E/2] = {list(expected)} (or [1, L, E/2]), "
                                 f"not {list(table.shape)}")
        rope = tuple(jnp.broadcast_to(table, expected) for table in rope)
    cos_BxLxE2, sin_BxLxE2 = (table.astype(jnp.float32) for table in rope)
    return _fused(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2)


def _forward(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2):
    batch, length, heads, _ = q_BxLxHxE.shape
    out_types = (jax.ShapeDtypeStruct(q_BxLxHxE.shape, jnp.float32),
                 jax.ShapeDtypeStruct((batch, heads, length), jnp.float32))
    call = jax.ffi.ffi_call(FORWARD_TARGET, out_types, vmap_method="sequential")
    out_BxLxHxE, log_sum_exp_BxHxL = call(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2)
    return out_BxLxHxE, log_sum_exp_BxHxL


@jax.custom_vjp
def _fused(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2):
    return _forward(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2)[0]


def _fused_fwd(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2):
    out_BxLxHxE, log_sum_exp_BxHxL = _forward(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2)
    return out_BxLxHxE, (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2, out_BxLxHxE, log_sum_exp_BxHxL)


def _fused_bwd(residuals, dout_BxLxHxE):
    """Return the gradients of q, k and v, and zeros for the RoPE tables.

    The kernel recomputes the softmax weights from each query's saved log-sum-exp. The tables come from
    integer positions, so nothing upstream needs their gradient.
    """
    q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2, out_BxLxHxE, log_sum_exp_BxHxL = residuals
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE))
    call = jax.ffi.ffi_call(BACKWARD_TARGET, out_types, vmap_method="sequential")
    dq_BxLxHxE, dk_BxLxKxE, dv_BxLxKxE = call(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, cos_BxLxE2, sin_BxLxE2, out_BxLxHxE,
                                              log_sum_exp_BxHxL, dout_BxLxHxE.astype(jnp.float32))
    return dq_BxLxHxE, dk_BxLxKxE, dv_BxLxKxE, jnp.zeros_like(cos_BxLxE2), jnp.zeros_like(sin_BxLxE2)


_fused.defvjp(_fused_fwd, _fused_bwd)
