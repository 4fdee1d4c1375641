"""What `scaling fit` and `scaling report` do with awkward input.

The cases: hand-edited run files, options that do not suit the source, an --out that is a file, outputs of
an earlier fit, runs that lose a file, too few bootstraps, and CSV points. The printed approach 2 line and
the IsoFLOP plot must count the budgets alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

import pytest

import analysis.fit
from analysis.bootstrap import too_few_replicates
from analysis.cli import _print_fit
from analysis.csv_points import load_csv, parse_columns
from analysis.fit import FIT_OUTPUTS, PLOT_FILES, PREVIOUS_KEPT, fit_runs
from analysis.fit_isoflop import budget_counts, fit_isoflop
from analysis.laws import ParametricLaw
from analysis.report import write_report
from analysis.runs import load_runs
from analysis.synthetic import isoflop_grid, law_losses, write_synthetic_run
from scaling.cli import main
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)
QUICK = dict(starts=16, bootstraps=0)  # enough for these checks, which test the inputs and outputs, not the fit


def _write_sweep(root: Path, sweep: str = "iso") -> Path:
    """Write 15 completed runs (3 IsoFLOP budgets x 5 sizes) with 1% noise; return the sweep folder."""
    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    losses = law_losses(LAW, params, tokens, noise=0.01)
    for i, (n, d, c, loss) in enumerate(zip(params, tokens, budgets, losses)):
        write_synthetic_run(root, sweep, f"r{i:02d}", params_total=int(n), tokens=int(d), final_loss=float(loss),
                            flop_budget=float(c))
    return root / sweep


def _write_points(path: Path) -> Path:
    """Write the same 15 points as a CSV with columns N, D, loss and the budget C; return its path."""
    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    losses = law_losses(LAW, params, tokens, noise=0.01)
    lines = ["N,D,loss,C"] + [f"{float(n)!r},{float(d)!r},{float(loss)!r},{c:.0e}"
                              for n, d, loss, c in zip(params, tokens, losses, budgets)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _cli(capsys, *arguments) -> tuple[int, str, str]:
    """Run `scaling ARGUMENTS` in this process; return the exit status, stdout and stderr."""
    status = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("scaling: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture()
def no_fitting(monkeypatch):
    """Fail the test if a fit starts reading its source: the checks under test must come first."""
    def fail_if_called(*args, **kwargs):
        raise AssertionError("the fit started before the bad argument was reported")

    monkeypatch.setattr(analysis.fit, "_load_table", fail_if_called)


# Hand-edited run files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), (-1.5, "-1.5"), (0, "0"), (True, "True"),
                                          ([2.5], "[2.5]")])
def test_bad_final_loss_excludes_run(tmp_path, caplog, value, shown):
    sweep = _write_sweep(tmp_path)
    _edit_json(sweep / "r03" / "summary.json", lambda summary: {**summary, "final_val_loss": value})
    with caplog.at_level(logging.WARNING):
        table = load_runs(sweep)
    assert len(table) == 14
    assert table.excluded["iso/r03"] == f"completed with final_val_loss {shown}, not a finite number > 0"
    assert f"iso/r03 (completed with final_val_loss {shown}" in caplog.text


@pytest.mark.parametrize("file, content, reason", [
    ("summary.json", [1, 2], "summary.json holds a JSON list where an object belongs"),
    ("config.json", [], "config.json holds a JSON list where an object belongs"),
    ("config.json", "text", "config.json holds a JSON str where an object belongs"),
])
def test_record_not_object_excludes_run(tmp_path, file, content, reason):
    sweep = _write_sweep(tmp_path)
    (sweep / "r03" / file).write_text(json.dumps(content))
    assert load_runs(sweep).excluded["iso/r03"].startswith(reason)


@pytest.mark.parametrize("edit, reason", [
    (lambda config: {**config, "params": {**config["params"], "total": -5}}, "config's params.total is -5"),
    (lambda config: {**config, "params": {**config["params"], "non_embedding": 0}},
     "config's params.non_embedding is 0"),
    (lambda config: {**config, "tokens": "many"}, "config's tokens is 'many'"),
    (lambda config: {**config, "params": [1, 2]}, "config's params is a JSON list"),
    (lambda config: {**config, "corpus": "stdlib"}, "config's corpus is a JSON str"),
    (lambda config: {**config, "config": {**config["config"], "flop_budget": -1e15}},
     "config's flop_budget is -1000000000000000.0"),
])
def test_bad_config_value_excludes_run(tmp_path, edit, reason):
    sweep = _write_sweep(tmp_path)
    _edit_json(sweep / "r03" / "config.json", edit)
    assert load_runs(sweep).excluded["iso/r03"].startswith(reason)


def test_bad_metric_rows_are_skipped(tmp_path):
    sweep = _write_sweep(tmp_path)
    with open(sweep / "r03" / "metrics.jsonl", "a") as handle:
        handle.write('[1, 2]\n{"tokens": "x", "val_loss": 2.0}\n{"tokens": 5, "val_loss": -1}\n')
    row = next(row for row in load_runs(sweep).rows if row.run_id == "r03")
    assert len(row.learning_curve) == 4  # the 4 rows written by the run, none of the 3 edited ones


def test_hand_edited_sweep_fits(tmp_path, capsys):
    sweep = _write_sweep(tmp_path)
    _edit_json(sweep / "r03" / "summary.json", lambda summary: {**summary, "final_val_loss": "abc"})
    _edit_json(sweep / "r04" / "config.json", lambda config: {**config, "params": {**config["params"], "total": -5}})
    (sweep / "r05" / "summary.json").write_text("[]")
    status, _, stderr = _cli(capsys, "fit", sweep, "--out", tmp_path / "out", "--json", "--starts", 16,
                             "--bootstraps", 0, "--method", "approach2")
    assert status == 0, stderr
    record = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert sorted(record["excluded_runs"]) == ["iso/r03", "iso/r04", "iso/r05"]
    assert record["n_runs"] == 12


# Options that do not fit the source, and --out ---------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--columns", "N=a,D=b,L=c"), ("--where", "epoch=0")])
def test_csv_option_on_folder_exits_2(tmp_path, capsys, no_fitting, option, value):
    sweep = _write_sweep(tmp_path)
    status, _, stderr = _cli(capsys, "fit", sweep, option, value)
    assert status == 2
    assert f"{option} {value} applies only to a CSV file of points" in _error_line(stderr)
    assert not (sweep / "_report").exists()


def test_out_file_exits_2_before_fit(tmp_path, capsys, no_fitting):
    points = _write_points(tmp_path / "points.csv")
    out = tmp_path / "outfile"
    out.write_text("x\n")
    status, _, stderr = _cli(capsys, "fit", points, "--columns", "N=N,D=D,L=loss", "--out", out)
    assert status == 2
    assert f"output folder {out} is a file" in _error_line(stderr)
    assert out.read_text() == "x\n"


def test_out_inside_file_exits_2(tmp_path, capsys, no_fitting):
    points = _write_points(tmp_path / "points.csv")
    status, _, stderr = _cli(capsys, "fit", points, "--out", points / "fit")
    assert status == 2
    assert f"lies inside {points}, which is a file" in _error_line(stderr)


# Outputs of an earlier fit -----------------------------------------------------------------------------------------


def test_refit_keeps_earlier_fit_in_previous(tmp_path, caplog, monkeypatch):
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    first = fit_runs(sweep, out, methods=("approach2",), **QUICK)
    write_report(out, first)
    first_files = {name: (out / name).read_bytes() for name in ("fit.json", "report.md", *first["plots"])}
    (out / "notes.md").write_text("mine\n")
    (out / "extra.png").write_bytes(b"mine")
    assert "isoflop.png" in first["plots"]

    caplog.set_level(logging.INFO, logger="analysis.fit")
    second = fit_runs(sweep, out, methods=("kaplan",), convention="non_embedding", **QUICK)
    assert "isoflop.png" not in second["plots"]
    assert not (out / "isoflop.png").exists()
    assert not (out / "report.md").exists()  # it described the first fit
    assert sorted(path.name for path in out.iterdir()) == sorted(["fit.json", "notes.md", "extra.png", "previous",
                                                                  *second["plots"]])
    (first_kept,) = (out / "previous").iterdir()
    assert {name: (first_kept / name).read_bytes() for name in first_files} == first_files
    (kept,) = [message for message in caplog.messages if message.startswith("kept the earlier fit (")]
    assert "isoflop.png" in kept
    assert kept.endswith(str(first_kept))

    # A third fit keeps the first one's report (a reviewer lost it when one earlier fit was kept), and the
    # oldest go once PREVIOUS_KEPT are kept.
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    kept_folders = sorted((out / "previous").iterdir())
    assert len(kept_folders) == 2
    assert kept_folders[0] == first_kept
    assert (first_kept / "report.md").read_bytes() == first_files["report.md"]
    assert json.loads((kept_folders[1] / "fit.json").read_text())["convention"] == "non_embedding"
    assert PREVIOUS_KEPT == 5
    monkeypatch.setattr(analysis.fit, "PREVIOUS_KEPT", 2)  # the same pruning, two fits sooner
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    kept_folders = sorted((out / "previous").iterdir())
    assert len(kept_folders) == 2
    assert first_kept not in kept_folders


def test_refit_moves_legacy_previous_fit(tmp_path):
    """Earlier versions kept one fit directly in previous/; it moves into a folder of its own."""
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    (out / "previous").mkdir()
    legacy = sorted(path.name for path in out.iterdir() if path.is_file())
    assert "isoflop.png" in legacy
    for name in legacy:
        os.replace(out / name, out / "previous" / name)
    fit_runs(sweep, out, methods=("approach2",), **QUICK)  # out/ held no fit: only the legacy one moves
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    folders = sorted((out / "previous").iterdir())
    assert all(folder.is_dir() for folder in folders)
    assert len(folders) == 2
    assert sorted(path.name for path in folders[0].iterdir()) == legacy


def test_failed_refit_leaves_earlier_fit(tmp_path):
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    few = tmp_path / "few"
    for i in range(3):
        write_synthetic_run(few, "s", f"r{i}", params_total=10**6 * (i + 1), tokens=10**7, final_loss=3.0)
    with pytest.raises(UserError, match="3 completed run"):
        fit_runs(few / "s", out, **QUICK)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no staging folder left either

    with pytest.raises(UserError):
        fit_runs(few / "s", tmp_path / "new" / "out", **QUICK)
    assert not (tmp_path / "new").exists()


def test_fit_without_plots_removes_them(tmp_path):
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    fit_runs(sweep, out, methods=("approach2",), **QUICK)
    fit_runs(sweep, out, methods=("approach2",), plot=False, **QUICK)
    assert [name for name in FIT_OUTPUTS if (out / name).exists()] == []


def test_fit_refuses_folder_with_files_of_same_name(tmp_path):
    """Without an earlier fit.json, files named like outputs are the user's: the fit stops before it writes
    anything, since it would overwrite them now or delete them at the next fit."""
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own report\n")
    (out / "isoflop.png").write_text("my own plot\n")
    with pytest.raises(UserError, match=r"contains isoflop.png, report.md but no fit.json, so they are not an "
                                        r"earlier fit's"):
        fit_runs(sweep, out, methods=("approach2",), **QUICK)
    assert sorted(path.name for path in out.iterdir()) == ["isoflop.png", "report.md"]
    assert (out / "report.md").read_text() == "my own report\n"


def test_fit_refuses_fit_json_it_did_not_write(tmp_path):
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fit.json").write_text('{"my": "own json"}\n')
    (out / "report.md").write_text("my own report\n")
    with pytest.raises(UserError, match=r"contains a fit.json that `scaling fit` did not write"):
        fit_runs(sweep, out, **QUICK)
    assert (out / "fit.json").read_text() == '{"my": "own json"}\n'
    assert (out / "report.md").exists()


def test_negative_seed_rejected(tmp_path):
    with pytest.raises(UserError, match=r"--seed -1 must be a whole number >= 0"):
        fit_runs(_write_sweep(tmp_path), tmp_path / "out", seed=-1, **{**QUICK, "bootstraps": 40})


def test_csv_fit_records_columns_and_filters(tmp_path):
    points = _write_points(tmp_path / "points.csv")
    record = fit_runs(points, tmp_path / "out", columns="N=N,D=D,L=loss", filters=["C=1e17", "C=1e17"], **QUICK)
    assert record["csv"] == {"columns": "N=N,D=D,L=loss", "where": ["C=1e17", "C=1e17"]}


def test_report_names_equal():
    from analysis import report

    assert report.REPORT_FILE in FIT_OUTPUTS
    assert set(PLOT_FILES) == set(report._PLOT_CAPTIONS)


def test_report_checks_question_first(tmp_path, capsys, monkeypatch):
    """A question `ask` rejects stops `scaling report` before the fit replaces fit.json."""
    import analysis.ask

    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"

    def reject(query, **kwargs):
        raise UserError(f"the number in {query.text!r} is beyond what any law answers")

    monkeypatch.setattr(analysis.ask, "ask", reject)
    status, _, stderr = _cli(capsys, "report", sweep, "--out", out, "--question", "tokens for 7B", "--starts", 16,
                             "--bootstraps", 0)
    assert status == 2
    assert "--question 'tokens for 7B': the number in 'tokens for 7B'" in _error_line(stderr)
    assert not out.exists()


# Runs left out without a word -----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "empty"])
def test_run_without_curve_is_named(tmp_path, damage):
    sweep = _write_sweep(tmp_path)
    metrics = sweep / "r07" / "metrics.jsonl"
    metrics.unlink() if damage == "deleted" else metrics.write_text("")
    record = fit_runs(sweep, tmp_path / "out", methods=("approach1", "kaplan"), plot=False, **QUICK)
    [warning] = [warning for warning in record["warnings"] if "val_loss rows" in warning]
    assert warning.startswith("approach 1 and Kaplan-style L(C) leave out 1 run(s) whose metrics.jsonl has fewer")
    assert "iso/r07 (0)" in warning
    assert record["n_runs"] == 15  # approach 3 still fits its final loss


def test_run_without_config_is_excluded(tmp_path, caplog):
    sweep = _write_sweep(tmp_path)
    (sweep / "r07" / "config.json").unlink()
    with caplog.at_level(logging.WARNING):
        table = load_runs(tmp_path)
    assert len(table) == 14
    assert table.excluded["iso/r07"].startswith("no config.json")
    assert "iso/r07 (no config.json" in caplog.text


def test_run_folder_without_config(tmp_path):
    sweep = _write_sweep(tmp_path)
    (sweep / "r07" / "config.json").unlink()
    assert list(load_runs(sweep / "r07").excluded) == ["iso/r07"]


def test_missing_config_in_fit_json(tmp_path):
    sweep = _write_sweep(tmp_path)
    (sweep / "r07" / "config.json").unlink()
    record = fit_runs(sweep, tmp_path / "out", methods=(), plot=False, **QUICK)
    assert list(record["excluded_runs"]) == ["iso/r07"]
    assert any("iso/r07 (no config.json" in warning for warning in record["warnings"])


# Bootstrap counts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fit", "report"])
@pytest.mark.parametrize("bootstraps", [1, 2, 20, 39])
def test_too_few_bootstraps_exit_2(tmp_path, capsys, no_fitting, bootstraps, command):
    sweep = _write_sweep(tmp_path)
    status, _, stderr = _cli(capsys, command, sweep, "--bootstraps", bootstraps)
    assert status == 2
    assert _error_line(stderr) == (f"scaling: error: --bootstraps {bootstraps} gives no 95% interval; use 0 for none "
                                   "or at least 40 (200, the default, leaves room for replicates that do not converge)")


def test_bootstrap_minimum_follows_rule(tmp_path, no_fitting):
    """A count is rejected exactly when even all of its replicates would be too few for an interval."""
    for bootstraps in range(1, 61):
        never = too_few_replicates(bootstraps, bootstraps) is not None
        try:
            fit_runs(tmp_path, tmp_path / "out", bootstraps=bootstraps)
        except UserError:
            rejected = True
        except AssertionError:  # from no_fitting: the arguments passed, and the fit began
            rejected = False
        assert rejected == never, bootstraps


# CSV points worded as points ---------------------------------------------------------------------------------------


def test_csv_fit_says_points(tmp_path, capsys, monkeypatch):
    points = _write_points(tmp_path / "points.csv")
    record = fit_runs(points, tmp_path / "out", columns="N=N,D=D,L=loss", plot=False, **QUICK)
    assert record["units"]["loss"] == "the unit of its source (CSV column loss)"
    assert record["approach1"]["skipped"].startswith("approach 1 skipped: it needs learning curves, and a CSV")
    assert record["kaplan"]["missing"]["L(C)"] == "needs learning curves, which CSV points lack"
    monkeypatch.setenv("COLUMNS", "250")
    _print_fit(record, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "approach 3 on 15 points" in printed
    assert "loss in the unit of its source (CSV column loss)" in printed  # the Kaplan table's title
    assert "needs learning curves, which CSV points lack" in printed
    assert "not enough points" not in printed
    assert "largest-compute point(s)" in printed
    report = write_report(tmp_path / "out", record).read_text()
    assert "- points fitted: 15" in report
    assert "final validation" not in report


def test_csv_plots_label_the_column(tmp_path, monkeypatch):
    import analysis.plots

    labels = []
    save = analysis.plots._save

    def record_labels(figure, path, *args, **kwargs):
        labels.extend(axes.get_ylabel() for axes in figure.axes if "loss" in axes.get_ylabel().lower())
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(analysis.plots, "_save", record_labels)
    points = _write_points(tmp_path / "points.csv")
    fit_runs(points, tmp_path / "out", columns="N=N,D=D,L=loss", methods=("approach2",), **QUICK)
    assert len(labels) == 5  # isoflop, loss against N, D and C, residuals
    assert all("loss (CSV column loss)" in label for label in labels)
    assert not any("validation" in label for label in labels)


def test_csv_too_few_points_says_points(tmp_path):
    path = tmp_path / "few.csv"
    path.write_text("N,D,loss\n1e6,1e7,3.0\n2e6,1e7,2.9\n3e6,2e7,2.8\n")
    with pytest.raises(UserError, match=r"3 point\(s\) in .*needs at least 5 points: add points to the file") as error:
        fit_runs(path, tmp_path / "out", columns="N=N,D=D,L=loss", **QUICK)
    assert "sweep" not in str(error.value)


# CSV columns and filters ------------------------------------------------------------------------------------------


def test_three_of_n_d_c_rejected():
    with pytest.raises(UserError, match=r"maps all of N, D and C; map two of them, since the third follows from "
                                        r"C = 6ND"):
        parse_columns("N=n,D=d,C=c,L=loss")


def test_where_compares_numbers(tmp_path):
    points = _write_points(tmp_path / "points.csv")
    assert "1e+17" in points.read_text()  # the file writes the budget with an exponent sign
    table = load_csv(points, "N=N,D=D,L=loss", ["C=1e17"])
    assert len(table) == 5
    assert len(load_csv(points, "N=N,D=D,L=loss", ["C=100000000000000000"])) == 5


def test_where_still_compares_text(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss,source\n1e6,1e7,3.0,paper\n2e6,1e7,2.9,replication\n")
    assert [row.params_total for row in load_csv(path, "N=N,D=D,L=loss", ["source=paper"]).rows] == [1e6]


def test_two_filters_on_one_column_both_apply(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss,outlier\n1e6,1e7,3.0,0\n2e6,1e7,2.9,1\n")
    with pytest.raises(UserError, match=r"no rows left after the filters outlier=0, outlier=1"):
        load_csv(path, "N=N,D=D,L=loss", ["outlier=0", "outlier=1"])


def test_no_matching_row_names_the_column_values(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss,outlier\n1e6,1e7,3.0,0\n2e6,1e7,2.9,1\n3e6,1e7,2.8,1\n")
    with pytest.raises(UserError, match=r"none of its 3 data rows matches them all \(outlier contains 0, 1\); filter on "
                                        r"one of those values$"):
        load_csv(path, "N=N,D=D,L=loss", ["outlier=7"])


@pytest.mark.parametrize("entry, message", [
    ("outlier==0", "filter 'outlier==0' uses ==; --where keeps rows equal to a value and takes one '=': outlier=0"),
    ("outlier>=1", "filter 'outlier>=1' uses >=; --where keeps rows equal to a value and takes one '=': outlier=1"),
    ("outlier!=1", "filter 'outlier!=1' uses !=; --where keeps rows equal to a value and takes one '=': outlier=1"),
])
def test_comparison_operators_in_where_are_named(tmp_path, entry, message):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss,outlier\n1e6,1e7,3.0,0\n")
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        load_csv(path, "N=N,D=D,L=loss", [entry])


def test_repeated_header_column_rejected(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss,N\n1e6,1e7,3.0,2e6\n")
    with pytest.raises(UserError, match=r"column\(s\) N appear more than once in the header"):
        load_csv(path, "N=N,D=D,L=loss")


def test_byte_order_mark_ignored(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffN,D,loss\n1e6,1e7,3.0\n".encode("utf-8"))
    assert [row.params_total for row in load_csv(path, "N=N,D=D,L=loss").rows] == [1e6]


def test_csv_not_utf8_rejected(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("N,D,loss,note\n1e6,1e7,3.0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.csv is not UTF-8 text \(byte \d+ cannot be read\); save it as a "
                                        r"UTF-8 CSV file"):
        load_csv(path, "N=N,D=D,L=loss")


def test_row_with_extra_field_rejected(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss\n1e6,1e7,3.0\n1e9,2e10,2.5,3.1\n")
    with pytest.raises(UserError, match=r"points.csv line 3: 4 field\(s\) where the header has 3"):
        load_csv(path, "N=N,D=D,L=loss")


def test_compute_beyond_floating_point_rejected(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss\n1e6,1e7,3.0\n1e308,1e308,3\n")
    with pytest.raises(UserError, match=r"line 3: N=1e\+308 and D=1e\+308 give C = 6ND = inf, beyond floating "
                                        r"point"):
        load_csv(path, "N=N,D=D,L=loss")


def test_header_only_csv_says_no_rows(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("N,D,loss\n\n")
    with pytest.raises(UserError, match="header.csv has a header but no data rows"):
        load_csv(path, "N=N,D=D,L=loss")


# Approach 2's budget counts ----------------------------------------------------------------------------------------


def _awkward_budgets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (N, C, loss) of 2 good budgets, 1 with its optimum at an edge, 1 with no minimum and 10 of 2 sizes."""
    params, losses, labels = [], [], []
    sizes = np.array([1e6, 2e6, 4e6, 8e6, 16e6])
    for budget, shape in ((1e15, "good"), (1e16, "good"), (1e17, "edge"), (1e18, "no minimum")):
        x = np.log(sizes / 4e6)
        curve = {"good": 2.0 + 0.05 * x**2, "edge": 2.0 - 0.1 * x + 0.01 * x**2, "no minimum": 2.0 - 0.05 * x**2}
        params.extend(sizes)
        losses.extend(curve[shape] * (1.0 if budget == 1e15 else 0.8))
        labels.extend([budget] * sizes.size)
    for budget in np.geomspace(1e19, 1e28, 10):
        params.extend([1e6, 2e6])
        losses.extend([2.0, 1.9])
        labels.extend([budget, budget])
    return np.array(params), np.array(labels), np.array(losses)


