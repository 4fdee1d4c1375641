"""Chinchilla approach 1: the minimum-loss envelope over learning curves (Hoffmann et al. 2022, section 3.1).

Every learning curve becomes loss as a function of compute C = 6 N D' (D' the tokens seen so far),
interpolated linearly in ln C. At each of `grid_points` log-spaced budgets, the run with the lowest loss
gives N_opt(C); the tokens it has seen at that budget give D_opt(C). Power laws N_opt = k C^a and
D_opt = k' C^b are then fitted in log space to the envelope.

The power laws use only budgets whose fitted N_opt(C) lies at least `edge_margin` times inside the sampled
sizes (iterated until the set of budgets stops changing). Noise in the runs' losses spreads the envelope's
winner over several neighbouring sizes. Near the smallest or largest size that spread is cut off on one
side, so the winners there lean inward and the fitted exponent comes out too flat. On curves from a known
law with 1% noise per run (13 sizes over 4 decades, 50 draws), the plain fit over every budget not won by an
edge size gave a = 0.498 for a true 0.538, a bias of 1.1 standard deviations; with a margin of 2 the bias
was 0.17 standard deviations, and the bootstrap intervals reached their nominal coverage.

Hoffmann et al. trained each size with 4 cosine cycle lengths so that some run was fully decayed near
every budget. A run here decays its learning rate only at its own end, so an intermediate point of its curve
is a model whose schedule had not finished. The envelope uses such points anyway, as approach 1 does, and
its method record states this. Approach 3 uses final losses only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from analysis.fit_isoflop import PowerLaw, fit_power_law

DEFAULT_GRID_POINTS = 200
DEFAULT_EDGE_MARGIN = 2.0  # fitted N_opt(C) must lie this many times inside the smallest and largest sizes
MAX_TRIM_PASSES = 10


@dataclass(frozen=True)
class EnvelopeFit:
    """The loss envelope over budgets and the power laws through it."""

    flops: tuple[float, ...]  # budgets C of the envelope, FLOPs
    params_opt: tuple[float, ...]  # N of the lowest-loss run at each budget
    tokens_opt: tuple[float, ...]  # tokens that run had seen at that budget
    loss: tuple[float, ...]  # envelope loss, nats/token
    interior: tuple[bool, ...]  # the budget is won by neither the smallest nor the largest size
    fitted: tuple[bool, ...]  # the budget entered the power laws (interior, and inside the edge margin)
    params_law: PowerLaw | None  # None when fewer than 2 interior sizes win, or no finite law fits them
    tokens_law: PowerLaw | None
    distinct_sizes: int  # sizes that win somewhere inside the size range
    budgets_fitted: int  # envelope budgets that entered the power laws
    edge_margin: float  # the margin the fitted budgets keep from the edge sizes; 1.0 when it could not be kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": {
                "name": "approach 1 (minimum over training curves)",
                "curves": "validation loss against C = 6 N D', interpolated linearly in ln C",
                "envelope": f"lowest loss over runs at {len(self.flops)} log-spaced budgets",
                "power_laws": "least squares of ln N_opt and ln D_opt on ln C, over the budgets won by "
                              "neither the smallest nor the largest size whose fitted N_opt lies at least "
                              f"{self.edge_margin:g} times inside the sampled sizes",
                "caveat": "intermediate curve points come from runs whose schedule ends later, unlike "
                          "Hoffmann et al.'s four cosine lengths per size",
            },
            "a": None if self.params_law is None else self.params_law.exponent,
            "params_coefficient": None if self.params_law is None else self.params_law.coefficient,
            "b": None if self.tokens_law is None else self.tokens_law.exponent,
            "tokens_coefficient": None if self.tokens_law is None else self.tokens_law.coefficient,
            "distinct_sizes_on_envelope": self.distinct_sizes,
            "budgets_fitted": self.budgets_fitted,
            "edge_margin": self.edge_margin,
            "note": self.note(),
            "envelope": {"flops": list(self.flops), "params_opt": list(self.params_opt),
                         "tokens_opt": list(self.tokens_opt), "loss": list(self.loss),
                         "interior": list(self.interior), "fitted": list(self.fitted)},
        }

    def note(self) -> str | None:
        """Return why there are no power laws, or None when there are."""
        if self.params_law is not None:
            return None
        if self.distinct_sizes < 2:
            return (f"{self.distinct_sizes} size(s) win inside the size range; the power laws need 2, so add model "
                    "sizes between the smallest and the largest")
        return ("no finite power law fits the envelope's budgets: they span too little compute for the "
                "change in the winning size, so the coefficient lies beyond floating point")

    def interior_frontier(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (budgets in FLOPs, envelope loss) where neither the smallest nor the largest size wins.

        Elsewhere the optimum may lie beyond the sampled sizes, so the envelope there is not the compute frontier.
        """
        keep = np.array(self.interior, dtype=bool)
        return np.array(self.flops)[keep], np.array(self.loss)[keep]


