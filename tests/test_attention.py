"""Attention kernels: a per-head NumPy reference, grouped-query sharing, and the implementations agreeing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import attention, attention_blockwise, attention_xla, causal_attention_xla
from models.transformer import Transformer
from scaling.config import ModelConfig
from scaling.errors import UserError


def reference_attention(q, k, v, query_index, key_valid, causal=True):
    """Per-head loops in float64: query head h reads key/value head h // (H // K)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, length, heads, head_dim = q.shape
    keys, kv_heads = k.shape[1:3]
    group = heads // kv_heads
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            kv = h // group
            for i in range(length):
                visible = [
                    s for s in range(keys)
                    if s == query_index[i] or (key_valid[b, s] and (not causal or s <= query_index[i]))
                ]
                scores = np.array([q[b, i, h] @ k[b, s, kv] for s in visible]) / np.sqrt(head_dim)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, i, h] = sum(w * v[b, s, kv] for w, s in zip(weights, visible))
    return out


def random_qkv(heads=4, kv_heads=2, batch=2, length=3, keys=10, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, keys, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, keys, kv_heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


# Three queries in slots 5..7 of a 10-slot cache; row 1 has padding in slots 0..2 and an invalid slot 9.
QUERY_INDEX = jnp.array([5, 6, 7])
KEY_VALID = jnp.array([[True] * 8 + [False] * 2, [False] * 3 + [True] * 5 + [False] * 2])


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("implementation", ["xla", "blockwise"])
def test_matches_per_head_reference(kv_heads, implementation):
    q, k, v = random_qkv(kv_heads=kv_heads)
    out = attention(q, k, v, query_index_L=QUERY_INDEX, key_valid_BxS=KEY_VALID, implementation=implementation,
                    key_block=3)
    expected = reference_attention(q, k, v, np.asarray(QUERY_INDEX), np.asarray(KEY_VALID))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)


def test_mask_off_matches_reference_without_causality():
    q, k, v = random_qkv()
    out = attention(q, k, v, query_index_L=QUERY_INDEX, key_valid_BxS=KEY_VALID, causal=False)
    expected = reference_attention(q, k, v, np.asarray(QUERY_INDEX), np.asarray(KEY_VALID), causal=False)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)
    causal = attention(q, k, v, query_index_L=QUERY_INDEX, key_valid_BxS=KEY_VALID)
    assert np.abs(np.asarray(out) - np.asarray(causal)).max() > 1e-3  # slots 8 and later change the output


def test_grouped_heads_repeat_not_tile():
    # 4 query heads and 2 key/value heads: heads 0, 1 read KV head 0 and heads 2, 3 read KV head 1.
    q, k, v = random_qkv(heads=4, kv_heads=2, length=6, keys=6, seed=1)
    grouped = np.asarray(attention(q, k, v))
    repeated = np.asarray(attention(q, k[:, :, [0, 0, 1, 1]], v[:, :, [0, 0, 1, 1]]))
    tiled = np.asarray(attention(q, k[:, :, [0, 1, 0, 1]], v[:, :, [0, 1, 0, 1]]))
    np.testing.assert_allclose(grouped, repeated, atol=1e-6, rtol=0)
    assert np.abs(grouped - tiled).max() > 1e-2


def test_query_head_reads_only_its_kv_head():
    q, k, v = random_qkv(heads=4, kv_heads=2, length=4, keys=4, seed=2)

    def head_output_sums(k):
        return attention(q, k, v).sum(axis=(0, 1, 3))  # [4]: one sum per query head

    by_key_HxBxSxKxE = np.asarray(jax.jacrev(head_output_sums)(k))
    for head in range(4):
        own, other = head // 2, 1 - head // 2
        assert np.any(by_key_HxBxSxKxE[head, :, :, own] != 0.0), f"head {head} ignores KV head {own}"
        assert np.all(by_key_HxBxSxKxE[head, :, :, other] == 0.0), f"head {head} reads KV head {other}"


