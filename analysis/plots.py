"""PNG figures of a fit: IsoFLOP profiles, and loss against N and against D with the fitted law.

Figures are drawn with matplotlib's object API on an Agg canvas, so no global backend is switched and no
display is needed. Every figure names its parameter convention and units in its labels. The loss axis names
what the loss is (`loss_label`): a run's final validation loss in nats/token, or a CSV's loss column.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.fit_isoflop import IsoFlopFit, budget_counts
from analysis.laws import ParametricLaw

CONVENTION_LABELS = {
    "total": "total parameters, embeddings included",
    "non_embedding": "non-embedding parameters",
}
LOSS_LABEL = "final validation loss (nats/token)"
MAX_LEGEND_ENTRIES = 12  # beyond this a legend hides the data, so colours alone tell groups apart
# Colours of the published laws: none of the black, red and orange that draw the user's own fits.
# Blue and cyan are too alike for two dashed lines, so cyan comes last.
PUBLISHED_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:gray",
                     "tab:cyan")


def params_label(convention: str) -> str:
    return f"N ({CONVENTION_LABELS.get(convention, convention)})"


def plot_isoflop(fit: IsoFlopFit, path: Path, convention: str, loss_label: str = LOSS_LABEL) -> Path:
    """Draw each budget's losses against N with its parabola in ln N and the vertex; write `path`.

    Past MAX_LEGEND_ENTRIES budgets, or when budgets were skipped, a line counts the budgets as `scaling fit`
    prints them (fit_isoflop.budget_counts).
    """
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    colours = _colours(len(fit.profiles))
    for profile, colour in zip(fit.profiles, colours):
        params = np.array(profile.params)
        c2, c1, c0 = profile.coefficients
        dense = np.geomspace(params.min() / 1.3, params.max() * 1.3, 200)
        x = np.log(dense)
        edge = " (optimum at edge)" if profile.at_edge else ""
        axes.scatter(params, profile.losses, color=colour, s=18, label=f"C = {profile.flops:.2e} FLOPs{edge}")
        axes.plot(dense, c2 * x**2 + c1 * x + c0, color=colour, lw=1)
        # A vertex at the edge is drawn hollow: it stays out of the power laws. One far beyond the budget's
        # sizes is left out, because it would stretch the axis over decades without data.
        if not profile.at_edge or dense[0] <= profile.params_opt <= dense[-1]:
            axes.scatter([profile.params_opt], [profile.loss_opt], marker="*", s=90, edgecolor="black",
                         color="none" if profile.at_edge else colour)
    axes.set_xscale("log")
    axes.set_xlabel(params_label(convention))
    axes.set_ylabel(loss_label)
    # Two lines: in one, the title is wider than the 7-inch figure and its ends are cut off.
    axes.set_title("IsoFLOP profiles (C = 6ND): parabola in ln N per budget, star = N_opt(C)\n"
                   "hollow star: optimum at the edge, not fitted; left out when far beyond the sizes", fontsize=8)
    if len(fit.profiles) <= MAX_LEGEND_ENTRIES:
        axes.legend(fontsize=7)
    else:
        _budget_colourbar(figure, axes, [profile.flops for profile in fit.profiles], colours)
    if len(fit.profiles) > MAX_LEGEND_ENTRIES or fit.too_few_sizes or fit.no_minimum:
        counts = budget_counts(fit.to_dict()).replace("; ", ";\n")
        axes.text(0.99, 0.99, f"power laws over {counts}", transform=axes.transAxes, ha="right", va="top",
                  fontsize=7)
    return _save(figure, path)


def plot_loss_vs_params(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                        groups: Sequence[np.ndarray], path: Path, convention: str, along: str,
                        loss_label: str = LOSS_LABEL) -> Path:
    """Draw observed losses against N, with the law along each group's path; write `path`.

    `along` is "budget" (each group shares C, so D = C / (6N) on the curve) or "tokens" (each group
    shares D).
    """
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for indices, colour in zip(groups, _colours(len(groups))):
        n, d = params[indices], tokens[indices]
        dense = np.geomspace(n.min() / 1.3, n.max() * 1.3, 200)
        if along == "budget":
            flops = float(np.median(6 * n * d))
            curve_tokens = flops / (6 * dense)
            label = f"C = {flops:.2e} FLOPs"
        else:
            curve_tokens = np.full_like(dense, float(np.median(d)))
            label = f"D = {np.median(d):.2e} tokens"
        axes.scatter(n, losses[indices], color=colour, s=18, label=label)
        axes.plot(dense, law.loss(dense, curve_tokens), color=colour, lw=1)
    _finish_law_axes(axes, law, params_label(convention), "loss against N; lines: fitted L(N, D)", loss_label)
    return _save(figure, path)


def plot_loss_vs_tokens(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                        groups: Sequence[np.ndarray], path: Path, convention: str,
                        loss_label: str = LOSS_LABEL) -> Path:
    """Draw observed losses against D, one colour per model size, with the law at that size; write `path`."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for indices, colour in zip(groups, _colours(len(groups))):
        n, d = params[indices], tokens[indices]
        dense = np.geomspace(d.min() / 1.3, d.max() * 1.3, 200)
        axes.scatter(d, losses[indices], color=colour, s=18, label=f"N = {np.median(n):.3g}")
        axes.plot(dense, law.loss(np.full_like(dense, float(np.median(n))), dense), color=colour, lw=1)
    _finish_law_axes(axes, law, "D (tokens trained)", f"loss against D; N is {CONVENTION_LABELS.get(convention)}",
                     loss_label)
    return _save(figure, path)


