"""Extrapolation check: refit approach 3 without the largest-compute runs and predict them.

The runs are ranked by C = 6 N D. The top `holdout_fraction` of them (at least 1) are held out, together
with every run within a factor SAME_BUDGET_FACTOR below their compute: on an IsoFLOP grid that is their whole
budget, so the refit contains no run at the compute it predicts. The law is refitted on the rest with the same
options, and each held-out run's final loss is predicted. The relative errors (predicted / observed - 1)
measure how far the fit can be trusted one step beyond the data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from analysis.fit_parametric import Approach3Options, fit_approach3

DEFAULT_HOLDOUT_FRACTION = 0.1
MIN_FIT_POINTS = 5  # approach 3 has 5 parameters
SAME_BUDGET_FACTOR = 1.5  # runs closer than this in compute share a budget; IsoFLOP budgets sit 3x or more apart


def extrapolation_check(params: ArrayLike, tokens: ArrayLike, losses: ArrayLike, run_ids: list[str],
                        options: Approach3Options = Approach3Options(),
                        holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, noun: str = "runs") -> dict[str, Any]:
    """Refit without the largest-compute runs; return the held-out runs' prediction errors, or the reason not.

    `noun` names the points in the texts: "runs", or "points" for a CSV.
    """
    singular = noun.removesuffix("s")
    params = np.asarray(params, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    losses = np.asarray(losses, dtype=float)
    flops = 6 * params * tokens
    order = np.argsort(flops)
    top_count = max(1, int(math.floor(holdout_fraction * params.size)))
    threshold = flops[order[-top_count]] / SAME_BUDGET_FACTOR
    held_count = int(np.sum(flops >= threshold))  # the top runs and the rest of their budget
    if params.size - held_count < MIN_FIT_POINTS:
        return {"skipped": f"{params.size} {noun}: holding out the {held_count} at or near the largest compute "
                           f"leaves fewer than {MIN_FIT_POINTS} to fit (--holdout {holdout_fraction:g})"}
    kept, out = order[:-held_count], order[-held_count:]
    if np.unique(params[kept]).size < 2 or np.unique(tokens[kept]).size < 2:
        return {"skipped": f"the {noun} left after holding out the largest have a single size or token count"}

    fit = fit_approach3(params[kept], tokens[kept], losses[kept], options=options)
    predicted = fit.law().loss(params[out], tokens[out])
    errors = predicted / losses[out] - 1
    return {
        "method": f"refit approach 3 without the {held_count} largest-compute {singular}(s) (the top "
                  f"{holdout_fraction:.0%} by 6ND and any {singular} within a factor {SAME_BUDGET_FACTOR:g} below "
                  "them), predict their final losses",
        "held_out": [
            {"run_id": run_ids[i], "params": float(params[i]), "tokens": float(tokens[i]),
             "flops": float(6 * params[i] * tokens[i]), "loss": float(losses[i]), "predicted": float(p),
             "relative_error": float(e)}
            for i, p, e in zip(out, predicted, errors)
        ],
        "largest_fitted_flops": float(flops[kept].max()),
        "mean_abs_relative_error": float(np.mean(np.abs(errors))),
        "max_abs_relative_error": float(np.max(np.abs(errors))),
        "refit_status": fit.status,
        "refit_parameters": fit.parameters(),
    }
