"""Chinchilla approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to final losses.

Method (Hoffmann et al. 2022, arXiv:2203.15556, section 3.3 and appendix D.2), with the changes of the
replication by Besiroglu et al. 2024 (arXiv:2404.10102) that make the optimiser converge:

- parameters theta = (log_a, log_b, log_e, alpha, beta) with A = exp(log_a), B = exp(log_b), E = exp(log_e)
  (the allocation exponents a and b of N_opt ~ C^a, D_opt ~ C^b are derived from alpha and beta);
- residual r_i = LSE(log_a - alpha log N_i, log_b - beta log D_i, log_e) - log L_i, where LSE is
  log-sum-exp, so exp(LSE(...)) is exactly the law's prediction;
- objective: sum over points of Huber_delta(r_i), delta = 1e-3;
- from every start of a grid, a local optimiser with analytic derivatives; the best end point wins.

Two optimisers are available. "newton" (the default) runs a damped Newton method on all starts at once
(`analysis.batched_newton`) and polishes the best end point with L-BFGS-B. "scipy" runs L-BFGS-B from each
start in turn, as the replication did. Both minimise the same objective and pass the same convergence check.

Convergence is judged on the objective divided by n delta^2 (the Huber loss of n residuals of size delta),
a scale on which a converged fit has a gradient far below 1e-3. A fit whose best end point still has a larger
gradient, or that never moved from its start, is reported as not converged. L-BFGS's own "success" is not
trusted, because with default tolerances it stops early on an objective of size 1e-3.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from analysis.defaults import DEFAULT_FIT_STARTS
from analysis.laws import ParametricLaw, exp_or_inf

logger = logging.getLogger(__name__)

PARAMETER_NAMES = ("log_a", "log_b", "log_e", "alpha", "beta")
MAX_LOCAL_MINIMA = 8  # distinct end points kept with a fit


@dataclass(frozen=True)
class StartGrid:
    """Box of initial values, one (low, high) range per parameter of theta = (log_a, log_b, log_e, alpha, beta).

    The default box is the one Hoffmann et al. 2022 searched (appendix D.2): a and b in [0, 25],
    e in [-1, 1], alpha and beta in [0, 2].
    """

    log_a: tuple[float, float] = (0.0, 25.0)
    log_b: tuple[float, float] = (0.0, 25.0)
    log_e: tuple[float, float] = (-1.0, 1.0)
    alpha: tuple[float, float] = (0.0, 2.0)
    beta: tuple[float, float] = (0.0, 2.0)

    def points(self, n_starts: int) -> np.ndarray:
        """Return a full product grid of at least `n_starts` starts, shape (starts, 5).

        Levels are added one dimension at a time, round robin, until the product reaches n_starts, so the
        grid is as even as possible: 1000 gives 4^5 = 1024 starts, 500 gives 4^3 3^2 = 576.
        """
        if n_starts < 1:
            raise ValueError(f"n_starts={n_starts} must be >= 1")
        levels = [1] * len(PARAMETER_NAMES)
        dimension = 0
        while math.prod(levels) < n_starts:
            levels[dimension] += 1
            dimension = (dimension + 1) % len(levels)
        axes = []
        for name, count in zip(PARAMETER_NAMES, levels):
            low, high = getattr(self, name)
            axes.append(np.linspace(low, high, count) if count > 1 else np.array([(low + high) / 2]))
        return np.array(list(itertools.product(*axes)), dtype=float)


@dataclass(frozen=True)
class Approach3Options:
    """Settings of the approach-3 fit. The defaults are for publication use."""

    huber_delta: float = 1e-3  # Huber threshold on log-loss residuals
    n_starts: int = DEFAULT_FIT_STARTS  # minimum size of the start grid (rounded up to a full product grid)
    grid: StartGrid = field(default_factory=StartGrid)
    solver: str = "newton"  # "newton" (batched over starts) or "scipy" (one L-BFGS-B call per start)
    ftol: float = 1e-15  # L-BFGS-B relative reduction of the objective at which it stops
    gtol: float = 1e-12  # L-BFGS-B projected-gradient size at which it stops
    max_iterations: int = 10_000  # L-BFGS-B iterations per start
    newton_iterations: int = 500  # damped Newton iterations per start
    newton_gradient: float = 1e-6  # Newton stops at this max |gradient| of objective / (n delta^2)
    converged_gradient: float = 1e-3  # max |gradient| of objective / (n delta^2) accepted as converged
    moved_tolerance: float = 1e-8  # a fit whose theta changed less than this (max abs) did not move


@dataclass(frozen=True)
class ParametricFit:
    """Result of an approach-3 fit: the best end point over all starts and its diagnostics."""

    log_a: float
    log_b: float
    log_e: float
    alpha: float
    beta: float
    objective: float  # sum of Huber losses at the best end point
    converged: bool
    status: str  # one line: why the fit is or is not considered converged
    gradient_norm: float  # max |gradient| of objective / (n delta^2) at the best end point
    n_points: int
    n_starts: int
    n_starts_at_best: int  # starts ending within 1e-9 (relative) of the best objective
    start: tuple[float, ...]  # the start that reached the best end point
    method: dict[str, Any]
    # Distinct end points, best first: (objective, theta); bootstrap refits start from them.
    local_minima: tuple[tuple[float, tuple[float, ...]], ...] = ()

    @property
    def theta(self) -> np.ndarray:
        """Return (log_a, log_b, log_e, alpha, beta) as an array."""
        return np.array([self.log_a, self.log_b, self.log_e, self.alpha, self.beta])

    def parameters(self) -> dict[str, float]:
        """Return E, A, B, alpha, beta and the derived allocation exponents a and b."""
        # The Newton steps are unbounded, so a fit that trades one term away can end with a log beyond a
        # float (infinite coefficient) or with alpha + beta = 0 (no allocation: NaN), never with an exception.
        total = self.alpha + self.beta
        return {
            "E": exp_or_inf(self.log_e),
            "A": exp_or_inf(self.log_a),
            "B": exp_or_inf(self.log_b),
            "alpha": self.alpha,
            "beta": self.beta,
            "a": self.beta / total if total != 0 else math.nan,
            "b": self.alpha / total if total != 0 else math.nan,
        }

    def law(self, key: str = "fit", name: str = "your fit (approach 3)", citation: str = "this study",
            convention: str = "total") -> ParametricLaw:
        """Return the fitted law as a ParametricLaw, for allocation and loss questions."""
        return ParametricLaw.from_logs(key, name, citation, log_a=self.log_a, log_b=self.log_b,
                                       log_e=self.log_e, alpha=self.alpha, beta=self.beta, convention=convention)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; floats keep full double precision through json's repr."""
        record = asdict(self)
        record["start"] = list(self.start)
        record["parameters"] = self.parameters()
        return record