def _finish_law_axes(axes, law: ParametricLaw, xlabel: str, title: str, loss_label: str) -> None:
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(loss_label)
    axes.set_title(
        f"{title}\nE={law.e_coef:.4g}, A={law.a_coef:.4g}, B={law.b_coef:.4g}, "
        f"alpha={law.alpha:.4g}, beta={law.beta:.4g}",
        fontsize=9,
    )
    if len(axes.get_legend_handles_labels()[0]) <= MAX_LEGEND_ENTRIES:
        axes.legend(fontsize=7)


def _budget_colourbar(figure: Figure, axes, budgets: Sequence[float], colours: list) -> None:
    """Add a colour bar naming the budget of each colour, for plots with too many budgets for a legend."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    count = len(budgets)
    bar = figure.colorbar(ScalarMappable(Normalize(-0.5, count - 0.5), ListedColormap(colours)), ax=axes)
    ticks = sorted({int(round(index)) for index in np.linspace(0, count - 1, min(count, 6))})
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{budgets[index]:.1e}" for index in ticks])
    bar.set_label("C (FLOPs), one colour per budget", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


MINOR_LABELS = (2, 5)  # on a log axis spanning about a decade, only these minor ticks are labelled


def _thin_minor_labels(axes) -> None:
    """Label only the 2x and 5x minor ticks of log axes spanning half a decade or more.

    matplotlib labels most minor ticks on an axis of about one decade, and at a figure's width their
    labels (3 x 10^10, 4 x 10^10) run into each other. Below half a decade every label is kept.
    """
    from matplotlib.ticker import FuncFormatter

    for axis, limits, scale in ((axes.xaxis, axes.get_xlim(), axes.get_xscale()),
                                (axes.yaxis, axes.get_ylim(), axes.get_yscale())):
        low, high = sorted(limits)
        if scale != "log" or not low > 0 or np.log10(high / low) < 0.5:
            continue

        def label(value: float, position=None) -> str:
            exponent = int(np.floor(np.log10(value) + 1e-9))
            mantissa = value / 10.0**exponent
            if round(mantissa) not in MINOR_LABELS or abs(mantissa - round(mantissa)) > 1e-6:
                return ""
            return f"${round(mantissa)}\\times10^{{{exponent}}}$"

        axis.set_minor_formatter(FuncFormatter(label))


def _save(figure: Figure, path: Path, tight_layout: bool = True) -> Path:
    """Write `figure` to `path` as PNG; `tight_layout` False keeps a layout set by hand (a legend beside the axes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    for axes in figure.axes:
        _thin_minor_labels(axes)
    if tight_layout:
        with warnings.catch_warnings():
            # A long legend can leave tight_layout without room; the figure is still complete, so it is saved.
            warnings.simplefilter("ignore", UserWarning)
            figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches=None if tight_layout else "tight")
    return path


