"""Would a faster matrix-multiply library speed training up? XLA's products against OpenBLAS's, alone and in
the training step, in one process, interleaved.

OpenBLAS (the scipy-openblas32 wheel, `pip install scipy-openblas32`) multiplies float32 matrices faster than
XLA:CPU on the throughput benchmark's shapes. `benchmarks/kernels/blas_matmul_cpu.cc` calls it through XLA's
FFI, split over XLA's own threads. The script first times each product of one d_model 512 MLP layer's
training step alone: the forward x W, the input gradient dy W^T and the weight gradient x^T dy. Then it
trains the throughput benchmark's model (4 layers, heads of 32, batch 8 x 256 tokens) twice per width.
The first run trains it as the project does. In the second, OpenBLAS computes every product of Flax's
dense layers: forward, input gradient and weight gradient, through a custom VJP. Everything else is the
same compiled step. Rates are the
fastest of `--repeats` rounds, each after a pause so that the other engine's threads stop spinning.
Training does not use OpenBLAS, for the reasons in docs/benchmarks.md, finding 21.

    python benchmarks/blas_products.py --json
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from scaling.errors import UserError  # noqa: E402
from scaling.host_memory import estimated_step_temp_bytes, keep_freed_memory  # noqa: E402
from scaling.schedule import schedule_values  # noqa: E402
from scaling.train import Trainer  # noqa: E402

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "blas_matmul_cpu.cc"
TARGET = "scaling_benchmark_blas_matmul"
SETTLE_S = 0.5
# (name, M, K, N, transpose_lhs, transpose_rhs) of one d_model 512 MLP projection (D 512, F 1,376) over
# 2,048 tokens: C[M, N] = op(A) op(B).
MLP_PRODUCTS = (
    ("forward x W", 2048, 512, 1376, False, False),
    ("input gradient dy W^T", 2048, 1376, 512, False, True),
    ("weight gradient x^T dy", 512, 2048, 1376, True, False),
)


def load_blas_kernel() -> None:
    """Compile the FFI kernel against scipy-openblas32 into a temporary folder and register it with XLA."""
    try:
        import scipy_openblas32
    except ImportError:
        raise UserError("scipy-openblas32 is not installed, and this benchmark needs its OpenBLAS: "
                        "run pip install scipy-openblas32") from None
    library_dir = scipy_openblas32.get_lib_dir()
    target = Path(tempfile.mkdtemp(prefix="blas-matmul-")) / "blas_matmul_cpu.so"
    command = [os.environ.get("CXX", "g++"), "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
               f"-I{jax.ffi.include_dir()}", f"-I{scipy_openblas32.get_include_dir()}", str(KERNEL_SOURCE),
               "-o", str(target), f"-L{library_dir}", f"-l{scipy_openblas32.get_library()}",
               f"-Wl,-rpath,{library_dir}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line] or ["no output"]
        raise UserError(f"compiling {KERNEL_SOURCE.name} failed: {errors[0]}")
    library = ctypes.cdll.LoadLibrary(str(target))
    library.ScalingMatmulInit()  # one OpenBLAS thread per call, because the kernel splits over XLA's threads
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.ScalingMatmul), platform="cpu")


def blas_matmul(a: jax.Array, b: jax.Array, transpose_lhs: bool = False, transpose_rhs: bool = False) -> jax.Array:
    """Return op(a) op(b) from OpenBLAS, for 2-D float32 arrays."""
    rows = a.shape[1] if transpose_lhs else a.shape[0]
    cols = b.shape[0] if transpose_rhs else b.shape[1]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows, cols), jnp.float32))
    return call(a, b, transpose_lhs=transpose_lhs, transpose_rhs=transpose_rhs)


@jax.custom_vjp
def blas_dense(x_NxK: jax.Array, w_KxF: jax.Array) -> jax.Array:
    return blas_matmul(x_NxK, w_KxF)


def _blas_dense_fwd(x_NxK, w_KxF):
    return blas_matmul(x_NxK, w_KxF), (x_NxK, w_KxF)


def _blas_dense_bwd(residuals, dy_NxF):
    x_NxK, w_KxF = residuals
    return blas_matmul(dy_NxF, w_KxF, transpose_rhs=True), blas_matmul(x_NxK, dy_NxF, transpose_lhs=True)


blas_dense.defvjp(_blas_dense_fwd, _blas_dense_bwd)


def blas_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` for Flax's dense layers, with their float32 products from OpenBLAS.

    A dense layer contracts the input's last axes with the kernel's first axes, with no batch axes. The
    kernel of `DenseGeneral` may have several of each, and they flatten into one 2-D product. Any other
    contraction goes to XLA.
    """
    (lhs_axes, rhs_axes), batch_axes = dimension_numbers
    count = len(lhs_axes)
    dense = (batch_axes == ((), ()) and tuple(lhs_axes) == tuple(range(lhs.ndim - count, lhs.ndim))
             and tuple(rhs_axes) == tuple(range(count)) and lhs.dtype == rhs.dtype == jnp.float32)
    if not dense:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    inner = math.prod(rhs.shape[:count])
    out = blas_dense(lhs.reshape(-1, inner), rhs.reshape(inner, -1))
    return out.reshape(*lhs.shape[:lhs.ndim - count], *rhs.shape[count:])


def products_with_blas():
    """Return a stand-in for `flax.linen.linear`'s `lax` whose dot_general is `blas_dot_general`.

    Flax's Dense and DenseGeneral call `lax.dot_general` from their module, so swapping that name while a
    step is traced gives the OpenBLAS variant without touching the model code.
    """
    stand_in = types.SimpleNamespace(**{name: getattr(jax.lax, name) for name in dir(jax.lax)
                                        if not name.startswith("__")})
    stand_in.dot_general = blas_dot_general
    return stand_in


