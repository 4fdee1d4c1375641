"""PNG figures of a fit: IsoFLOP profiles, and loss against N and against D with the fitted law.

Figures are drawn with matplotlib's object API on an Agg canvas, so no global backend is switched and no
display is needed. Every figure names its parameter convention and units in its labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.fit_isoflop import IsoFlopFit
from analysis.laws import ParametricLaw

CONVENTION_LABELS = {
    "total": "total parameters, embeddings included",
    "non_embedding": "non-embedding parameters",
}
LOSS_LABEL = "final validation loss (nats/token)"


def params_label(convention: str) -> str:
    return f"N ({CONVENTION_LABELS.get(convention, convention)})"


def plot_isoflop(fit: IsoFlopFit, path: Path, convention: str) -> Path:
    """Draw each budget's losses against N with its parabola in ln N and the vertex; write `path`."""
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
        axes.scatter([profile.params_opt], [profile.loss_opt], color=colour, marker="*", s=90, edgecolor="black")
    axes.set_xscale("log")
    axes.set_xlabel(params_label(convention))
    axes.set_ylabel(LOSS_LABEL)
    axes.set_title("IsoFLOP profiles: parabola in ln N per budget, star = N_opt(C); C = 6ND")
    axes.legend(fontsize=7)
    return _save(figure, path)


def plot_loss_vs_params(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                        groups: Sequence[np.ndarray], path: Path, convention: str, along: str) -> Path:
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
    _finish_law_axes(axes, law, params_label(convention), "loss against N; lines: fitted L(N, D)")
    return _save(figure, path)


def plot_loss_vs_tokens(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                        groups: Sequence[np.ndarray], path: Path, convention: str) -> Path:
    """Draw observed losses against D, one colour per model size, with the law at that size; write `path`."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for indices, colour in zip(groups, _colours(len(groups))):
        n, d = params[indices], tokens[indices]
        dense = np.geomspace(d.min() / 1.3, d.max() * 1.3, 200)
        axes.scatter(d, losses[indices], color=colour, s=18, label=f"N = {np.median(n):.3g}")
        axes.plot(dense, law.loss(np.full_like(dense, float(np.median(n))), dense), color=colour, lw=1)
    _finish_law_axes(axes, law, "D (tokens trained)", f"loss against D; N is {CONVENTION_LABELS.get(convention)}")
    return _save(figure, path)


def _finish_law_axes(axes, law: ParametricLaw, xlabel: str, title: str) -> None:
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(LOSS_LABEL)
    axes.set_title(
        f"{title}\nE={law.e_coef:.4g}, A={law.a_coef:.4g}, B={law.b_coef:.4g}, "
        f"alpha={law.alpha:.4g}, beta={law.beta:.4g}",
        fontsize=9,
    )
    axes.legend(fontsize=7)


def _colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
