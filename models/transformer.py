"""A decoder-only Transformer in Flax: pre-norm blocks, causal self-attention, RMSNorm or LayerNorm,
RoPE or learned positions, SwiGLU or GELU MLP, multi-head, grouped-query or multi-query attention.

References: Vaswani et al. 2017 (the Transformer); Radford et al. 2019 (pre-norm decoder, GPT-2);
Su et al. 2021 (RoPE, eq. 34); Shazeer 2020 (SwiGLU); Ainslie et al. 2023 (grouped-query attention).

Shape suffixes on tensor names: B batch, L query positions, S key positions, D d_model, H query heads,
K key/value heads, E head_dim, F MLP hidden width, V vocabulary. `x_BxLxD` is a [B, L, D] array.
Parameters are float32; activations use `ModelConfig.compute_dtype`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig

EMBED_INIT_STD = 0.02  # GPT-2's initialisation scale for embeddings and hidden matrices


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-6, dtype=config.compute_dtype, name=name)
    return nn.LayerNorm(epsilon=1e-6, dtype=config.compute_dtype, name=name)


def rope_frequencies(head_dim: int, base: float) -> jax.Array:
    """Return the E/2 rotation frequencies theta_i = base^(-2i/E) of RoPE (Su et al. 2021, eq. 15)."""
    return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x_BxLxHxE: jax.Array, positions_BxL: jax.Array, base: float) -> jax.Array:
    """Rotate each pair (x[2i], x[2i+1]) of every head by angle position * theta_i."""
    head_dim = x_BxLxHxE.shape[-1]
    angles_BxLxE2 = positions_BxL[..., None].astype(jnp.float32) * rope_frequencies(head_dim, base)
    sin_BxLx1xE2 = jnp.sin(angles_BxLxE2)[:, :, None, :]
    cos_BxLx1xE2 = jnp.cos(angles_BxLxE2)[:, :, None, :]

    x = x_BxLxHxE.astype(jnp.float32)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated_even = even * cos_BxLx1xE2 - odd * sin_BxLx1xE2
    rotated_odd = even * sin_BxLx1xE2 + odd * cos_BxLx1xE2
    rotated = jnp.stack([rotated_even, rotated_odd], axis=-1).reshape(x.shape)
    return rotated.astype(x_BxLxHxE.dtype)


class CausalSelfAttention(nn.Module):
    """Causal self-attention with `n_kv_heads` key/value heads shared by groups of query heads.

    Query head h reads key/value head h // (n_heads // n_kv_heads): consecutive query heads share a
    key/value head, which is the grouping of `jax.nn.dot_product_attention`.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array) -> jax.Array:
        config = self.config
        head_dim = config.dim_per_head
        dense = lambda features, name, std: nn.DenseGeneral(  # noqa: E731
            features,
            use_bias=False,
            dtype=config.compute_dtype,
            kernel_init=nn.initializers.normal(std),
            name=name,
        )
        q_BxLxHxE = dense((config.n_heads, head_dim), "query", EMBED_INIT_STD)(x_BxLxD)
        k_BxLxKxE = dense((config.kv_heads, head_dim), "key", EMBED_INIT_STD)(x_BxLxD)
        v_BxLxKxE = dense((config.kv_heads, head_dim), "value", EMBED_INIT_STD)(x_BxLxD)

        if config.positions == "rope":
            q_BxLxHxE = apply_rope(q_BxLxHxE, positions_BxL, config.rope_base)
            k_BxLxKxE = apply_rope(k_BxLxKxE, positions_BxL, config.rope_base)

        implementation = "cudnn" if config.attention_impl == "cudnn" else "xla"
        out_BxLxHxE = jax.nn.dot_product_attention(
            q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, is_causal=True, implementation=implementation
        )

        # Residual-branch outputs are scaled down by sqrt(2 n_layers) so the residual stream's variance
        # does not grow with depth (GPT-2, section 2.3).
        out_std = EMBED_INIT_STD / math.sqrt(2 * config.n_layers)
        return nn.DenseGeneral(
            config.d_model,
            axis=(-2, -1),
            use_bias=False,
            dtype=config.compute_dtype,
            kernel_init=nn.initializers.normal(out_std),
            name="out",
        )(out_BxLxHxE)


