"""Every missing result or interval comes with its reason: warnings in fit.json, notes of `scaling ask`,
lines of `scaling fit`, and one-line errors for KV-cache questions."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from analysis import cli
from analysis.ask import ask
from analysis.fit import fit_runs
from analysis.laws import ParametricLaw
from analysis.report import write_report
from analysis.synthetic import law_losses, write_synthetic_run
from scaling.cli import main
from scaling.errors import UserError

LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)
# The same 3 sizes at every budget. Only the middle size can win the envelope inside the size range, so
# approach 1 has no power laws. The largest budget's optimum lies above the largest size, so approach 2
# drops that budget as "optimum at edge".
SIZES = (2e6, 8e6, 3.2e7)
BUDGETS = (4e15, 1.6e16, 1e17)
X_C_NOTE = "x_c (C_c) gets no interval by design"


def _write_grid(root: Path, sweep: str, train_tokens: int | None = None) -> Path:
    """Write a run at every size of every budget, with the law's loss; return the sweep's folder."""
    index = 0
    for budget in BUDGETS:
        for params in SIZES:
            tokens = budget / (6 * params)
            loss = float(law_losses(LAW, np.array([params]), np.array([tokens]))[0])
            write_synthetic_run(root, sweep, f"r{index:02d}", params_total=int(params), tokens=int(tokens),
                                final_loss=loss, flop_budget=budget, train_tokens=train_tokens)
            index += 1
    return root / sweep


@pytest.fixture()
def sweep(tmp_path) -> Path:
    return _write_grid(tmp_path, "fixed")


def _fit(sweep: Path, **options) -> dict:
    return fit_runs(sweep, sweep.parent / "out", starts=50, plot=False, **{"bootstraps": 40, **options})


def test_repeated_data_named_in_report(tmp_path, caplog):
    """A reviewer's sweep trained 4 of 9 runs over several epochs; plan warned, fit and report did not."""
    small = _write_grid(tmp_path, "small", train_tokens=100_000_000)
    caplog.set_level(logging.WARNING, logger="analysis")
    record = fit_runs(small, tmp_path / "out", starts=50, plot=False, bootstraps=0)

    # 1e17 / (6 * 2e6) = 8.3e9 tokens are 83 passes over 1e8 training tokens; 3 runs stay below one pass.
    repeated = [warning for warning in record["warnings"] if "saw their training data more than once" in warning]
    assert len(repeated) == 1
    assert repeated[0].startswith("6 of 9 runs saw their training data more than once (epochs: r06 (83.33), r07 "
                                  "(20.83), r03 (13.33), r08 (5.21), r00 (3.33) and 1 more); ")
    assert "so runs beyond 4 epochs may lie above a law for new data" in repeated[0]
    assert record["corpus_sources"] == {"synthetic": "synthetic (bytes tokenizer)"}

    report = write_report(tmp_path / "out", record).read_text()
    assert "- corpus: synthetic (bytes tokenizer), fingerprint synthetic" in report
    assert "runs saw their training data more than once" in report


def test_runs_within_one_epoch_get_no_repeat_warning(sweep):
    assert not any("more than once" in warning for warning in _fit(sweep, bootstraps=0)["warnings"])


