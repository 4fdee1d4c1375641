"""Bootstrap confidence intervals for approach 3: refit on runs resampled with replacement.

Each replicate draws as many runs as there are, with replacement, and refits the law; a run drawn k times
gets weight k in the Huber sum. Intervals are percentiles of the replicates (95% by default), for every
parameter and for the allocation exponents a = beta/(alpha+beta) and b = alpha/(alpha+beta).

A replicate starts from the distinct end points of the full-data fit whose objective is within a factor
1.5 of the best (the best point, and any rival local minimum its start grid found), not from the whole grid
again. Resampling moves the optimum only a little, so these starts reach it, and the work per replicate
drops from 1000+ starts to a few. Replicates whose best end point fails the convergence check are left out
of the intervals and counted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from analysis.defaults import DEFAULT_BOOTSTRAPS
from analysis.fit_parametric import Approach3Options, ParametricFit, _lbfgs, _log_points, _objective_scale, huber_objective

logger = logging.getLogger(__name__)

START_OBJECTIVE_FACTOR = 1.5  # full-data end points this close to the best objective seed every replicate
# Every bootstrap here (approaches 1, 2 and 3, the Kaplan-style fits, and `scaling ask`) reports an interval
# only when at least this fraction of the requested replicates could be fitted. Below it, the fit fails on
# most resamples, and the few that succeed are those that happen to look like the full data. Their spread
# then understates the uncertainty: 6 usable replicates of 200 gave a 95% interval of zero width.
MIN_USABLE_FRACTION = 0.5
DERIVED_NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")


@dataclass(frozen=True)
class BootstrapResult:
    """Replicate fits of approach 3 and their percentile intervals."""

    samples: np.ndarray  # (replicates, 5): (log_a, log_b, log_e, alpha, beta) of each replicate's best end point
    objectives: np.ndarray  # (replicates,): sum of weighted Huber losses
    converged: np.ndarray  # (replicates,) bool
    level: float  # interval coverage, e.g. 0.95
    seed: int
    starts_per_replicate: int
    solver: str

    def parameter_samples(self, converged_only: bool = True) -> dict[str, np.ndarray]:
        """Return E, A, B, alpha, beta, a and b of each (converged) replicate."""
        theta = self.samples[self.converged] if converged_only else self.samples
        alpha, beta = theta[:, 3], theta[:, 4]
        with np.errstate(over="ignore"):  # a replicate far from the data may have A or B beyond a float: inf
            return {
                "E": np.exp(theta[:, 2]), "A": np.exp(theta[:, 0]), "B": np.exp(theta[:, 1]),
                "alpha": alpha, "beta": beta, "a": beta / (alpha + beta), "b": alpha / (alpha + beta),
            }

    def intervals(self) -> dict[str, tuple[float, float] | None]:
        """Return the central percentile interval of each parameter at `level`, None where it is not estimable.

        See `interval_note` for why an interval is missing.
        """
        samples = self.parameter_samples()
        if too_few_replicates(int(self.converged.sum()), self.converged.size, level=self.level):
            return {name: None for name in samples}
        return {name: percentile_interval(values, self.level) for name, values in samples.items()}

    def interval_note(self) -> str | None:
        """Return why some or all intervals are missing, or None when every parameter has one."""
        return interval_note(self.parameter_samples(), self.converged.size, "converged", self.level)

    def standard_errors(self) -> dict[str, float]:
        """Return the standard deviation of each parameter over converged replicates; empty when too few converged."""
        if too_few_replicates(int(self.converged.sum()), self.converged.size, level=self.level):
            return {}
        with np.errstate(invalid="ignore", over="ignore"):  # an infinite sample makes the error infinite or NaN
            return {name: float(np.std(values, ddof=1)) for name, values in self.parameter_samples().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "resample runs with replacement, refit approach 3 from the full-data fit's distinct end "
                      "points, percentile intervals over converged replicates",
            "replicates": int(self.samples.shape[0]),
            "converged_replicates": int(self.converged.sum()),
            "level": self.level,
            "seed": self.seed,
            "starts_per_replicate": self.starts_per_replicate,
            "solver": self.solver,
            "intervals": {name: None if bounds is None else list(bounds)
                          for name, bounds in self.intervals().items()},
            "interval_note": self.interval_note(),
            "standard_errors": self.standard_errors(),
            "samples": {"parameters": ["log_a", "log_b", "log_e", "alpha", "beta"],
                        "values": self.samples.tolist(), "converged": self.converged.tolist()},
        }


def fewest_replicates(level: float = 0.95) -> int:
    """Return the fewest usable replicates that give a central `level` interval: 2 / (1 - level), 40 for 95%.

    With fewer, each bound is the most extreme replicate on its side, whatever the requested level, so the
    interval carries little information. A request for fewer replicates can therefore give no interval.
    """
    return math.ceil(2 / (1 - level) - 1e-9)


def min_usable_replicates(requested: int, level: float = 0.95) -> int:
    """Return how many of `requested` replicates must be usable for a central `level` interval.

    At least MIN_USABLE_FRACTION of them, and at least `fewest_replicates(level)` (40 for 95%).
    """
    return max(fewest_replicates(level), math.ceil(MIN_USABLE_FRACTION * requested))


def too_few_replicates(usable: int, requested: int, fitted: str = "could be fitted",
                       level: float = 0.95) -> str | None:
    """Return why `usable` of `requested` replicates give no interval, or None when they are enough."""
    needed = min_usable_replicates(requested, level)
    if usable >= needed:
        return None
    return (f"only {usable} of {requested} bootstrap replicates {fitted}, and a {100 * level:g}% interval needs at "
            f"least {needed}, so none is reported")


def percentile_interval(values: ArrayLike, level: float) -> tuple[float, float] | None:
    """Return the central `level` percentile interval of `values`, or None when they have no spread.

    Replicates that all agree carry no information about the uncertainty (each one repeats the same few
    budgets, say), so a zero-width interval would claim a precision the data do not have.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size < 2 or np.all(values == values[0]):
        return None
    tail = 100 * (1 - level) / 2
    return percentile(values, tail), percentile(values, 100 - tail)


