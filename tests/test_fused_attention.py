"""The fused CPU attention kernel: same values and gradients as XLA's path, causal, chosen by "auto", and
a clear fallback or error where it cannot be built."""

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import fused_attention
from models.attention import attention_xla
from models.rope import rope_tables, rotate_pairs
from models.transformer import Transformer
from scaling.config import ModelConfig
from scaling.errors import UserError

REPO = Path(__file__).resolve().parents[1]
KERNEL_REASON = fused_attention.unavailable_reason()
needs_kernel = pytest.mark.skipif(KERNEL_REASON is not None, reason=f"fused kernel unavailable: {KERNEL_REASON}")
# The kernel builds wherever a C++ compiler is on PATH; there a failure to build is a bug, not a skip.
COMPILER_HERE = bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++"))


def random_qkv(batch, length, heads, kv_heads, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, kv_heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def values_and_grads(fn, q, k, v, cotangent):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(cotangent)


def full_scores(q, k, v):
    """XLA's attention from the whole [L, L] score matrix: the reference the fused kernel must match."""
    length = q.shape[1]
    return attention_xla(q, k, v, jnp.arange(length), jnp.ones((q.shape[0], length), bool))


def test_compiler_present_means_kernel_builds():
    if COMPILER_HERE and jax.default_backend() == "cpu":
        assert KERNEL_REASON is None, KERNEL_REASON


@needs_kernel
@pytest.mark.parametrize("batch,length,heads,kv_heads,head_dim", [
    (2, 1, 2, 2, 16),     # one position, which attends only to itself
    (2, 10, 4, 4, 8),     # head_dim below one vector of 16 floats
    (3, 77, 6, 2, 24),    # grouped-query, length and head_dim that fill no whole tile
    (1, 130, 4, 1, 32),   # multi-query, three blocks of 64 queries with a short last one
    (2, 256, 2, 2, 64),   # the benchmark's length, four whole blocks
])
def test_fused_matches_full_scores(batch, length, heads, kv_heads, head_dim):
    q, k, v = random_qkv(batch, length, heads, kv_heads, head_dim)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    expected_out, expected_grads = jax.jit(lambda: values_and_grads(full_scores, q, k, v, cotangent))()
    fused_out, fused_grads = jax.jit(lambda: values_and_grads(
        fused_attention.causal_attention_fused, q, k, v, cotangent))()

    np.testing.assert_allclose(np.asarray(fused_out), np.asarray(expected_out), atol=1e-5, rtol=0)
    for name, fused_grad, expected_grad in zip("qkv", fused_grads, expected_grads):
        np.testing.assert_allclose(np.asarray(fused_grad), np.asarray(expected_grad), atol=2e-5, rtol=0,
                                   err_msg=f"gradient of {name}")


@needs_kernel
@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_fused_rope_matches_rotated_inputs(kv_heads):
    # The kernel rotates queries and keys as it loads them and rotates their gradients back: the same as
    # rotating in XLA first. Positions are arbitrary and differ per batch row, as with packed documents.
    q, k, v = random_qkv(3, 77, 6, kv_heads, 24, seed=5)
    positions = jnp.asarray(np.random.default_rng(6).integers(0, 5000, (3, 77)))
    rope = rope_tables(positions, 24, 10000.0)
    cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(q.shape), jnp.float32)
    rotated_first = lambda q, k, v: full_scores(rotate_pairs(q, *rope), rotate_pairs(k, *rope), v)  # noqa: E731
    in_kernel = lambda q, k, v: fused_attention.causal_attention_fused(q, k, v, rope)  # noqa: E731
    expected_out, expected_grads = jax.jit(lambda: values_and_grads(rotated_first, q, k, v, cotangent))()
    fused_out, fused_grads = jax.jit(lambda: values_and_grads(in_kernel, q, k, v, cotangent))()

    np.testing.assert_allclose(np.asarray(fused_out), np.asarray(expected_out), atol=1e-5, rtol=0)
    for name, fused_grad, expected_grad in zip("qkv", fused_grads, expected_grads):
        np.testing.assert_allclose(np.asarray(fused_grad), np.asarray(expected_grad), atol=2e-5, rtol=0,
                                   err_msg=f"gradient of {name}")