def test_position_zero_attends_only_to_itself():
    q, k, v = random_qkv(heads=4, kv_heads=2, length=5, keys=5, seed=3)
    out = np.asarray(attention(q, k, v))
    np.testing.assert_allclose(out[:, 0], np.asarray(v[:, 0, [0, 0, 1, 1]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("key_block", [1, 4, 7, 64])
def test_blockwise_values_and_gradients_match_xla(key_block):
    q, k, v = random_qkv(heads=4, kv_heads=2, length=3, keys=10, seed=4)
    padded_row_valid = KEY_VALID.at[1].set(False)  # row 1: every key is padding

    def loss(fn, q, k, v):
        out = fn(q, k, v, QUERY_INDEX, padded_row_valid)
        return jnp.sum(jnp.sin(out)), out

    def grads(fn):
        return jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)

    xla_grads, xla_out = grads(attention_xla)
    block_grads, block_out = grads(lambda *a: attention_blockwise(*a, key_block=key_block))
    np.testing.assert_allclose(np.asarray(block_out), np.asarray(xla_out), atol=1e-6, rtol=0)
    for block_grad, xla_grad in zip(block_grads, xla_grads):
        assert np.all(np.isfinite(np.asarray(block_grad)))
        np.testing.assert_allclose(np.asarray(block_grad), np.asarray(xla_grad), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("query_block", [1, 3, 4, 64])
def test_query_blocks_match_full_scores(kv_heads, query_block):
    # 10 positions: blocks of 3 leave a last block of 1, and 64 is one block holding everything.
    q, k, v = random_qkv(heads=4, kv_heads=kv_heads, length=10, keys=10, seed=8)
    cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)

    def value_and_grads(fn):
        out, pullback = jax.vjp(fn, q, k, v)
        return out, pullback(cotangent)

    full_out, full_grads = jax.jit(lambda: value_and_grads(
        lambda q, k, v: attention_xla(q, k, v, jnp.arange(10), jnp.ones((2, 10), bool))))()
    block_out, block_grads = jax.jit(lambda: value_and_grads(
        lambda q, k, v: causal_attention_xla(q, k, v, query_block)))()
    np.testing.assert_allclose(np.asarray(block_out), np.asarray(full_out), atol=1e-6, rtol=0)
    for name, block_grad, full_grad in zip("qkv", block_grads, full_grads):
        np.testing.assert_allclose(np.asarray(block_grad), np.asarray(full_grad), atol=1e-5, rtol=0,
                                   err_msg=f"gradient of {name}")


def test_query_blocks_keep_input_dtype():
    q, k, v = (x.astype(jnp.bfloat16) for x in random_qkv(length=6, keys=6))
    out, pullback = jax.vjp(lambda q, k, v: causal_attention_xla(q, k, v, 4), q, k, v)
    assert out.dtype == jnp.bfloat16
    assert [g.dtype for g in pullback(out)] == [jnp.bfloat16] * 3


def test_query_block_must_be_positive():
    q, k, v = random_qkv(length=4, keys=4)
    with pytest.raises(ValueError, match="query_block=0"):
        causal_attention_xla(q, k, v, 0)


SMALL = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)


def init_params(model: ModelConfig, seed: int = 0) -> dict:
    """Return random parameters drawn with NumPy in the model's shapes, so nothing compiles."""
    shapes = jax.eval_shape(lambda: Transformer(model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes["params"])


def logits_of(models, params, tokens):
    """Return the logits of each (model, params) pair, compiled together as one program."""
    run = jax.jit(lambda params, tokens: [Transformer(m).apply({"params": p}, tokens) for m, p in zip(models, params)])
    return [np.asarray(x) for x in run(params, tokens)]


def test_model_blockwise_matches_xla_over_several_blocks():
    # 300 positions are three blocks of the default 128 keys.
    xla_model = dataclasses.replace(SMALL, n_kv_heads=2, max_seq_len=300)
    blockwise_model = dataclasses.replace(xla_model, attention_impl="blockwise")
    params = init_params(xla_model, seed=1)
    tokens = jax.random.randint(jax.random.key(0), (1, 300), 0, SMALL.vocab_size)
    xla_logits, block_logits = logits_of([xla_model, blockwise_model], [params, params], tokens)
    np.testing.assert_allclose(block_logits, xla_logits, atol=1e-5, rtol=0)


def test_model_gqa_equals_mha_with_duplicated_kv_weights():
    gqa = dataclasses.replace(SMALL, n_kv_heads=2)
    gqa_params = init_params(gqa, seed=3)

    # Key and value kernels are [d_model, kv_heads, head_dim]; MHA head h gets GQA kv head h // 2.
    mha_params = dict(gqa_params)
    for layer in range(SMALL.n_layers):
        attention_params = dict(mha_params[f"block_{layer}"]["attention"])
        for name in ("key", "value"):
            attention_params[name] = {"kernel": attention_params[name]["kernel"][:, [0, 0, 1, 1]]}
        mha_params[f"block_{layer}"] = {**mha_params[f"block_{layer}"], "attention": attention_params}

    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, SMALL.vocab_size)
    gqa_logits, mha_logits = logits_of([gqa, SMALL], [gqa_params, mha_params], tokens)
    np.testing.assert_allclose(gqa_logits, mha_logits, atol=1e-6, rtol=0)


def test_kv_heads_equal_to_heads_is_mha():
    explicit = dataclasses.replace(SMALL, n_kv_heads=4)
    params = init_params(SMALL, seed=5)
    shapes = jax.eval_shape(Transformer(explicit).init, jax.random.key(5), jnp.zeros((1, 4), jnp.int32))["params"]
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, SMALL.vocab_size)
    explicit_logits, default_logits = logits_of([explicit, SMALL], [params, params], tokens)
    np.testing.assert_array_equal(explicit_logits, default_logits)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN may run on this machine")