def _printed_fit(record: dict, sweep: Path, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    cli._print_fit(record, sweep.parent / "out")
    return " ".join(capsys.readouterr().out.split())


def test_fit_json_warnings_are_every_warning_logged(sweep, caplog):
    caplog.set_level(logging.WARNING, logger="analysis")
    record = _fit(sweep)
    logged = [entry.getMessage() for entry in caplog.records
              if entry.levelno >= logging.WARNING and entry.name.startswith("analysis")]
    assert record["warnings"] == list(dict.fromkeys(logged))
    assert any(warning.startswith("approach 2: budget 1e+17 FLOPs: optimum at edge") for warning in logged)
    assert json.loads((sweep.parent / "out" / "fit.json").read_text())["warnings"] == record["warnings"]


def test_missing_approach_is_warned_printed_and_noted(sweep, caplog, capsys, monkeypatch):
    caplog.set_level(logging.WARNING, logger="analysis")
    record = _fit(sweep)
    reason = "approach 1 has no power laws: 1 size(s) win inside the size range"
    assert any(message.startswith(reason) for message in caplog.messages)
    assert reason in _printed_fit(record, sweep, capsys, monkeypatch)

    notes = ask("tokens for 7B", fit=record).notes
    assert any(note.startswith(f"your fit: {reason}") for note in notes)
    # Approach 2 has a row, so its dropped budget is noted; the Kaplan-style fits answer no question.
    assert any("your fit: approach 2: budget 1e+17 FLOPs: optimum at edge" in note for note in notes)
    assert not any("Kaplan-style" in note for note in notes)


def test_kaplan_compute_scale_interval_has_a_note(sweep, capsys, monkeypatch):
    record = _fit(sweep, bootstraps=80)
    compute_law = record["kaplan"]["fits"]["L(C)"]
    assert compute_law["intervals"]["scale"] is None
    assert X_C_NOTE in compute_law["interval_note"]
    # A value left out by design is not a warning about these runs.
    assert not any(X_C_NOTE in warning for warning in record["warnings"])
    assert f"Kaplan-style L(C) intervals: {X_C_NOTE}" in _printed_fit(record, sweep, capsys, monkeypatch)
    report = write_report(sweep.parent / "out", record).read_text()
    assert f"- L(C): {X_C_NOTE}" in report


def test_bootstrap_log_names_only_what_ran(sweep, caplog):
    caplog.set_level(logging.INFO, logger="analysis.fit")
    _fit(sweep, methods=("kaplan",))
    [message] = [message for message in caplog.messages if message.startswith("bootstrap of ")]
    assert message.startswith("bootstrap of the Kaplan-style fits: 40 replicates each")

    caplog.clear()
    _fit(sweep)  # approach 1 has no power laws, so only approach 2 and the Kaplan-style fits are resampled
    [message] = [message for message in caplog.messages if message.startswith("bootstrap of ")]
    assert message.startswith("bootstrap of approach 2 and the Kaplan-style fits: 40 replicates each")


def test_ask_notes_bootstraps_zero(sweep, capsys, monkeypatch):
    record = _fit(sweep, bootstraps=0)
    answer = ask("tokens for 7B", fit=record)
    assert any("--bootstraps 0, so it has no intervals" in note for note in answer.notes)
    monkeypatch.setenv("COLUMNS", "200")
    cli.print_answer(answer)
    printed = capsys.readouterr().out
    assert "95% interval" not in printed  # no column of dashes
    assert "your fit was made with --bootstraps 0" in " ".join(printed.split())


def test_ask_notes_why_published_laws_have_no_interval():
    record = {"approach3": {"log_a": 4.1, "log_b": 5.7, "log_e": 0.4, "alpha": 0.3, "beta": 0.35, "converged": True},
              "bootstrap": {"level": 0.95, "samples": {
                  "values": [[4.1, 5.7, 0.4, 0.3 + 0.001 * i, 0.35] for i in range(40)], "converged": [True] * 40}}}
    answer = ask("tokens for 7B", fit=record, law_keys=["tokens-20"])
    assert answer.rows[0]["interval"]["tokens"] is not None
    expected = "the published laws' rows have no interval, because each law is used at its published point estimate"
    assert expected in answer.notes


def test_ask_notes_an_interval_without_usable_replicates():
    record = {"approach3": {"log_a": 4.1, "log_b": 5.7, "log_e": 0.4, "alpha": 0.3, "beta": 0.35, "converged": True},
              "bootstrap": {"level": 0.95, "samples": {"values": [[4.1, 5.7, 0.4, 0.3, 0.35]] * 40,
                                                       "converged": [False] * 40}}}
    answer = ask("tokens for 7B", fit=record, law_keys=["tokens-20"])
    assert answer.rows[0]["interval"]["tokens"] is None
    assert any("no 95% interval: only 0 of 40 bootstrap replicates" in note for note in answer.notes)


# KV-cache questions --------------------------------------------------------------------------------------------


def _error_line(capsys, *arguments: str) -> str:
    """Run `scaling ARGUMENTS`, expecting a user error; return its one line."""
    status = main(list(arguments))
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("scaling: error:")]
    return line


@pytest.mark.parametrize("value", ["0", "64", "33", "5"])
def test_kv_cache_invalid_gqa_names_the_divisors(capsys, value):
    line = _error_line(capsys, "ask", f"kv cache for 7B at 4096 tokens gqa {value}")
    assert line == (f"scaling: error: gqa {value}: grouped-query attention splits the 32 query heads into equal "
                    "groups, one per key/value head, so G must divide 32; choose one of 1, 2, 4, 8, 16, 32")


@pytest.mark.parametrize("question, expected", [
    ("kv cache for 7B at 4096 tokens gqa 4.5", "'gqa 4.5': the number of key/value heads must be a whole number"),
    ("kv cache for 7B at 4096 tokens batch 2.5", "'batch 2.5': the batch size must be a whole number"),
    ("kv cache for 7B at 4096 tokens gqa 4 gqa 8", "gqa is given twice ('gqa 4', 'gqa 8'); give it once"),
    ("kv cache for 7B at 4096 tokens gqa 4 with 8 kv heads", "gqa is given twice ('gqa 4', '8 kv heads')"),
    ("kv cache for 7B at 4096 tokens fp16 int8", "the value type is given twice ('fp16', 'int8')"),
    ("kv cache for 7B at 4096 tokens batch 0", "'batch 0' must be at least 1"),
    ("kv cache for 1 layer 1 head 64 head dim at 8 tokens gqa 2", "gqa 2: a single query head has a single "
                                                                  "key/value head; use gqa 1"),
])
def test_kv_cache_option_errors(capsys, question, expected):
    assert expected in _error_line(capsys, "ask", question)


def test_kv_cache_names_only_the_option_given(capsys, tmp_path):
    line = _error_line(capsys, "ask", "kv cache for 7B at 4096 tokens", "--fit", str(tmp_path))
    assert line.endswith("drop --fit")
    with pytest.raises(UserError, match="drop --law and --fit$"):
        ask("kv cache for 7B at 4096 tokens", fit={}, law_keys=["tokens-20"])


def test_kv_cache_single_head_note():
    answer = ask("kv cache for 1 layer 1 head 64 head dim at 8 tokens")
    assert [row["attention"] for row in answer.rows] == ["MHA", "MQA"]
    assert answer.notes == ("a single query head has a single key/value head in every variant, so multi-head and "
                            "multi-query attention coincide and there is no grouped-query row",)
