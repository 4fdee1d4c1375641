"""The small benchmark tools, each on a tiny shape: the product-layout timer, the step profiler, the
initial-state timer, the step compile timer, the mesh attention timer, the malloc settings timer, the
OpenBLAS product experiment and the flat-optimizer timer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(script: str, *options: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *options], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_tiny_run_reports_every_layout():
    done = run_tool("matmul_layouts.py", "--tokens", "64", "--d-model", "32", "--hidden", "48", "--rounds", "2",
                    "--repeats", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["shape"] == {"tokens": 64, "d_model": 32, "hidden": 48}
    assert [row["product"].split()[0] for row in report["rows"]] == ["forward", "input", "weight", "weight"]
    for row in report["rows"]:
        assert len(row["ms"]) == len(row["gflops_per_s"]) == 2
        for ms, rate in zip(row["ms"], row["gflops_per_s"]):
            assert ms > 0
            assert rate >= 0


def test_profile_step_attributes_kernels_to_model_parts():
    done = run_tool("profile_step.py", "--d-model", "32", "--layers", "1", "--steps", "2", "--top", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("d_model 32, 1 layers: step")
    assert lines[1].startswith("busy share of the step's wall time, per XLA worker thread: ")
    shares = [float(share) for share in lines[1].split(": ", 1)[1].split(", ")]
    assert all(share > 0 for share in shares)
    parts = [line.split("kernels", 1)[1].strip() for line in lines[2:]]
    assert "fwd block_N/attention" in parts
    assert "bwd block_N/attention" in parts
    assert any(part.startswith("fwd block_N/mlp") for part in parts)


def test_init_compile_times_both_paths():
    done = run_tool("init_compile.py", "--shapes", "16x1,32x1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [(row["d_model"], row["n_layers"]) for row in report["shapes"]] == [(16, 1), (32, 1)]
    assert [row["includes_shared_programs"] for row in report["shapes"]] == [True, False]
    for row in report["shapes"]:
        assert row["jitted_model_init_s"] > 0
        assert row["host_draw_init_state_s"] > 0


def test_init_compile_rejects_bad_shape():
    done = run_tool("init_compile.py", "--shapes", "20x1", timeout=120)
    assert done.returncode == 2
    assert "--shapes item '20x1'" in done.stderr


def test_step_compile_times_each_stage_with_an_option():
    done = run_tool("step_compile.py", "--shapes", "16x1", "--option", "xla_backend_optimization_level=1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["options"] == {"xla_backend_optimization_level": 1}
    rows = {row["stage"]: row for row in report["rows"]}
    assert list(rows) == ["forward", "gradient", "gradient_norm", "step", "eval"]
    for row in rows.values():
        assert (row["d_model"], row["n_layers"]) == (16, 1)
        assert row["compile_s"] > 0
    # Each stage contains the one before it, so its program has at least as many fusions.
    assert rows["forward"]["fusions"] < rows["gradient"]["fusions"] <= rows["gradient_norm"]["fusions"]
    assert rows["gradient_norm"]["fusions"] < rows["step"]["fusions"]


def test_step_compile_rejects_bad_option():
    done = run_tool("step_compile.py", "--option", "optimization_level", timeout=120)
    assert done.returncode == 2
    assert "--option 'optimization_level'" in done.stderr


def test_mesh_attention_times_both_paths_on_two_devices():
    done = run_tool("mesh_attention.py", "--sizes", "32", "--layers", "1", "--seq-len", "32", "--steps", "2",
                    "--rounds", "1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)["rows"]
    assert row["devices"] == 2
    assert row["auto_resolves_to"] in ("fused", "xla")  # "xla" where no C++ compiler builds the kernel
    assert row["xla_attention_tokens_per_s"] > 0
    assert row["fused_attention_tokens_per_s"] > 0
    assert row["one_device_fused_tokens_per_s"] > 0


def test_mesh_attention_rejects_batch_not_divisible():
    done = run_tool("mesh_attention.py", "--devices", "3", timeout=120)
    assert done.returncode == 2
    assert "--devices 3 must be at least 1 and divide --batch 8" in done.stderr


@pytest.mark.slow  # one JAX process per setting, about 20 s: `make test-slow` runs it
def test_malloc_arenas_reports_every_setting():
    done = run_tool("malloc_arenas.py", "--sizes", "32", "--steps", "1", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)["rows"]
    for setting in ("none", "one-arena", "arena-per-thread", "after-threads"):
        assert row[setting]["tokens_per_s"] > 0, setting
        assert row[setting]["faults_per_step"] >= 0, setting


def test_malloc_arenas_rejects_bad_size():
    done = run_tool("malloc_arenas.py", "--sizes", "48", timeout=60)
    assert done.returncode == 2
    assert "--sizes '48' must list multiples of 32" in done.stderr


def test_blas_products_rejects_bad_sizes():
    done = run_tool("blas_products.py", "--sizes", "48", timeout=120)
    assert done.returncode == 2
    assert "--sizes '48' must be multiples of 32" in done.stderr


def test_blas_products_without_openblas_exits_2():
    # A None entry in sys.modules makes `import scipy_openblas32` fail, as on a machine without the wheel.
    script = ROOT / "benchmarks" / "blas_products.py"
    code = (f"import runpy, sys; sys.modules['scipy_openblas32'] = None; sys.argv = [{str(script)!r}, '--sizes', '32']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "pip install scipy-openblas32" in done.stderr


@pytest.mark.slow  # builds the OpenBLAS kernel and trains twice, about 17 s: `make test-slow` runs it
def test_blas_products_matches_xla_and_trains():
    pytest.importorskip("scipy_openblas32", reason="the OpenBLAS experiment needs the scipy-openblas32 wheel")
    done = run_tool("blas_products.py", "--sizes", "32", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [row["product"].split()[0] for row in report["products"]] == ["forward", "input", "weight"]
    for row in report["products"]:
        assert row["xla_gflop_per_s"] > 0
        assert row["blas_gflop_per_s"] > 0
    assert [row["d_model"] for row in report["training"]] == [32]
    assert report["training"][0]["blas_tokens_per_s"] > 0


def test_blas_dot_general_gradients_match_xla():
    pytest.importorskip("scipy_openblas32", reason="the OpenBLAS experiment needs the scipy-openblas32 wheel")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import blas_products

    blas_products.load_blas_kernel()
    rng = np.random.default_rng(0)
    x_NxHxE = jnp.asarray(rng.standard_normal((64, 4, 8)), jnp.float32)
    w_HxExD = jnp.asarray(rng.standard_normal((4, 8, 24)), jnp.float32)
    cotangent_NxD = jnp.asarray(rng.standard_normal((64, 24)), jnp.float32)
    numbers = (((1, 2), (0, 1)), ((), ()))  # DenseGeneral's output projection: heads and head width contracted

    def loss(dot_general, x, w):
        return jnp.sum(dot_general(x, w, numbers) * cotangent_NxD)

    xla_value, xla_grads = jax.value_and_grad(lambda x, w: loss(jax.lax.dot_general, x, w), (0, 1))(x_NxHxE, w_HxExD)
    blas_value, blas_grads = jax.value_and_grad(
        lambda x, w: loss(blas_products.blas_dot_general, x, w), (0, 1))(x_NxHxE, w_HxExD)
    np.testing.assert_allclose(blas_value, xla_value, rtol=1e-5)
    for blas_grad, xla_grad in zip(blas_grads, xla_grads):
        np.testing.assert_allclose(blas_grad, xla_grad, rtol=1e-4, atol=1e-4)


def test_flat_optimizer_compiles_fewer_fusions():
    """AdamW on one flat vector: both optimizers compile for one small shape, the flat one with fewer fusions."""
    done = run_tool("flat_optimizer.py", "--mode", "compile", "--shapes", "16x1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["optimizer"]: row for row in json.loads(done.stdout)["rows"]}
    assert set(rows) == {"per_leaf", "flat"}
    assert rows["flat"]["fusions"] < rows["per_leaf"]["fusions"]
    assert all(row["compile_s"] > 0 for row in rows.values())


def test_flat_optimizer_times_steps():
    done = run_tool("flat_optimizer.py", "--mode", "step", "--shapes", "16x1", "--order", "flat_first", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [row["optimizer"] for row in report["rows"]] == ["flat", "per_leaf"]
    assert all(row["step_ms"] > 0 for row in report["rows"])
