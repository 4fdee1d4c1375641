"""Bootstrap intervals on points from a known law with 1% noise: coverage over repeated draws (slow)."""

import numpy as np
import pytest

from analysis.bootstrap import bootstrap_approach3
from analysis.fit_parametric import Approach3Options, fit_approach3
from analysis.laws import ParametricLaw
from analysis.synthetic import law_losses

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)
TRUTH = {"E": 1.5, "A": 60.0, "B": 300.0, "alpha": 0.3, "beta": 0.35, "a": 0.35 / 0.65, "b": 0.3 / 0.65}
REPEATS = 50


@pytest.mark.slow
def test_interval_coverage_over_repeats():
    params, tokens = np.meshgrid(np.geomspace(1e6, 3e8, 6), np.geomspace(2e7, 1e10, 6))
    params, tokens = params.ravel(), tokens.ravel()
    covered = {name: 0 for name in TRUTH}
    for repeat in range(REPEATS):
        losses = law_losses(LAW, params, tokens, noise=0.01, seed=1000 + repeat)
        fit = fit_approach3(params, tokens, losses, options=Approach3Options(n_starts=32))
        assert fit.converged, fit.status
        intervals = bootstrap_approach3(params, tokens, losses, fit, n_bootstraps=200, seed=repeat).intervals()
        for name, value in TRUTH.items():
            low, high = intervals[name]
            covered[name] += low <= value <= high
    for name, count in covered.items():
        # 95% intervals should cover the truth in 85% to 99% of the repeats.
        assert 0.85 * REPEATS <= count <= 0.99 * REPEATS, (name, count)