def best_rate(fn, flops: float, repeats: int, calls: int) -> float:
    """Return the best FLOP/s over `repeats` rounds of `calls` calls."""
    best = math.inf
    for _ in range(repeats):
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        for _ in range(calls):
            result = fn()
        jax.block_until_ready(result)
        best = min(best, (time.perf_counter() - start) / calls)
    return flops / best


def xla_matmul(a: jax.Array, b: jax.Array, transpose_lhs: bool = False, transpose_rhs: bool = False) -> jax.Array:
    """Return op(a) op(b) from XLA's own product."""
    if transpose_lhs:
        a = a.T
    if transpose_rhs:
        b = b.T
    return a @ b


def measure_products(repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, m, k, n, transpose_lhs, transpose_rhs in MLP_PRODUCTS:
        a = jnp.asarray(rng.standard_normal((k, m) if transpose_lhs else (m, k)), jnp.float32)
        b = jnp.asarray(rng.standard_normal((n, k) if transpose_rhs else (k, n)), jnp.float32)
        xla = jax.jit(functools.partial(xla_matmul, transpose_lhs=transpose_lhs, transpose_rhs=transpose_rhs))
        blas = jax.jit(functools.partial(blas_matmul, transpose_lhs=transpose_lhs, transpose_rhs=transpose_rhs))
        np.testing.assert_allclose(blas(a, b), xla(a, b), rtol=2e-4, atol=2e-3)  # same product, another rounding
        rates = {"xla": 0.0, "blas": 0.0}
        for _ in range(repeats):  # interleaved, so a burst of load slows both alike
            for engine, fn in (("xla", xla), ("blas", blas)):
                rates[engine] = max(rates[engine], best_rate(lambda fn=fn: fn(a, b), 2 * m * k * n, 1, 5))
        rows.append({"product": name, "m": m, "k": k, "n": n,
                     "xla_gflop_per_s": round(rates["xla"] / 1e9, 1), "blas_gflop_per_s": round(rates["blas"] / 1e9, 1),
                     "speedup": round(rates["blas"] / rates["xla"], 3)})
    return rows


def train_config(d_model: int, steps: int) -> TrainConfig:
    """Return the throughput benchmark's CPU configuration at one width, for `steps` steps."""
    model = ModelConfig(vocab_size=256, d_model=d_model, n_layers=4, n_heads=max(1, d_model // 32), max_seq_len=256)
    return TrainConfig(model=model, optimizer=OptimizerConfig(warmup_steps=0),
                       data=DataConfig(path="unused", seq_len=256, batch_size=8), tokens=steps * 2048,
                       wandb_mode="disabled")


class TrainingSteps:
    """The throughput benchmark's model and step, traced with XLA's or OpenBLAS's products."""

    def __init__(self, d_model: int, steps: int, blas: bool):
        import flax.linen.linear as flax_linear

        self.config = train_config(d_model, steps)
        self.trainer = Trainer(self.config)
        self.state = self.trainer.init_state(0)
        self.schedule = {key: jnp.asarray(value, jnp.float32)
                         for key, value in schedule_values(self.config.optimizer, steps).items()}
        tokens = np.random.default_rng(0).integers(0, 256, (steps, 8, 257)).astype(np.int32)
        self.batches = [self.trainer.put_batch(batch) for batch in tokens]
        original = flax_linear.lax
        flax_linear.lax = products_with_blas() if blas else original
        try:
            self.run(1)  # traces and compiles the step with the chosen products
        finally:
            flax_linear.lax = original

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for step in range(steps):
            self.state, metrics = self.trainer.step_fn(self.state, self.batches[step % len(self.batches)],
                                                       self.schedule)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def measure_training(d_model: int, repeats: int) -> dict:
    steps = max(3, 1920 // d_model)  # about 0.5 to 2 s per round on 2 cores
    engines = {"xla": TrainingSteps(d_model, steps, blas=False), "blas": TrainingSteps(d_model, steps, blas=True)}
    best = {name: math.inf for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            time.sleep(SETTLE_S)
            best[name] = min(best[name], engine.run(steps))
    tokens = steps * 2048
    return {"d_model": d_model, "xla_tokens_per_s": round(tokens / best["xla"]),
            "blas_tokens_per_s": round(tokens / best["blas"]), "speedup": round(best["xla"] / best["blas"], 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,256,512", help="d_model ladder (default 64,128,256,512)")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds per engine (the fastest counts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 32 or any(size % 32 for size in sizes):
        raise UserError(f"--sizes {args.sizes!r} must be multiples of 32 (heads of 32), e.g. 64,512")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats} must be at least 1")
    # train() keeps freed memory for steps this large, and decides before JAX starts its threads
    # (scaling/host_memory.py, finding 19), so the benchmark decides before its first call to the backend.
    keep_freed_memory(max(estimated_step_temp_bytes(train_config(size, 1)) for size in sizes))
    if jax.default_backend() != "cpu":
        raise UserError(f"JAX runs on {jax.default_backend()}, and this benchmark compares CPU libraries: "
                        "set JAX_PLATFORMS=cpu")
    load_blas_kernel()

    report = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
              "jax": jax.__version__, "products": measure_products(args.repeats), "training": []}
    if not args.json:
        for row in report["products"]:
            print(json.dumps(row), flush=True)
    for size in sizes:
        report["training"].append(measure_training(size, args.repeats))
        if not args.json:
            print(json.dumps(report["training"][-1]), flush=True)
    report["load_average"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # a bad option or no OpenBLAS, found before any timing
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
