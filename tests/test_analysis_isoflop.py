"""Approach 2: parabolas in ln N, edge warnings, errors naming the budget, budget grouping."""

import numpy as np
import pytest

from analysis import allocation
from analysis.fit_isoflop import fit_isoflop, fit_profile, group_by_budget
from analysis.laws import HOFFMANN_A3_PRINTED
from analysis.synthetic import isoflop_grid, law_losses
from scaling.errors import UserError

LAW = HOFFMANN_A3_PRINTED
BUDGETS = [1e17, 1e18, 1e19, 1e20, 1e21]


def _true_params_opt(flops: float) -> float:
    return float(allocation.optimal_params(flops, LAW.a_coef, LAW.b_coef, LAW.alpha, LAW.beta))


def _surface(span: float, sizes: int = 9):
    params, tokens, budgets = isoflop_grid(LAW, BUDGETS, sizes, span)
    return params, 6 * params * tokens, law_losses(LAW, params, tokens), budgets


def test_true_optimum_at_1e19():
    assert _true_params_opt(1e19) == pytest.approx(2.2796e8, rel=1e-4)


@pytest.mark.parametrize("span, ratio", [(4, 1.014), (16, 1.058)])
def test_vertex_bias_of_log_parabola(span, ratio):
    params, flops, losses, budgets = _surface(span)
    fit = fit_isoflop(params, flops, losses, budgets)
    assert len(fit.profiles) == 5
    for profile in fit.profiles:
        assert profile.params_opt / _true_params_opt(profile.flops) == pytest.approx(ratio, abs=1e-3)
        assert not profile.at_edge
    assert fit.params_law.exponent == pytest.approx(0.4516, abs=1e-4)
    assert fit.tokens_law.exponent == pytest.approx(1 - 0.4516, abs=1e-4)
    assert fit.warnings == ()


def test_linear_parabola_would_be_far_off():
    # The same points fitted in linear N put the vertex 1.8x (span 4) off: the fit must not do that.
    params, _, losses, _ = _surface(4)
    first = slice(0, 9)
    c2, c1, _ = np.polyfit(params[first], losses[first], 2)
    linear_ratio = (-c1 / (2 * c2)) / _true_params_opt(BUDGETS[0])
    assert linear_ratio == pytest.approx(1.80, abs=0.02)
    profile = fit_profile(BUDGETS[0], params[first], losses[first])
    assert profile.params_opt / _true_params_opt(BUDGETS[0]) == pytest.approx(1.014, abs=1e-3)


def test_one_sided_grid_flagged_at_edge():
    flops = 1e19
    sizes = _true_params_opt(flops) * np.geomspace(2, 32, 5)
    losses = LAW.loss(sizes, flops / (6 * sizes))
    profile = fit_profile(flops, sizes, losses)
    assert profile.at_edge


def test_edge_budget_left_out_of_power_law():
    params, flops, losses, budgets = _surface(4)
    shifted = _true_params_opt(1e21) * np.geomspace(2, 32, 5)
    params = np.concatenate([params[budgets != 1e21], shifted])
    losses = np.concatenate([losses[budgets != 1e21], LAW.loss(shifted, 1e21 / (6 * shifted))])
    labels = np.concatenate([budgets[budgets != 1e21], np.full(5, 1e21)])
    fit = fit_isoflop(params, 6 * params * (labels / (6 * params)), losses, labels)
    assert 1e21 not in fit.budgets_used
    assert any("optimum at edge" in warning and "1e+21" in warning for warning in fit.warnings)
    assert fit.params_law.exponent == pytest.approx(0.4516, abs=1e-4)


def test_two_sizes_is_an_error_naming_budget():
    with pytest.raises(UserError, match="1e\\+19"):
        fit_profile(1e19, [1e8, 2e8], [2.5, 2.4])


def test_two_sizes_in_fit_isoflop_is_an_error():
    params, flops, losses, budgets = _surface(4)
    keep = (budgets != 1e18) | (params < _true_params_opt(1e18) / 2)
    keep &= ~((budgets == 1e18) & (params < _true_params_opt(1e18) / 3))
    with pytest.raises(UserError, match="1e\\+18"):
        fit_isoflop(params[keep], flops[keep], losses[keep], budgets[keep])


def test_negative_curvature_is_an_error_naming_budget():
    with pytest.raises(UserError, match="1e\\+20.*curvature"):
        fit_profile(1e20, [1e8, 2e8, 4e8, 8e8], [2.0, 2.3, 2.4, 2.3])


def test_grouping_by_6nd_within_one_percent():
    flops = np.array([1e18, 1.004e18, 0.998e18, 1e19, 1.009e19, 5e19])
    groups = group_by_budget(flops)
    assert [indices.tolist() for _, indices in groups] == [[0, 1, 2], [3, 4], [5]]


def test_grouping_prefers_recorded_budget():
    flops = np.array([0.95e18, 1.05e18, 1.002e18, 3e18])
    groups = group_by_budget(flops, [1e18, 1e18, None, None])
    assert [budget for budget, _ in groups] == [1e18, 3e18]
    assert groups[0][1].tolist() == [0, 1, 2]
    assert groups[1][1].tolist() == [3]
