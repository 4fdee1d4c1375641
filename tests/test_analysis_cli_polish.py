"""`scaling ask` and `scaling fit` as a new user meets them: suffix warnings, negative sizes, --json, pipes."""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import cli
from analysis.laws import ParametricLaw
from analysis.query import parse_query
from analysis.synthetic import isoflop_grid, law_losses, write_synthetic_run
from scaling.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LAW = ParametricLaw("truth", "truth", "test", e_coef=1.5, a_coef=60.0, b_coef=300.0, alpha=0.3, beta=0.35)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def _suffix_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and "implausibly small" in record.getMessage()]


def _scaling_into_closed_pipe(*arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `scaling ARGUMENTS` with stdout on a pipe whose reader has already gone, as after `| head` exits."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "scaling.cli", *arguments], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("question", [
    "tokens for 7",
    "compute for 7",
    "loss at 7 params and 1.4T tokens",
])
def test_size_without_suffix_warns(question, caplog):
    caplog.set_level(logging.WARNING)
    query = parse_query(question)
    assert query.params == 7.0
    warnings = _suffix_warnings(caplog)
    assert len(warnings) == 1
    assert "N = 7 parameters" in warnings[0]
    assert "7B" in warnings[0]
    assert "\n" not in warnings[0]


@pytest.mark.parametrize("question", ["tokens for 7B", "tokens for 8K", "tokens for 125000", "params for 1e3 FLOPs"])
def test_size_with_suffix_or_large_is_quiet(question, caplog):
    caplog.set_level(logging.WARNING)
    parse_query(question)
    assert _suffix_warnings(caplog) == []


def test_cli_ask_small_size_still_answers(capsys, caplog):
    caplog.set_level(logging.WARNING)
    args = _parser().parse_args(["ask", "tokens for 7", "--json", "--law", "tokens-20"])
    assert args.handler(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["tokens"] == pytest.approx(140.0)
    assert len(_suffix_warnings(caplog)) == 1


@pytest.mark.parametrize("question, value", [
    ("tokens for -7B", "-7B"),
    ("compute for -70B", "-70B"),
    ("params for -1e23 FLOPs", "-1e23"),
    ("loss at 7B params and -1.4T tokens", "-1.4T"),
    ("kv cache for -7B at 4096 tokens", "-7B"),
])
def test_negative_size_must_be_positive(question, value):
    with pytest.raises(UserError, match=f"number {value} in the question must be positive"):
        parse_query(question)


def test_cli_negative_size_exits_2():
    result = subprocess.run([sys.executable, "-m", "scaling.cli", "ask", "tokens for -7B"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "scaling: error: the number -7B in the question must be positive; write e.g. 7B, 1e23 or 1.4T"]


@pytest.fixture()
def sweep(tmp_path) -> Path:
    params, tokens, budgets = isoflop_grid(LAW, [1e15, 1e16, 1e17], 5, 4)
    losses = law_losses(LAW, params, tokens, noise=0.01)
    for i, (n, d, c, loss) in enumerate(zip(params, tokens, budgets, losses)):
        write_synthetic_run(tmp_path, "iso", f"r{i:02d}", params_total=int(n), tokens=int(d),
                            final_loss=float(loss), flop_budget=float(c))
    return tmp_path / "iso"


def test_fit_json_help_mentions_file(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "fit.json and the plots are still written to --out" in help_text


def test_fit_json_logs_written_and_replaced(sweep, capsys, caplog):
    caplog.set_level(logging.INFO, logger="analysis.fit")
    arguments = ["fit", str(sweep), "--json", "--bootstraps", "0", "--starts", "50", "--method", "approach2"]
    fit_json = sweep / "_report" / "fit.json"

    args = _parser().parse_args(arguments)
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(fit_json.read_text())
    assert f"wrote {fit_json}" in caplog.messages

    caplog.clear()
    args = _parser().parse_args(arguments)
    assert args.handler(args) == 0
    capsys.readouterr()
    assert f"wrote {fit_json}, replacing the earlier fit" in caplog.messages


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["table", "json"])
def test_ask_closed_pipe_exits_quietly(extra):
    result = _scaling_into_closed_pipe("ask", "tokens for 7B", *extra)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_kv_table_closed_pipe_quiet():
    result = _scaling_into_closed_pipe("ask", "kv cache for 7B at 4096 tokens")
    assert result.returncode == 141
    assert result.stderr == ""


def test_fit_json_closed_pipe_keeps_fit(sweep):
    result = _scaling_into_closed_pipe("fit", str(sweep), "--json", "--bootstraps", "0", "--starts", "50",
                                       "--method", "approach2")
    assert result.returncode == 141
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert json.loads((sweep / "_report" / "fit.json").read_text())["n_runs"] == 15


def test_sweep_plan_closed_pipe_quiet(tmp_path):
    """The sweep plan's table, printed by sweeps.plan rather than analysis, ends the same way."""
    result = _scaling_into_closed_pipe("sweep", "plan", "quick", "--runs", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr


def test_sources_stay_on_one_line_in_a_pipe():
    """In a pipe, tables are 200 columns wide and lines of text, such as a law's source, are not folded."""
    result = subprocess.run([sys.executable, "-m", "scaling.cli", "ask", "tokens for 7B"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    kaplan = next(line for line in result.stdout.splitlines() if line.startswith("[7] Kaplan et al. 2020"))
    assert kaplan.endswith("C = 6ND = 2 C_min (equation 6.7)")


def test_ask_table_names_kaplan_convention(capsys, monkeypatch):
    """Kaplan's N counts non-embedding parameters; the table marks that row only."""
    monkeypatch.setenv("COLUMNS", "250")
    args = _parser().parse_args(["ask", "tokens for 7B", "--law", "kaplan-2020", "--law", "tokens-20"])
    assert args.handler(args) == 0
    lines = capsys.readouterr().out.splitlines()
    (kaplan,) = [line for line in lines if line.startswith("│ Kaplan")]
    (rule,) = [line for line in lines if line.startswith("│ 20 tokens")]
    assert "; N non-embedding" in kaplan
    assert "non-embedding" not in rule

    args = _parser().parse_args(["ask", "tokens for 7B", "--law", "kaplan-2020", "--json"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["convention"] == "non_embedding"
