"""Approach 1, Kaplan-style fits, the extrapolation check and CSV points, on known laws and published data."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from analysis import cli
from analysis.csv_points import load_csv, parse_columns
from analysis.extrapolation import SAME_BUDGET_FACTOR, extrapolation_check
from analysis.fit_envelope import fit_envelope
from analysis.fit import fit_runs
from analysis.fit_kaplan import fit_kaplan, fit_single_power_law, other_term_share
from analysis.fit_parametric import Approach3Options
from analysis.laws import ParametricLaw
from analysis.synthetic import isoflop_grid, law_losses
from scaling.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHINCHILLA_CSV = SHARED / "data" / "chinchilla" / "chinchilla_approach3_epoch.csv"
LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)


def test_envelope_tracks_law_allocation():
    # Curves that follow the law at every point: the envelope's N_opt(C) follows G (C/6)^(beta/(alpha+beta)).
    sizes = np.geomspace(1e5, 1e9, 41)
    curves = []
    for n in sizes:
        seen = np.geomspace(1e6, 1e12, 60)
        curves.append(list(zip(seen, LAW.loss(n, seen))))
    fit = fit_envelope(sizes, curves, grid_points=200)
    exponent = LAW.beta / (LAW.alpha + LAW.beta)
    assert fit.params_law.exponent == pytest.approx(exponent, abs=0.01)
    assert fit.tokens_law.exponent == pytest.approx(1 - exponent, abs=0.01)
    flops = 1e18
    assert fit.params_law(flops) == pytest.approx(LAW.compute_optimal(flops)[0], rel=0.15)


def noisy_curves(sizes: np.ndarray, seed: int) -> list[list[tuple[float, float]]]:
    """Curves on the law, each scaled by one draw of 1% noise (a run's luck)."""
    rng = np.random.default_rng(seed)
    seen = np.geomspace(1e6, 1e12, 60)
    return [list(zip(seen, LAW.loss(n, seen) * np.exp(0.01 * rng.standard_normal()))) for n in sizes]


def test_edge_margin_removes_bias():
    # Noise spreads the envelope's winner over neighbouring sizes; near the smallest and largest size the
    # spread is cut off on one side. Over 50 draws, without the margin the mean estimate of a was 1.1
    # standard deviations below the truth, with it 0.13.
    sizes = np.geomspace(1e5, 1e9, 13)
    truth = LAW.beta / (LAW.alpha + LAW.beta)
    estimates = {margin: [] for margin in (1.0, 2.0)}
    for seed in range(50):
        curves = noisy_curves(sizes, 1000 + seed)
        for margin, found in estimates.items():
            found.append(fit_envelope(sizes, curves, edge_margin=margin).params_law.exponent)
    bias = {margin: (np.mean(found) - truth) / np.std(found, ddof=1) for margin, found in estimates.items()}
    assert bias[1.0] < -0.8, bias
    assert abs(bias[2.0]) < 0.4, bias


def test_edge_margin_recorded_and_fallback():
    sizes = np.geomspace(1e5, 1e9, 13)
    fit = fit_envelope(sizes, noisy_curves(sizes, 0))
    record = fit.to_dict()
    assert record["edge_margin"] == 2.0
    fitted, interior = record["envelope"]["fitted"], record["envelope"]["interior"]
    assert sum(fitted) == record["budgets_fitted"] < sum(interior)
    assert all(inside for inside, used in zip(interior, fitted) if used)
    # Five sizes a factor 2 apart: a margin of 4 would leave one size, so every interior budget is used.
    few = np.geomspace(1e7, 1.6e8, 5)
    fit = fit_envelope(few, noisy_curves(few, 0), edge_margin=4.0)
    assert fit.params_law is not None
    assert fit.edge_margin == 1.0
    assert fit.budgets_fitted == sum(fit.interior)
    with pytest.raises(ValueError, match="edge_margin=0.5"):
        fit_envelope(few, noisy_curves(few, 0), edge_margin=0.5)


def test_envelope_needs_two_curves():
    assert fit_envelope([1e6], [[(1e6, 3.0), (2e6, 2.9)]]) is None
    assert fit_envelope([1e6, 2e6], [[(1e6, 3.0)], [(1e6, 2.9)]]) is None


def test_single_power_law_recovered():
    sizes = np.geomspace(1e6, 1e10, 9)
    fit = fit_single_power_law(sizes, (8.8e13 / sizes) ** 0.076, "params")
    assert fit.exponent == pytest.approx(0.076, rel=1e-9)
    assert fit.scale == pytest.approx(8.8e13, rel=1e-6)
    assert fit.irreducible == 0.0


def test_power_law_with_irreducible_recovered():
    sizes = np.geomspace(1e6, 1e10, 12)
    fit = fit_single_power_law(sizes, 1.7 + (1e7 / sizes) ** 0.3, "params", irreducible=True)
    assert fit.irreducible == pytest.approx(1.7, rel=1e-5)
    assert fit.exponent == pytest.approx(0.3, rel=1e-5)
    assert fit.scale == pytest.approx(1e7, rel=1e-4)


def test_kaplan_fits_use_lowest_loss_per_size():
    params = np.array([1e6, 1e6, 1e7, 1e7, 1e8, 1e8])
    tokens = np.array([1e7, 1e8, 1e7, 1e8, 1e7, 1e8])
    losses = np.array([3.0, 2.8, 2.7, 2.5, 2.6, 2.3])
    record = fit_kaplan(params, tokens, losses)
    assert record["fits"]["L(N)"]["points"] == 3
    assert record["fits"]["L(D)"]["points"] == 2
    assert record["fits"]["L(C)"] is None


def test_other_term_share_tells_converged_from_isoflop_points():
    """Sizes trained on 1e4 tokens per parameter are near L(N)'s limit; an IsoFLOP grid's best runs are not."""
    sizes = np.geomspace(1e6, 1e9, 6)
    converged = other_term_share(LAW, sizes, 1e4 * sizes, law_losses(LAW, sizes, 1e4 * sizes))
    assert converged["L(N)"] < 0.1  # well below the 0.25 at which the fit warns

    params, tokens, _ = isoflop_grid(LAW, [1e17, 1e18, 1e19], 7, 8)
    isoflop = other_term_share(LAW, params, tokens, law_losses(LAW, params, tokens))
    assert 0.25 < isoflop["L(N)"] < 0.75  # near each budget's optimum the two terms are of one size
    assert 0.25 < isoflop["L(D)"] < 0.75


def test_kaplan_fit_on_isoflop_grid_warns(tmp_path, caplog):
    params, tokens, _ = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    lines = ["N,D,loss"] + [f"{n!r},{d!r},{loss!r}" for n, d, loss in
                            zip(params.tolist(), tokens.tolist(), law_losses(LAW, params, tokens).tolist())]
    (tmp_path / "grid.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        record = fit_runs(tmp_path / "grid.csv", tmp_path / "out", columns="N=N,D=D,L=loss", starts=16,
                          bootstraps=0, plot=False)
    assert set(record["kaplan"]["other_term_share"]) == {"L(N)", "L(D)"}
    text = " ".join(caplog.text.split())
    assert "Kaplan-style L(N): by the approach 3 fit, finite data accounts for a median" in text
    assert "not comparable with Kaplan et al.'s 0.076, which holds for models trained to convergence" in text
    assert "Kaplan-style L(D): by the approach 3 fit, finite model size accounts for" in text


def test_extrapolation_noise_free_is_exact():
    params, tokens = np.meshgrid(np.geomspace(1e6, 3e8, 6), np.geomspace(2e7, 1e10, 5))
    params, tokens = params.ravel(), tokens.ravel()
    losses = law_losses(LAW, params, tokens)
    record = extrapolation_check(params, tokens, losses, [f"r{i}" for i in range(params.size)],
                                 Approach3Options(n_starts=32))
    top_three = np.sort(6 * params * tokens)[-3:]
    assert len(record["held_out"]) >= 3
    assert record["max_abs_relative_error"] < 1e-6
    held_flops = min(run["flops"] for run in record["held_out"])
    assert held_flops >= record["largest_fitted_flops"]
    assert record["largest_fitted_flops"] * SAME_BUDGET_FACTOR < top_three[0]


def test_extrapolation_holds_out_whole_budget():
    # An IsoFLOP grid: 3 budgets of 5 sizes, tokens rounded as whole batches would round them.
    budgets = np.repeat([1e17, 1e18, 1e19], 5)
    params = np.tile(np.geomspace(1e7, 1e8, 5), 3) * np.repeat([1.0, 2.0, 4.0], 5)
    tokens = np.floor(budgets / (6 * params) / 2048) * 2048
    losses = law_losses(LAW, params, tokens)
    record = extrapolation_check(params, tokens, losses, [f"r{i}" for i in range(params.size)],
                                 Approach3Options(n_starts=32))
    assert sorted(run["run_id"] for run in record["held_out"]) == sorted(f"r{i}" for i in range(10, 15))
    assert record["largest_fitted_flops"] < 1.1e18


def test_extrapolation_skipped_with_few_runs():
    record = extrapolation_check([1e6, 2e6, 3e6, 4e6, 5e6], [1e7] * 5, [3.0] * 5, list("abcde"))
    assert "fewer than 5" in record["skipped"]


def test_csv_columns_parse_and_reject():
    assert parse_columns("N=params, D=tokens, L=loss") == {"N": "params", "D": "tokens", "L": "loss"}
    with pytest.raises(UserError, match="two of N, D, C"):
        parse_columns("N=params,L=loss")
    with pytest.raises(UserError, match="QUANTITY=COLUMN"):
        parse_columns("X=params,D=tokens,L=loss")
    with pytest.raises(UserError, match="reads both N and D from column 'params'"):
        parse_columns("N=params,D=params,L=loss")
    with pytest.raises(UserError, match="reads both D and L from column 'tokens'"):
        parse_columns("N=params,D=tokens,L=tokens")
    assert parse_columns("N=params,D=tokens,L=loss,id=params")["id"] == "params"  # a label may repeat a number


def test_csv_missing_default_columns_suggest_the_option(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("params,tokens,val_loss\n1000000,1e7,3.1\n")
    with pytest.raises(UserError, match="the header has: params, tokens, val_loss; name the header's columns with "
                                        "--columns"):
        load_csv(path)
    with pytest.raises(UserError, match="val_loss$"):  # a mapping the user typed is not second-guessed
        load_csv(path, "N=params,D=tokens,L=loss")


def test_csv_derives_tokens_from_flops(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("n,c,loss,name\n1000000,6e13,3.1,a\n2000000,2.4e14,2.9,b\n")
    table = load_csv(path, "N=n,C=c,L=loss,id=name")
    assert [row.run_id for row in table.rows] == ["a", "b"]
    assert table.rows[0].tokens == pytest.approx(1e7)
    assert table.rows[1].tokens == pytest.approx(2e7)
    assert table.rows[0].final_loss == 3.1


def test_csv_errors_name_the_problem(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("n,d,loss\n1000000,1e7,abc\n")
    with pytest.raises(UserError, match="not found.*header"):
        load_csv(path, "N=params,D=d,L=loss")
    with pytest.raises(UserError, match="line 2.*'abc'"):
        load_csv(path, "N=n,D=d,L=loss")
    with pytest.raises(UserError, match="no rows left"):
        load_csv(path, "N=n,D=d,L=loss", ["n=5"])
    with pytest.raises(UserError, match="not found"):
        load_csv(tmp_path / "missing.csv", "N=n,D=d,L=loss")


def test_chinchilla_csv_through_cli(tmp_path, capsys):
    if not CHINCHILLA_CSV.exists():
        pytest.skip(f"{CHINCHILLA_CSV} not available")
    parser = argparse.ArgumentParser(prog="scaling")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "fit", str(CHINCHILLA_CSV), "--columns", "N=params_N,D=tokens_D,L=loss", "--where",
        "epoch_excluded_outlier=0", "--out", str(tmp_path), "--starts", "100", "--bootstraps", "0",
        "--method", "extrapolation", "--json",
    ])
    assert args.handler(args) == 0
    record = json.loads(capsys.readouterr().out)
    values = record["approach3"]["parameters"]
    assert record["n_runs"] == 240
    for name, expected in {"A": 477.84, "B": 2143.86, "E": 1.8172, "alpha": 0.34731, "beta": 0.36718}.items():
        assert values[name] == pytest.approx(expected, rel=0.01), name
    assert record["approach3"]["objective"] == pytest.approx(0.00101827, rel=1e-4)
    held_out = record["extrapolation"]["held_out"]
    assert len(held_out) >= 24  # the top 10% of 240, and the runs just below them in compute
    top_24 = sorted(run["flops"] for run in held_out)[-24:]
    assert record["extrapolation"]["largest_fitted_flops"] * SAME_BUDGET_FACTOR < top_24[0]
