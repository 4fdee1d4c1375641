"""Kaplan et al. 2020 (arXiv:2001.08361) single-variable laws fitted to runs.

- L(N) = (N_c / N)^alpha_N (their equation 1.1), or with an irreducible term E + (N_c / N)^alpha_N, fitted
  to the lowest final loss of each model size (the size's best-trained run);
- L(D) = (D_c / D)^alpha_D (equation 1.2), fitted to the lowest final loss at each token count;
- L(C) = (C_c / C)^alpha_C (equation 1.3's form), fitted to the compute frontier of the learning curves
  (the approach 1 envelope, at the budgets won by neither the smallest nor the largest size).

Pure power laws are least squares of ln L on ln x. The form with E minimises squared residuals of ln L
with scipy's least_squares from the pure fit. Kaplan et al. count non-embedding parameters, so fits meant
to compare with their constants should use that convention. They also fit L(N) to models trained to
convergence and L(D) to large models; `other_term_share` tells how far a sweep's points are from that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from analysis.laws import KAPLAN_2020_BY_VARIABLE, exp_or_inf


@dataclass(frozen=True)
class PowerLawFit:
    """L(x) = irreducible + (scale / x)^exponent, with the points it was fitted to."""

    variable: str  # "params", "tokens" or "flops"
    exponent: float
    scale: float  # x_c in the unit of `variable`
    irreducible: float  # E in nats/token; 0 for the pure power law
    points: int
    rms_log_residual: float  # root mean square of ln L - ln L_fit

    def loss(self, value: ArrayLike) -> np.ndarray:
        return self.irreducible + (self.scale / np.asarray(value, dtype=float)) ** self.exponent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_single_power_law(values: ArrayLike, losses: ArrayLike, variable: str, irreducible: bool = False,
                         weights: ArrayLike | None = None) -> PowerLawFit | None:
    """Fit L = [E +] (x_c / x)^alpha to points; return None with fewer than 2 distinct x (3 with E).

    Also None for a point that is not positive and finite, or when the form with E cannot be solved.

    `weights` multiply each point's squared log residual (bootstrap multiplicities); None gives each weight 1.
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(losses, dtype=float)
    if np.unique(x).size < (3 if irreducible else 2):
        return None
    if not np.all(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)):
        return None  # a power law in logs cannot pass through a zero, negative or infinite point
    root_weights = np.ones_like(x) if weights is None else np.sqrt(np.asarray(weights, dtype=float))
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1, w=root_weights)
    exponent = -slope
    scale = exp_or_inf(intercept / exponent if exponent != 0 else math.inf)
    fit = PowerLawFit(variable, float(exponent), float(scale), 0.0, int(x.size), _rms(x, y, exponent, scale, 0.0))
    # The form with E starts from the pure fit, so it needs a scale whose log is finite (not 0, not inf).
    if not irreducible or not (exponent > 0 and 0 < scale < math.inf):
        return fit

    def residuals(theta: np.ndarray) -> np.ndarray:
        log_e, alpha, log_scale = theta
        return root_weights * (np.log(np.exp(log_e) + np.exp(alpha * (log_scale - np.log(x)))) - np.log(y))

    start = np.array([math.log(0.5 * y.min()), exponent, math.log(scale)])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            result = least_squares(residuals, start, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14,
                                   max_nfev=20000)
        except ValueError:
            return None  # the residuals stopped being finite, so this fit (or bootstrap replicate) has no solution
    if not np.all(np.isfinite(result.x)):
        return None
    log_e, alpha, log_scale = result.x
    scale, irreducible_loss = exp_or_inf(log_scale), exp_or_inf(log_e)
    return PowerLawFit(variable, float(alpha), scale, irreducible_loss, int(x.size),
                       _rms(x, y, alpha, scale, irreducible_loss))


