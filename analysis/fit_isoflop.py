"""Chinchilla approach 2: IsoFLOP profiles (Hoffmann et al. 2022, arXiv:2203.15556, section 3.2).

At each FLOP budget C, the final loss of models of different sizes N (each trained on D = C / (6 N) tokens)
is fitted with a parabola in x = ln N; its vertex is N_opt(C). Then N_opt = k_N C^a and D_opt = k_D C^b are
fitted by least squares in log space across budgets.

The parabola is always in ln N, never in N, because sizes are log-spaced. On the surface of Hoffmann's
approach 3, a parabola in linear N puts the vertex 1.8x off the minimum for sizes spanning N_opt/4..4 N_opt,
and 4.9x off for N_opt/16..16 N_opt.

A vertex outside the sampled sizes, or a budget whose lowest loss is at its smallest or largest size, is
flagged "optimum at edge": the data do not bracket the minimum, so that budget is left out of the power law
unless the caller includes it on purpose.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from scaling.errors import UserError

logger = logging.getLogger(__name__)

BUDGET_MATCH_TOLERANCE = 0.01  # runs whose 6ND agree within 1% are taken to share a budget
MIN_SIZES_PER_BUDGET = 3
NAMED_BUDGETS = 8  # a warning about skipped budgets names this many, then gives the count of the rest


@dataclass(frozen=True)
class IsoFlopProfile:
    """One FLOP budget's parabola loss = c2 x^2 + c1 x + c0 in x = ln N, and its vertex."""

    flops: float  # budget C, FLOPs
    params: tuple[float, ...]  # sizes N (parameters), ascending
    losses: tuple[float, ...]  # final losses (nats/token), matching params
    coefficients: tuple[float, float, float]  # (c2, c1, c0)
    params_opt: float  # vertex N_opt(C), parameters
    tokens_opt: float  # D_opt(C) = C / (6 N_opt), tokens
    loss_opt: float  # parabola value at the vertex, nats/token
    at_edge: bool  # the vertex or the lowest sampled loss lies at or beyond the sampled sizes

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops, "params": list(self.params), "losses": list(self.losses),
            "coefficients_in_ln_params": list(self.coefficients), "params_opt": self.params_opt,
            "tokens_opt": self.tokens_opt, "loss_opt": self.loss_opt, "at_edge": self.at_edge,
        }


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent, fitted by least squares on (ln C, ln y)."""

    exponent: float
    coefficient: float

    def __call__(self, flops: ArrayLike) -> np.ndarray:
        return self.coefficient * np.asarray(flops, dtype=float) ** self.exponent


@dataclass(frozen=True)
class IsoFlopFit:
    """Result of approach 2: the per-budget profiles and the power laws through their vertices."""

    profiles: tuple[IsoFlopProfile, ...]
    params_law: PowerLaw | None  # N_opt(C); None when fewer than 2 budgets could be used or no law fits them
    tokens_law: PowerLaw | None  # D_opt(C)
    budgets_used: tuple[float, ...]
    warnings: tuple[str, ...]
    # Budgets with no profile, skipped with a warning (fit_isoflop's skip_invalid_budgets), in FLOPs:
    too_few_sizes: tuple[float, ...] = ()  # fewer than MIN_SIZES_PER_BUDGET distinct sizes
    no_minimum: tuple[float, ...] = ()  # a parabola with non-positive curvature

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": {
                "name": "approach 2 (IsoFLOP profiles)",
                "profile": "least-squares parabola of final loss in ln N per FLOP budget; vertex = N_opt(C)",
                "power_laws": "least squares of ln N_opt and ln D_opt on ln C over budgets not at an edge",
            },
            "a": None if self.params_law is None else self.params_law.exponent,
            "params_coefficient": None if self.params_law is None else self.params_law.coefficient,
            "b": None if self.tokens_law is None else self.tokens_law.exponent,
            "tokens_coefficient": None if self.tokens_law is None else self.tokens_law.coefficient,
            "budgets_used": list(self.budgets_used),
            "budgets_skipped": {"too_few_sizes": list(self.too_few_sizes), "no_minimum": list(self.no_minimum)},
            "profiles": [profile.to_dict() for profile in self.profiles],
            "warnings": list(self.warnings),
        }

    def budget_counts(self) -> str:
        """Return how many budgets the power laws use, of all budgets, and why the rest are left out."""
        return budget_counts(self.to_dict())


def budget_counts(fit: dict[str, Any]) -> str:
    """Return e.g. "5 of 158 budgets; left out: 8 with the optimum at an edge, ..." for an approach 2 record.

    `fit` is `IsoFlopFit.to_dict()` (fit.json's "approach2"). `scaling fit`'s approach 2 line and the IsoFLOP
    plot both print this, so the two count the same budgets. A record written before budgets_skipped existed
    counts only the budgets with a profile.
    """
    used = len(fit["budgets_used"])
    skipped = fit.get("budgets_skipped") or {}
    left_out = [(len(fit["profiles"]) - used, "with the optimum at an edge"),
                (len(skipped.get("no_minimum", [])), "whose parabola has no minimum"),
                (len(skipped.get("too_few_sizes", [])), f"with fewer than {MIN_SIZES_PER_BUDGET} sizes")]
    total = used + sum(count for count, _ in left_out)
    reasons = ", ".join(f"{count} {why}" for count, why in left_out if count)
    if not reasons:
        return f"{used} budget{'' if used == 1 else 's'}"
    return f"{used} of {total} budgets; left out: {reasons}"


def fit_profile(flops: float, params: ArrayLike, losses: ArrayLike) -> IsoFlopProfile:
    """Fit one budget's parabola in ln N; raise UserError naming the budget when it cannot have a minimum."""
    params = np.asarray(params, dtype=float)
    losses = np.asarray(losses, dtype=float)
    order = np.argsort(params)
    params, losses = params[order], losses[order]
    distinct = np.unique(params).size
    if distinct < MIN_SIZES_PER_BUDGET:
        raise UserError(
            f"IsoFLOP budget {flops:.3g} FLOPs has {distinct} distinct model size(s); a parabola needs at least "
            f"{MIN_SIZES_PER_BUDGET}: add sizes to this budget or leave it out of approach 2"
        )

    x = np.log(params)
    c2, c1, c0 = np.polyfit(x, losses, 2)
    if not c2 > 0:
        raise UserError(
            f"IsoFLOP budget {flops:.3g} FLOPs: the loss parabola in ln N has non-positive curvature ({c2:.3g}), "
            "so it has no minimum; widen the range of sizes around the expected optimum"
        )
    vertex = -c1 / (2 * c2)
    # Compared by size, not position: a bootstrap draw can repeat the smallest or largest size.
    lowest_at_end = params[int(np.argmin(losses))] in (params[0], params[-1])
    at_edge = bool(vertex <= x[0] or vertex >= x[-1] or lowest_at_end)
    with np.errstate(over="ignore"):
        # A nearly flat parabola can put its vertex far outside the sizes, where it is flagged at_edge.
        params_opt = float(np.exp(vertex))
    return IsoFlopProfile(
        flops=float(flops), params=tuple(params.tolist()), losses=tuple(losses.tolist()),
        coefficients=(float(c2), float(c1), float(c0)), params_opt=params_opt,
        tokens_opt=flops / (6.0 * params_opt) if params_opt > 0 else math.inf, loss_opt=float(c0 - c1**2 / (4 * c2)), at_edge=at_edge,
    )


def edge_reason(profile: IsoFlopProfile) -> str:
    """Return which test flagged a profile "optimum at edge", and which sizes to add.

    Either test can fire alone. The lowest loss may be at the smallest size while the parabola's vertex
    lies just inside it, so the message names the test (or both) that fired.
    """
    smallest, largest = profile.params[0], profile.params[-1]
    span = f"{smallest:.3g}..{largest:.3g} parameters"
    lowest = profile.params[int(np.argmin(profile.losses))]
    reasons, add = [], []
    if lowest in (smallest, largest):
        end = "smallest" if lowest == smallest else "largest"
        reasons.append(f"lowest loss at the {end} size {lowest:.3g} of {span}")
        add.append("below" if lowest == smallest else "above")
    if not smallest < profile.params_opt < largest:
        side = "below the smallest" if profile.params_opt <= smallest else "above the largest"
        reasons.append(f"parabola vertex {profile.params_opt:.3g} {side} size of {span}")
        add.append("below" if profile.params_opt <= smallest else "above")
    else:
        reasons.append(f"parabola vertex {profile.params_opt:.3g} lies inside that range")
    if not add:  # a vertex within rounding of an end size: flagged in ln N, inside after exp
        return f"{'; '.join(reasons)}; add sizes beyond {smallest:.3g} or {largest:.3g}"
    edge = smallest if add[0] == "below" else largest
    return f"{'; '.join(reasons)}; add sizes {add[0]} {edge:.3g}"


def group_by_budget(flops: ArrayLike, budgets: ArrayLike | None = None,
                    tolerance: float = BUDGET_MATCH_TOLERANCE) -> list[tuple[float, np.ndarray]]:
    """Group point indices by FLOP budget: return [(budget FLOPs, indices)] in ascending budget order.

    `budgets` contains each point's budget from its sweep spec (NaN or None where unknown). A point without
    one joins a recorded budget within `tolerance` (relative) of its own compute `flops` (6ND); the rest are
    grouped among themselves: sorted, a point joins the current group while it is within `tolerance` of that
    group's smallest member, and the group's budget is its median.
    """
    flops = np.asarray(flops, dtype=float)
    labels = np.full(flops.shape, np.nan) if budgets is None else np.array(
        [np.nan if b is None else float(b) for b in np.asarray(budgets, dtype=object)], dtype=float)
    groups: dict[float, list[int]] = {}
    for index in np.flatnonzero(~np.isnan(labels)):
        groups.setdefault(float(labels[index]), []).append(int(index))

    unlabelled = []
    for index in np.flatnonzero(np.isnan(labels)):
        near = [budget for budget in groups if abs(flops[index] - budget) <= tolerance * budget]
        if near:
            groups[min(near, key=lambda budget: abs(flops[index] - budget))].append(int(index))
        else:
            unlabelled.append(int(index))
    unlabelled = np.array(unlabelled, dtype=int)
    current: list[int] = []
    for index in unlabelled[np.argsort(flops[unlabelled])]:
        if current and flops[index] > flops[current[0]] * (1 + tolerance):
            groups.setdefault(float(np.median(flops[current])), []).extend(current)
            current = []
        current.append(int(index))
    if current:
        groups.setdefault(float(np.median(flops[current])), []).extend(current)
    return [(budget, np.array(sorted(indices))) for budget, indices in sorted(groups.items())]


def fit_isoflop(params: ArrayLike, flops: ArrayLike, losses: ArrayLike, budgets: ArrayLike | None = None, *,
                include_edge_budgets: bool = False, skip_invalid_budgets: bool = False,
                log_warnings: bool = True) -> IsoFlopFit:
    """Fit approach 2: one parabola per budget, then power laws through the vertices.

    `flops` are each point's compute (6ND, FLOPs), used to group points when `budgets` is not given.
    A budget with fewer than 3 sizes, or whose parabola has non-positive curvature, raises UserError naming
    it, or is skipped with a warning naming it when `skip_invalid_budgets`. A budget flagged "optimum at edge" is kept in the profiles but left out of the
    power laws unless `include_edge_budgets`. `log_warnings` False keeps the warnings in the result only
    (bootstrap replicates refit hundreds of times).
    """
    params = np.asarray(params, dtype=float)
    losses = np.asarray(losses, dtype=float)
    warnings: list[str] = []
    profiles: list[IsoFlopProfile] = []
    too_small: list[float] = []
    no_minimum: list[float] = []
    for budget, indices in group_by_budget(flops, budgets):
        if skip_invalid_budgets and np.unique(params[indices]).size < MIN_SIZES_PER_BUDGET:
            too_small.append(budget)
            continue
        try:
            profile = fit_profile(budget, params[indices], losses[indices])
        except UserError as error:
            if not skip_invalid_budgets:
                raise
            warnings.append(f"skipped: {error}")
            no_minimum.append(budget)  # the size count was checked above, so only the curvature fails here
            continue
        if profile.at_edge:
            warnings.append(f"budget {budget:.3g} FLOPs: optimum at edge of the sampled sizes: {edge_reason(profile)}")
        profiles.append(profile)

    if too_small:
        listed = ", ".join(f"{budget:.3g}" for budget in too_small[:NAMED_BUDGETS])
        more = f" and {len(too_small) - NAMED_BUDGETS} more" if len(too_small) > NAMED_BUDGETS else ""
        warnings.append(f"{len(too_small)} budget(s) skipped with fewer than {MIN_SIZES_PER_BUDGET} sizes: "
                        f"{listed} FLOPs{more}")
    used = [p for p in profiles if include_edge_budgets or not p.at_edge]
    params_law = tokens_law = None
    if len(used) >= 2:
        budget_flops = np.array([p.flops for p in used])
        params_law = fit_power_law(budget_flops, [p.params_opt for p in used])
        tokens_law = fit_power_law(budget_flops, [p.tokens_opt for p in used])
        if params_law is None or tokens_law is None:
            # The two laws describe one allocation (D_opt = C / 6 N_opt): without one the other is not reported.
            params_law = tokens_law = None
            warnings.append(f"approach 2 power laws could not be fitted through the vertices of {len(used)} "
                            "budgets: their coefficient lies beyond floating point or a vertex is not finite; "
                            "add budgets spread further apart")
    else:
        warnings.append(f"its power laws need 2 usable budgets, found {len(used)}")
    for message in warnings if log_warnings else ():
        logger.warning("approach 2: %s", message)
    return IsoFlopFit(tuple(profiles), params_law, tokens_law, tuple(p.flops for p in used), tuple(warnings),
                      tuple(too_small), tuple(no_minimum))


def fit_power_law(flops: ArrayLike, values: ArrayLike) -> PowerLaw | None:
    """Fit values = k C^e by least squares on (ln C, ln values); return None when no such law can be stated.

    That happens when a value is not a positive finite number, when fewer than 2 distinct budgets remain, or
    when k lies beyond the range of a float. Budgets close together with very different optima give a slope
    of tens and ln k of hundreds. No caller can use such a law, so callers treat None as "no law".
    """
    flops = np.asarray(flops, dtype=float)
    values = np.asarray(values, dtype=float)
    usable = np.all(np.isfinite(flops) & np.isfinite(values) & (flops > 0) & (values > 0))
    if not usable or np.unique(flops).size < 2:
        return None
    exponent, intercept = np.polyfit(np.log(flops), np.log(values), 1)
    if not (math.isfinite(exponent) and math.isfinite(intercept)):
        return None
    tiniest, largest = np.finfo(float).tiny, np.finfo(float).max
    if not math.log(tiniest) < intercept < math.log(largest):
        return None
    return PowerLaw(float(exponent), float(math.exp(intercept)))