def test_skipped_budgets_named_with_count():
    params, labels, losses = _awkward_budgets()
    fit = fit_isoflop(params, labels, losses, labels, skip_invalid_budgets=True, log_warnings=False)
    [warning] = [warning for warning in fit.warnings if "fewer than 3 sizes" in warning]
    assert warning.startswith("10 budget(s) skipped with fewer than 3 sizes: 1e+19, ")
    assert warning.endswith(" FLOPs and 2 more")
    assert "..." not in warning


def test_budget_counts_add_up():
    params, labels, losses = _awkward_budgets()
    fit = fit_isoflop(params, labels, losses, labels, skip_invalid_budgets=True, log_warnings=False)
    assert budget_counts(fit.to_dict()) == ("2 of 14 budgets; left out: 1 with the optimum at an edge, 1 whose "
                                            "parabola has no minimum, 10 with fewer than 3 sizes")


def test_plot_and_print_count_alike(tmp_path, capsys, monkeypatch):
    import analysis.plots

    params, labels, losses = _awkward_budgets()
    fit = fit_isoflop(params, labels, losses, labels, skip_invalid_budgets=True, log_warnings=False)
    texts = []
    save = analysis.plots._save

    def record_texts(figure, path, *args, **kwargs):
        texts.extend(text.get_text() for axes in figure.axes for text in axes.texts)
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(analysis.plots, "_save", record_texts)
    analysis.plots.plot_isoflop(fit, tmp_path / "isoflop.png", "total")
    assert texts == ["power laws over 2 of 14 budgets;\nleft out: 1 with the optimum at an edge, 1 whose parabola "
                     "has no minimum, 10 with fewer than 3 sizes"]

    record = {"approach3": {"parameters": {"E": 1.0}, "objective": 0.1, "status": "converged"}, "n_runs": 34,
              "convention": "total", "approach2": fit.to_dict()}
    monkeypatch.setenv("COLUMNS", "400")
    _print_fit(record, tmp_path)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"over {budget_counts(fit.to_dict())}" in printed


