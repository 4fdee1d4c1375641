"""Learning-rate schedule tied to the run: linear warmup, then cosine or linear decay to a floor that is
reached exactly at the run's last optimizer step.

Step s (0-based) is the s-th update. Warmup uses lr = peak * (s + 1) / warmup, so the first update is
never taken at a learning rate of 0. After warmup, with t = (s - warmup) / (total - warmup):
cosine: floor + (peak - floor) * (1 + cos(pi t)) / 2; linear: peak - (peak - floor) t. The last update,
s = total - 1, is taken just above the floor, and t = 1 would be the step after it: the schedule is never
evaluated past the run's end, since steps beyond it are clamped to the last one.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp

from scaling.config import MAX_WARMUP_FRACTION, OptimizerConfig, clipped_warmup
from scaling.errors import UserError

log = logging.getLogger(__name__)


def resolve_warmup(warmup_steps: int, total_steps: int) -> int:
    """Return the warmup length for a run of `total_steps`, clipped to a fifth of the run with a warning."""
    if total_steps < 1:
        raise UserError(f"a run needs at least 1 optimizer step, got total_steps={total_steps}")
    used = clipped_warmup(warmup_steps, total_steps)
    if used < warmup_steps:
        log.warning(
            "warmup_steps=%d exceeds %d%% of the run's %d steps; clipped to %d",
            warmup_steps, int(100 * MAX_WARMUP_FRACTION), total_steps, used,
        )
    return used


def schedule_values(optimizer: OptimizerConfig, total_steps: int) -> dict[str, float]:
    """Return the numbers that fix a run's schedule: peak, floor, warmup and total steps.

    The training step receives these as array arguments rather than constants, so runs that differ only
    in length or learning rate share one compiled program (and the persistent compilation cache).
    """
    return {
        "peak": optimizer.peak_lr,
        "floor": optimizer.peak_lr * optimizer.min_lr_ratio,
        "warmup": float(resolve_warmup(optimizer.warmup_steps, total_steps)),
        "total": float(total_steps),
    }


def learning_rate(step, optimizer: OptimizerConfig, total_steps: int):
    """Return the learning rate of update `step` (an int or a traced array) for a run of `total_steps`."""
    return scheduled_lr(step, schedule_values(optimizer, total_steps), optimizer.schedule)


def scheduled_lr(step, values, kind: str = "cosine"):
    """Return the learning rate of update `step` from `schedule_values` (floats or traced arrays)."""
    peak, floor, warmup, total = values["peak"], values["floor"], values["warmup"], values["total"]
    step = jnp.minimum(jnp.asarray(step, jnp.float32), total - 1)

    warmup_lr = peak * (step + 1) / jnp.maximum(warmup, 1.0)
    decay_steps = jnp.maximum(total - warmup, 1.0)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if kind == "cosine":
        decay_lr = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    else:
        decay_lr = peak - (peak - floor) * progress
    return jnp.where(step < warmup, warmup_lr, decay_lr)