def interval_note(samples: dict[str, np.ndarray], requested: int, fitted: str = "could be fitted",
                  level: float = 0.95) -> str | None:
    """Return why intervals over `samples` (usable replicates per name) are missing, or None when none is."""
    usable = min((np.asarray(values).size for values in samples.values()), default=0)
    reason = too_few_replicates(usable, requested, fitted, level)
    if reason:
        return reason
    flat = [name for name, values in samples.items() if percentile_interval(values, level) is None]
    if flat:
        return f"every usable bootstrap replicate gives the same {', '.join(flat)}, so no interval is reported for it"
    return None


def percentile(values: ArrayLike, percent: float) -> float:
    """Return the percentile of `values`, which may include infinities (plain interpolation turns them into NaN)."""
    largest = np.finfo(float).max
    result = float(np.percentile(np.clip(np.asarray(values, dtype=float), -largest, largest), percent))
    return math.copysign(math.inf, result) if abs(result) > largest / 4 else result


def bootstrap_approach3(params: ArrayLike, tokens: ArrayLike, loss: ArrayLike, fit: ParametricFit, *,
                        n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, level: float = 0.95,
                        options: Approach3Options = Approach3Options()) -> BootstrapResult:
    """Refit approach 3 on `n_bootstraps` resamples of the points; return the replicates and intervals."""
    if n_bootstraps < 2:
        raise ValueError(f"n_bootstraps={n_bootstraps} must be >= 2 for an interval")
    log_n, log_d, log_l = _log_points(params, tokens, loss)
    points = log_n.size
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(points, np.full(points, 1.0 / points), size=n_bootstraps).astype(float)
    starts = replicate_starts(fit)

    if options.solver == "newton":
        theta, values = _newton_replicates(starts, counts, log_n, log_d, log_l, options)
    else:
        theta, values = _scipy_replicates(starts, counts, log_n, log_d, log_l, options)

    converged = np.array([_gradient_norm(t, w, log_n, log_d, log_l, options) <= options.converged_gradient
                          for t, w in zip(theta, counts)])
    if not converged.all():
        logger.warning("approach 3 bootstrap: %d of %d replicates did not converge and are left out of the intervals",
                       int((~converged).sum()), n_bootstraps)
    return BootstrapResult(theta, values, converged, level, seed, len(starts), options.solver)


def replicate_starts(fit: ParametricFit) -> np.ndarray:
    """Return the starts of every replicate: the fit's distinct end points near its best objective."""
    near = [theta for value, theta in fit.local_minima if value <= START_OBJECTIVE_FACTOR * fit.objective]
    return np.array(near or [tuple(fit.theta)], dtype=float)


def _newton_replicates(starts: np.ndarray, counts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                       log_l: np.ndarray, options: Approach3Options) -> tuple[np.ndarray, np.ndarray]:
    from analysis.batched_newton import minimize_batch

    replicates, per = counts.shape[0], starts.shape[0]
    result = minimize_batch(np.tile(starts, (replicates, 1)), log_n, log_d, log_l, options.huber_delta,
                            np.repeat(counts, per, axis=0), max_iterations=options.newton_iterations,
                            gradient_tolerance=options.newton_gradient)
    objective = result.objective.reshape(replicates, per)
    objective = np.where(np.isfinite(objective), objective, np.inf)
    best = np.argmin(objective, axis=1)
    theta = result.theta.reshape(replicates, per, 5)[np.arange(replicates), best]
    return theta, objective[np.arange(replicates), best]


def _scipy_replicates(starts: np.ndarray, counts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                      log_l: np.ndarray, options: Approach3Options) -> tuple[np.ndarray, np.ndarray]:
    thetas, values = [], []
    for weights in counts:
        scale = _objective_scale(log_n, weights, options.huber_delta)

        def scaled(theta: np.ndarray, weights: np.ndarray = weights, scale: float = scale):
            value, gradient = huber_objective(theta, log_n, log_d, log_l, options.huber_delta, weights)
            return value / scale, gradient / scale

        ends = [_lbfgs(scaled, start, options) for start in starts]
        value, theta = min(ends, key=lambda end: end[0] if math.isfinite(end[0]) else math.inf)
        thetas.append(theta)
        values.append(value * scale)
    return np.array(thetas), np.array(values)


def _gradient_norm(theta: np.ndarray, weights: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                   log_l: np.ndarray, options: Approach3Options) -> float:
    _, gradient = huber_objective(theta, log_n, log_d, log_l, options.huber_delta, weights)
    return float(np.max(np.abs(gradient))) / _objective_scale(log_n, weights, options.huber_delta)
