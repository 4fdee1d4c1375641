"""The whole pipeline through the real `scaling` command: prepare, launch a sweep, fit, ask.

Real text (a few modules of Python's standard library), real training in worker processes, W&B in
offline mode, the fit and the question answered from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from analysis.ask import fitted_law
from tests.conftest import STDLIB_MODULES

pytestmark = pytest.mark.integration

SCALING = Path(sys.executable).with_name("scaling")
ASK_KEYS = {"law", "params", "tokens", "tokens_per_param", "flops", "loss", "source"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "SCALING_RUNS": str(cwd / "runs")}
    return subprocess.run([str(SCALING), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Prepare a corpus and launch a 2-budget x 3-size IsoFLOP sweep once for the tests below."""
    if not SCALING.exists():
        pytest.skip(f"the scaling command is not installed next to {sys.executable}")
    work = tmp_path_factory.mktemp("study")
    corpus = work / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_MODULES:
        shutil.copy(stdlib / name, corpus / name)
    (work / "e2e.yaml").write_text(
        f"name: e2e\n"
        f"data: {{source: {corpus}, tokenizer: bytes}}\n"
        "model: {convention: total, aspect_ratio: 20, head_dim: 16}\n"
        "optimizer: {peak_lr: 3e-3, warmup_steps: 5}\n"
        "train: {seq_len: 32, batch_size: 8, eval_tokens: 2K, wandb_mode: offline}\n"
        "isoflop:\n"
        "  budgets: [3e9, 1e10]\n"
        "  params: [1e4, 2e4, 4e4]\n"
    )
    launched = run_cli("sweep", "launch", "e2e.yaml", "--workers", "2", "--no-progress", cwd=work)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return work


def test_prepare_reuses_unchanged_corpus(study):
    first = run_cli("data", "prepare", str(study / "corpus"), "--out", "prepared", cwd=study)
    assert first.returncode == 0, first.stderr
    meta = json.loads(first.stdout)
    assert meta["tokenizer"] == "bytes"
    assert meta["tokens"]["train"] > 100_000
    second = run_cli("data", "prepare", str(study / "corpus"), "--out", "prepared", cwd=study)
    assert json.loads(second.stdout)["fingerprint"] == meta["fingerprint"]
    assert "reusing" in second.stderr.lower()


def test_sweep_runs_completed_with_offline_wandb(study):
    run_dirs = sorted(p.parent for p in (study / "runs" / "e2e").glob("*/summary.json"))
    assert len(run_dirs) == 6
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed", run_dir.name
        assert summary["final_val_loss"] < 5.55  # below a uniform guess over 256 bytes
        assert list((run_dir / "wandb").glob("offline-run-*")), f"no offline W&B run in {run_dir}"


def test_second_launch_skips_completed_runs(study):
    before = {p: p.stat().st_mtime_ns for p in (study / "runs" / "e2e").glob("*/metrics.jsonl")}
    again = run_cli("sweep", "launch", "e2e.yaml", "--workers", "2", "--no-progress", cwd=study)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_fit_and_ask_from_the_fit(study):
    fitted = run_cli("fit", "runs/e2e", "--json", "--starts", "64", "--bootstraps", "40", cwd=study)
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    record = json.loads(fitted.stdout)
    assert record["n_runs"] == 6
    assert record["convention"] == "total"
    assert set(record["approach3"]["parameters"]) >= {"E", "A", "B", "alpha", "beta"}
    report = study / "runs" / "e2e" / "_report"  # the default output sits beside the runs it fits
    assert (report / "fit.json").exists()
    assert list(report.glob("*.png"))
    assert not (study / "fit").exists()

    asked = run_cli("ask", "tokens for 7B", "--fit", str(report / "fit.json"), "--json", cwd=study)
    assert asked.returncode == 0, asked.stderr[-2000:]
    rows = json.loads(asked.stdout)
    assert all(ASK_KEYS <= set(row) for row in rows)
    assert len(rows) >= 4  # the fit plus the published laws
    assert all(row["params"] == 7e9 for row in rows)
    fit_row = rows[0]
    # Six tiny runs can give a law whose allocation overflows: JSON then carries null, since it has no infinity.
    with np.errstate(over="ignore"):
        expected = fitted_law(json.loads((report / "fit.json").read_text())).tokens_for_params(7e9)
    if math.isfinite(expected):
        assert fit_row["tokens"] == pytest.approx(expected, rel=1e-12)
        assert fit_row["flops"] == pytest.approx(6 * 7e9 * fit_row["tokens"], rel=1e-9)
    else:
        assert fit_row["tokens"] is None


def test_bad_query_exits_2_with_one_line(study):
    asked = run_cli("ask", "how big is the moon", cwd=study)
    assert asked.returncode == 2
    assert len(asked.stderr.strip().splitlines()) == 1
    assert "how big is the moon" in asked.stderr
