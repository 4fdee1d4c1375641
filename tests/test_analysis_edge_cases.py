"""Fits that must not crash on arithmetic, intervals that must not be reported from too few replicates,
the reason an IsoFLOP budget is flagged at its edge, and grouped-query rows that equal another variant."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import allocation
from analysis.ask import allocation_interval, ask
from analysis.bootstrap import BootstrapResult, min_usable_replicates
from analysis.bootstrap_methods import Replicates, bootstrap_isoflop, bootstrap_kaplan
from analysis.fit_envelope import fit_envelope
from analysis.fit_isoflop import fit_isoflop, fit_power_law
from analysis.fit_kaplan import fit_single_power_law
from analysis.fit_parametric import ParametricFit
from analysis.laws import ParametricLaw
from analysis.query import parse_query
from analysis.synthetic import isoflop_grid, law_losses
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)
NAMES = ("a", "params_coefficient", "b", "tokens_coefficient")


# Overflow in the fits ------------------------------------------------------------------------------------------


def test_power_law_overflow_is_none():
    # Two budgets 2% apart whose optima differ 2x: slope -28 and ln k of 750, beyond exp's range.
    assert fit_power_law([2.039e11, 2.088e11], [1.229e6, 6.293e5]) is None
    assert fit_power_law([1e18, 1e19], [1e8, math.inf]) is None
    assert fit_power_law([1e18, 1e18], [1e8, 2e8]) is None
    law = fit_power_law([1e18, 1e19, 1e20], [1e8, 3e8, 9e8])
    assert law.exponent == pytest.approx(math.log10(3))


def _narrow_winners(grid_points: int = 200) -> tuple[list[float], list[list[tuple[float, float]]]]:
    """Curves of 4 sizes where the 2 middle sizes each win at one of two neighbouring grid budgets only.

    Their N_opt (and D_opt) jumps 2x over one grid step of ln C, so the power law's slope is about 30 and
    its coefficient lies beyond floating point.
    """
    sizes = [1e6, 2e6, 4e6, 8e6]
    grid = np.linspace(math.log(1e19), math.log(1e21), grid_points)
    step = grid[1] - grid[0]
    curves = []
    for index, n in enumerate(sizes):
        if index in (1, 2):
            centre = grid[100 + index]
            log_flops = [grid[0], centre - step / 2, centre, centre + step / 2, grid[-1]]
            losses = [4.0, 4.0, 1.0, 4.0, 4.0]
        else:
            log_flops, losses = [grid[0], grid[-1]], [3.0, 3.0]
        curves.append([(math.exp(c) / (6 * n), loss) for c, loss in zip(log_flops, losses)])
    return sizes, curves


def test_envelope_overflow_has_note():
    sizes, curves = _narrow_winners()
    fit = fit_envelope(sizes, curves)
    assert fit.distinct_sizes == 2
    assert fit.params_law is None
    assert fit.tokens_law is None
    assert "floating point" in fit.to_dict()["note"]


def test_kaplan_bootstrap_survives_overflow():
    sizes, curves = _narrow_winners()
    tokens = [curve[-1][0] for curve in curves]
    losses = [curve[-1][1] for curve in curves]
    replicates = bootstrap_kaplan(sizes, tokens, losses, curves, n_bootstraps=20, seed=0)
    assert set(replicates) == {"L(N)", "L(N) with E", "L(D)", "L(C)"}


def test_isoflop_overflow_is_warning():
    # Two budgets 1% apart whose vertices differ 4x; each budget's parabola is centred on its vertex.
    params, losses, labels = [], [], []
    for flops, optimum in ((1.00e20, 1e8), (1.01e20, 4e8)):
        sizes = optimum * np.array([0.25, 0.5, 1.0, 2.0, 4.0])
        params.extend(sizes)
        losses.extend(2.0 + 0.05 * np.log(sizes / optimum) ** 2)
        labels.extend([flops] * sizes.size)
    fit = fit_isoflop(params, labels, losses, labels)
    assert fit.params_law is None
    assert fit.tokens_law is None
    assert any("beyond floating point" in warning for warning in fit.warnings)


def test_parametric_overflow_is_infinite():
    fit = ParametricFit(log_a=800.0, log_b=5.0, log_e=0.5, alpha=0.0, beta=0.0, objective=1.0, converged=False,
                        status="test", gradient_norm=1.0, n_points=5, n_starts=1, n_starts_at_best=1,
                        start=(0.0,) * 5, method={})
    values = fit.parameters()
    assert values["A"] == math.inf
    assert math.isnan(values["a"])
    assert allocation.allocation_constant(1e300, 1e-300, 0.01, 0.01) == math.inf
    steep = ParametricLaw("steep", "steep", "test", e_coef=1.0, a_coef=1.0, b_coef=1.0, alpha=50.0, beta=50.0)
    assert steep.loss(7e9, 1e11) == pytest.approx(1.0)


def test_kaplan_zero_scale_with_irreducible():
    # L = 0.1 x^-0.0001 puts x_c = exp(ln 0.1 / 0.0001) below the smallest float: the pure fit's scale is 0.
    x = np.array([1e6, 1e7, 1e8])
    assert fit_single_power_law(x, 0.1 * x**-0.0001, "params").scale == 0.0
    fit = fit_single_power_law(x, 0.1 * x**-0.0001, "params", irreducible=True)
    assert fit.irreducible == 0.0
    assert fit.exponent == pytest.approx(0.0001)


# Too few usable replicates --------------------------------------------------------------------------------------


def test_min_usable_replicates():
    # Half of the replicates, and at least 2 / (1 - level), so that a bound is not simply the extreme replicate.
    assert min_usable_replicates(200) == 100
    assert min_usable_replicates(60) == 40
    assert min_usable_replicates(3) == 40
    assert min_usable_replicates(60, level=0.9) == 30


def test_few_identical_replicates_give_no_interval():
    values = np.full((200, len(NAMES)), np.nan)
    values[:6] = [0.69, 4e-4, 0.31, 423.0]
    replicates = Replicates(NAMES, values, 0.95, 0, "test")
    assert replicates.intervals() == {name: None for name in NAMES}
    record = replicates.to_dict()
    assert record["intervals"] == {name: None for name in NAMES}
    assert "only 6 of 200" in record["interval_note"]


def test_agreeing_replicates_give_no_interval():
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.normal(0.5, 0.01, 150), rng.lognormal(0, 0.1, 150), np.full(150, 0.5),
                              rng.lognormal(0, 0.1, 150)])
    replicates = Replicates(NAMES, values, 0.95, 0, "test")
    intervals = replicates.intervals()
    assert intervals["b"] is None
    assert intervals["a"][0] < 0.5 < intervals["a"][1]
    assert "same b" in replicates.interval_note()


def test_approach3_needs_half_converged():
    samples = np.tile([5.0, 6.0, 0.5, 0.3, 0.3], (100, 1)) + np.linspace(0, 0.1, 100)[:, None]
    converged = np.array([True] * 45 + [False] * 55)
    result = BootstrapResult(samples, np.ones(100), converged, 0.95, 0, 1, "newton")
    assert all(bounds is None for bounds in result.intervals().values())
    assert "only 45 of 100 bootstrap replicates converged" in result.to_dict()["interval_note"]
    assert result.standard_errors() == {}


def test_isoflop_three_sizes_no_interval():
    # Drawing runs within 2 budgets of 3 sizes keeps all 3 sizes in both budgets about 1 time in 20.
    params, tokens, budgets = isoflop_grid(LAW, [1e18, 1e20], 3, 4.0)
    losses = law_losses(LAW, params, tokens, noise=0.01, seed=1)
    replicates = bootstrap_isoflop(params, losses, budgets, n_bootstraps=200, seed=0)
    assert replicates.valid.sum() < 100
    record = replicates.to_dict()
    assert all(bounds is None for bounds in record["intervals"].values())
    assert "of 200 bootstrap replicates could be fitted" in record["interval_note"]


def test_ask_few_replicates_no_interval():
    values = [[0.69, 4e-4, 0.31, 423.0]] * 6 + [[None] * 4] * 194
    record = {"approach2": {"bootstrap": {"level": 0.95, "samples": {"names": list(NAMES), "values": values}}}}
    interval = allocation_interval(record, "approach2", parse_query("tokens for 7B"))
    assert interval["tokens"] is None
    assert "only 6 of 200" in interval["note"]


# The reason for "optimum at edge" ---------------------------------------------------------------------------


def test_edge_warning_lowest_at_smallest():
    # In steps of ln 2 the parabola through (0, 1.0), (1, 1.01), (2, 1.5) has its vertex at 0.48, inside.
    sizes = 1e4 * np.array([1.0, 2.0, 4.0])
    fit = fit_isoflop(sizes, [1e15] * 3, [1.0, 1.01, 1.5], [1e15] * 3)
    [warning] = [w for w in fit.warnings if "optimum at edge" in w]
    assert "lowest loss at the smallest size 1e+04 of 1e+04..4e+04 parameters" in warning
    assert "lies inside that range" in warning
    assert "add sizes below 1e+04" in warning


def test_edge_warning_vertex_beyond_largest():
    sizes = 1e4 * np.array([1.0, 2.0, 4.0, 8.0])
    losses = 1.0 + 0.1 * (np.log(sizes / 2e5)) ** 2
    fit = fit_isoflop(sizes, [1e15] * 4, losses, [1e15] * 4)
    [warning] = [w for w in fit.warnings if "optimum at edge" in w]
    assert "lowest loss at the largest size 8e+04" in warning
    assert "parabola vertex 2e+05 above the largest size" in warning
    assert "add sizes above 8e+04" in warning


# Grouped-query rows that equal another variant -----------------------------------------------------------------


def test_gqa_all_heads_equals_mha():
    answer = ask("kv cache for 7B at 4096 tokens gqa 32")
    assert [(row["attention"], row["kv_heads"]) for row in answer.rows] == [("MHA", 32), ("GQA", 32), ("MQA", 1)]
    assert answer.rows[1]["bytes"] == answer.rows[0]["bytes"]
    assert any("equals multi-head" in note for note in answer.notes)


def test_gqa_one_equals_mqa():
    answer = ask("kv cache for 7B at 4096 tokens gqa 1")
    assert [(row["attention"], row["kv_heads"]) for row in answer.rows] == [("MHA", 32), ("GQA", 1), ("MQA", 1)]
    assert any("equals multi-query" in note for note in answer.notes)


def test_gqa_zero_is_a_user_error():
    with pytest.raises(UserError, match="gqa 0: .* so G must divide 32"):
        ask("kv cache for 7B at 4096 tokens gqa 0")


def test_prime_heads_note_missing_gqa():
    answer = ask("kv cache for 4 layers 7 heads 64 head dim at 512 tokens")
    assert [row["attention"] for row in answer.rows] == ["MHA", "MQA"]
    assert any("no grouped-query row" in note for note in answer.notes)
