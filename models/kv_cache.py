"""The key/value cache of autoregressive decoding, and what it costs in memory.

Each layer keeps the keys and values of every token already read, after RoPE, for its `n_kv_heads`
key/value heads only: grouped-query and multi-query attention shrink the cache by n_heads / n_kv_heads.
The cache is preallocated to a fixed number of slots, so decoding compiles once for a given batch size and
cache length. All rows of a batch share the write index. Left-padded prompts mark their padding slots
invalid, and each row's next position is the number of real tokens it contains.

Memory: bytes = 2 (keys and values) x layers x kv heads x head_dim x context x batch x bytes per value.
At its peak, decoding keeps about DECODE_CACHE_COPIES copies of the cache in memory. `check_cache_fits` rejects
a cache whose decoding would not fit in the memory left on the device (host RAM on the CPU).
"""

from __future__ import annotations

import numbers
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from models.dtypes import resolve_compute_dtype
from scaling.config import ModelConfig
from scaling.errors import UserError
from scaling.machine_memory import format_bytes, memory_available

# Peak memory of decoding, in copies of the key/value buffers: the cache the prefill returns, the copy the
# decode loop carries, and a layer's keys and values rearranged for attention. Measured with `scaling generate`
# on the CPU (2 layers, d_model 32, float32, a cache of 512 bytes per slot): the peak resident set grew by
# 1.27 kB per slot between caches of 1M and 4M slots, about 2.5 copies.
DECODE_CACHE_COPIES = 3
# Other bytes per slot and row while decoding: the validity mask (bool) and the decode loop's int32 tokens.
DECODE_BYTES_PER_SLOT = 1 + 4


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
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    check_cache_length(model, length)
    dtype = resolve_compute_dtype(model.compute_dtype)
    shape = (batch_size, length, model.kv_heads, model.dim_per_head)
    return KVCache(
        keys_BxSxKxE=tuple(jnp.zeros(shape, dtype) for _ in range(model.n_layers)),
        values_BxSxKxE=tuple(jnp.zeros(shape, dtype) for _ in range(model.n_layers)),
        valid_BxS=jnp.zeros((batch_size, length), bool),
        length=jnp.zeros((), jnp.int32),
        overflowed=jnp.zeros((), bool),
    )


def check_cache_length(model: ModelConfig, length: int, option: str = "cache length") -> None:
    """Raise for a cache length below 1, or beyond `max_seq_len` for a model with learned positions.

    `option` names the length in messages, e.g. "--cache-len" for the `scaling generate` command.
    """
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise UserError(f"{option}={length!r} must be a positive number of slots")
    if model.positions == "learned" and length > model.max_seq_len:
        raise UserError(
            f"{option}={length} exceeds max_seq_len={model.max_seq_len}, the number of learned positions; "
            f"use a cache of at most {model.max_seq_len} slots"
        )


def decode_memory_bytes(model: ModelConfig, length: int, batch_size: int = 1) -> int:
    """Return the peak bytes that decoding with a cache of `length` slots and `batch_size` rows adds.

    DECODE_CACHE_COPIES times the key/value buffers, plus the mask and token buffers of DECODE_BYTES_PER_SLOT.
    """
    per_slot = DECODE_CACHE_COPIES * kv_cache_bytes_for(model, 1, batch_size) + DECODE_BYTES_PER_SLOT * batch_size
    return per_slot * length


def check_cache_fits(
    model: ModelConfig, length: int, batch_size: int = 1, device: Any = None, option: str = "cache length"
) -> None:
    """Raise UserError when decoding with this cache would not fit in the memory left on `device`.

    The memory is the device's where JAX reports it, else host RAM (the CPU); `device` defaults to JAX's
    first device. The message gives the cache's bytes and the longest cache that fits.
    """
    needed = decode_memory_bytes(model, length, batch_size)
    available, where = memory_available(device)
    if needed <= available:
        return
    cache_bytes = kv_cache_bytes_for(model, length, batch_size)
    longest = available // decode_memory_bytes(model, 1, batch_size)
    rows = "" if batch_size == 1 else f" for {batch_size} rows"
    fix = (f"use {option} {longest} or less" if longest >= 1
           else "free memory first: not even one slot fits")
    raise UserError(
        f"{option}={length} needs a KV cache of {cache_bytes} bytes ({format_bytes(cache_bytes)}){rows}, and "
        f"decoding keeps about {DECODE_CACHE_COPIES} copies of it ({format_bytes(needed)}), more than the "
        f"{format_bytes(available)} of {where} available; {fix}"
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
