"""Bootstrap intervals for approaches 1 and 2 and the Kaplan-style fits.

Intervals are percentiles over the replicates (95% by default), as for approach 3 in `analysis.bootstrap`.
A replicate whose data cannot support the fit (too few distinct sizes, token counts or usable budgets, or a
power law beyond floating point) is counted and left out of the intervals. When fewer than half the
replicates are usable (`analysis.bootstrap.MIN_USABLE_FRACTION`), or they all agree, no interval is
reported and `interval_note` says why.

Approaches 1 and 2 keep the sweep's sizes and budgets, since those are its design rather than a sample, and
resample what varies between runs: each run's luck (`resample="luck"`, the default for both).

- Approach 2 fits each budget's parabola, and a run's luck is its relative residual from it. Residuals
  are scaled by 1/sqrt(1 - leverage), because a parabola through few sizes leaves residuals smaller than
  the noise. They are drawn with replacement across all budgets onto the parabolas, and the fit is
  repeated.
  Where the parabola does not match the profile (sizes spanning a wide range around the optimum), its misfit
  counts as noise and the intervals widen. When no budget has more than 3 sizes, there are no residuals, and
  runs are drawn instead (the method record says so).
- Approach 1 fits L(N, D) = E + A/N^alpha + B/D^beta to the late half of
  every learning curve only to separate each run's level from the size trend; a run's luck is the median of
  its log-loss residuals. A replicate moves every curve to the surface and adds a luck drawn with
  replacement, keeping each curve's own shape.

Both report basic bootstrap intervals: a replicate's deviation from the answer without luck (approach 1) or
from the estimate (approach 2) is subtracted from the estimate, so the stored replicates are reflected and
their percentiles are the intervals. This corrects the bias the bootstrap sees instead of doubling it.

`resample="runs"` instead draws runs with replacement (within each budget for approach 2; approach 1 keeps
the distinct runs drawn, since a curve drawn twice changes no minimum) and takes plain percentiles. Drawing
runs removes about a third of the sizes from each replicate, which coarsens the fit, so these intervals come
out wide. On 50 draws of points from a known law with 1% noise (tests/test_analysis_bootstrap_methods.py),
approach 1's intervals for a were 2.1 times the spread of the estimates and covered the truth 50 times;
drawing luck, 47 times with widths of 0.98 times the spread.

L(N), L(N) with E and L(D) draw from all runs; each distinct size (or token count) keeps the lowest loss among
its drawn runs and weighs in the least squares by how many draws fell on it, so that with one run per size
this is the usual bootstrap of regression pairs. L(C) draws from all runs and rebuilds the envelope from the
distinct runs drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from analysis.bootstrap import interval_note, percentile_interval, too_few_replicates
from analysis.defaults import DEFAULT_BOOTSTRAPS, RESAMPLING
from analysis.fit_envelope import fit_envelope
from analysis.fit_isoflop import fit_isoflop
from analysis.fit_kaplan import fit_single_power_law
from analysis.fit_parametric import Approach3Options, fit_approach3

ALLOCATION_NAMES = ("a", "params_coefficient", "b", "tokens_coefficient")
KAPLAN_NAMES = {"L(N)": ("exponent", "scale"), "L(N) with E": ("exponent", "scale", "irreducible"),
                "L(D)": ("exponent", "scale"), "L(C)": ("exponent",)}
# Values a Kaplan-style fit reports without an interval whatever the runs, with the reason shown to the user.
KAPLAN_NO_INTERVAL = {"L(C)": {"scale": (
    "x_c (C_c) gets no interval by design: between sampled sizes the compute frontier of the learning curves "
    "lies above the true frontier, a bias that resampling cannot see, and C_c = k^(1/exponent) magnifies a "
    "bias in the loss level k about 1/exponent times")}}
# Each method draws from its own stream of the seed, so adding a method never changes another's intervals.
_STREAMS = {"approach2": 2, "approach1": 1, "kaplan": 4}
SURFACE_STARTS = 256  # start grid of the L(N, D) fit that separates each run's luck from the size trend


@dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates of one fit: one row of named values per replicate, NaN where it could not be fitted."""

    names: tuple[str, ...]
    values: np.ndarray  # (replicates, len(names))
    level: float  # interval coverage, e.g. 0.95
    seed: int
    method: str  # how runs were drawn and refitted, in words
    # Values of the fit that are not resampled, each with the reason; they are listed among the intervals as None.
    no_interval: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """Return which replicates could be fitted, as a bool array."""
        return np.all(np.isfinite(self.values), axis=1)

    @property
    def enough(self) -> bool:
        """Return whether enough replicates could be fitted for intervals (see MIN_USABLE_FRACTION)."""
        return too_few_replicates(int(self.valid.sum()), self.values.shape[0], level=self.level) is None

    def intervals(self) -> dict[str, tuple[float, float] | None]:
        """Return the central percentile interval of each value at `level`, None where it is not estimable.

        See `interval_note` for why an interval is missing.
        """
        unestimated = {name: None for name in self.no_interval}
        if not self.enough:
            return {**{name: None for name in self.names}, **unestimated}
        kept = self.values[self.valid]
        return {**{name: percentile_interval(kept[:, i], self.level) for i, name in enumerate(self.names)},
                **unestimated}

    def sample_note(self) -> str | None:
        """Return why the replicates give some or all of `names` no interval, or None when they give each one."""
        usable = self.values[self.valid]
        return interval_note({name: usable[:, i] for i, name in enumerate(self.names)}, self.values.shape[0],
                             level=self.level)

    def interval_note(self) -> str | None:
        """Return why some or all intervals are missing (`sample_note`, then `no_interval`), or None when none is."""
        reasons = [self.sample_note(), *self.no_interval.values()]
        return "; ".join(reason for reason in reasons if reason) or None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; "samples" contains every replicate (null where it could not be fitted)."""
        return {
            "method": self.method,
            "replicates": int(self.values.shape[0]),
            "valid_replicates": int(self.valid.sum()),
            "level": self.level,
            "seed": self.seed,
            "intervals": {name: None if bounds is None else list(bounds)
                          for name, bounds in self.intervals().items()},
            "interval_note": self.interval_note(),
            "samples": {"names": list(self.names),
                        "values": [[float(v) if np.isfinite(v) else None for v in row] for row in self.values]},
        }


def bootstrap_isoflop(params: ArrayLike, losses: ArrayLike, budgets: ArrayLike, *,
                      n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, level: float = 0.95,
                      resample: str = "luck") -> Replicates:
    """Bootstrap approach 2's a, b and coefficients (`budgets` in FLOPs, one per run; see the module docstring)."""
    params = np.asarray(params, dtype=float)
    losses = np.asarray(losses, dtype=float)
    budgets = np.asarray(budgets, dtype=float)
    _check_choice("approach 2", resample, RESAMPLING)
    rng = _rng(seed, "approach2")
    count = _check_count(n_bootstraps)

    def refit(replicate_losses: np.ndarray, indices: np.ndarray | None = None) -> dict[str, float] | None:
        keep = slice(None) if indices is None else indices
        fit = fit_isoflop(params[keep], budgets[keep], replicate_losses[keep], budgets[keep],
                          skip_invalid_budgets=True, log_warnings=False)
        return _allocation_values(fit.params_law, fit.tokens_law)

    fallback = ""
    if resample == "luck":
        fitted, residuals = _parabola_residuals(params, losses, budgets)
        if residuals.size < 2:
            # Parabolas through 3 sizes fit exactly and leave no residuals to draw.
            resample, fallback = "runs", "no budget has more than 3 sizes, so runs were drawn instead: "
    if resample == "runs":
        strata = [np.flatnonzero(budgets == budget) for budget in np.unique(budgets)]
        draws = [np.concatenate([rng.choice(stratum, stratum.size) for stratum in strata]) for _ in range(count)]
        method = (f"{fallback}runs drawn with replacement within each IsoFLOP budget; parabolas and power laws "
                  "refitted; percentile intervals over replicates with at least 2 usable budgets")
        return _replicates(lambda indices: refit(losses, indices), draws, ALLOCATION_NAMES, level, seed, method)

    method = ("relative residuals of each budget's parabola in ln N, scaled by 1/sqrt(1 - leverage), drawn "
              "with replacement across budgets onto the parabolas; parabolas and power laws refitted; basic "
              "intervals (replicates reflected around the estimate) over replicates with at least 2 usable budgets")
    estimate = refit(losses)
    if estimate is None:
        return Replicates(ALLOCATION_NAMES, np.full((count, len(ALLOCATION_NAMES)), np.nan), level, seed,
                          f"{method}; no replicates: the fit has no power laws")
    rows = np.full((count, len(ALLOCATION_NAMES)), np.nan)
    for row in rows:
        values = _usable(refit, fitted * (1.0 + rng.choice(residuals, fitted.size)))
        if values is not None:
            row[:] = _reflect(values, estimate, estimate)
    return Replicates(ALLOCATION_NAMES, rows, level, seed, method)