class Mlp(nn.Module):
    """Position-wise MLP: SwiGLU (silu(x W_gate) * x W_up) W_down, or GELU(x W_up) W_down."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        config = self.config
        dense = lambda features, name, std: nn.Dense(  # noqa: E731
            features, use_bias=False, dtype=config.compute_dtype, kernel_init=nn.initializers.normal(std), name=name
        )
        up_BxLxF = dense(config.hidden_size, "up", EMBED_INIT_STD)(x_BxLxD)
        if config.mlp == "swiglu":
            gate_BxLxF = dense(config.hidden_size, "gate", EMBED_INIT_STD)(x_BxLxD)
            hidden_BxLxF = nn.silu(gate_BxLxF) * up_BxLxF
        else:
            hidden_BxLxF = nn.gelu(up_BxLxF)
        out_std = EMBED_INIT_STD / math.sqrt(2 * config.n_layers)
        return dense(config.d_model, "down", out_std)(hidden_BxLxF)


class Block(nn.Module):
    """One pre-norm Transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array) -> jax.Array:
        attention_in = make_norm(self.config, "attention_norm")(x_BxLxD)
        x_BxLxD = x_BxLxD + CausalSelfAttention(self.config, name="attention")(attention_in, positions_BxL)
        mlp_in = make_norm(self.config, "mlp_norm")(x_BxLxD)
        return x_BxLxD + Mlp(self.config, name="mlp")(mlp_in)


class Transformer(nn.Module):
    """The decoder: token embedding, `n_layers` blocks, a final norm, and logits over the vocabulary."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        positions_BxL: jax.Array | None = None,
        input_embeddings_BxLxD: jax.Array | None = None,
    ) -> jax.Array:
        """Return float32 logits [B, L, V] for next-token prediction at every position.

        `input_embeddings_BxLxD`, when given, replaces the token embedding lookup, so tests can take
        gradients with respect to each position's input.
        """
        config = self.config
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)

        embed = nn.Embed(
            config.vocab_size,
            config.d_model,
            embedding_init=nn.initializers.normal(EMBED_INIT_STD),
            dtype=config.compute_dtype,
            name="embed",
        )
        x_BxLxD = embed(tokens_BxL) if input_embeddings_BxLxD is None else input_embeddings_BxLxD
        if config.positions == "learned":
            position_embed = nn.Embed(
                config.max_seq_len,
                config.d_model,
                embedding_init=nn.initializers.normal(EMBED_INIT_STD),
                dtype=config.compute_dtype,
                name="position_embed",
            )
            x_BxLxD = x_BxLxD + position_embed(positions_BxL)

        for layer in range(config.n_layers):
            x_BxLxD = Block(config, name=f"block_{layer}")(x_BxLxD, positions_BxL)
        x_BxLxD = make_norm(config, "final_norm")(x_BxLxD)

        if config.tie_embeddings:
            logits_BxLxV = embed.attend(x_BxLxD)
        else:
            logits_BxLxV = nn.Dense(
                config.vocab_size,
                use_bias=False,
                dtype=config.compute_dtype,
                kernel_init=nn.initializers.normal(EMBED_INIT_STD),
                name="head",
            )(x_BxLxD)
        return logits_BxLxV.astype(jnp.float32)


def next_token_loss(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array | None = None, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Return (mean cross-entropy in nats per token, the same plus the z-loss term) over weighted tokens.

    The z-loss adds z_loss * log(Z)^2 per token, keeping the softmax normaliser near 1
    (Chowdhery et al. 2022, PaLM, section 5).
    """
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logits_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    nats_BxL = log_z_BxL - target_logits_BxL
    if weights_BxL is None:
        weights_BxL = jnp.ones_like(nats_BxL)
    total_weight = jnp.maximum(weights_BxL.sum(), 1.0)
    loss = (nats_BxL * weights_BxL).sum() / total_weight
    objective = loss + z_loss * (jnp.square(log_z_BxL) * weights_BxL).sum() / total_weight
    return loss, objective
