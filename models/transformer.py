"""A decoder-only Transformer in Flax: pre-norm blocks, causal self-attention, RMSNorm or LayerNorm,
RoPE or learned positions, SwiGLU or GELU MLP, multi-head, grouped-query or multi-query attention.

References: Vaswani et al. 2017 (the Transformer); Radford et al. 2019 (pre-norm decoder, GPT-2);
Su et al. 2021 (RoPE, eq. 34); Shazeer 2020 (SwiGLU); Ainslie et al. 2023 (grouped-query attention).

Shape suffixes on tensor names: B batch, L query positions, N = B L tokens, S key positions, D d_model, H query heads,
K key/value heads, E head_dim, F MLP hidden width, V vocabulary. `x_BxLxD` is a [B, L, D] array.
Parameters are float32; activations use `ModelConfig.compute_dtype` ("auto" is bfloat16 on accelerators).

The same module trains and decodes. Called with a `KVCache` (models/kv_cache.py) it writes the keys and
values of its L tokens into the next L slots and returns the new cache with the logits. One call with the
whole prompt is the prefill, and calls with one token each are the decode steps.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import attention
from models.initializers import Constant, Normal
from models.dtypes import resolve_compute_dtype
from models.kv_cache import CacheFullError, KVCache
from models.rope import rope_tables, rotate_pairs
from scaling.config import ModelConfig

INIT_STD = 0.02  # GPT-2's scale for every weight matrix; output projections divide it by sqrt(2 n_layers)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    dtype = resolve_compute_dtype(config.compute_dtype)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-6, dtype=dtype, scale_init=Constant(1.0), name=name)
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, scale_init=Constant(1.0), bias_init=Constant(0.0), name=name)


class CausalSelfAttention(nn.Module):
    """Causal self-attention with `n_kv_heads` key/value heads shared by groups of query heads.

    Query head h reads key/value head h // (n_heads // n_kv_heads): consecutive query heads share a
    key/value head, which is the grouping of `jax.nn.dot_product_attention`.
    """

    config: ModelConfig
    causal: bool = True  # False removes the causal mask; see Transformer.causal

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        positions_BxL: jax.Array,
        query_index_L: jax.Array | None = None,
        key_valid_BxS: jax.Array | None = None,
        layer_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_write: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Return (output [B, L, D], the layer's updated (keys, values) cache or None without a cache).

        Without a cache, query i attends to keys 0..i of the same call. With `layer_cache` the new keys and
        values are written at `cache_write = (start slot, fits)` first, and queries read the whole cache;
        `query_index_L` and `key_valid_BxS` say which slots each query may see.
        """
        config = self.config
        dtype = resolve_compute_dtype(config.compute_dtype)
        head_dim = config.dim_per_head
        dense = lambda features, name, std: nn.DenseGeneral(  # noqa: E731
            features,
            use_bias=False,
            dtype=dtype,
            kernel_init=Normal(std),
            name=name,
        )
        batch, length = x_BxLxD.shape[:2]
        x_NxD = flatten_tokens(x_BxLxD)
        q_BxLxHxE = dense((config.n_heads, head_dim), "query", INIT_STD)(x_NxD).reshape(
            batch, length, config.n_heads, head_dim)
        k_BxLxKxE = dense((config.kv_heads, head_dim), "key", INIT_STD)(x_NxD).reshape(
            batch, length, config.kv_heads, head_dim)
        v_BxLxKxE = dense((config.kv_heads, head_dim), "value", INIT_STD)(x_NxD).reshape(
            batch, length, config.kv_heads, head_dim)

        # Without a cache the rotation goes to `attention`, so that the fused CPU kernel can apply it as it
        # loads queries and keys. With a cache, keys are stored rotated.
        rope = rope_tables(positions_BxL, head_dim, config.rope_base) if config.positions == "rope" else None
        if rope is not None and layer_cache is not None:
            q_BxLxHxE, k_BxLxKxE = rotate_pairs(q_BxLxHxE, *rope), rotate_pairs(k_BxLxKxE, *rope)
            rope = None

        new_cache = None
        k_BxSxKxE, v_BxSxKxE = k_BxLxKxE, v_BxLxKxE
        if layer_cache is not None:
            start, fits = cache_write
            k_BxSxKxE = write_slots(layer_cache[0], k_BxLxKxE, start, fits)
            v_BxSxKxE = write_slots(layer_cache[1], v_BxLxKxE, start, fits)
            new_cache = (k_BxSxKxE, v_BxSxKxE)

        out_BxLxHxE = attention(
            q_BxLxHxE,
            k_BxSxKxE,
            v_BxSxKxE,
            query_index_L=query_index_L,
            key_valid_BxS=key_valid_BxS,
            causal=self.causal,
            implementation=config.attention_impl,
            rope=rope,
        )

        # Residual-branch outputs are scaled down by sqrt(2 n_layers) so the residual stream's variance
        # does not grow with depth (GPT-2, section 2.3).
        out_std = INIT_STD / math.sqrt(2 * config.n_layers)
        out_NxD = nn.DenseGeneral(
            config.d_model,
            axis=(-2, -1),
            use_bias=False,
            dtype=dtype,
            kernel_init=Normal(out_std),
            name="out",
        )(flatten_tokens(out_BxLxHxE))
        return out_NxD.reshape(batch, length, config.d_model), new_cache


