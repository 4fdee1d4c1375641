"""Reading run folders back: completed runs only, torn metric lines, mixed corpora, the _data folder."""

import logging

import pytest

from analysis.runs import load_runs
from analysis.synthetic import write_synthetic_run
from scaling.errors import UserError


def _write_sweep(root, sweep="grid", fingerprint="corpus-a", count=3):
    for i in range(count):
        write_synthetic_run(root, sweep, f"run{i}", params_total=1_000_000 * (i + 1), tokens=20_000_000,
                            final_loss=3.0 - 0.1 * i, fingerprint=fingerprint, params_non_embedding=800_000 * (i + 1))


def test_rows_carry_counts_and_compute(tmp_path):
    _write_sweep(tmp_path)
    table = load_runs(tmp_path)
    assert len(table) == 3
    row = next(r for r in table.rows if r.run_id == "run1")
    assert row.sweep == "grid"
    assert row.params_total == 2_000_000
    assert row.params_non_embedding == 1_600_000
    assert row.tokens == 20_000_000
    assert row.flops_6nd == 6.0 * 2_000_000 * 20_000_000
    assert row.flops("non_embedding") == 6.0 * 1_600_000 * 20_000_000
    assert row.final_loss == pytest.approx(2.9)
    assert row.corpus_fingerprint == "corpus-a"
    assert row.learning_curve[-1] == (20_000_000.0, pytest.approx(2.9))
    assert len(row.learning_curve) == 4


def test_sweep_folder_reads_like_root(tmp_path):
    _write_sweep(tmp_path)
    assert {r.run_id for r in load_runs(tmp_path / "grid").rows} == {"run0", "run1", "run2"}


def test_mixed_sweeps_warn(tmp_path, caplog):
    """The RUNS root may hold sweeps trained with other settings; fitting them together is named, not silent."""
    _write_sweep(tmp_path, "demo", count=3)
    _write_sweep(tmp_path, "adhoc", count=1)
    with caplog.at_level(logging.WARNING):
        table = load_runs(tmp_path)
    assert len(table) == 4
    assert "fitting the runs of 2 sweeps together (adhoc: 1, demo: 3)" in caplog.text
    assert table.warnings and table.warnings[0] in caplog.text  # kept for fit.json, report.md and ask
    assert str(tmp_path / "demo") in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_runs(tmp_path / "demo")
    assert "sweeps together" not in caplog.text


def test_two_corpora_name_their_sweeps(tmp_path):
    _write_sweep(tmp_path, "books", fingerprint="corpus-b")
    _write_sweep(tmp_path, "shakes", fingerprint="corpus-s", count=2)
    with pytest.raises(UserError) as error:
        load_runs(tmp_path)
    assert str(error.value) == (
        f"runs under {tmp_path} come from 2 corpus/tokenizer fingerprints (corpus-b (sweep books); corpus-s (sweep "
        f"shakes)); fit one corpus at a time, e.g. {tmp_path / 'books'}, or pass --allow-mixed to fit them together")


def test_same_runs_in_two_sweeps_warn(tmp_path, caplog):
    """A sweep relaunched under a new name trains the same (N, D) pairs again; fitting both counts them twice."""
    _write_sweep(tmp_path, "demo", count=3)
    _write_sweep(tmp_path, "demo-again", count=2)
    _write_sweep(tmp_path, "seeds", count=1)
    write_synthetic_run(tmp_path, "seeds", "run0-seed1", params_total=1_000_000, tokens=20_000_000, final_loss=3.01,
                        fingerprint="corpus-a", params_non_embedding=800_000)
    with caplog.at_level(logging.WARNING):
        table = load_runs(tmp_path)
    assert len(table) == 7
    assert "2 (N, D) pair(s) were trained in more than one sweep" in caplog.text
    assert "N = 1M, D = 20M in demo, demo-again, seeds" in caplog.text
    assert any("weigh more" in warning for warning in table.warnings)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_runs(tmp_path / "seeds")  # two seeds of one pair within a sweep are a design, not a repeat
    assert "more than one sweep" not in caplog.text


def test_diverged_and_running_runs_excluded(tmp_path, caplog):
    _write_sweep(tmp_path)
    write_synthetic_run(tmp_path, "grid", "blowup", params_total=5_000_000, tokens=1_000_000, final_loss=None,
                        status="diverged", fingerprint="corpus-a")
    write_synthetic_run(tmp_path, "grid", "busy", params_total=5_000_000, tokens=1_000_000, final_loss=None,
                        status="running", fingerprint="corpus-a")
    with caplog.at_level(logging.WARNING):
        table = load_runs(tmp_path)
    assert len(table) == 3
    assert table.excluded == {"grid/blowup": "status diverged", "grid/busy": "status running"}
    assert "grid/blowup" in caplog.text
    assert "grid/busy" in caplog.text


def test_torn_last_metrics_line_skipped(tmp_path, caplog):
    _write_sweep(tmp_path, count=1)
    metrics = tmp_path / "grid" / "run0" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 99, "tokens": 99, "val_lo')
    with caplog.at_level(logging.WARNING):
        table = load_runs(tmp_path)
    assert len(table.rows[0].learning_curve) == 4
    assert "torn" in caplog.text


def test_mixed_fingerprints_rejected(tmp_path):
    _write_sweep(tmp_path, sweep="a", fingerprint="corpus-a")
    _write_sweep(tmp_path, sweep="b", fingerprint="corpus-b")
    with pytest.raises(UserError, match="corpus-a.*corpus-b"):
        load_runs(tmp_path)
    assert len(load_runs(tmp_path, allow_mixed=True)) == 6


def test_data_folder_skipped(tmp_path):
    _write_sweep(tmp_path)
    prepared = tmp_path / "_data" / "stdlib-bytes"
    prepared.mkdir(parents=True)
    (prepared / "config.json").write_text("{}")
    (prepared / "meta.json").write_text("{}")
    assert len(load_runs(tmp_path)) == 3


def test_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_runs(tmp_path / "nope")


def test_empty_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs"):
        load_runs(tmp_path)


def test_flop_budget_read_from_config(tmp_path):
    write_synthetic_run(tmp_path, "iso", "r", params_total=10, tokens=10, final_loss=2.0, flop_budget=1e18)
    assert load_runs(tmp_path).rows[0].flop_budget == 1e18