def bootstrap_envelope(params: Sequence[float], curves: Sequence[Sequence[tuple[float, float]]], *,
                       n_bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, level: float = 0.95,
                       resample: str = "luck") -> Replicates:
    """Bootstrap approach 1's a, b and coefficients from learning curves [(tokens, loss), ...].

    See the module docstring for how luck and runs are drawn.
    """
    params = [float(n) for n in params]
    _check_choice("approach 1", resample, RESAMPLING)
    rng = _rng(seed, "approach1")
    count = _check_count(n_bootstraps)

    if resample == "runs":
        def refit(indices: np.ndarray) -> dict[str, float] | None:
            fit = _envelope_of(params, curves, indices)
            return None if fit is None else _allocation_values(fit.params_law, fit.tokens_law)

        draws = [rng.integers(0, len(params), len(params)) for _ in range(count)]
        method = ("runs drawn with replacement; envelope of the distinct runs drawn and its power laws refitted; "
                  "percentile intervals over replicates where at least 2 sizes win inside the size range")
        return _replicates(refit, draws, ALLOCATION_NAMES, level, seed, method)

    arrays = [np.array(curve, dtype=float).reshape(-1, 2) for curve in curves]
    method = ("each run's luck (median log-loss residual of the late half of its curve from an L(N, D) surface "
              "fitted to all curves) drawn with replacement onto the curves moved to the surface; envelope and "
              "power laws refitted; basic intervals (deviations from the answer without luck, subtracted from the "
              "estimate) over replicates where at least 2 sizes win inside the size range")
    estimate = _envelope_values(params, arrays, np.zeros(len(params)))
    luck = _run_luck(params, arrays)
    if estimate is None or luck is None:
        reason = "the fit has no power laws" if estimate is None else "too few curve points to fit a surface"
        return Replicates(ALLOCATION_NAMES, np.full((count, len(ALLOCATION_NAMES)), np.nan), level, seed,
                          f"{method}; no replicates: {reason}")
    without_luck = _envelope_values(params, arrays, -luck)
    reference = without_luck if without_luck is not None else estimate
    # Centred and scaled by sqrt(k / (k - 1)): the residuals of k runs spread less than their luck does.
    centred = (luck - luck.mean()) * np.sqrt(luck.size / (luck.size - 1))
    rows = np.full((count, len(ALLOCATION_NAMES)), np.nan)
    for row in rows:
        values = _usable(_envelope_values, params, arrays, rng.choice(centred, luck.size) - luck)
        if values is not None:
            row[:] = _reflect(values, estimate, reference)
    return Replicates(ALLOCATION_NAMES, rows, level, seed, method)


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
    return {name: replace(_replicates(refit, draws, KAPLAN_NAMES[name], level, seed, method),
                          no_interval=KAPLAN_NO_INTERVAL.get(name, {}))
            for name, refit in refits.items()}