def flatten_tokens(x_BxLx: jax.Array) -> jax.Array:
    """Return `x_BxLx` with batch and position merged into one token axis N = B L.

    The projections run on [N, ...] arrays because the gradient of their weights then contracts one axis.
    With [B, L, ...] inputs it contracts two, and XLA:CPU lays that out with transposed copies of the
    activations' gradients, which cost as much as the matrix multiplies at these sizes
    (docs/benchmarks.md, "Training throughput").
    """
    return x_BxLx.reshape(-1, *x_BxLx.shape[2:])


def write_slots(buffer_BxSx: jax.Array, new_BxLx: jax.Array, start: jax.Array, fits: jax.Array) -> jax.Array:
    """Return `buffer_BxSx` with slots [start, start + L) replaced by `new_BxLx` when `fits` is true.

    `lax.dynamic_update_slice` clamps an out-of-range start instead of failing, which would overwrite the
    last slots. So a write that does not fit puts the slots' old contents back, leaving the buffer unchanged.
    """
    length = new_BxLx.shape[1]
    old_BxLx = jax.lax.dynamic_slice_in_dim(buffer_BxSx, start, length, axis=1)
    chosen_BxLx = jnp.where(fits, new_BxLx.astype(buffer_BxSx.dtype), old_BxLx)
    return jax.lax.dynamic_update_slice_in_dim(buffer_BxSx, chosen_BxLx, start, axis=1)


def positions_from_mask(token_mask_BxL: jax.Array, start_B: jax.Array | None = None) -> jax.Array:
    """Return each token's position: `start_B` plus the number of real tokens before it in its row.

    Left padding therefore leaves the first real token of every row at position `start_B` (0 for a prompt).
    """
    real_BxL = token_mask_BxL.astype(jnp.int32)
    before_BxL = jnp.cumsum(real_BxL, axis=1) - real_BxL
    if start_B is None:
        return before_BxL
    return start_B[:, None] + before_BxL


class Mlp(nn.Module):
    """Position-wise MLP: SwiGLU (silu(x W_gate) * x W_up) W_down, or GELU(x W_up) W_down."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        config = self.config
        dense = lambda features, name, std: nn.Dense(  # noqa: E731
            features,
            use_bias=False,
            dtype=resolve_compute_dtype(config.compute_dtype),
            kernel_init=Normal(std),
            name=name,
        )
        x_NxD = flatten_tokens(x_BxLxD)
        up_NxF = dense(config.hidden_size, "up", INIT_STD)(x_NxD)
        if config.mlp == "swiglu":
            gate_NxF = dense(config.hidden_size, "gate", INIT_STD)(x_NxD)
            hidden_NxF = nn.silu(gate_NxF) * up_NxF
        else:
            hidden_NxF = nn.gelu(up_NxF)
        out_std = INIT_STD / math.sqrt(2 * config.n_layers)
        return dense(config.d_model, "down", out_std)(hidden_NxF).reshape(x_BxLxD.shape)


class Block(nn.Module):
    """One pre-norm Transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    config: ModelConfig
    causal: bool = True

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        positions_BxL: jax.Array,
        query_index_L: jax.Array | None = None,
        key_valid_BxS: jax.Array | None = None,
        layer_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_write: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        attention_in = make_norm(self.config, "attention_norm")(x_BxLxD)
        attention_out, new_cache = CausalSelfAttention(self.config, self.causal, name="attention")(
            attention_in, positions_BxL, query_index_L, key_valid_BxS, layer_cache, cache_write
        )
        x_BxLxD = x_BxLxD + attention_out
        mlp_in = make_norm(self.config, "mlp_norm")(x_BxLxD)
        return x_BxLxD + Mlp(self.config, name="mlp")(mlp_in), new_cache


