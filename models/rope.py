"""Rotary position embeddings (RoPE; Su et al. 2021, arXiv:2104.09864).

Each pair (x[2i], x[2i+1]) of a query or key head is rotated by the angle position * theta_i, with
theta_i = base^(-2i/E). The tables of cosines and sines are computed once per layer call, so that the
rotation can happen in XLA (`rotate_pairs`) or inside the fused CPU attention kernel, which rotates queries
and keys as it loads them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, base: float) -> jax.Array:
    """Return the E/2 rotation frequencies theta_i = base^(-2i/E) of RoPE (Su et al. 2021, eq. 15)."""
    return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def rope_tables(positions_BxL: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """Return (cos, sin) of the angles position * theta_i, each [B, L, E/2] in float32."""
    angles_BxLxE2 = positions_BxL[..., None].astype(jnp.float32) * rope_frequencies(head_dim, base)
    return jnp.cos(angles_BxLxE2), jnp.sin(angles_BxLxE2)


def rotate_pairs(x_BxLxHxE: jax.Array, cos_BxLxE2: jax.Array, sin_BxLxE2: jax.Array) -> jax.Array:
    """Return x with each pair (x[2i], x[2i+1]) of every head rotated by the angle of the given cos and sin."""
    cos_BxLx1xE2, sin_BxLx1xE2 = cos_BxLxE2[:, :, None, :], sin_BxLxE2[:, :, None, :]
    x = x_BxLxHxE.astype(jnp.float32)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated_even = even * cos_BxLx1xE2 - odd * sin_BxLx1xE2
    rotated_odd = even * sin_BxLx1xE2 + odd * cos_BxLx1xE2
    rotated = jnp.stack([rotated_even, rotated_odd], axis=-1).reshape(x.shape)
    return rotated.astype(x_BxLxHxE.dtype)


def apply_rope(x_BxLxHxE: jax.Array, positions_BxL: jax.Array, base: float) -> jax.Array:
    """Return x with each pair (x[2i], x[2i+1]) of every head rotated by the angle position * theta_i."""
    return rotate_pairs(x_BxLxHxE, *rope_tables(positions_BxL, x_BxLxHxE.shape[-1], base))
