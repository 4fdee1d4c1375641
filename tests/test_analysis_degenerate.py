"""Fits of awkward data: CSV rows that are short, blank or repeated, and runs that share one compute budget.

Such data must give a clear error or warning naming the line or the cause, valid JSON (no NaN or Infinity),
and `ask` rows whose intervals say "unbounded" instead of crashing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from analysis import cli
from analysis.ask import ask, bootstrap_interval
from analysis.bootstrap import percentile
from analysis.csv_points import load_csv
from analysis.fit import fit_runs
from analysis.laws import ParametricLaw
from analysis.query import parse_query
from analysis.synthetic import law_losses
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.69, a_coef=406.4, b_coef=410.7, alpha=0.34, beta=0.28)


def strict_json(text: str):
    """Parse `text` as JSON, raising on NaN and Infinity, which json.loads would otherwise accept."""
    def reject(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_short_row_is_an_error_naming_its_line(tmp_path):
    path = write_csv(tmp_path / "short.csv", ["N,D,loss", "1e8,2e9,3.1", "2e8,1e9"])
    with pytest.raises(UserError, match=r"line 3: 2 field\(s\) where the header has 3"):
        load_csv(path, "N=N,D=D,L=loss")


def test_empty_csv_says_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(UserError, match="empty.csv is empty; it needs a header line"):
        load_csv(path, "N=N,D=D,L=loss")


def test_errors_and_ids_name_file_lines(tmp_path):
    lines = ["N,D,loss,keep", "1e8,2e9,3.1,0", "", "2e8,1e9,3.0,1", "3e8,1e9,2.9,1"]
    table = load_csv(write_csv(tmp_path / "ok.csv", lines), "N=N,D=D,L=loss", ["keep=1"])
    assert [row.run_id for row in table.rows] == ["line4", "line5"]

    lines[4] = "3e8,1e9,-2.9,1"
    with pytest.raises(UserError, match="line 5: loss=-2.9"):
        load_csv(write_csv(tmp_path / "bad.csv", lines), "N=N,D=D,L=loss", ["keep=1"])


def test_row_spanning_lines_is_named_by_first_line(tmp_path):
    lines = ["N,D,loss,note", "1e8,2e9,3.1,plain", '2e8,1e9,bad,"a note', 'on two lines"', "3e8,1e9,2.9,plain"]
    with pytest.raises(UserError, match="line 3: loss='bad'"):
        load_csv(write_csv(tmp_path / "bad.csv", lines), "N=N,D=D,L=loss")

    lines[2] = '2e8,1e9,3.0,"a note'
    table = load_csv(write_csv(tmp_path / "ok.csv", lines), "N=N,D=D,L=loss")
    assert [row.run_id for row in table.rows] == ["line2", "line3", "line5"]


def test_repeated_points_are_named_in_a_warning(tmp_path, caplog):
    lines = ["N,D,loss", "1e8,2e9,3.1", "2e8,1e9,3.0", "1e8,2e9,3.1", "3e8,1e9,2.9"]
    caplog.set_level(logging.WARNING)
    load_csv(write_csv(tmp_path / "dup.csv", lines), "N=N,D=D,L=loss")
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "line 2 = line 4" in messages[0]


def test_distinct_points_give_no_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    load_csv(write_csv(tmp_path / "ok.csv", ["N,D,loss", "1e8,2e9,3.1", "2e8,1e9,3.0"]), "N=N,D=D,L=loss")
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def one_budget_fit(tmp_path_factory):
    """Fit 9 noisy CSV points that all spend 1e20 FLOPs: a law the data cannot identify."""
    folder = tmp_path_factory.mktemp("one_budget")
    params = np.geomspace(2e8, 2e10, 9)
    tokens = 1e20 / (6 * params)
    noise = np.exp(np.random.default_rng(0).normal(0.0, 0.01, params.size))
    losses = law_losses(LAW, params, tokens) * noise
    lines = ["N,D,loss"] + [f"{n:.17g},{d:.17g},{loss:.17g}" for n, d, loss in zip(params, tokens, losses)]
    path = write_csv(folder / "one_budget.csv", lines)
    # 200 replicates include some whose log A exceeds a float's exp range (above 709), as on real data.
    record = fit_runs(path, folder / "fit", columns="N=N,D=D,L=loss", starts=256, bootstraps=200, seed=0, plot=False)
    return record, folder / "fit" / "fit.json"


def test_one_budget_fit_warns_and_stays_valid_json(one_budget_fit):
    record, path = one_budget_fit
    assert any("within a factor 2 of compute" in warning for warning in record["warnings"])
    assert max(values[0] for values in record["bootstrap"]["samples"]["values"]) > 709

    saved = strict_json(path.read_text())
    assert saved["bootstrap"]["standard_errors"]["A"] is None  # NaN in memory, null on disk


def test_ask_one_budget_gives_no_allocation(one_budget_fit):
    """Allocations of a law fitted on one budget are not identified: the row stays, empty, with the reason."""
    record, path = one_budget_fit
    assert record["approach3"]["allocation_identified"] is False
    answer = ask("tokens for 7B", fit=str(path), law_keys=["tokens-20"])
    assert any(note.startswith("your fit: approach 3: all 9 points lie within") for note in answer.notes)

    own = answer.rows[0]
    assert own["law"].startswith("your fit (approach 3")
    assert own["tokens"] is None
    assert own["interval"] is None
    assert "lie on one compute budget" in own["source"]
    assert answer.rows[-1]["tokens"] == pytest.approx(1.4e11)  # the published rule still gives its value

    loss = ask("loss at 7B params and 140B tokens", fit=str(path), law_keys=["hoffmann-a3-printed"])
    assert loss.rows[0]["loss"] > 0  # a loss at a given (N, D) needs no allocation


def test_overflowed_replicates_keep_finite_interval_bounds(one_budget_fit):
    _, path = one_budget_fit
    record = json.loads(path.read_text())
    low, high = bootstrap_interval(record, parse_query("tokens for 7B"))["tokens"]
    assert low > 0
    assert not math.isnan(high)


def test_ask_json_one_budget_is_strict(one_budget_fit, capsys):
    _, path = one_budget_fit
    parser = argparse.ArgumentParser(prog="scaling")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ask", "tokens for 7B", "--fit", str(path), "--json"])

    assert args.handler(args) == 0
    rows = strict_json(capsys.readouterr().out)
    assert rows[0]["law"].startswith("your fit (approach 3")


def test_percentile_keeps_infinite_bound():
    values = np.array([1.0, 2.0, 3.0, np.inf, np.inf])
    assert percentile(values, 2.5) == pytest.approx(1.1)
    assert percentile(values, 97.5) == math.inf
    assert percentile(np.array([1.0, 2.0, 3.0]), 50) == 2.0


def test_law_huge_logs_are_infinite():
    law = ParametricLaw.from_logs("r", "r", "test", log_a=1000.0, log_b=6.0, log_e=0.5, alpha=0.3, beta=0.3)
    assert law.a_coef == math.inf
    assert law.e_coef == pytest.approx(math.exp(0.5))


def test_approach2_label_counts_only_runs_it_used(tmp_path):
    # Three budgets of 5 sizes, and one of 2 sizes that approach 2 must skip.
    rows = []
    for budget, sizes in ((1e17, 5), (1e18, 5), (1e19, 5), (1e20, 2)):
        optimum = LAW.compute_optimal(budget)[0]
        for params in optimum * np.geomspace(0.25, 4.0, sizes):
            tokens = budget / (6 * params)
            rows.append(f"{params:.17g},{tokens:.17g},{law_losses(LAW, params, tokens):.17g},{budget:g}")
    path = write_csv(tmp_path / "grid.csv", ["N,D,loss,budget"] + rows)
    fit_runs(path, tmp_path / "fit", columns="N=N,D=D,L=loss,budget=budget", starts=64, bootstraps=0,
             methods=("approach2",), plot=False)

    answer = ask("tokens for 7B", fit=str(tmp_path / "fit" / "fit.json"), law_keys=["tokens-20"])
    labels = [row["law"] for row in answer.rows]
    assert "your fit (approach 2, total parameters, 15 points in 3 budgets)" in labels
    assert "your fit (approach 3, total parameters, 17 points, converged)" in labels


def test_implausible_exponent_is_warned(tmp_path):
    # 3 sizes x 2 token counts, with losses that fall steeply in D: the fit trades the D term away.
    rows = []
    for params in (1e6, 2e6, 4e6):
        for tokens, loss in ((1e7, 3.0), (2e7, 2.2)):
            rows.append(f"{params:g},{tokens:g},{loss - 0.01 * math.log2(params / 1e6):.6f}")
    path = write_csv(tmp_path / "steep.csv", ["N,D,loss"] + rows)
    record = fit_runs(path, tmp_path / "fit", columns="N=N,D=D,L=loss", starts=64, bootstraps=0,
                      methods=(), plot=False)
    assert record["approach3"]["parameters"]["beta"] > 2.0
    warned = [warning for warning in record["warnings"] if warning.startswith("approach 3: beta = ")]
    assert len(warned) == 1
    assert "do not pin down the D term" in warned[0]
    assert not [warning for warning in record["warnings"] if warning.startswith("approach 3: alpha = ")]


def test_mistyped_loss_is_named(tmp_path, caplog):
    """One loss typed ten times too large leaves approach 3 (Huber) in place and is named in a warning."""
    from analysis.synthetic import isoflop_grid

    params, tokens, _ = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    losses = law_losses(LAW, params, tokens) * np.exp(np.random.default_rng(1).normal(0.0, 0.01, params.size))
    clean = ["N,D,loss"] + [f"{n!r},{d!r},{loss!r}" for n, d, loss in zip(params.tolist(), tokens.tolist(),
                                                                          losses.tolist())]
    typo = list(clean)
    typo[7] = typo[7].rsplit(",", 1)[0] + f",{10 * float(losses[6])!r}"  # line 8 of the file, after the header
    for name, lines in (("clean", clean), ("typo", typo)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            record = fit_runs(write_csv(tmp_path / f"{name}.csv", lines), tmp_path / name, columns="N=N,D=D,L=loss",
                              starts=32, bootstraps=0, plot=False, methods=())
        far = [warning for warning in record["warnings"] if "lie far from the fitted law" in warning]
        if name == "clean":
            assert far == []
        else:
            (warning,) = far
            assert warning.startswith("approach 3: 1 of 15 points lie far from the fitted law")
            assert f"line8 (N {params[6]:.3g}, D {tokens[6]:.3g}, loss {10 * losses[6]:.4g}" in warning
            assert record["approach3"]["parameters"]["alpha"] == pytest.approx(LAW.alpha, rel=0.1)


def test_falling_optimum_warns(caplog):
    """An approach 1 or 2 power law whose N_opt falls with compute is named when the fit is made, not only by ask."""
    from analysis.fit import _warn_if_shrinking
    from analysis.fit_isoflop import PowerLaw

    with caplog.at_level(logging.WARNING):
        _warn_if_shrinking("approach 1", PowerLaw(-0.12, 1.66e5), PowerLaw(1.12, 1.0))
        _warn_if_shrinking("approach 2", PowerLaw(0.5, 0.1), PowerLaw(0.5, 1.0))
    (message,) = caplog.messages
    assert message.startswith("approach 1: N_opt = k C^-0.12 falls as compute grows")
    assert "`scaling ask` gives no allocation from it" in message
