"""The activation dtype a model computes in, from `ModelConfig.compute_dtype`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scaling.errors import UserError

DTYPE_BY_NAME = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_compute_dtype(name: str) -> jnp.dtype:
    """Return the activation dtype for `ModelConfig.compute_dtype`.

    "auto" is bfloat16 on a GPU or TPU and float32 on CPU. Parameters stay float32 in every case.
    """
    if name == "auto":
        return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)
    if name not in DTYPE_BY_NAME:
        raise UserError(f"compute_dtype={name!r} is not one of: auto, {', '.join(DTYPE_BY_NAME)}")
    return jnp.dtype(DTYPE_BY_NAME[name])