@needs_kernel
def test_fused_rejects_mismatched_rope_tables():
    q, k, v = random_qkv(2, 16, 2, 2, 8)
    cos, sin = rope_tables(jnp.zeros((2, 16), jnp.int32), 6, 10000.0)  # tables for head_dim 6, not 8
    with pytest.raises(ValueError, match=re.escape("RoPE tables must be [B, L, E/2] = [2, 16, 4] (or [1, L, E/2]), "
                                                   "not [2, 16, 3]")):
        fused_attention.causal_attention_fused(q, k, v, (cos, sin))


@needs_kernel
def test_rope_tables_shared_by_rows():
    # Tables of shape [1, L, E/2] apply to every batch row, as broadcasting does on XLA's path.
    q, k, v = random_qkv(3, 40, 4, 2, 16, seed=8)
    shared = rope_tables(jnp.arange(40)[None], 16, 10000.0)
    per_row = tuple(jnp.broadcast_to(table, (3, 40, 8)) for table in shared)
    np.testing.assert_array_equal(np.asarray(fused_attention.causal_attention_fused(q, k, v, shared)),
                                  np.asarray(fused_attention.causal_attention_fused(q, k, v, per_row)))


@needs_kernel
def test_fused_rejects_values_of_another_shape():
    q, k, _ = random_qkv(1, 64, 2, 2, 64)
    v = k[..., :8]  # head_dim 8 against 64: reading it as 64 would run past the buffer
    with pytest.raises(Exception, match="k and v must both be"):
        jax.block_until_ready(fused_attention.causal_attention_fused(q, k, v))


@needs_kernel
def test_fused_is_causal():
    # Changing positions 40 and later must leave every output before 40 bit for bit the same.
    q, k, v = random_qkv(2, 100, 4, 2, 32, seed=2)
    changed = [x.at[:, 40:].set(x[:, 40:] * -3.0 + 1.0) for x in (q, k, v)]
    out = np.asarray(fused_attention.causal_attention_fused(q, k, v))
    out_changed = np.asarray(fused_attention.causal_attention_fused(*changed))
    np.testing.assert_array_equal(out_changed[:, :40], out[:, :40])
    assert np.abs(out_changed[:, 40:] - out[:, 40:]).max() > 1e-2


@needs_kernel
def test_fused_is_deterministic():
    # One task per (batch row, key/value head) whichever thread runs it: no result depends on the schedule.
    q, k, v = random_qkv(4, 200, 4, 2, 32, seed=3)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fused_attention.causal_attention_fused(q, k, v))),
                            argnums=(0, 1, 2)))
    first, second = grad(q, k, v), grad(q, k, v)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SMALL = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96)


def model_params(model: ModelConfig, seed: int = 0) -> dict:
    shapes = jax.eval_shape(lambda: Transformer(model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes["params"])


@needs_kernel
def test_model_gradients_match_xla():
    params = model_params(SMALL)
    tokens = jax.random.randint(jax.random.key(1), (2, 96), 0, SMALL.vocab_size)

    def loss_and_grads(implementation):
        model = Transformer(dataclasses.replace(SMALL, attention_impl=implementation))
        loss = lambda p: jnp.mean(jax.nn.logsumexp(model.apply({"params": p}, tokens), axis=-1))
        return jax.jit(jax.value_and_grad(loss))(params)

    xla_loss, xla_grads = loss_and_grads("xla")
    fused_loss, fused_grads = loss_and_grads("fused")
    assert abs(float(fused_loss) - float(xla_loss)) < 1e-5
    for fused_grad, xla_grad in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(xla_grads)):
        scale = float(jnp.abs(xla_grad).max())
        assert float(jnp.abs(fused_grad - xla_grad).max()) <= 1e-5 * max(scale, 1.0)


def custom_calls(implementation: str, dtype: str = "float32") -> int:
    model = Transformer(dataclasses.replace(SMALL, attention_impl=implementation, compute_dtype=dtype))
    params = model_params(SMALL)
    tokens = jnp.zeros((1, 32), jnp.int32)
    text = jax.jit(lambda p: model.apply({"params": p}, tokens)).lower(params).as_text()
    return text.count(fused_attention.FORWARD_TARGET)