def test_demo_sized_counts_stay_short():
    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    fit = fit_isoflop(params, budgets, law_losses(LAW, params, tokens), budgets, log_warnings=False)
    assert budget_counts(fit.to_dict()) == "3 budgets"


# Mixed corpora -----------------------------------------------------------------------------------------------------


def test_mixed_corpora_names_flag_only(tmp_path):
    write_synthetic_run(tmp_path, "a", "r", params_total=10, tokens=10, final_loss=2.0, fingerprint="corpus-a")
    write_synthetic_run(tmp_path, "b", "r", params_total=10, tokens=10, final_loss=2.0, fingerprint="corpus-b")
    with pytest.raises(UserError) as error:
        load_runs(tmp_path)
    assert str(error.value).endswith("pass --allow-mixed to fit them together")
    assert "allow_mixed" not in str(error.value)


def test_far_edge_vertex_keeps_axis(tmp_path, monkeypatch):
    # The edge budget's vertex lies at 5.9e8 parameters, 37 times its largest size (1.6e7).
    import analysis.plots

    params, labels, losses = _awkward_budgets()
    fit = fit_isoflop(params, labels, losses, labels, skip_invalid_budgets=True, log_warnings=False)
    limits = []
    save = analysis.plots._save

    def record_limits(figure, path, *args, **kwargs):
        limits.extend(axes.get_xlim() for axes in figure.axes)
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(analysis.plots, "_save", record_limits)
    analysis.plots.plot_isoflop(fit, tmp_path / "isoflop.png", "total")

    [(_, right)] = limits
    assert right < 1e8


