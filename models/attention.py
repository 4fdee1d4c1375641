"""Scaled dot-product attention over grouped key/value heads, in three implementations.

softmax(q k^T / sqrt(E)) v (Vaswani et al. 2017, eq. 1), where H query heads share K key/value heads
(Ainslie et al. 2023, grouped-query attention; K = 1 is Shazeer 2019's multi-query attention). Query head
h reads key/value head h // (H // K): consecutive query heads share one key/value head, the same grouping
as `jax.nn.dot_product_attention`.

Implementations, chosen by `ModelConfig.attention_impl`:
- "auto" (the default): "fused" for float32 training on the CPU where its kernel builds, else "xla". With
  several devices it is "fused" only inside `batch_split_over(mesh)`, where each device runs the kernel on
  its own rows. The Trainer traces its steps in that context.
- "xla": the score matrix [L, S] in full, then a float32 softmax. For training (no cache, no padding) it
  runs over blocks of queries, each reading only the keys up to its last query.
- "fused": training attention (no cache, no padding) from a C++ kernel that computes each block of queries
  in one pass, forward and backward (`models.fused_attention`); float32 on the CPU only.
- "blockwise": an online softmax over blocks of keys (Milakov & Gimelshein 2018, arXiv:1805.02867;
  Rabe & Staats 2021, arXiv:2112.05682). It keeps a running maximum, normaliser and weighted sum per query,
  so memory grows with L x block instead of L x S, and the backward pass recomputes each block.
- "cudnn": cuDNN flash attention (Dao et al. 2022, arXiv:2205.14135) through
  `jax.nn.dot_product_attention(implementation="cudnn")`, on NVIDIA GPUs with bfloat16 or float16 inputs.

Which keys a query sees: key slot s is visible to the query in slot t when s <= t (the causal mask) and s
holds a real token (the padding mask). The two masks are combined with a logical and. A query also always
sees its own slot, so a padding query, which has no real key before it, still gets a finite softmax.

Shape suffixes: B batch, L query positions, S key positions, H query heads, K key/value heads,
G query heads per key/value head (H = K G), E head_dim.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from models import fused_attention
from models.dtypes import resolve_compute_dtype
from models.rope import rotate_pairs
from scaling.config import ATTENTION_IMPLS, ModelConfig
from scaling.errors import UserError

DEFAULT_KEY_BLOCK = 128  # keys per block of the blockwise implementation
# Query positions per block of the "xla" training path. 64 ran fastest of 32, 64 and 128 on 2 CPU cores at
# d_model 64 and 512 (docs/benchmarks.md, "Training throughput").
DEFAULT_QUERY_BLOCK = 64
MASKED_SCORE = float(jnp.finfo(jnp.float32).min)  # score of a masked key, finite so that no inf - inf appears


def visible_keys(
    query_index_L: jax.Array,
    key_index_S: jax.Array,
    key_valid_BxS: jax.Array,
    causal: bool = True,
) -> jax.Array:
    """Return the [B, L, S] boolean mask of keys each query may attend to.

    `query_index_L` and `key_index_S` are cache slots (positions in the sequence buffer), `key_valid_BxS`
    marks slots that hold real tokens. `causal=False` drops the causal mask and is meant only for tests and
    examples that show what the mask prevents.
    """
    real_Bx1xS = key_valid_BxS[:, None, :]
    own_slot_1xLxS = (key_index_S[None, :] == query_index_L[:, None])[None]
    if not causal:
        return real_Bx1xS | own_slot_1xLxS
    earlier_1xLxS = (key_index_S[None, :] <= query_index_L[:, None])[None]
    return (real_Bx1xS & earlier_1xLxS) | own_slot_1xLxS


def attention(
    q_BxLxHxE: jax.Array,
    k_BxSxKxE: jax.Array,
    v_BxSxKxE: jax.Array,
    *,
    query_index_L: jax.Array | None = None,
    key_valid_BxS: jax.Array | None = None,
    causal: bool = True,
    implementation: str = "auto",
    key_block: int = DEFAULT_KEY_BLOCK,
    rope: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Return the attention output [B, L, H, E] in the dtype of `q_BxLxHxE`.

    Defaults describe self-attention without a cache: query i sits in slot i and every key is real.
    "cudnn" and "fused" run only in that case (no cache, no padding). With a cache or padding the XLA
    implementation runs instead, because single-token decode reads the cache once and gains nothing from a
    fused kernel.

    `rope` = (cos, sin) tables [B, L, E/2] (`models.rope.rope_tables`) rotates queries and keys first: inside
    the fused kernel when it runs, else with `models.rope.rotate_pairs`.
    """
    batch, length = q_BxLxHxE.shape[:2]
    keys = k_BxSxKxE.shape[1]
    plain_self_attention = query_index_L is None and key_valid_BxS is None and length == keys
    if query_index_L is None:
        query_index_L = jnp.arange(length)
    if key_valid_BxS is None:
        key_valid_BxS = jnp.ones((batch, keys), bool)

    if implementation not in ATTENTION_IMPLS:
        raise UserError(f"attention_impl={implementation!r} is not one of: {', '.join(ATTENTION_IMPLS)}")
    if rope is not None and keys != length:
        raise ValueError(f"rope tables cover {length} positions but there are {keys} keys; rotate cached keys first")
    training = plain_self_attention and causal
    if training and (implementation == "fused" or (
            implementation == "auto" and _auto_fused(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE))):
        return attention_fused(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, rope)

    if rope is not None:
        q_BxLxHxE, k_BxSxKxE = rotate_pairs(q_BxLxHxE, *rope), rotate_pairs(k_BxSxKxE, *rope)
    if training and implementation == "cudnn":
        return attention_cudnn(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE)
    if training and implementation in ("xla", "auto"):
        return causal_attention_xla(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE)
    if implementation == "blockwise":
        return attention_blockwise(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, query_index_L, key_valid_BxS, causal, key_block)
    return attention_xla(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, query_index_L, key_valid_BxS, causal)