def _replicates(refit: Callable[[np.ndarray], dict[str, float] | None], draws: list[np.ndarray],
                names: tuple[str, ...], level: float, seed: int, method: str) -> Replicates:
    rows = np.full((len(draws), len(names)), np.nan)
    for row, indices in zip(rows, draws):
        values = _usable(refit, np.asarray(indices))
        if values is not None:
            row[:] = [values[name] for name in names]
    return Replicates(names, rows, level, seed, method)


def _usable(refit: Callable[..., dict[str, float] | None], *args: Any) -> dict[str, float] | None:
    """Return one replicate's refit, or None when its arithmetic fails.

    The fits return None for data they cannot fit. This also covers a failure none of them foresaw: a least-
    squares solve that does not converge, or a value beyond a float. So one odd resample costs one
    replicate, counted as unusable, rather than the whole `scaling fit`.
    """
    try:
        return refit(*args)
    except (ArithmeticError, np.linalg.LinAlgError):
        return None


def _parabola_residuals(params: np.ndarray, losses: np.ndarray,
                        budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each run's value on its budget's parabola in ln N, and the pooled, centred relative residuals.

    A budget with 3 or fewer distinct sizes passes through its points exactly: its runs keep their losses and
    give no residuals. Each residual is divided by sqrt(1 - leverage), which undoes the shrinkage of a
    least-squares residual, so that replicates vary as much as the runs did.
    """
    fitted = losses.copy()
    residuals = []
    for budget in np.unique(budgets):
        rows = np.flatnonzero(budgets == budget)
        if np.unique(params[rows]).size <= 3:
            continue
        design = np.vander(np.log(params[rows]), 3)
        coefficients, *_ = np.linalg.lstsq(design, losses[rows], rcond=None)
        fitted[rows] = design @ coefficients
        leverage = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
        residuals.extend((losses[rows] - fitted[rows]) / fitted[rows] / np.sqrt(1.0 - leverage))
    residuals = np.array(residuals)
    return fitted, residuals - residuals.mean() if residuals.size else residuals


def _run_luck(params: list[float], curves: list[np.ndarray]) -> np.ndarray | None:
    """Return each run's luck: the median log-loss residual of its curve's late half from a fitted L(N, D)."""
    late = [curve[np.argsort(curve[:, 0])][curve.shape[0] // 2:] for curve in curves]
    points = [(n, tokens, loss) for n, half in zip(params, late) for tokens, loss in half if tokens > 0]
    if len(points) < 5 or min(half.shape[0] for half in late) < 1:
        return None
    sizes, tokens, losses = (np.array(column) for column in zip(*points))
    surface = fit_approach3(sizes, tokens, losses, options=Approach3Options(n_starts=SURFACE_STARTS)).law()
    return np.array([float(np.median(np.log(half[:, 1]) - np.log(surface.loss(n, half[:, 0]))))
                     for n, half in zip(params, late)])


def _envelope_values(params: list[float], curves: list[np.ndarray], shift: np.ndarray) -> dict[str, float] | None:
    """Return approach 1's allocation with each run's curve multiplied by exp(shift)."""
    moved = [np.column_stack([curve[:, 0], curve[:, 1] * np.exp(delta)]) for curve, delta in zip(curves, shift)]
    fit = fit_envelope(params, moved)
    return None if fit is None else _allocation_values(fit.params_law, fit.tokens_law)


def _reflect(replicate: dict[str, float], estimate: dict[str, float], reference: dict[str, float]) -> list[float]:
    """Return estimate - (replicate - reference) per value: exponents directly, coefficients in log space."""
    row = []
    for name in ALLOCATION_NAMES:
        if name.endswith("coefficient"):
            with np.errstate(over="ignore"):  # a reflection beyond a float is infinite: an unusable replicate
                row.append(float(np.exp(np.log(estimate[name]) - np.log(replicate[name]) + np.log(reference[name]))))
        else:
            row.append(estimate[name] - replicate[name] + reference[name])
    return row


def _check_choice(method: str, resample: str, choices: tuple[str, ...]) -> None:
    if resample not in choices:
        raise ValueError(f"{method} resample={resample!r}; use one of: {', '.join(choices)}")


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