def plot_loss_vs_flops(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                       path: Path, convention: str, loss_label: str = LOSS_LABEL) -> Path:
    """Draw observed losses against C = 6ND, coloured by N, with the law's compute-optimal loss; write `path`."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    flops = 6 * params * tokens
    points = axes.scatter(flops, losses, c=np.log10(params), cmap="viridis", s=18)
    figure.colorbar(points, ax=axes, label=f"log10 {params_label(convention)}")
    dense = np.geomspace(flops.min() / 1.3, flops.max() * 1.3, 200)
    optimal = [law.compute_optimal(c) for c in dense] if law.alpha > 0 and law.beta > 0 else []
    if optimal:
        axes.plot(dense, [law.loss(n, d) for n, d in optimal], color="black", lw=1,
                  label="fitted law at the compute-optimal N, D")
        axes.legend(fontsize=7)
    _finish_law_axes(axes, law, "C = 6ND (FLOPs)", "loss against compute", loss_label)
    return _save(figure, path)


def plot_frontier(law: ParametricLaw, bootstrap, approach2: IsoFlopFit | None, envelope, flops: np.ndarray,
                  path: Path, convention: str, approach2_replicates=None, approach1_replicates=None) -> Path:
    """Draw N_opt(C) and D_opt(C): each approach with its bootstrap band, and the published laws.

    `approach2_replicates` and `approach1_replicates` are `analysis.bootstrap_methods.Replicates` of the
    power laws N_opt = k C^a, D_opt = k' C^b; without them those approaches are drawn without a band.
    """
    from analysis.laws import all_laws

    figure = Figure(figsize=(13, 6.4))
    params_axes, tokens_axes = figure.subplots(1, 2)
    dense = np.geomspace(flops.min() / 10, 1e25, 200)
    if law.alpha > 0 and law.beta > 0:
        fitted = np.array([law.compute_optimal(c) for c in dense])
        params_axes.plot(dense, fitted[:, 0], color="black", lw=2, label="your fit (approach 3)")
        tokens_axes.plot(dense, fitted[:, 1], color="black", lw=2, label="your fit (approach 3)")
    band = _bootstrap_band(bootstrap, dense)
    if band is not None:
        params_axes.fill_between(dense, band[0], band[1], color="grey", alpha=0.3, label="approach 3 band (95%)")
        tokens_axes.fill_between(dense, band[2], band[3], color="grey", alpha=0.3, label="approach 3 band (95%)")
    if approach2 is not None:
        vertices = [p for p in approach2.profiles if not p.at_edge]
        params_axes.scatter([p.flops for p in vertices], [p.params_opt for p in vertices], color="tab:red",
                            marker="*", s=60, label="approach 2 vertices", zorder=3)
        tokens_axes.scatter([p.flops for p in vertices], [p.tokens_opt for p in vertices], color="tab:red",
                            marker="*", s=60, label="approach 2 vertices", zorder=3)
    for name, fit, replicates, colour in (("approach 2", approach2, approach2_replicates, "tab:red"),
                                          ("approach 1", envelope, approach1_replicates, "tab:orange")):
        if fit is None or fit.params_law is None:
            continue
        params_axes.plot(dense, fit.params_law(dense), color=colour, lw=1.5, label=f"{name} (yours)")
        tokens_axes.plot(dense, fit.tokens_law(dense), color=colour, lw=1.5, label=f"{name} (yours)")
        band = _allocation_band(replicates, dense)
        if band is not None:
            params_axes.fill_between(dense, band[0], band[1], color=colour, alpha=0.15, label=f"{name} band")
            tokens_axes.fill_between(dense, band[2], band[3], color=colour, alpha=0.15, label=f"{name} band")
    # Published laws in colours apart from the fits' black, red and orange, so no colour means two things.
    for published, shade in zip(all_laws(), itertools.cycle(PUBLISHED_COLOURS)):
        optimal = np.array([published.compute_optimal(c) for c in dense])
        label = published.name
        law_convention = getattr(published, "convention", "total")
        if law_convention != convention:
            # Converting needs each model's embedding size, which a published law does not give, so the label names it.
            label += f" (its N: {CONVENTION_LABELS.get(law_convention, law_convention)})"
        params_axes.plot(dense, optimal[:, 0], lw=0.9, ls="--", color=shade, label=label)
        tokens_axes.plot(dense, optimal[:, 1], lw=0.9, ls="--", color=shade, label=label)
    for axes, quantity in ((params_axes, f"N_opt ({CONVENTION_LABELS.get(convention, convention)})"),
                           (tokens_axes, "D_opt (tokens)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        _limit_to_lines(axes)
        axes.set_xlabel("C = 6ND (FLOPs)")
        axes.set_ylabel(quantity)
    params_axes.set_title("compute-optimal model size", fontsize=9)
    tokens_axes.set_title("compute-optimal tokens", fontsize=9)
    figure.suptitle("your fits solid, with their bootstrap bands; published laws dashed", fontsize=9)
    # Below the panels, not over them: the bands fill the upper left where a legend would sit, and beside
    # them the long names of the published laws took a third of the width.
    handles, labels = tokens_axes.get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
    figure.subplots_adjust(left=0.07, right=0.98, wspace=0.2, top=0.9, bottom=0.27)
    return _save(figure, path, tight_layout=False)


def plot_residuals(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray, path: Path,
                   convention: str, loss_label: str = LOSS_LABEL) -> Path:
    """Draw ln L - ln L_fit against C = 6ND, coloured by N; write `path`."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    residual = np.log(losses) - np.log(law.loss(params, tokens))
    points = axes.scatter(6 * params * tokens, residual, c=np.log10(params), cmap="viridis", s=18)
    figure.colorbar(points, ax=axes, label=f"log10 {params_label(convention)}")
    axes.axhline(0.0, color="black", lw=0.8)
    flops = 6 * params * tokens
    if flops.max() < 1.01 * flops.min():  # one budget: widen the axis, since a log axis cannot span one value
        axes.set_xlim(flops.min() / 2, flops.max() * 2)
    axes.set_xscale("log")
    axes.set_xlabel("C = 6ND (FLOPs)")
    axes.set_ylabel(f"ln L - ln L_fit, L = {loss_label}")
    axes.set_title("residuals of the approach 3 fit", fontsize=9)
    return _save(figure, path)


