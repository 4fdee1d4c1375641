"""Bootstrap intervals of approach 3: published Chinchilla interval, solver agreement, reproducibility."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.ask import ask
from analysis.batched_newton import minimize_batch
from analysis.bootstrap import bootstrap_approach3, replicate_starts
from analysis.fit_parametric import Approach3Options, StartGrid, fit_approach3, huber_objective
from analysis.laws import ParametricLaw
from analysis.synthetic import law_losses

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
CHINCHILLA_CSV = SHARED / "data" / "chinchilla" / "chinchilla_approach3_epoch.csv"
LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)


def _chinchilla_points():
    if not CHINCHILLA_CSV.exists():
        pytest.skip(f"{CHINCHILLA_CSV} not available")
    with open(CHINCHILLA_CSV) as handle:
        rows = [row for row in csv.DictReader(handle) if row["epoch_excluded_outlier"] == "0"]
    return tuple(np.array([float(row[key]) for row in rows]) for key in ("params_N", "tokens_D", "loss"))


def _noisy_points(seed=3):
    params, tokens = np.meshgrid(np.geomspace(1e6, 3e8, 6), np.geomspace(2e7, 1e10, 6))
    params, tokens = params.ravel(), tokens.ravel()
    return params, tokens, law_losses(LAW, params, tokens, noise=0.01, seed=seed)


def test_chinchilla_alpha_interval_overlaps_published():
    points = _chinchilla_points()
    fit = fit_approach3(*points, options=Approach3Options(n_starts=243))
    result = bootstrap_approach3(*points, fit, n_bootstraps=200, seed=0)
    intervals = result.intervals()
    assert result.converged.sum() == 200
    low, high = intervals["alpha"]
    # The interval must overlap the replication's (0.317, 0.373).
    assert low < 0.373
    assert high > 0.317
    assert low < fit.alpha < high
    # The replication reports a = 0.513 with standard error 0.020 (4000 bootstraps of a likelihood fit).
    assert result.standard_errors()["a"] == pytest.approx(0.020, abs=0.005)


def test_newton_hessian_matches_finite_differences():
    params, tokens, losses = _noisy_points()
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(losses)
    from analysis.batched_newton import _Data, objective_gradient_hessian

    theta = np.array([[4.0, 5.5, 0.4, 0.32, 0.33]])
    scale = np.array([1.0])
    _, gradient, hessian = objective_gradient_hessian(theta, _Data(log_n, log_d, log_l, 1e-3, None, scale), None, scale)
    _, reference = huber_objective(theta[0], log_n, log_d, log_l, 1e-3)
    np.testing.assert_allclose(gradient[0], reference, rtol=1e-10, atol=1e-14)
    step = 1e-6
    for column in range(5):
        shift = np.zeros(5)
        shift[column] = step
        plus = huber_objective(theta[0] + shift, log_n, log_d, log_l, 1e-3)[1]
        minus = huber_objective(theta[0] - shift, log_n, log_d, log_l, 1e-3)[1]
        np.testing.assert_allclose(hessian[0, :, column], (plus - minus) / (2 * step), rtol=1e-4, atol=1e-7)


def test_newton_and_scipy_reach_same_fit():
    points = _noisy_points()
    # Two corners of the default grid that both reach the optimum; scipy needs about a second per start here.
    starts = np.array([[0.0, 25.0, 1.0, 1.0, 1.0], [25.0, 25.0, -1.0, 1.0, 1.0]])
    newton = fit_approach3(*points, starts=starts)
    scipy_fit = fit_approach3(*points, starts=starts, options=Approach3Options(solver="scipy"))
    assert newton.converged, newton.status
    assert scipy_fit.converged, scipy_fit.status
    assert newton.objective == pytest.approx(scipy_fit.objective, rel=1e-8)
    np.testing.assert_allclose(newton.theta, scipy_fit.theta, atol=1e-5)


def test_newton_batch_weights_match_repeated_points():
    params, tokens, losses = _noisy_points()
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(losses)
    counts = np.zeros(params.size)
    counts[:20] = 2.0
    start = StartGrid().points(1)
    weighted = minimize_batch(start, log_n, log_d, log_l, 1e-3, counts)
    repeated = minimize_batch(start, np.tile(log_n[:20], 2), np.tile(log_d[:20], 2), np.tile(log_l[:20], 2), 1e-3)
    np.testing.assert_allclose(weighted.theta, repeated.theta, atol=1e-6)


def test_bootstrap_reproducible_with_seed():
    points = _noisy_points()
    fit = fit_approach3(*points, options=Approach3Options(n_starts=32))
    first = bootstrap_approach3(*points, fit, n_bootstraps=20, seed=7)
    second = bootstrap_approach3(*points, fit, n_bootstraps=20, seed=7)
    other = bootstrap_approach3(*points, fit, n_bootstraps=20, seed=8)
    np.testing.assert_array_equal(first.samples, second.samples)
    assert not np.array_equal(first.samples, other.samples)


def test_bootstrap_solvers_agree():
    points = _noisy_points()
    fit = fit_approach3(*points, options=Approach3Options(n_starts=32))
    newton = bootstrap_approach3(*points, fit, n_bootstraps=4, seed=1)
    scipy_result = bootstrap_approach3(*points, fit, n_bootstraps=4, seed=1,
                                       options=Approach3Options(solver="scipy"))
    np.testing.assert_allclose(newton.samples, scipy_result.samples, atol=1e-4)


def test_interval_covers_truth_on_noisy_law():
    points = _noisy_points()
    fit = fit_approach3(*points, options=Approach3Options(n_starts=100))
    intervals = bootstrap_approach3(*points, fit, n_bootstraps=200, seed=0).intervals()
    assert intervals["alpha"][0] < 0.3 < intervals["alpha"][1]
    assert intervals["beta"][0] < 0.35 < intervals["beta"][1]


def test_replicate_starts_skip_poor_minima():
    fit = fit_approach3(*_noisy_points(), options=Approach3Options(n_starts=32))
    starts = replicate_starts(fit)
    assert starts.shape[1] == 5
    np.testing.assert_array_equal(starts[0], fit.theta)


def test_ask_interval_from_bootstrap():
    points = _noisy_points()
    fit = fit_approach3(*points, options=Approach3Options(n_starts=32))
    result = bootstrap_approach3(*points, fit, n_bootstraps=50, seed=0)
    record = {"approach3": fit.to_dict(), "convention": "total", "n_runs": 36, "bootstrap": result.to_dict()}
    row = ask("tokens for 7B", fit=json.loads(json.dumps(record))).rows[0]
    low, high = row["interval"]["tokens"]
    assert low < row["tokens"] < high
    assert row["interval"]["level"] == 0.95
    assert row["interval"]["replicates"] == 50


def test_fit_speed_json_keys():
    if not CHINCHILLA_CSV.exists():
        pytest.skip(f"{CHINCHILLA_CSV} not available")
    output = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fit_speed.py"), "--json", "--starts", "8", "--bootstraps", "3"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    record = json.loads(output)
    assert set(record) == {"points", "starts", "bootstraps", "seconds", "baseline_seconds", "ratio"}
    assert record["points"] == 240
    assert record["starts"] == 8
    assert record["bootstraps"] == 3