def test_cudnn_rejected_without_nvidia_gpu():
    model = dataclasses.replace(SMALL, attention_impl="cudnn")
    with pytest.raises(UserError, match="needs an NVIDIA GPU"):
        jax.eval_shape(Transformer(model).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))


ON_NVIDIA_GPU = jax.default_backend() == "gpu" and "nvidia" in jax.devices()[0].device_kind.lower()


@pytest.mark.skipif(not ON_NVIDIA_GPU, reason="cuDNN attention runs on NVIDIA GPUs only")
def test_cudnn_matches_xla_on_nvidia_gpu():
    # Both in bfloat16, so the two kernels may differ by rounding only.
    xla_model = dataclasses.replace(SMALL, compute_dtype="bfloat16", max_seq_len=64)
    cudnn_model = dataclasses.replace(xla_model, attention_impl="cudnn")
    params = init_params(xla_model, seed=11)
    tokens = jax.random.randint(jax.random.key(12), (2, 64), 0, SMALL.vocab_size)
    reference, fused = logits_of([xla_model, cudnn_model], [params, params], tokens)
    assert np.abs(fused - reference).max() < 0.05 * np.abs(reference).max()

    def loss(model):
        return lambda p: Transformer(model).apply({"params": p}, tokens).astype(jnp.float32).mean()

    reference_grads = jax.jit(jax.grad(loss(xla_model)))(params)
    fused_grads = jax.jit(jax.grad(loss(cudnn_model)))(params)
    for reference_grad, fused_grad in zip(jax.tree.leaves(reference_grads), jax.tree.leaves(fused_grads)):
        scale = float(jnp.abs(reference_grad).max())
        assert float(jnp.abs(fused_grad - reference_grad).max()) <= 0.05 * scale + 1e-6


def test_unknown_compute_dtype_rejected():
    # The config rejects the value when it is built, before any model code runs.
    with pytest.raises(UserError, match="compute_dtype='float8' is not one of"):
        dataclasses.replace(SMALL, compute_dtype="float8")


def test_bfloat16_compute_close_to_float32():
    bf16 = dataclasses.replace(SMALL, compute_dtype="bfloat16")
    params = init_params(SMALL, seed=7)
    tokens = jax.random.randint(jax.random.key(6), (2, 8), 0, SMALL.vocab_size)
    reference, low_precision = logits_of([SMALL, bf16], [params, params], tokens)
    assert low_precision.dtype == np.float32  # logits are returned in float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: a relative error near 2^-8 per operation.
    assert np.abs(low_precision - reference).max() < 0.05 * np.abs(reference).max()
    assert np.abs(low_precision - reference).max() > 0.0  # it did compute in bfloat16
