"""Bootstrap intervals for approaches 1 and 2 and the Kaplan-style fits: refit on runs drawn with replacement.

Each replicate draws runs with replacement and refits the method the way the full-data fit did. Intervals
are percentiles over the replicates (95% by default), as for approach 3 in `analysis.bootstrap`. A replicate
whose draw cannot support the fit (too few distinct sizes, token counts or usable budgets) is counted and
left out of the intervals.

How each method resamples:

- Approach 2 draws within each IsoFLOP budget, keeping each budget's number of runs, since the budgets are
  the sweep's design rather than a sample. A drawn run enters its budget's parabola once per draw. A budget
  left with fewer than 3 distinct sizes, or with its optimum at an edge, drops out of that replicate's power
  laws, as in the full fit.
- Approach 1 and L(C) draw from all runs and rebuild the envelope from the distinct runs drawn: a curve drawn
  twice changes no minimum.
- L(N), L(N) with E and L(D) draw from all runs; each distinct size (or token count) keeps the lowest loss
  among its drawn runs and weighs in the least squares by how many draws fell on it, so that with one run
  per size this is the usual bootstrap of regression pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from analysis.bootstrap import DEFAULT_BOOTSTRAPS
from analysis.fit_envelope import fit_envelope
from analysis.fit_isoflop import fit_isoflop
from analysis.fit_kaplan import fit_single_power_law

ALLOCATION_NAMES = ("a", "params_coefficient", "b", "tokens_coefficient")
# L(C) gets no interval on C_c. Between sampled sizes the envelope lies above the true frontier, a bias that
# resampling cannot see, and C_c = k^(1/alpha_C) magnifies a bias in the level k about 1/alpha_C times.
KAPLAN_NAMES = {"L(N)": ("exponent", "scale"), "L(N) with E": ("exponent", "scale", "irreducible"),
                "L(D)": ("exponent", "scale"), "L(C)": ("exponent",)}
# Each method draws from its own stream of the seed, so adding a method never changes another's intervals.
_STREAMS = {"approach2": 2, "approach1": 1, "kaplan": 4}


@dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates of one fit: one row of named values per replicate, NaN where it could not be fitted."""

    names: tuple[str, ...]
    values: np.ndarray  # (replicates, len(names))
    level: float  # interval coverage, e.g. 0.95
    seed: int
    method: str  # how runs were drawn and refitted, in words

    @property
    def valid(self) -> np.ndarray:
        """Return which replicates could be fitted, as a bool array."""
        return np.all(np.isfinite(self.values), axis=1)

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Return the central percentile interval of each value at `level`; empty with fewer than 2 valid replicates."""
        kept = self.values[self.valid]
        if kept.shape[0] < 2:
            return {}
        tail = 100 * (1 - self.level) / 2
        return {name: (float(np.percentile(kept[:, i], tail)), float(np.percentile(kept[:, i], 100 - tail)))
                for i, name in enumerate(self.names)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "replicates": int(self.values.shape[0]),
            "valid_replicates": int(self.valid.sum()),
            "level": self.level,
            "seed": self.seed,
            "intervals": {name: list(bounds) for name, bounds in self.intervals().items()},
        }


def bootstrap_isoflop(params: ArrayLike, losses: ArrayLike, budgets: ArrayLike, *,
                      n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, level: float = 0.95) -> Replicates:
    """Bootstrap approach 2's a, b and coefficients, drawing runs within each budget (FLOPs, one per run)."""
    params = np.asarray(params, dtype=float)
    losses = np.asarray(losses, dtype=float)
    budgets = np.asarray(budgets, dtype=float)
    strata = [np.flatnonzero(budgets == budget) for budget in np.unique(budgets)]
    rng = _rng(seed, "approach2")

    def refit(indices: np.ndarray) -> dict[str, float] | None:
        fit = fit_isoflop(params[indices], budgets[indices], losses[indices], budgets[indices],
                          skip_invalid_budgets=True, log_warnings=False)
        return _allocation_values(fit.params_law, fit.tokens_law)

    draws = [np.concatenate([rng.choice(stratum, stratum.size) for stratum in strata])
             for _ in range(_check_count(n_bootstraps))]
    method = ("runs drawn with replacement within each IsoFLOP budget; parabolas and power laws refitted; "
              "percentile intervals over replicates with at least 2 usable budgets")
    return _replicates(refit, draws, ALLOCATION_NAMES, level, seed, method)