def fit_envelope(params: Sequence[float], curves: Sequence[Sequence[tuple[float, float]]],
                 grid_points: int = DEFAULT_GRID_POINTS,
                 edge_margin: float = DEFAULT_EDGE_MARGIN) -> EnvelopeFit | None:
    """Fit approach 1 to runs of `params` parameters with learning curves [(tokens, loss), ...].

    `edge_margin` >= 1 keeps the power laws to budgets whose fitted N_opt lies that factor inside the sampled
    sizes (1 turns the trimming off). When trimming would leave fewer than 2 winning sizes, the fit keeps
    every interior budget and records a margin of 1. Returns None when fewer than 2 runs have a curve of at
    least 2 points.
    """
    if edge_margin < 1:
        raise ValueError(f"edge_margin={edge_margin} must be >= 1")
    usable = [(float(n), np.array(curve, dtype=float)) for n, curve in zip(params, curves) if len(curve) >= 2]
    if len(usable) < 2:
        return None
    log_flops_curves = []
    for n, curve in usable:
        order = np.argsort(curve[:, 0])
        tokens, losses = curve[order, 0], curve[order, 1]
        keep = tokens > 0
        log_flops_curves.append((n, np.log(6.0 * n * tokens[keep]), tokens[keep], losses[keep]))

    low = min(curve[1][0] for curve in log_flops_curves)
    high = max(curve[1][-1] for curve in log_flops_curves)
    grid = np.linspace(low, high, grid_points)
    best_loss = np.full(grid.size, np.inf)
    best_params = np.full(grid.size, np.nan)
    best_tokens = np.full(grid.size, np.nan)
    for n, log_flops, tokens, losses in log_flops_curves:
        inside = (grid >= log_flops[0]) & (grid <= log_flops[-1])
        interpolated = np.interp(grid[inside], log_flops, losses)
        better = interpolated < best_loss[inside]
        rows = np.flatnonzero(inside)[better]
        best_loss[rows] = interpolated[better]
        best_params[rows] = n
        best_tokens[rows] = np.exp(grid[rows]) / (6.0 * n)

    covered = np.isfinite(best_loss)
    # Where the smallest or largest size wins, the optimum may lie beyond the sampled sizes, so those
    # budgets stay on the envelope but are left out of the power laws.
    smallest, largest = min(n for n, *_ in log_flops_curves), max(n for n, *_ in log_flops_curves)
    interior = covered & (best_params > smallest) & (best_params < largest)
    flops = np.exp(grid[covered])
    sizes = np.unique(best_params[interior]).size
    fitted, margin = interior, 1.0
    params_law = tokens_law = None
    if sizes >= 2:
        fitted, margin = _trim_to_margin(grid, best_params, interior, smallest, largest, edge_margin)
        params_law = fit_power_law(np.exp(grid[fitted]), best_params[fitted])
        tokens_law = fit_power_law(np.exp(grid[fitted]), best_tokens[fitted])
        if params_law is None or tokens_law is None:
            # Winners packed into a narrow span of budgets can give a slope so steep that the coefficient
            # leaves floating point. Such an envelope has no usable allocation, as with fewer than 2 sizes.
            params_law = tokens_law = None
    return EnvelopeFit(tuple(flops.tolist()), tuple(best_params[covered].tolist()),
                       tuple(best_tokens[covered].tolist()), tuple(best_loss[covered].tolist()),
                       tuple(interior[covered].tolist()), tuple(fitted[covered].tolist()), params_law, tokens_law,
                       sizes, int(fitted.sum()), margin)


def _trim_to_margin(log_flops: np.ndarray, best_params: np.ndarray, interior: np.ndarray, smallest: float,
                    largest: float, edge_margin: float) -> tuple[np.ndarray, float]:
    """Return the budgets whose fitted N_opt lies `edge_margin` times inside [smallest, largest], and the margin kept.

    Starts from every interior budget, fits ln N_opt on ln C, keeps the budgets whose prediction is inside
    the margin, and refits until the kept set repeats. Falls back to the interior budgets (margin 1) when
    fewer than 2 distinct sizes would remain.
    """
    fitted = interior
    if edge_margin == 1.0:
        return fitted, 1.0
    low, high = np.log(smallest * edge_margin), np.log(largest / edge_margin)
    for _ in range(MAX_TRIM_PASSES):
        slope, intercept = np.polyfit(log_flops[fitted], np.log(best_params[fitted]), 1)
        predicted = intercept + slope * log_flops
        inside = interior & (predicted >= low) & (predicted <= high)
        if np.unique(best_params[inside]).size < 2:
            return interior, 1.0
        if np.array_equal(inside, fitted):
            break
        fitted = inside
    return fitted, edge_margin