def lowest_per_value(values: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct values and the lowest loss observed at each."""
    values = np.asarray(values, dtype=float)
    losses = np.asarray(losses, dtype=float)
    distinct = np.unique(values)
    return distinct, np.array([losses[values == value].min() for value in distinct])


def lowest_indices(values: ArrayLike, losses: ArrayLike) -> np.ndarray:
    """Return, for each distinct value in ascending order, the index of the point with the lowest loss there."""
    values = np.asarray(values, dtype=float)
    losses = np.asarray(losses, dtype=float)
    return np.array([np.flatnonzero(values == value)[np.argmin(losses[values == value])]
                     for value in np.unique(values)], dtype=int)


def other_term_share(law: Any, params: ArrayLike, tokens: ArrayLike, losses: ArrayLike) -> dict[str, float]:
    """Return how far the points behind L(N) and L(D) are from the limit each law describes.

    By the fitted L(N, D) = E + A/N^alpha + B/D^beta (`law`), "L(N)" is the median share of finite data,
    B/D^beta over A/N^alpha + B/D^beta, in the reducible loss of the runs L(N) is fitted to, and "L(D)" the
    median share of finite size in the runs behind L(D). Kaplan et al. fit L(N) to models trained to
    convergence and L(D) to large models, where these shares are near zero.
    """
    params = np.asarray(params, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        size_term = law.a_coef / params**law.alpha
        data_term = law.b_coef / tokens**law.beta
        data_share = data_term / (size_term + data_term)
    shares = {}
    for name, indices, share in (("L(N)", lowest_indices(params, losses), data_share),
                                 ("L(D)", lowest_indices(tokens, losses), 1 - data_share)):
        share = share[indices]
        share = share[np.isfinite(share)]
        shares[name] = float(np.median(share)) if share.size else math.nan
    return shares


def fit_kaplan(params: ArrayLike, tokens: ArrayLike, losses: ArrayLike,
               frontier_flops: ArrayLike | None = None, frontier_loss: ArrayLike | None = None) -> dict[str, Any]:
    """Fit L(N), L(N) with E, L(D) and (given a compute frontier) L(C); return them as a JSON-ready dict."""
    sizes, size_loss = lowest_per_value(params, losses)
    counts, count_loss = lowest_per_value(tokens, losses)
    fits = {
        "L(N)": fit_single_power_law(sizes, size_loss, "params"),
        "L(N) with E": fit_single_power_law(sizes, size_loss, "params", irreducible=True),
        "L(D)": fit_single_power_law(counts, count_loss, "tokens"),
        "L(C)": None,
    }
    if frontier_flops is not None and frontier_loss is not None and len(frontier_flops) >= 2:
        fits["L(C)"] = fit_single_power_law(frontier_flops, frontier_loss, "flops")
    variables = {"L(N)": "params", "L(N) with E": "params", "L(D)": "tokens", "L(C)": "flops"}
    return {
        "method": {
            "name": "Kaplan et al. 2020 single-variable power laws",
            "L(N)": "lowest final loss per model size; least squares of ln L on ln N",
            "L(N) with E": "the same points; least squares of ln L with an irreducible term (scipy least_squares)",
            "L(D)": "lowest final loss per token count; least squares of ln L on ln D",
            "L(C)": "compute frontier of the learning curves (approach 1 envelope at budgets won by neither the "
                    "smallest nor the largest size); least squares of ln L on ln C",
        },
        "fits": {name: None if fit is None else fit.to_dict() for name, fit in fits.items()},
        # Exponents are comparable across corpora; the scales are not, since losses are on other tokens.
        "published": {name: {"law": KAPLAN_2020_BY_VARIABLE[variable].key,
                             "exponent": KAPLAN_2020_BY_VARIABLE[variable].exponent,
                             "citation": KAPLAN_2020_BY_VARIABLE[variable].citation}
                      for name, variable in variables.items()},
    }


def _rms(x: np.ndarray, y: np.ndarray, exponent: float, scale: float, irreducible: float) -> float:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        predicted = irreducible + (scale / x) ** exponent
        return float(np.sqrt(np.mean((np.log(predicted) - np.log(y)) ** 2)))