def test_fit_refuses_folder_named_like_a_plot(tmp_path):
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    (out / "residuals.png").mkdir(parents=True)
    with pytest.raises(UserError, match=r"contains a folder named residuals.png, where the fit writes a file"):
        fit_runs(sweep, out, **QUICK)
    assert sorted(path.name for path in out.iterdir()) == ["residuals.png"]


def test_estimate_outside_its_interval_warned(caplog):
    """A basic bootstrap interval can miss its own estimate when the replicates are strongly skewed, and the fit
    warns about it."""
    from analysis.bootstrap_methods import ALLOCATION_NAMES, Replicates

    rows = np.column_stack([np.linspace(0.1, 0.8, 200)] + [np.linspace(1.0, 2.0, 200)] * 3)
    replicates = Replicates(ALLOCATION_NAMES, rows, 0.95, 0, "stand-in replicates")
    with caplog.at_level(logging.WARNING, logger="analysis"):
        analysis.fit._warn_if_few_replicates("approach 1", replicates, {"a": 0.079, "params_coefficient": 1.5})
    assert "approach 1: a = 0.079 lies outside its own 95% interval [0.118, 0.783]" in caplog.text
    assert "params_coefficient =" not in caplog.text  # 1.5 lies inside its interval


def test_skipped_extrapolation_is_printed(tmp_path, capsys):
    """A --holdout that leaves too few points to refit says so on the console, not only in fit.json."""
    status, stdout, _ = _cli(capsys, "fit", _write_sweep(tmp_path), "--out", tmp_path / "out", "--holdout", 0.9,
                             "--starts", 16, "--bootstraps", 0)
    assert status == 0
    assert "extrapolation check skipped: 15 runs: holding out the 15 at or near the largest compute leaves fewer " \
           "than 5 to fit (--holdout 0.9)" in " ".join(stdout.split())