@needs_kernel
def test_auto_picks_fused_on_cpu():
    # "auto" runs the kernel for float32 in a one-device CPU process, and XLA's path for bfloat16.
    assert jax.device_count() == 1
    assert custom_calls("auto") == SMALL.n_layers
    assert custom_calls("fused") == SMALL.n_layers
    assert custom_calls("xla") == 0
    assert custom_calls("auto", "bfloat16") == 0  # the kernel is float32 only; "auto" keeps XLA's path


@needs_kernel
def test_fused_rejects_bfloat16():
    with pytest.raises(UserError, match="attention_impl='fused' needs float32 activations, not bfloat16"):
        custom_calls("fused", "bfloat16")


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


USE_ATTENTION = """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
    import jax, jax.numpy as jnp
    from models.attention import attention
    from scaling.errors import UserError
    q = jnp.ones((1, 8, 2, 16), jnp.float32)
    print("auto", float(attention(q, q, q, implementation="auto").sum()))
    try:
        attention(q, q, q, implementation="fused")
    except UserError as error:
        print("fused error:", error)
"""


def test_no_compiler_fallback_and_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin"), "SCALING_KERNEL_CACHE": str(tmp_path / "cache"),
           "JAX_PLATFORMS": "cpu"}
    env.pop("CXX", None)
    result = run_python(USE_ATTENTION, env)
    assert result.returncode == 0, result.stderr
    assert "auto 256.0" in result.stdout  # all-ones inputs: every output is 1
    assert "fused CPU attention is unavailable, so training attention runs on XLA's path: no C++ compiler" \
        in result.stdout
    assert "fused error: attention_impl='fused' cannot run: no C++ compiler found" in result.stdout
    assert not list((tmp_path / "cache").glob("*.so"))


def test_failed_build_is_not_retried(tmp_path):
    # A compiler that fails, and logs each call: three traces in one process must compile once.
    calls = tmp_path / "calls.txt"
    compiler = tmp_path / "failing-c++"
    compiler.write_text(f"#!/bin/sh\necho called >> {calls}\necho 'error: broken compiler' >&2\nexit 1\n")
    compiler.chmod(0o755)
    env = {**os.environ, "CXX": str(compiler), "SCALING_KERNEL_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    code = """
        from models import fused_attention
        for _ in range(3):
            print(fused_attention.unavailable_reason())
    """
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"compiling causal_attention_cpu.cc with {compiler} failed: error: broken compiler") == 3
    assert calls.read_text().count("called") == 1


def test_switch_keeps_auto_on_xla(tmp_path):
    env = {**os.environ, "SCALING_FUSED_ATTENTION": "0", "JAX_PLATFORMS": "cpu"}
    code = """
        import jax.numpy as jnp
        from models import fused_attention
        from models.attention import attention
        print("auto uses kernel:", fused_attention.auto_uses_kernel())
    """
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert "auto uses kernel: False" in result.stdout


@needs_kernel
@pytest.mark.slow
def test_two_processes_build_into_one_cache(tmp_path):
    # Two sweep workers may start at once on a fresh machine: both must build or find the library and run.
    env = {**os.environ, "SCALING_KERNEL_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    code = USE_ATTENTION.replace('implementation="fused")', 'implementation="fused"); print("fused ran")')
    workers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
        assert "auto 256.0" in stdout
        assert "fused ran" in stdout
    libraries = list((tmp_path / "cache").iterdir())
    assert len(libraries) == 1  # no temporary file left behind
    assert libraries[0].suffix == ".so"


@needs_kernel
def test_run_log_names_attention(small_corpus, tmp_path, caplog):
    # "auto" leaves the choice to the process, so the run's log names the attention that trained it.
    from scaling.train import train
    from tests.test_train import tiny_config

    with caplog.at_level(logging.INFO):
        train(tiny_config(small_corpus, tokens=10 * 32 * 8), tmp_path, progress=False)
        train(tiny_config(small_corpus, tokens=10 * 32 * 8, run_id="plain", model=dataclasses.replace(
            tiny_config(small_corpus).model, attention_impl="xla")), tmp_path, progress=False)
    assert "run tiny starts on 1 cpu device, fused attention" in caplog.text
    assert "run plain starts on 1 cpu device, xla attention" in caplog.text