def _group_queries(q_BxLxHxE: jax.Array, kv_heads: int) -> jax.Array:
    """Reshape queries to [B, L, K, G, E]: query head h = k G + g reads key/value head k (repeat grouping)."""
    batch, length, heads, head_dim = q_BxLxHxE.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    return q_BxLxHxE.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)


def attention_xla(
    q_BxLxHxE: jax.Array,
    k_BxSxKxE: jax.Array,
    v_BxSxKxE: jax.Array,
    query_index_L: jax.Array,
    key_valid_BxS: jax.Array,
    causal: bool = True,
) -> jax.Array:
    """Return attention computed with the full [L, S] score matrix and a float32 softmax."""
    batch, length, heads, head_dim = q_BxLxHxE.shape
    q_BxLxKxGxE = _group_queries(q_BxLxHxE, k_BxSxKxE.shape[2])
    scores_BxKxGxLxS = jnp.einsum(
        "blkge,bske->bkgls", q_BxLxKxGxE, k_BxSxKxE, preferred_element_type=jnp.float32
    ) / math.sqrt(head_dim)

    key_index_S = jnp.arange(k_BxSxKxE.shape[1])
    visible_BxLxS = visible_keys(query_index_L, key_index_S, key_valid_BxS, causal)
    scores_BxKxGxLxS = jnp.where(visible_BxLxS[:, None, None], scores_BxKxGxLxS, MASKED_SCORE)
    weights_BxKxGxLxS = jax.nn.softmax(scores_BxKxGxLxS, axis=-1)

    out_BxLxKxGxE = jnp.einsum(
        "bkgls,bske->blkge", weights_BxKxGxLxS.astype(v_BxSxKxE.dtype), v_BxSxKxE,
        preferred_element_type=jnp.float32,
    )
    return out_BxLxKxGxE.reshape(batch, length, heads, head_dim).astype(q_BxLxHxE.dtype)


