"""Pick a model shape (d_model, n_layers, n_heads) for a target parameter count.

The rule: heads of width `head_dim` (so d_model is a multiple of it), and among the depths whose width
lands nearest the target count, the shape whose aspect ratio d_model / n_layers is closest to
`aspect_ratio` in log space. Kaplan et al. 2020 (figure 5) found loss nearly flat over aspect ratios from
about 20 to 200 at fixed N, so one fixed ratio keeps shape out of the way of the N you are studying.
"""

from __future__ import annotations

import dataclasses
import math

from scaling.accounting import parameter_counts
from scaling.config import ModelConfig
from scaling.errors import UserError
from scaling.numbers import human_count

DEFAULT_ASPECT_RATIO = 32.0  # d_model / n_layers
DEFAULT_HEAD_DIM = 32
MAX_LAYERS = 96
PARAM_TOLERANCE = 0.15  # relative error in N accepted before aspect ratio decides between shapes


def model_for_params(
    target_params: float,
    base: ModelConfig | None = None,
    *,
    convention: str = "total",
    aspect_ratio: float = DEFAULT_ASPECT_RATIO,
    head_dim: int = DEFAULT_HEAD_DIM,
) -> ModelConfig:
    """Return `base` reshaped so its parameter count under `convention` is close to `target_params`.

    `base` fixes everything but the shape (vocabulary, norm, MLP, positions, and the ratio
    n_heads / n_kv_heads, which is kept when it divides the new head count).
    """
    base = base or ModelConfig()
    if convention not in ("total", "non_embedding"):
        raise UserError(f"convention={convention!r} is not 'total' or 'non_embedding'")
    if not target_params > 0:
        raise UserError(f"target parameter count {target_params!r} must be positive")
    query_per_kv = base.n_heads // base.kv_heads

    candidates = []
    for n_layers in range(1, MAX_LAYERS + 1):
        for width_multiple in _widths_near(target_params, n_layers, head_dim):
            d_model = width_multiple * head_dim
            n_heads = d_model // head_dim
            n_kv_heads = n_heads // query_per_kv if n_heads % query_per_kv == 0 else n_heads
            shape = dataclasses.replace(
                base,
                d_model=d_model,
                n_layers=n_layers,
                n_heads=n_heads,
                n_kv_heads=n_kv_heads,
                head_dim=None,
                d_ff=None,
            )
            params = parameter_counts(shape)[convention]
            param_error = abs(math.log(params / target_params))
            aspect_error = abs(math.log(d_model / n_layers / aspect_ratio))
            candidates.append((param_error, aspect_error, shape))

    best_param_error = min(error for error, _, _ in candidates)
    close_enough = [c for c in candidates if c[0] <= max(best_param_error, math.log1p(PARAM_TOLERANCE))]
    return min(close_enough, key=lambda c: (c[1], c[0]))[2]


def _widths_near(target_params: float, n_layers: int, head_dim: int) -> list[int]:
    """Return width multiples of head_dim near the width that 12 n_layers d^2 = target would need."""
    width = math.sqrt(max(target_params, 1.0) / (12 * n_layers))
    centre = max(1, round(width / head_dim))
    return sorted({max(1, centre + offset) for offset in (-1, 0, 1)})


def describe(model: ModelConfig) -> str:
    """Return a one-line shape summary such as 'd256 L8 H8/8 (6.4M total, 6.3M non-emb)'."""
    counts = parameter_counts(model)
    return (
        f"d{model.d_model} L{model.n_layers} H{model.n_heads}/{model.kv_heads} "
        f"({human_count(counts['total'])} total, {human_count(counts['non_embedding'])} non-emb)"
    )