@pytest.mark.parametrize("convention", ["total", "non_embedding"])
def test_frontier_legend_names_other_conventions(tmp_path, monkeypatch, convention):
    """A published law counted under the other convention (Kaplan's non-embedding N) is labelled so in the legend."""
    import analysis.plots
    from analysis.laws import all_laws

    legends = []
    save = analysis.plots._save

    def record_legend(figure, path, *args, **kwargs):
        legends.extend(text.get_text() for legend in figure.legends for text in legend.get_texts())
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(analysis.plots, "_save", record_legend)
    law = ParametricLaw("fit", "fit", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)
    analysis.plots.plot_frontier(law, None, None, None, np.array([1e15, 1e17]), tmp_path / "frontier.png",
                                 convention)

    for published in all_laws():
        (label,) = [text for text in legends if text.startswith(published.name)]
        if published.convention == convention:
            assert label == published.name
        else:
            assert label.endswith("(its N: non-embedding parameters)" if convention == "total"
                                  else "(its N: total parameters, embeddings included)")
    assert any("(its N:" in text for text in legends)


def test_missing_sweep_fit_points_to_store_fit(tmp_path):
    """A fit of the whole run store lies in RUNS/_report; asking for one sweep's fit names it."""
    from analysis.fit import read_fit

    sweep = _write_sweep(tmp_path)
    fit_runs(tmp_path, tmp_path / "_report", **QUICK)
    with pytest.raises(UserError, match=f"not found; the fit of the run store above it is {tmp_path / '_report'}"):
        read_fit(sweep)