class Transformer(nn.Module):
    """The decoder: token embedding, `n_layers` blocks, a final norm, and logits over the vocabulary."""

    config: ModelConfig
    # False removes the causal mask so every position sees the whole sequence. Only tests and examples use
    # it, to show the leak the mask prevents; a model trained that way learns to copy the next token.
    causal: bool = True

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        positions_BxL: jax.Array | None = None,
        input_embeddings_BxLxD: jax.Array | None = None,
        *,
        token_mask_BxL: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Return float32 logits [B, L, V] for next-token prediction at every position.

        `input_embeddings_BxLxD`, when given, replaces the token embedding lookup, so tests can take
        gradients with respect to each position's input.
        `token_mask_BxL` marks real tokens (True) and padding (False). No query attends to a padding
        token, and positions count real tokens only, so a left-padded row gives the logits of its prompt
        alone. Padding combines with the causal mask and never replaces it.
        With `cache`, returns (logits, new cache): the L tokens are written into the next L slots and
        attend to everything cached before them. A write that does not fit raises CacheFullError when
        the cache length is concrete. Under `jax.jit` the write is skipped instead, the cache keeps its
        contents, `overflowed` is set and the logits are NaN.
        """
        config = self.config
        dtype = resolve_compute_dtype(config.compute_dtype)
        batch, length = tokens_BxL.shape
        if token_mask_BxL is not None:
            token_mask_BxL = token_mask_BxL.astype(bool)

        query_index_L = key_valid_BxS = None
        layer_caches = [None] * config.n_layers
        cache_write = fits = None
        if cache is None:
            key_valid_BxS = token_mask_BxL
            if positions_BxL is None:
                if token_mask_BxL is None:
                    positions_BxL = jnp.broadcast_to(jnp.arange(length), tokens_BxL.shape)
                else:
                    positions_BxL = positions_from_mask(token_mask_BxL)
        else:
            if token_mask_BxL is None:
                token_mask_BxL = jnp.ones((batch, length), bool)
            fits, start = _plan_cache_write(cache, length)
            cache_write = (start, fits)
            query_index_L = cache.length + jnp.arange(length)
            key_valid_BxS = write_slots(cache.valid_BxS, token_mask_BxL, start, fits)
            if positions_BxL is None:
                positions_BxL = positions_from_mask(token_mask_BxL, cache.valid_BxS.sum(axis=1))
            layer_caches = list(zip(cache.keys_BxSxKxE, cache.values_BxSxKxE))

        embed = nn.Embed(
            config.vocab_size,
            config.d_model,
            embedding_init=Normal(INIT_STD),
            dtype=dtype,
            name="embed",
        )
        x_BxLxD = embed(tokens_BxL) if input_embeddings_BxLxD is None else input_embeddings_BxLxD
        if config.positions == "learned":
            position_embed = nn.Embed(
                config.max_seq_len,
                config.d_model,
                embedding_init=Normal(INIT_STD),
                dtype=dtype,
                name="position_embed",
            )
            x_BxLxD = x_BxLxD + position_embed(positions_BxL)

        new_layer_caches = []
        for layer in range(config.n_layers):
            x_BxLxD, layer_cache = Block(config, self.causal, name=f"block_{layer}")(
                x_BxLxD, positions_BxL, query_index_L, key_valid_BxS, layer_caches[layer], cache_write
            )
            new_layer_caches.append(layer_cache)
        x_BxLxD = make_norm(config, "final_norm")(x_BxLxD)

        x_NxD = flatten_tokens(x_BxLxD)
        if config.tie_embeddings:
            logits_NxV = embed.attend(x_NxD)
        else:
            logits_NxV = nn.Dense(
                config.vocab_size,
                use_bias=False,
                dtype=dtype,
                kernel_init=Normal(INIT_STD),
                name="head",
            )(x_NxD)
        logits_BxLxV = logits_NxV.reshape(batch, length, config.vocab_size).astype(jnp.float32)
        if cache is None:
            return logits_BxLxV

        new_cache = KVCache(
            keys_BxSxKxE=tuple(keys for keys, _ in new_layer_caches),
            values_BxSxKxE=tuple(values for _, values in new_layer_caches),
            valid_BxS=key_valid_BxS,
            length=jnp.where(fits, cache.length + length, cache.length),
            overflowed=cache.overflowed | ~fits,
        )
        return jnp.where(fits, logits_BxLxV, jnp.nan), new_cache


def _plan_cache_write(cache: KVCache, length: int) -> tuple[jax.Array, jax.Array]:
    """Return (fits, start slot) of writing `length` tokens into `cache`; raise CacheFullError when it is
    concrete and they do not fit."""
    if length > cache.capacity:
        raise CacheFullError(f"{length} tokens do not fit a cache of {cache.capacity} slots; allocate a longer cache")
    if not isinstance(cache.length, jax.core.Tracer):
        cache.check_room(length)
    fits = cache.length + length <= cache.capacity
    # Where the write does not fit, `start` is the slot JAX would clamp to; write_slots rewrites old contents.
    start = jnp.minimum(cache.length, cache.capacity - length)
    return fits, start


def token_nats(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return (the cross-entropy of each target token in nats, the log of each position's softmax normaliser)."""
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logits_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return log_z_BxL - target_logits_BxL, log_z_BxL


def next_token_loss(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array | None = None, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Return (mean cross-entropy in nats per token, the same plus the z-loss term) over weighted tokens.

    The z-loss adds z_loss * log(Z)^2 per token, keeping the softmax normaliser near 1
    (Chowdhery et al. 2022, PaLM, section 5).
    """
    nats_BxL, log_z_BxL = token_nats(logits_BxLxV, targets_BxL)
    if weights_BxL is None:
        weights_BxL = jnp.ones_like(nats_BxL)
    total_weight = jnp.maximum(weights_BxL.sum(), 1.0)
    loss = (nats_BxL * weights_BxL).sum() / total_weight
    objective = loss + z_loss * (jnp.square(log_z_BxL) * weights_BxL).sum() / total_weight
    return loss, objective