def causal_attention_xla(
    q_BxLxHxE: jax.Array, k_BxLxKxE: jax.Array, v_BxLxKxE: jax.Array, query_block: int = DEFAULT_QUERY_BLOCK
) -> jax.Array:
    """Return causal self-attention (query i sees keys 0..i) with a hand-written backward pass.

    The training path of "xla": the same result as `attention_xla` without a cache or padding, computed in
    head-major layout. Queries, keys and values (small: L x E per head) are transposed once, so that every
    product with the large score matrices is a plain batched matrix multiply that XLA runs without copying
    those matrices into another layout. The G query heads sharing a key/value head stay together
    ([B, K, G, L, E]), so grouped-query attention needs no repeated keys.

    Queries are taken in blocks of `query_block` positions, and block i reads only the keys up to its last
    query. That skips most of the masked upper triangle of the score matrix (with 4 blocks, 6 of 16 key
    blocks), and each block's score matrix has only `query_block` rows per query head.
    """
    batch, length, heads, head_dim = q_BxLxHxE.shape
    kv_heads = k_BxLxKxE.shape[2]
    q_BxKxGxLxE = _group_queries(q_BxLxHxE, kv_heads).transpose(0, 2, 3, 1, 4)
    k_BxKxSxE = k_BxLxKxE.transpose(0, 2, 1, 3)
    v_BxKxSxE = v_BxLxKxE.transpose(0, 2, 1, 3)
    out_BxKxGxLxE = _causal_attention(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, query_block)
    return out_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def _query_blocks(length: int, query_block: int) -> list[tuple[int, int]]:
    """Return the [start, end) positions of each block of queries; the last block may be shorter."""
    if query_block < 1:
        raise ValueError(f"query_block={query_block} must be a positive number of positions")
    return [(start, min(start + query_block, length)) for start in range(0, length, query_block)]


def _block_rows(x_BxKxGxCxE: jax.Array) -> jax.Array:
    """Return a block [B, K, G, C, E] as [B, K, G C, E]: the G query heads of a key/value head stacked."""
    batch, kv_heads, groups, block, head_dim = x_BxKxGxCxE.shape
    return x_BxKxGxCxE.reshape(batch, kv_heads, groups * block, head_dim)