def method_description(options: Approach3Options, n_starts: int) -> dict[str, Any]:
    """Return the method of an approach-3 fit as data, for fit.json and reports."""
    return {
        "name": "approach 3 (parametric L(N, D) = E + A/N^alpha + B/D^beta)",
        "loss": "sum of Huber losses",
        "huber_delta": options.huber_delta,
        "space": "log L residuals: log L - LSE(log_a - alpha log N, log_b - beta log D, log_e)",
        "parameters": "log_a = ln A, log_b = ln B, log_e = ln E, alpha, beta",
        "optimizer": _optimizer_description(options),
        "starts": n_starts,
        "start_grid": asdict(options.grid),
        "convergence_test": f"max |gradient of objective / (n delta^2)| <= {options.converged_gradient:g} "
        "and the best end point moved from its start",
    }


def _optimizer_description(options: Approach3Options) -> str:
    lbfgs = (f"scipy L-BFGS-B, analytic gradient, ftol {options.ftol:g}, gtol {options.gtol:g}, "
             f"max {options.max_iterations} iterations")
    if options.solver == "scipy":
        return f"{lbfgs} per start"
    return (f"damped Newton with the exact Hessian on all starts at once, max {options.newton_iterations} "
            f"iterations, stopping at scaled gradient {options.newton_gradient:g}; best end point polished by "
            f"{lbfgs}")


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                    delta: float, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Return the summed Huber loss of log-loss residuals and its gradient in theta (log_a, log_b, log_e, alpha, beta).

    `weights` multiplies each point's Huber loss (bootstrap counts); None means 1 for every point.
    """
    log_a, log_b, log_e, alpha, beta = theta
    terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.full_like(log_n, log_e)])
    top = terms.max(axis=0)
    exps = np.exp(terms - top)
    total = exps.sum(axis=0)
    softmax = exps / total  # d LSE / d term
    residual = top + np.log(total) - log_l

    size = np.abs(residual)
    quadratic = size <= delta
    huber = np.where(quadratic, 0.5 * residual**2, delta * (size - 0.5 * delta))
    slope = np.where(quadratic, residual, delta * np.sign(residual))  # d Huber / d residual
    if weights is not None:
        huber = huber * weights
        slope = slope * weights

    gradient = np.array([
        slope @ softmax[0],
        slope @ softmax[1],
        slope @ softmax[2],
        -(slope * softmax[0]) @ log_n,
        -(slope * softmax[1]) @ log_d,
    ])
    return float(huber.sum()), gradient


def fit_approach3(params: ArrayLike, tokens: ArrayLike, loss: ArrayLike, *,
                  options: Approach3Options = Approach3Options(),
                  starts: np.ndarray | None = None, weights: ArrayLike | None = None) -> ParametricFit:
    """Fit E + A/N^alpha + B/D^beta to (N parameters, D tokens, final loss in nats/token) points.

    `starts` (shape (k, 5), theta convention) replaces the grid of `options` when given. `weights` are
    per-point multiplicities (bootstrap resampling); None gives each point weight 1.
    """
    log_n, log_d, log_l = _log_points(params, tokens, loss)
    start_points = options.grid.points(options.n_starts) if starts is None else np.atleast_2d(starts).astype(float)
    point_weights = None if weights is None else np.asarray(weights, dtype=float)
    scale = _objective_scale(log_n, point_weights, options.huber_delta)

    def scaled(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = huber_objective(theta, log_n, log_d, log_l, options.huber_delta, point_weights)
        return value / scale, gradient / scale

    if options.solver == "scipy":
        ends = [_lbfgs(scaled, start, options) + (start,) for start in start_points]
    elif options.solver == "newton":
        ends = _newton_ends(start_points, log_n, log_d, log_l, point_weights, options)
        best = min(range(len(ends)), key=lambda i: ends[i][0])
        value, theta, start = ends[best]
        polished_value, polished = _lbfgs(scaled, theta, options)
        if polished_value <= value:
            ends[best] = (polished_value, polished, start)
    else:
        raise ValueError(f"unknown approach 3 solver {options.solver!r}; use 'newton' or 'scipy'")
    ends = [end for end in ends if np.isfinite(end[0]) and np.all(np.isfinite(end[1]))]
    if not ends:
        raise RuntimeError("approach 3: every start ended at a non-finite objective; check the points for zeros")
    return _best_fit(ends, log_n, log_d, log_l, point_weights, len(start_points), options)


@dataclass(frozen=True)
class Convergence:
    """Verdict on one end point of the approach-3 optimiser."""

    converged: bool
    status: str  # one line: why the end point is or is not considered converged
    gradient_norm: float  # max |gradient| of objective / (n delta^2)


def assess_convergence(theta: ArrayLike, start: ArrayLike, params: ArrayLike, tokens: ArrayLike, loss: ArrayLike,
                       options: Approach3Options = Approach3Options(),
                       weights: ArrayLike | None = None) -> Convergence:
    """Judge an end point by its own gradient on the well-scaled objective and by whether it left its start.

    Works for end points of any optimiser, so a result from elsewhere can be checked the same way.
    """
    log_n, log_d, log_l = _log_points(params, tokens, loss)
    point_weights = None if weights is None else np.asarray(weights, dtype=float)
    return _assess(np.asarray(theta, dtype=float), np.asarray(start, dtype=float), log_n, log_d, log_l,
                   options, point_weights)


def _assess(theta: np.ndarray, start: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
            options: Approach3Options, weights: np.ndarray | None) -> Convergence:
    scale = _objective_scale(log_n, weights, options.huber_delta)
    _, gradient = huber_objective(theta, log_n, log_d, log_l, options.huber_delta, weights)
    gradient_norm = float(np.max(np.abs(gradient))) / scale
    moved = float(np.max(np.abs(theta - start))) > options.moved_tolerance
    if not moved:
        return Convergence(False, "not converged: the fit did not move from its start", gradient_norm)
    if not gradient_norm <= options.converged_gradient:
        return Convergence(False, f"not converged: gradient {gradient_norm:.3g} exceeds "
                           f"{options.converged_gradient:g} (objective / (n delta^2) scale)", gradient_norm)
    return Convergence(True, f"converged: gradient {gradient_norm:.3g}", gradient_norm)


def _objective_scale(log_n: np.ndarray, weights: np.ndarray | None, delta: float) -> float:
    # The Huber loss of n residuals of size delta: dividing by it makes a typical objective of order 1.
    n_effective = len(log_n) if weights is None else float(weights.sum())
    return n_effective * delta**2


def _lbfgs(scaled, start: np.ndarray, options: Approach3Options) -> tuple[float, np.ndarray]:
    result = minimize(scaled, start, jac=True, method="L-BFGS-B",
                      options={"ftol": options.ftol, "gtol": options.gtol, "maxiter": options.max_iterations,
                               "maxfun": 2 * options.max_iterations})
    return float(result.fun), result.x


def _newton_ends(start_points: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                 weights: np.ndarray | None, options: Approach3Options) -> list[tuple[float, np.ndarray, np.ndarray]]:
    from analysis.batched_newton import minimize_batch

    result = minimize_batch(start_points, log_n, log_d, log_l, options.huber_delta, weights,
                            max_iterations=options.newton_iterations, gradient_tolerance=options.newton_gradient)
    scale = _objective_scale(log_n, weights, options.huber_delta)
    return [(float(value / scale), theta, start)
            for value, theta, start in zip(result.objective, result.theta, start_points)]


def _best_fit(ends: list[tuple[float, np.ndarray, np.ndarray]], log_n: np.ndarray, log_d: np.ndarray,
              log_l: np.ndarray, weights: np.ndarray | None, n_starts: int,
              options: Approach3Options) -> ParametricFit:
    """Pick the lowest end point and judge its convergence from its own gradient, not the optimiser's flag."""
    values = np.array([value for value, _, _ in ends])
    best_index = int(np.argmin(values))
    best_value, theta, start = ends[best_index]
    at_best = int(np.sum(values <= best_value * (1 + 1e-9) + 1e-9))
    verdict = _assess(theta, start, log_n, log_d, log_l, options, weights)
    status = verdict.status
    if verdict.converged:
        status += f"; {at_best} of {n_starts} starts reached it"
    else:
        logger.warning("approach 3 fit %s", status)

    scale = _objective_scale(log_n, weights, options.huber_delta)
    minima = tuple((value * scale, tuple(float(x) for x in point)) for value, point in _distinct_ends(ends))
    return ParametricFit(
        log_a=float(theta[0]), log_b=float(theta[1]), log_e=float(theta[2]),
        alpha=float(theta[3]), beta=float(theta[4]),
        objective=best_value * scale, converged=verdict.converged, status=status,
        gradient_norm=verdict.gradient_norm, n_points=len(log_n), n_starts=n_starts, n_starts_at_best=at_best,
        start=tuple(float(x) for x in start), method=method_description(options, n_starts), local_minima=minima,
    )