def _bootstrap_band(bootstrap, flops: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Return 2.5 and 97.5 percentiles of N_opt(C) and D_opt(C) over converged replicates, or None."""
    from analysis import allocation
    from analysis.bootstrap import too_few_replicates

    # The same rule as the intervals in fit.json: no band from a few surviving replicates.
    if bootstrap is None or too_few_replicates(int(bootstrap.converged.sum()), bootstrap.converged.size,
                                               level=bootstrap.level):
        return None

    params_rows, tokens_rows = [], []
    for log_a, log_b, _, alpha, beta in bootstrap.samples[bootstrap.converged]:
        if alpha <= 0 or beta <= 0:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            n_opt = allocation.optimal_params(flops, np.exp(log_a), np.exp(log_b), alpha, beta)
        if not np.all(np.isfinite(n_opt) & (n_opt > 0)):
            continue  # a replicate whose allocation overflows has no curve to draw
        params_rows.append(n_opt)
        tokens_rows.append(flops / (6 * n_opt))
    if too_few_replicates(len(params_rows), bootstrap.converged.size, level=bootstrap.level):
        return None
    params_rows, tokens_rows = np.array(params_rows), np.array(tokens_rows)
    tail = 100 * (1 - bootstrap.level) / 2
    return (np.percentile(params_rows, tail, axis=0), np.percentile(params_rows, 100 - tail, axis=0),
            np.percentile(tokens_rows, tail, axis=0), np.percentile(tokens_rows, 100 - tail, axis=0))


def _limit_to_lines(axes, margin: float = 30.0) -> None:
    """Set the y range to the drawn lines' range widened `margin` times, so a very wide band cannot squash them."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in axes.get_lines()] or [np.ones(1)])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        axes.set_ylim(values.min() / margin, values.max() * margin)


def _allocation_band(replicates, flops: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Return the percentile band of N_opt = k C^a and D_opt = k' C^b over valid replicates, or None."""
    if replicates is None or not replicates.enough:  # the rule of the intervals in fit.json
        return None
    columns = {name: replicates.values[replicates.valid, i] for i, name in enumerate(replicates.names)}
    params_rows = columns["params_coefficient"][:, None] * flops[None, :] ** columns["a"][:, None]
    tokens_rows = columns["tokens_coefficient"][:, None] * flops[None, :] ** columns["b"][:, None]
    tail = 100 * (1 - replicates.level) / 2
    return (np.percentile(params_rows, tail, axis=0), np.percentile(params_rows, 100 - tail, axis=0),
            np.percentile(tokens_rows, tail, axis=0), np.percentile(tokens_rows, 100 - tail, axis=0))