def _block_weights(q_BxKxRxE: jax.Array, k_BxKxSxE: jax.Array, start: int, block: int) -> jax.Array:
    """Return the float32 softmax weights [B, K, R, S] of one query block over keys 0..S-1.

    Row r of `q_BxKxRxE` (R = G C) is the query at position start + r mod C, and S is one past the block's
    last position.
    """
    rows, keys, head_dim = q_BxKxRxE.shape[2], k_BxKxSxE.shape[2], q_BxKxRxE.shape[-1]
    scores_BxKxRxS = jnp.matmul(q_BxKxRxE, jnp.swapaxes(k_BxKxSxE, -1, -2),
                                preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    causal_RxS = (start + jnp.arange(rows) % block)[:, None] >= jnp.arange(keys)[None, :]
    scores_BxKxRxS = jnp.where(causal_RxS, scores_BxKxRxS, MASKED_SCORE)
    return jax.nn.softmax(scores_BxKxRxS, axis=-1)


def _weighted_values(weights_BxKxRxS: jax.Array, v_BxKxSxE: jax.Array, dtype) -> jax.Array:
    out_BxKxRxE = jnp.matmul(weights_BxKxRxS.astype(v_BxKxSxE.dtype), v_BxKxSxE, preferred_element_type=jnp.float32)
    return out_BxKxRxE.astype(dtype)


def _causal_attention_fwd(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, query_block):
    outs, weights = [], []
    for start, end in _query_blocks(q_BxKxGxLxE.shape[3], query_block):
        q_BxKxRxE = _block_rows(q_BxKxGxLxE[:, :, :, start:end])
        weights_BxKxRxS = _block_weights(q_BxKxRxE, k_BxKxSxE[:, :, :end], start, end - start)
        out_BxKxRxE = _weighted_values(weights_BxKxRxS, v_BxKxSxE[:, :, :end], q_BxKxGxLxE.dtype)
        outs.append(out_BxKxRxE.reshape(*q_BxKxGxLxE.shape[:3], end - start, q_BxKxGxLxE.shape[-1]))
        weights.append(weights_BxKxRxS)
    out_BxKxGxLxE = jnp.concatenate(outs, axis=3)
    return out_BxKxGxLxE, (q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, tuple(weights), out_BxKxGxLxE)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _causal_attention(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, query_block: int):
    return _causal_attention_fwd(q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, query_block)[0]


def _causal_attention_bwd(query_block, residuals, dout_BxKxGxLxE):
    """Return the gradients of q, k and v from the saved softmax weights P of every query block.

    With O = P V and P = softmax(S): dV = P^T dO, dP = dO V^T, and dS = P (dP - D) with D_q = sum_e dO_qe O_qe,
    the softmax gradient written with the output instead of a sum over keys (Dao et al. 2022,
    arXiv:2205.14135, appendix B.2). Masked keys have P = 0, so their dS is 0 too. dV and dK are computed
    transposed (dV^T = dO^T P, dK^T = Q^T dS), which reads P and dS in their own layout. Block i contributes
    to the gradients of keys 0..end_i only, padded with zeros to all keys before adding.
    """
    q_BxKxGxLxE, k_BxKxSxE, v_BxKxSxE, weights, out_BxKxGxLxE = residuals
    scale = 1.0 / math.sqrt(q_BxKxGxLxE.shape[-1])
    f32 = jnp.float32
    dout_BxKxGxLxE = dout_BxKxGxLxE.astype(f32)
    delta_BxKxGxLx1 = jnp.sum(dout_BxKxGxLxE * out_BxKxGxLxE.astype(f32), axis=-1, keepdims=True)
    k32_BxKxSxE, v32_BxKxSxE = k_BxKxSxE.astype(f32), v_BxKxSxE.astype(f32)
    keys = k_BxKxSxE.shape[2]
    dq_blocks = []
    dk_BxKxExS = jnp.zeros(jnp.swapaxes(k_BxKxSxE, -1, -2).shape, f32)
    dv_BxKxExS = jnp.zeros(jnp.swapaxes(v_BxKxSxE, -1, -2).shape, f32)
    for (start, end), weights_BxKxRxS in zip(_query_blocks(q_BxKxGxLxE.shape[3], query_block), weights):
        dout_BxKxRxE = _block_rows(dout_BxKxGxLxE[:, :, :, start:end])
        q_BxKxRxE = _block_rows(q_BxKxGxLxE[:, :, :, start:end]).astype(f32)
        delta_BxKxRx1 = _block_rows(delta_BxKxGxLx1[:, :, :, start:end])

        dv_BxKxExS = dv_BxKxExS + _pad_keys(
            jnp.matmul(jnp.swapaxes(dout_BxKxRxE, -1, -2), weights_BxKxRxS, preferred_element_type=f32), keys)
        dweights_BxKxRxS = jnp.matmul(dout_BxKxRxE, jnp.swapaxes(v32_BxKxSxE[:, :, :end], -1, -2),
                                      preferred_element_type=f32)
        dscores_BxKxRxS = weights_BxKxRxS * (dweights_BxKxRxS - delta_BxKxRx1) * scale
        dq_BxKxRxE = jnp.matmul(dscores_BxKxRxS, k32_BxKxSxE[:, :, :end], preferred_element_type=f32)
        dq_blocks.append(dq_BxKxRxE.reshape(*q_BxKxGxLxE.shape[:3], end - start, q_BxKxGxLxE.shape[-1]))
        dk_BxKxExS = dk_BxKxExS + _pad_keys(
            jnp.matmul(jnp.swapaxes(q_BxKxRxE, -1, -2), dscores_BxKxRxS, preferred_element_type=f32), keys)

    dq_BxKxGxLxE = jnp.concatenate(dq_blocks, axis=3)
    return (dq_BxKxGxLxE.astype(q_BxKxGxLxE.dtype), jnp.swapaxes(dk_BxKxExS, -1, -2).astype(k_BxKxSxE.dtype),
            jnp.swapaxes(dv_BxKxExS, -1, -2).astype(v_BxKxSxE.dtype))


def _pad_keys(x_BxKxExS: jax.Array, keys: int) -> jax.Array:
    """Return `x_BxKxExS` padded with zeros after its last key up to `keys` keys.

    Adding padded blocks compiles to fused loops, where `.at[..., :end].add` compiled to a slower scatter
    on the CPU.
    """
    missing = keys - x_BxKxExS.shape[-1]
    if missing == 0:
        return x_BxKxExS
    return jnp.pad(x_BxKxExS, ((0, 0), (0, 0), (0, 0), (0, missing)))


_causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def attention_blockwise(
    q_BxLxHxE: jax.Array,
    k_BxSxKxE: jax.Array,
    v_BxSxKxE: jax.Array,
    query_index_L: jax.Array,
    key_valid_BxS: jax.Array,
    causal: bool = True,
    key_block: int = DEFAULT_KEY_BLOCK,
) -> jax.Array:
    """Return attention computed block by block over the keys with an online softmax.

    After each block the running maximum m, normaliser l and weighted sum a of every query are updated:
    m' = max(m, max_s score), l' = l exp(m - m') + sum_s exp(score - m'), a' = a exp(m - m') + sum_s
    exp(score - m') v_s. The output is a / l once all blocks are read.
    """
    if key_block < 1:
        raise ValueError(f"key_block={key_block} must be a positive number of keys")
    batch, length, heads, head_dim = q_BxLxHxE.shape
    keys, kv_heads = k_BxSxKxE.shape[1:3]
    groups = heads // kv_heads
    n_blocks = -(-keys // key_block)
    padding = n_blocks * key_block - keys

    # Pad the keys to whole blocks. Padded slots are invalid, so no query attends to them.
    k_BxSxKxE = jnp.pad(k_BxSxKxE, ((0, 0), (0, padding), (0, 0), (0, 0)))
    v_BxSxKxE = jnp.pad(v_BxSxKxE, ((0, 0), (0, padding), (0, 0), (0, 0)))
    key_valid_BxS = jnp.pad(key_valid_BxS, ((0, 0), (0, padding)))
    key_index_S = jnp.arange(n_blocks * key_block)

    def blocks(x, axis: int):
        """Split axis `axis` of x into [n_blocks, ..., key_block, ...] with the block index first."""
        split = x.reshape(*x.shape[:axis], n_blocks, key_block, *x.shape[axis + 1 :])
        return jnp.moveaxis(split, axis, 0)

    q_BxLxKxGxE = _group_queries(q_BxLxHxE, kv_heads)
    scale = 1.0 / math.sqrt(head_dim)

    def read_block(carry, block):
        max_BxKxGxL, norm_BxKxGxL, sum_BxKxGxLxE = carry
        k_BxCxKxE, v_BxCxKxE, valid_BxC, index_C = block  # C: keys in this block
        scores_BxKxGxLxC = jnp.einsum(
            "blkge,bcke->bkglc", q_BxLxKxGxE, k_BxCxKxE, preferred_element_type=jnp.float32
        ) * scale
        visible_BxLxC = visible_keys(query_index_L, index_C, valid_BxC, causal)[:, None, None]
        scores_BxKxGxLxC = jnp.where(visible_BxLxC, scores_BxKxGxLxC, MASKED_SCORE)

        new_max_BxKxGxL = jnp.maximum(max_BxKxGxL, scores_BxKxGxLxC.max(axis=-1))
        weights_BxKxGxLxC = jnp.where(visible_BxLxC, jnp.exp(scores_BxKxGxLxC - new_max_BxKxGxL[..., None]), 0.0)
        rescale_BxKxGxL = jnp.exp(max_BxKxGxL - new_max_BxKxGxL)
        norm_BxKxGxL = norm_BxKxGxL * rescale_BxKxGxL + weights_BxKxGxLxC.sum(axis=-1)
        block_sum_BxKxGxLxE = jnp.einsum(
            "bkglc,bcke->bkgle", weights_BxKxGxLxC.astype(v_BxCxKxE.dtype), v_BxCxKxE,
            preferred_element_type=jnp.float32,
        )
        sum_BxKxGxLxE = sum_BxKxGxLxE * rescale_BxKxGxL[..., None] + block_sum_BxKxGxLxE
        return (new_max_BxKxGxL, norm_BxKxGxL, sum_BxKxGxLxE), None

    initial = (
        jnp.full((batch, kv_heads, groups, length), MASKED_SCORE, jnp.float32),
        jnp.zeros((batch, kv_heads, groups, length), jnp.float32),
        jnp.zeros((batch, kv_heads, groups, length, head_dim), jnp.float32),
    )
    xs = (blocks(k_BxSxKxE, 1), blocks(v_BxSxKxE, 1), blocks(key_valid_BxS, 1), blocks(key_index_S, 0))
    # jax.checkpoint makes the backward pass recompute each block's scores instead of storing all of them.
    (_, norm_BxKxGxL, sum_BxKxGxLxE), _ = jax.lax.scan(jax.checkpoint(read_block), initial, xs)

    # Every query sees at least its own slot, so the normaliser is positive.
    out_BxKxGxLxE = sum_BxKxGxLxE / norm_BxKxGxL[..., None]
    out_BxLxKxGxE = jnp.moveaxis(out_BxKxGxLxE, 3, 1)
    return out_BxLxKxGxE.reshape(batch, length, heads, head_dim).astype(q_BxLxHxE.dtype)


def training_attention(model: ModelConfig) -> str:
    """Return the implementation that computes a model's attention in a Trainer's steps in this process: its
    `attention_impl`, with "auto" resolved ("fused" or "xla")."""
    if model.attention_impl != "auto":
        return model.attention_impl
    float32 = resolve_compute_dtype(model.compute_dtype) == jnp.float32
    return "fused" if float32 and fused_attention.auto_uses_kernel() else "xla"


def _float32(*arrays: jax.Array) -> bool:
    return all(x.dtype == jnp.float32 for x in arrays)


def _auto_fused(*arrays: jax.Array) -> bool:
    batch_split = jax.device_count() == 1 or _batch_mesh.get() is not None
    return _float32(*arrays) and batch_split and fused_attention.auto_uses_kernel()


_batch_mesh: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("attention_batch_mesh", default=None)


@contextlib.contextmanager
def batch_split_over(mesh: Mesh):
    """Trace training attention inside this context with the batch split over `mesh`'s first axis.

    The fused kernel then runs on each device's own rows (a `shard_map`). Outside it, XLA would gather the
    whole batch onto every device to call the kernel once.
    """
    token = _batch_mesh.set(mesh)
    try:
        yield
    finally:
        _batch_mesh.reset(token)


def attention_fused(
    q_BxLxHxE: jax.Array, k_BxLxKxE: jax.Array, v_BxLxKxE: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None
) -> jax.Array:
    """Return causal self-attention from the fused CPU kernel; raise UserError where it cannot run."""
    if not _float32(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE):
        raise UserError(
            f"attention_impl='fused' needs float32 activations, not {q_BxLxHxE.dtype.name}; "
            "set compute_dtype='float32' (or 'auto' on CPU) or use attention_impl='xla'"
        )
    reason = fused_attention.unavailable_reason()
    if reason is not None:
        raise UserError(f"attention_impl='fused' cannot run: {reason}; use attention_impl='auto' or 'xla'")
    mesh = _batch_mesh.get()
    if mesh is None or mesh.size == 1:
        return fused_attention.causal_attention_fused(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, rope)

    rows = PartitionSpec(mesh.axis_names[0])
    if rope is None:
        per_device = jax.shard_map(fused_attention.causal_attention_fused, mesh=mesh, in_specs=(rows, rows, rows),
                                   out_specs=rows, check_vma=False)
        return per_device(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE)
    tables = rows if rope[0].shape[0] > 1 else PartitionSpec()  # [1, L, E/2] tables serve every row
    per_device = jax.shard_map(fused_attention.causal_attention_fused, mesh=mesh,
                               in_specs=(rows, rows, rows, (tables, tables)), out_specs=rows, check_vma=False)
    return per_device(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, rope)


def attention_cudnn(q_BxLxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array) -> jax.Array:
    """Return causal self-attention from cuDNN's fused kernel; raise UserError where it cannot run."""
    check_cudnn_available(q_BxLxHxE.dtype)
    return jax.nn.dot_product_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, is_causal=True, implementation="cudnn")


def check_cudnn_available(dtype) -> None:
    """Raise UserError unless the default device is an NVIDIA GPU and `dtype` is bfloat16 or float16.

    cuDNN's fused attention in JAX 0.10 accepts only fp16, bf16 and fp8 inputs.
    """
    device = jax.devices()[0]
    platform_version = getattr(getattr(device, "client", None), "platform_version", "") or ""
    on_nvidia = device.platform == "gpu" and "rocm" not in platform_version.lower()
    if not on_nvidia:
        raise UserError(
            f"attention_impl='cudnn' needs an NVIDIA GPU, but JAX runs on {device.platform} ({device.device_kind}); "
            "use attention_impl='xla' or 'blockwise'"
        )
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise UserError(
            f"attention_impl='cudnn' needs compute_dtype bfloat16 or float16, not {jnp.dtype(dtype).name}; "
            "set compute_dtype='bfloat16' (or 'auto') or use attention_impl='xla'"
        )