def _distinct_ends(ends: list[tuple[float, np.ndarray, np.ndarray]], limit: int = MAX_LOCAL_MINIMA,
                   tolerance: float = 1e-3) -> list[tuple[float, np.ndarray]]:
    """Return up to `limit` end points, best first, each differing from every better one in theta and objective.

    Two end points count as one when their theta is within `tolerance` (max abs) or their objectives agree
    to 1e-7 (relative). The objective test merges points on a plateau, where one term of the law has vanished
    and its parameter drifts without changing the objective.
    """
    kept: list[tuple[float, np.ndarray]] = []
    for value, theta, _ in sorted(ends, key=lambda end: end[0]):
        if all(np.max(np.abs(theta - other)) > tolerance and abs(value - other_value) > 1e-7 * abs(other_value)
               for other_value, other in kept):
            kept.append((value, theta))
            if len(kept) == limit:
                break
    return kept


def _log_points(params: ArrayLike, tokens: ArrayLike, loss: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(x, dtype=float).ravel() for x in (params, tokens, loss)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"params, tokens and loss differ in length: {[a.size for a in arrays]}")
    for name, values in zip(("params", "tokens", "loss"), arrays):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{name} must be finite and > 0 to take logs")
    return np.log(arrays[0]), np.log(arrays[1]), np.log(arrays[2])
