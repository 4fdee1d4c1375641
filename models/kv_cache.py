"""The key/value cache of autoregressive decoding, and what it costs in memory.

Each layer keeps the keys and values of every token already read, after RoPE, for its `n_kv_heads`
key/value heads only: grouped-query and multi-query attention shrink the cache by n_heads / n_kv_heads.
The cache is preallocated to a fixed number of slots, so decoding compiles once for a given batch size and
cache length. All rows of a batch share the write index. Left-padded prompts mark their padding slots
invalid, and each row's next position is the number of real tokens it contains.

Memory: bytes = 2 (keys and values) x layers x kv heads x head_dim x context x batch x bytes per value.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from models.dtypes import resolve_compute_dtype
from scaling.config import ModelConfig
from scaling.errors import UserError

class CacheFullError(ValueError):
    """A write that would go past the last slot of a KV cache."""


@flax.struct.dataclass
class KVCache:
    """Keys and values of the tokens read so far, one preallocated buffer per layer.

    Slots [0, length) are written. Each row's next position is the count of its valid slots, so left
    padding does not shift the positions of its real tokens.
    """

    keys_BxSxKxE: tuple[jax.Array, ...]  # one [batch, slots, kv heads, head_dim] buffer per layer, after RoPE
    values_BxSxKxE: tuple[jax.Array, ...]  # one buffer per layer, same shape as the keys
    valid_BxS: jax.Array  # bool: the slot holds a real token (written and not padding)
    length: jax.Array  # int32 scalar: slots written so far, the next write index
    overflowed: jax.Array  # bool scalar: a write was rejected because it did not fit; it stays set

    @property
    def capacity(self) -> int:
        """Slots per row: the longest sequence, prompt included, that the cache can hold."""
        return self.valid_BxS.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid_BxS.shape[0]

    def kv_nbytes(self) -> int:
        """Bytes of the key and value buffers of all layers (the validity mask and counters excluded)."""
        return sum(x.nbytes for x in (*self.keys_BxSxKxE, *self.values_BxSxKxE))

    def check_room(self, new_tokens: int) -> None:
        """Raise CacheFullError unless `new_tokens` more tokens fit. Needs a concrete (not traced) length."""
        length = int(self.length)
        if length + new_tokens > self.capacity:
            raise CacheFullError(
                f"cache full: {length} of {self.capacity} slots are written, so {new_tokens} more tokens do not fit; "
                "allocate a longer cache"
            )


def init_cache(model: ModelConfig, batch_size: int, length: int | None = None) -> KVCache:
    """Return an empty cache of `length` slots (default `model.max_seq_len`) for `batch_size` rows.

    Models with learned positions have embeddings for positions below `max_seq_len` only, so their cache
    cannot be longer.
    """
    length = model.max_seq_len if length is None else length
    if batch_size < 1 or length < 1:
        raise ValueError(f"batch_size={batch_size} and cache length={length} must both be positive")
    if model.positions == "learned" and length > model.max_seq_len:
        raise UserError(
            f"cache length {length} exceeds max_seq_len={model.max_seq_len}, the number of learned positions; "
            f"use a cache of at most {model.max_seq_len} slots"
        )
    dtype = resolve_compute_dtype(model.compute_dtype)
    shape = (batch_size, length, model.kv_heads, model.dim_per_head)
    return KVCache(
        keys_BxSxKxE=tuple(jnp.zeros(shape, dtype) for _ in range(model.n_layers)),
        values_BxSxKxE=tuple(jnp.zeros(shape, dtype) for _ in range(model.n_layers)),
        valid_BxS=jnp.zeros((batch_size, length), bool),
        length=jnp.zeros((), jnp.int32),
        overflowed=jnp.zeros((), bool),
    )


def kv_cache_bytes(
    n_layers: int, kv_heads: int, head_dim: int, context: int, batch_size: int = 1, bytes_per_value: int = 2
) -> int:
    """Return the bytes of a KV cache: 2 x layers x kv heads x head_dim x context x batch x bytes per value.

    `context` is in tokens; `bytes_per_value` is 2 for bfloat16 or float16 and 4 for float32.
    """
    for name, value in (("n_layers", n_layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                        ("context", context), ("batch_size", batch_size), ("bytes_per_value", bytes_per_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value!r} must be a positive integer")
    return 2 * n_layers * kv_heads * head_dim * context * batch_size * bytes_per_value


def kv_cache_comparison(
    n_layers: int,
    n_heads: int,
    head_dim: int,
    context: int,
    batch_size: int = 1,
    bytes_per_value: int = 2,
    gqa_kv_heads: int | None = None,
) -> list[dict[str, Any]]:
    """Return the cache size of multi-head, grouped-query and multi-query attention for one shape.

    Each row has `attention` ("MHA", "GQA", "MQA"), `kv_heads`, `bytes` and `gib` (bytes / 2**30).
    `gqa_kv_heads` defaults to 8 when 8 divides n_heads and is smaller, else to the largest divisor of
    n_heads strictly between 1 and n_heads. The GQA row is left out when n_heads has no such divisor.
    """
    if gqa_kv_heads is None:
        gqa_kv_heads = _default_gqa_kv_heads(n_heads)
    elif n_heads % gqa_kv_heads:
        raise UserError(f"gqa_kv_heads={gqa_kv_heads} does not divide n_heads={n_heads}; pick a divisor")

    variants = [("MHA", n_heads)]
    if gqa_kv_heads is not None and 1 < gqa_kv_heads < n_heads:
        variants.append(("GQA", gqa_kv_heads))
    variants.append(("MQA", 1))

    rows = []
    for attention, kv_heads in variants:
        size = kv_cache_bytes(n_layers, kv_heads, head_dim, context, batch_size, bytes_per_value)
        rows.append({"attention": attention, "kv_heads": kv_heads, "bytes": size, "gib": size / 2**30})
    return rows


def kv_cache_bytes_for(model: ModelConfig, context: int, batch_size: int = 1, dtype: str | None = None) -> int:
    """Return the cache bytes of `model` at `context` tokens, values in `dtype` (default: its compute dtype)."""
    bytes_per_value = resolve_compute_dtype(dtype or model.compute_dtype).itemsize
    return kv_cache_bytes(model.n_layers, model.kv_heads, model.dim_per_head, context, batch_size, bytes_per_value)


def _default_gqa_kv_heads(n_heads: int) -> int | None:
    if n_heads % 8 == 0 and n_heads > 8:
        return 8
    divisors = [d for d in range(2, n_heads) if n_heads % d == 0]
    return max(divisors) if divisors else None