def bootstrap_envelope(params: Sequence[float], curves: Sequence[Sequence[tuple[float, float]]], *,
                       n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, level: float = 0.95) -> Replicates:
    """Bootstrap approach 1's a, b and coefficients: envelopes of runs drawn with replacement."""
    params = list(params)
    rng = _rng(seed, "approach1")

    def refit(indices: np.ndarray) -> dict[str, float] | None:
        fit = _envelope_of(params, curves, indices)
        return None if fit is None else _allocation_values(fit.params_law, fit.tokens_law)

    draws = [rng.integers(0, len(params), len(params)) for _ in range(_check_count(n_bootstraps))]
    method = ("runs drawn with replacement; envelope of the distinct runs drawn and its power laws refitted; "
              "percentile intervals over replicates where at least 2 sizes win inside the size range")
    return _replicates(refit, draws, ALLOCATION_NAMES, level, seed, method)


def bootstrap_kaplan(params: ArrayLike, tokens: ArrayLike, losses: ArrayLike,
                     curves: Sequence[Sequence[tuple[float, float]]] | None = None, *,
                     n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0,
                     level: float = 0.95) -> dict[str, Replicates]:
    """Bootstrap the exponent and scale (and E) of L(N), L(N) with E and L(D), and the exponent of L(C).

    `curves` are the runs' learning curves [(tokens seen, loss), ...], in the order of `params`; L(C) is
    left out without them, as `analysis.fit_kaplan.fit_kaplan` leaves it out without a frontier.
    """
    params = np.asarray(params, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    losses = np.asarray(losses, dtype=float)
    rng = _rng(seed, "kaplan")
    draws = [rng.integers(0, params.size, params.size) for _ in range(_check_count(n_bootstraps))]

    def single(values: np.ndarray, variable: str, irreducible: bool) -> Callable[[np.ndarray], dict | None]:
        def refit(indices: np.ndarray) -> dict[str, float] | None:
            distinct, lowest, counts = _lowest_per_value(values[indices], losses[indices])
            fit = fit_single_power_law(distinct, lowest, variable, irreducible=irreducible, weights=counts)
            return None if fit is None else _power_law_values(fit, irreducible)
        return refit

    def frontier(indices: np.ndarray) -> dict[str, float] | None:
        envelope = _envelope_of(list(params), curves, indices)
        if envelope is None:
            return None
        fit = fit_single_power_law(*envelope.interior_frontier(), "flops")
        return None if fit is None else _power_law_values(fit, False)

    refits = {"L(N)": single(params, "params", False), "L(N) with E": single(params, "params", True),
              "L(D)": single(tokens, "tokens", False)}
    if curves is not None:
        refits["L(C)"] = frontier
    method = ("runs drawn with replacement; lowest loss per size (per token count) among the runs drawn, "
              "weighted by draws, or the envelope of the distinct runs drawn for L(C); percentile intervals "
              "over replicates with enough distinct points")
    return {name: _replicates(refit, draws, KAPLAN_NAMES[name], level, seed, method)
            for name, refit in refits.items()}


def _replicates(refit: Callable[[np.ndarray], dict[str, float] | None], draws: list[np.ndarray],
                names: tuple[str, ...], level: float, seed: int, method: str) -> Replicates:
    rows = np.full((len(draws), len(names)), np.nan)
    for row, indices in zip(rows, draws):
        values = refit(np.asarray(indices))
        if values is not None:
            row[:] = [values[name] for name in names]
    return Replicates(names, rows, level, seed, method)


def _allocation_values(params_law, tokens_law) -> dict[str, float] | None:
    if params_law is None or tokens_law is None:
        return None
    return {"a": params_law.exponent, "params_coefficient": params_law.coefficient,
            "b": tokens_law.exponent, "tokens_coefficient": tokens_law.coefficient}


def _power_law_values(fit, irreducible: bool) -> dict[str, float]:
    values = {"exponent": fit.exponent, "scale": fit.scale}
    if irreducible:
        values["irreducible"] = fit.irreducible
    return values


def _envelope_of(params: list[float], curves, indices: np.ndarray):
    distinct = np.unique(indices)
    return fit_envelope([params[i] for i in distinct], [curves[i] for i in distinct])


def _lowest_per_value(values: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the distinct values, the lowest loss at each, and how many entries share each value."""
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    lowest = np.full(distinct.size, np.inf)
    np.minimum.at(lowest, inverse, losses)
    return distinct, lowest, counts.astype(float)


def _rng(seed: int, method: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[method]])


def _check_count(n_bootstraps: int) -> int:
    if n_bootstraps < 2:
        raise ValueError(f"n_bootstraps={n_bootstraps} must be >= 2 for an interval")
    return n_bootstraps