def test_many_budgets_get_a_colour_bar(tmp_path, monkeypatch):
    """Past MAX_LEGEND_ENTRIES budgets the legend gives way to a colour bar that names budgets by colour."""
    import analysis.plots

    budgets = list(np.geomspace(1e15, 1e18, 13))
    params, tokens, labels = isoflop_grid(LAW, budgets, 5, 4)
    fit = fit_isoflop(params, labels, law_losses(LAW, params, tokens), labels, log_warnings=False)
    seen = []
    save = analysis.plots._save

    def record_axes(figure, path, *args, **kwargs):
        seen.extend((axes.get_ylabel(), [tick.get_text() for tick in axes.get_yticklabels()]) for axes in figure.axes)
        seen.append(("legend", [axes.get_legend() is not None for axes in figure.axes]))
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(analysis.plots, "_save", record_axes)
    analysis.plots.plot_isoflop(fit, tmp_path / "isoflop.png", "total")
    (ticks,) = [labels for label, labels in seen if label.startswith("C (FLOPs)")]
    assert ticks[0] == "1.0e+15"
    assert ticks[-1] == "1.0e+18"
    assert not any(dict(seen)["legend"])


def test_exponent_interval_beyond_unit_range_warned(caplog):
    """A compute-optimal exponent lies between 0 and 1; a basic interval that crosses either end is named."""
    from analysis.bootstrap_methods import ALLOCATION_NAMES, Replicates

    columns = {"a": np.linspace(0.45, 0.60, 200), "b": np.linspace(0.40, 0.55, 200)}
    rows = np.column_stack([columns.get(name, np.linspace(1.0, 2.0, 200)) for name in ALLOCATION_NAMES])
    replicates = Replicates(ALLOCATION_NAMES, rows, 0.95, 0, "stand-in replicates")
    with caplog.at_level(logging.WARNING, logger="analysis"):
        analysis.fit._warn_if_few_replicates("approach 2", replicates, {"a": 0.55, "b": 0.45})
    assert "reaches beyond 0 to 1" not in caplog.text

    columns["a"] = np.linspace(0.5, 1.2, 200)  # as a reflected interval of skewed replicates can reach
    rows = np.column_stack([columns.get(name, np.linspace(1.0, 2.0, 200)) for name in ALLOCATION_NAMES])
    replicates = Replicates(ALLOCATION_NAMES, rows, 0.95, 0, "stand-in replicates")
    bounds = replicates.intervals()["a"]
    assert bounds[1] > 1 or bounds[0] < 0, bounds
    with caplog.at_level(logging.WARNING, logger="analysis"):
        analysis.fit._warn_if_few_replicates("approach 2", replicates, {"a": 0.9})
    assert f"approach 2: the 95% interval of a, [{bounds[0]:.3g}, {bounds[1]:.3g}], reaches beyond 0 to 1" in caplog.text


def test_log_axes_label_few_minor_ticks(tmp_path, monkeypatch):
    """On a log axis of about a decade only the 2x and 5x minor ticks are labelled, so labels do not collide."""
    import analysis.plots

    labels = []
    save = analysis.plots._save

    def record_labels(figure, path, *args, **kwargs):
        saved = save(figure, path, *args, **kwargs)
        axes = figure.axes[0]
        labels.extend(text.get_text() for text in axes.xaxis.get_minorticklabels() if text.get_text())
        return saved

    monkeypatch.setattr(analysis.plots, "_save", record_labels)
    params, tokens, _ = isoflop_grid(LAW, [3e10, 1e11, 2e11], 3, 4)
    analysis.plots.plot_loss_vs_flops(LAW, params, tokens, law_losses(LAW, params, tokens), tmp_path / "c.png",
                                      "total")
    assert labels
    assert all(label.startswith(("$2\\times", "$5\\times")) for label in labels), labels
