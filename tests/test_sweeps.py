"""Sweep specs, their expansion into runs, the plan, and the local launcher on a tiny corpus.

The launcher tests train real (tiny) models in worker processes: two runs, a second launch that skips
them, a run that fails while the other completes, and a run killed mid-way that resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scaling.config import TrainConfig
from scaling.errors import UserError
from scaling.run_store import RunDir
from sweeps import cli
from sweeps.backends import run_with_backend
from sweeps.launcher import run_sweep, start_run
from sweeps.outcomes import LOGS_FOLDER, run_log_path
from sweeps.plan import evaluation_count, make_plan
from sweeps.resources import CORES_ENV, SINGLE_THREAD_XLA_FLAGS, split_cores
from sweeps.spec import (
    SweepSpec, TrainSpec, expand, grid_run_id, isoflop_run_id, load_spec, packaged_specs, parse_spec, run_intervals,
)

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """Forty small text documents with some structure (~40 KB), enough for tiny models to learn from."""
    folder = tmp_path_factory.mktemp("corpus")
    for doc in range(40):
        lines = []
        for line in range(25):
            words = [WORDS[(doc * 7 + line * 3 + k * k) % len(WORDS)] for k in range(6)]
            lines.append(f"{line:02d} " + " ".join(words) + ".")
        (folder / f"doc{doc:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(autouse=True)
def shared_compilation_cache(tmp_path_factory, monkeypatch):
    """One persistent JAX cache for every test, so the tiny shapes compile once per session."""
    monkeypatch.setenv("SCALING_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "jax_cache"))


def tiny_raw(source: Path | str, name: str = "tiny", **sections) -> dict:
    raw = {
        "name": name,
        "data": {"source": str(source), "tokenizer": "bytes"},
        "model": {"head_dim": 8, "aspect_ratio": 8},
        "optimizer": {"peak_lr": "1e-2", "warmup_steps": 5},
        "train": {"seq_len": 32, "batch_size": 4, "eval_tokens": 512, "wandb_mode": "disabled"},
        "grid": {"params": ["4K", "1.2e4"], "tokens": ["20K"]},
    }
    raw.update(sections)
    if "isoflop" in sections:
        raw.pop("grid")
    return raw


# ---------------------------------------------------------------- spec parsing


def test_grid_spec_parses_counts_with_suffixes(corpus_dir):
    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K", 1.2e4, "3e4"], "tokens": ["20K", "1e5"]}))
    assert spec.kind == "grid"
    assert spec.grid.params == (4000.0, 12000.0, 30000.0)
    assert spec.grid.tokens == (20000.0, 100000.0)
    assert spec.optimizer.peak_lr == pytest.approx(1e-2)  # "1e-2" is a string to PyYAML; parsed as a number
    assert spec.train.eval_interval is None  # "auto"
    assert spec.train.checkpoint_interval is None


def test_isoflop_spec_accepts_one_list_or_a_mapping(corpus_dir):
    shared = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["1e9", "3e9"], "params": ["4K", "1.2e4"]}))
    assert shared.kind == "isoflop"
    assert shared.isoflop.params_by_budget == {1e9: (4000.0, 12000.0), 3e9: (4000.0, 12000.0)}

    mapped = parse_spec(tiny_raw(corpus_dir, isoflop={"params": {"1e9": ["4K"], "3e9": ["4K", "1.2e4"]}}))
    assert mapped.isoflop.budgets == (1e9, 3e9)
    assert mapped.isoflop.params_by_budget[3e9] == (4000.0, 12000.0)


def test_packaged_specs_load_by_name():
    names = packaged_specs()
    assert {"demo", "quick"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert isinstance(spec, SweepSpec) and spec.name
    demo = load_spec("demo")
    assert demo.kind == "isoflop"
    assert len(demo.isoflop.budgets) >= 3
    sizes = [n for sizes in demo.isoflop.params_by_budget.values() for n in sizes]
    assert max(sizes) / min(sizes) >= 10
    assert all(len(sizes) >= 4 for sizes in demo.isoflop.params_by_budget.values())


def test_spec_file_round_trip_through_yaml(tmp_path, corpus_dir):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(corpus_dir)))
    assert load_spec(path).name == "tiny"
    with pytest.raises(UserError, match="no-such-spec"):
        load_spec("no-such-spec")


@pytest.mark.parametrize("change, named", [
    ({"optimiser": {}}, "'optimiser'"),
    ({"train": {"seq_len": 32, "batchsize": 4}}, "'batchsize'"),
    ({"model": {"d_model": 64}}, "model.d_model=64"),
    ({"model": {"vocab_size": 300}}, "model.vocab_size=300"),
    ({"data": {"source": "x", "tokeniser": "bytes"}}, "'tokeniser'"),
    ({"isoflop": {"budgets": ["1e9", "-3e9"], "params": ["4K"]}}, "isoflop.budgets[1]='-3e9'"),
    ({"isoflop": {"budgets": [0], "params": ["4K"]}}, "isoflop.budgets[0]=0"),
    ({"isoflop": {"budgets": ["1e9"], "params": ["4K", "-5"]}}, "isoflop.params[1]='-5'"),
    ({"grid": {"params": ["4K"], "tokens": ["-1"]}}, "grid.tokens[0]='-1'"),
    ({"isoflop": {"budgets": ["1e9"], "params": ["3.2e5", 320000]}}, "duplicate run C1e9-N3.2e5"),
    ({"isoflop": {"budgets": ["1e9", "1.0e9"], "params": ["4K"]}}, "lists 1e9 twice"),
    ({"grid": {"params": ["4K", "4000"], "tokens": ["2e4"]}}, "duplicate run N4e3-D2e4"),
    ({"isoflop": {"budgets": ["1e9"], "params": {"1e9": ["4K"], "2e9": ["4K"]}}}, "budget 2e9"),
    ({"name": "_data"}, "name='_data'"),
    ({"flops_per_token": "6ND"}, "flops_per_token='6ND'"),
    ({"optimizer": {"peak_lr": "fast"}}, "optimizer.peak_lr='fast'"),
    ({"optimizer": {"peak_lr": "3e3"}}, "optimizer.peak_lr=3000 is above 1, where AdamW"),
    ({"optimizer": {"schedule": "step"}}, "schedule='step'"),
    ({"train": {"wandb_mode": "loud"}}, None),
    ({"train": {"wandb_mode": False}}, "train.wandb_mode=False (YAML reads an unquoted off or no as false) is not "
                                       "one of: online, offline, disabled, auto"),
    ({"train": {"wandb_mode": "off"}}, "train.wandb_mode='off' is not one of"),
])
def test_bad_specs_raise_user_error_naming_the_value(corpus_dir, tmp_path, change, named):
    raw = tiny_raw(corpus_dir, **change)
    with pytest.raises(UserError) as caught:
        spec = parse_spec(raw, origin="bad.yaml")
        expand(spec, tmp_path / "runs")  # some mistakes (a TrainConfig's own checks) surface at expansion
    message = str(caught.value)
    assert "\n" not in message
    assert named is None or named in message, message
    if named is None:
        assert "loud" in message


def test_spec_with_both_or_neither_form_is_rejected(corpus_dir):
    with pytest.raises(UserError, match="exactly one of"):
        parse_spec({**tiny_raw(corpus_dir), "isoflop": {"budgets": ["1e9"], "params": ["4K"]}})
    raw = tiny_raw(corpus_dir)
    raw.pop("grid")
    with pytest.raises(UserError, match="exactly one of"):
        parse_spec(raw)


# ---------------------------------------------------------------- expansion


def test_isoflop_tokens_within_one_batch_of_c_over_6n(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["1e9", "3e9"], "params": ["4K", "1.2e4"]}))
    runs = expand(spec, tmp_path / "runs")
    batch = spec.train.tokens_per_step
    assert len(runs) == 4
    for run in runs:
        assert run.budget in (1e9, 3e9)
        assert run.config.flop_budget == run.budget
        ideal_tokens = run.budget / (6 * run.params_total)
        assert abs(run.tokens - ideal_tokens) <= batch / 2
        assert run.tokens % batch == 0
        assert run.tokens == run.config.tokens_trained
        assert run.flops == pytest.approx(6 * run.params_total * run.tokens)
        assert run.run_id == isoflop_run_id(run.budget, run.target_params)
        assert run.config.data.path == str(tmp_path / "runs" / "_data" / Path(run.config.data.path).name)
        assert run.config.model.vocab_size == 256


def test_exact_flops_convention_uses_the_accounting_count(corpus_dir, tmp_path):
    from scaling.accounting import training_flops_per_token

    spec = parse_spec(tiny_raw(corpus_dir, flops_per_token="exact",
                               isoflop={"budgets": ["3e9"], "params": ["4K", "1.2e4"]}))
    for run in expand(spec, tmp_path / "runs"):
        exact = training_flops_per_token(run.config.model, spec.train.seq_len)["exact"]
        assert run.flops_per_token == exact
        assert abs(run.tokens - 3e9 / exact) <= spec.train.tokens_per_step / 2


def test_max_epochs_rejects_a_run_past_the_corpus(corpus_dir, tmp_path):
    from scaling.data import PreparedCorpus

    runs_root = tmp_path / "runs"
    first = expand(parse_spec(tiny_raw(corpus_dir)), runs_root)
    corpus_tokens = len(PreparedCorpus.load(first[0].config.data.path).train)
    over = f"{3 * corpus_tokens}"
    train = {"seq_len": 32, "batch_size": 4, "eval_tokens": 512, "wandb_mode": "disabled", "max_epochs": 2}
    spec = parse_spec(tiny_raw(corpus_dir, train=train, grid={"params": ["4K"], "tokens": ["20K", over]}))
    with pytest.raises(UserError, match=r"above train.max_epochs=2\.0"):
        expand(spec, runs_root)
    allowed = parse_spec(tiny_raw(corpus_dir, train={**train, "max_epochs": 4},
                                  grid={"params": ["4K"], "tokens": ["20K", over]}))
    assert all(run.config.max_epochs == 4 for run in expand(allowed, runs_root))


def test_run_ids_are_unique_stable_and_readable(corpus_dir, tmp_path):
    raw = tiny_raw(corpus_dir, grid={"params": ["4K", "1.2e4"], "tokens": ["20K", "4e4"]})
    first = expand(parse_spec(raw), tmp_path / "runs")
    second = expand(parse_spec(raw), tmp_path / "runs")
    ids = [run.run_id for run in first]
    assert ids == ["N4e3-D2e4", "N4e3-D4e4", "N1.2e4-D2e4", "N1.2e4-D4e4"]
    assert ids == [run.run_id for run in second]
    assert [run.config for run in first] == [run.config for run in second]
    assert grid_run_id(3.2e5, 1e7) == "N3.2e5-D1e7"
    assert isoflop_run_id(1e13, 3.2e5) == "C1e13-N3.2e5"


def test_expand_rejects_two_sizes_with_one_shape(corpus_dir, tmp_path):
    # The size ladder maps 1e4 and 1.05e4 to the same shape (d8 L7 at head_dim 8), so the runs would be equal.
    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["3e9"], "params": ["1e4", "1.05e4"]}))
    with pytest.raises(UserError, match="duplicate run: C3e9-N1e4 and C3e9-N1.05e4"):
        expand(spec, tmp_path / "runs")


def test_budget_below_one_batch_names_the_run(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["1e6"], "params": ["1.2e4"]}))
    with pytest.raises(UserError, match="run C1e6-N1.2e4: budget C=1e6"):
        expand(spec, tmp_path / "runs")


def test_expand_names_run_of_invalid_train_config(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir, model={"head_dim": 8, "max_seq_len": 16}))
    with pytest.raises(UserError, match=r"run N4e3-D2e4: data.seq_len=32 exceeds model.max_seq_len=16"):
        expand(spec, tmp_path / "runs")


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 7, 8, 9, 15, 16, 50, 79, 80, 81, 100, 333, 1000, 4321, 20000])
def test_interval_rule_gives_five_to_nine_evaluations(steps):
    log_every, eval_every, checkpoint_every = run_intervals(steps, TrainSpec(log_interval=10))
    assert eval_every % log_every == 0  # the trainer evaluates only on logging steps
    config = TrainConfig(tokens=steps * 2048, eval_interval=eval_every, log_interval=log_every,
                         checkpoint_interval=checkpoint_every)
    evaluations = evaluation_count(config)
    assert min(5, steps) <= evaluations <= 9
    assert math.ceil(steps / checkpoint_every) <= 3


def test_run_intervals_explicit_eval_interval():
    log_every, eval_every, _ = run_intervals(1000, TrainSpec(log_interval=10, eval_interval=25))
    assert (log_every, eval_every) == (5, 25)


# ---------------------------------------------------------------- plan


def test_plan_without_probe_prints_every_run_and_totals(corpus_dir, tmp_path, capsys):
    import yaml

    path = tmp_path / "iso.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(corpus_dir, isoflop={"budgets": ["1e9", "3e9"], "params": ["4K", "1.2e4"]})))
    args = argparse.Namespace(spec=str(path), runs=str(tmp_path / "runs"), json=False, no_probe=True, workers=2)
    assert cli.plan_command(args) == 0
    out = capsys.readouterr().out
    for run_id in ("C1e9-N4e3", "C1e9-N1.2e4", "C3e9-N4e3", "C3e9-N1.2e4"):
        assert run_id in out
    assert "total" in out
    assert "assumed, not measured" in out
    assert "6N_total" in out

    args.json = True
    assert cli.plan_command(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [row["run_id"] for row in plan["runs"]] == ["C1e9-N4e3", "C1e9-N1.2e4", "C3e9-N4e3", "C3e9-N1.2e4"]
    assert plan["totals"]["runs"] == 4 and plan["totals"]["tokens"] == sum(r["tokens"] for r in plan["runs"])
    assert plan["flops_per_token"] == "6N_total"
    assert all(row["state"] == "new" and row["estimated_seconds"] > 0 for row in plan["runs"])
    assert plan["totals"]["wall_seconds"] <= plan["totals"]["seconds_one_worker"]


def test_plan_state_resume_step(corpus_dir, tmp_path):
    """An interrupted run's metric rows go past its newest checkpoint; the plan shows where it resumes."""
    from scaling.run_store import RunDir, initial_summary
    from sweeps.plan import run_state

    run = expand(parse_spec(tiny_raw(corpus_dir)), tmp_path)[0]
    run_dir = RunDir.at(tmp_path, run.config.sweep, run.run_id)
    run_dir.path.mkdir(parents=True)
    run_dir.append_metrics([{"step": step, "loss": 3.0} for step in range(1, 8)])
    run_dir.write_summary({**initial_summary(run.run_id, run.config.sweep, "interrupted"), "steps_done": 4})
    state, done = run_state(tmp_path, run)
    assert state == f"interrupted 4/{run.steps}"
    assert done == pytest.approx(4 / run.steps)


def test_plan_running_without_lock_is_interrupted(corpus_dir, tmp_path):
    """A killed run's summary still reads "running", but no live process holds its lock, so it resumes."""
    from scaling.run_lock import RunLock
    from scaling.run_store import RunDir, initial_summary
    from sweeps.plan import run_state

    run = expand(parse_spec(tiny_raw(corpus_dir)), tmp_path)[0]
    run_dir = RunDir.at(tmp_path, run.config.sweep, run.run_id)
    run_dir.path.mkdir(parents=True)
    run_dir.write_summary({**initial_summary(run.run_id, run.config.sweep, "running"), "steps_done": 4})

    with RunLock(run_dir.path):
        while_locked, _ = run_state(tmp_path, run)
    after_kill, _ = run_state(tmp_path, run)

    assert while_locked == f"running 4/{run.steps}"
    assert after_kill == f"interrupted 4/{run.steps}"


def test_interrupted_launch_accounts_for_every_run(corpus_dir, tmp_path, caplog):
    """After Ctrl-C the table and the log name what each run was left as: done, stopped, or not started."""
    from rich.console import Console

    from scaling.run_store import RunDir, initial_summary
    from sweeps.display import outcomes_table
    from sweeps.outcomes import RunOutcome, outcomes_after_interrupt

    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["1e4", "2e4", "4e4"]}))
    done, stopped, waiting = expand(spec, tmp_path)
    for run, status, steps in ((done, "completed", 9), (stopped, "interrupted", 6)):
        RunDir.at(tmp_path, run.config.sweep, run.run_id).write_summary(
            {**initial_summary(run.run_id, run.config.sweep, status), "steps_done": steps, "wall_time_s": 3.0})
    finished = {done.run_id: RunOutcome(done, "completed", {"final_val_loss": 2.5}, 3.0, None, 2.9)}

    with caplog.at_level(logging.WARNING):
        outcomes = outcomes_after_interrupt([done, stopped, waiting], tmp_path, finished)

    assert [outcome.status for outcome in outcomes] == ["completed", "interrupted", "not started"]
    assert (f"sweep interrupted: 1 of 3 runs completed, 1 stopped at their newest checkpoint ({stopped.run_id} at "
            f"step 6), 1 not started; rerun the same command to resume") in caplog.text
    console = Console(width=200, record=True)
    console.print(outcomes_table(spec, outcomes))
    lines = {line.split()[1]: line for line in console.export_text().splitlines() if line.startswith("│")}
    assert "completed" in lines[done.run_id]
    assert "2.5000" in lines[done.run_id]
    assert "interrupted at step 6" in lines[stopped.run_id]
    assert "3 s" in lines[stopped.run_id]
    assert lines[stopped.run_id].rstrip(" │").endswith("-")  # its CPU time this launch is unknown
    assert "not started" in lines[waiting.run_id]
    assert lines[waiting.run_id].count(" - ") == 3


def test_interrupt_keeps_ended_run_status(corpus_dir, tmp_path):
    """A SLURM job that finished as Ctrl-C came was shown as "not started" (a reviewer's table)."""
    from scaling.run_store import RunDir, initial_summary
    from sweeps.outcomes import outcomes_after_interrupt

    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["1e4", "2e4"]}))
    finished, failed = expand(spec, tmp_path)
    for run, status in ((finished, "completed"), (failed, "failed")):
        RunDir.at(tmp_path, run.config.sweep, run.run_id).write_summary(
            {**initial_summary(run.run_id, run.config.sweep, status), "final_val_loss": 2.5})
    outcomes = outcomes_after_interrupt([finished, failed], tmp_path, {})
    assert [outcome.status for outcome in outcomes] == ["completed", "failed"]
    assert outcomes[0].ok


def test_worker_stopped_while_starting_is_not_failed(corpus_dir, tmp_path):
    """A reviewer's Ctrl-C landed while a Ray task's worker was importing: exit status 130, no summary.json,
    and the run was recorded as failed. It is "not started" now, and nothing is written for it."""
    from scaling.run_store import RunDir
    from sweeps.outcomes import ended_outcome

    (run,) = expand(parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["1e4"]})), tmp_path)
    outcome = ended_outcome(run, tmp_path, 130, reason="worker exited with status 130", wall_s=1.0, cpu_s=0.5)
    assert outcome.status == "not started"
    assert RunDir.at(tmp_path, run.config.sweep, run.run_id).summary() is None


def record_completed_runs(runs: list, root: Path) -> None:
    """Write config.json and a completed summary.json for each run, as a finished sweep leaves them."""
    from scaling.config import TrainConfig
    from scaling.data import PreparedCorpus
    from scaling.run_store import RunDir, initial_summary
    from scaling.train import run_record

    for run in runs:
        run_dir = RunDir.at(root, run.config.sweep, run.run_id)
        run_dir.write_config(run_record(TrainConfig.from_dict(run.config.to_dict()),
                                        PreparedCorpus.load(run.config.data.path).meta))
        run_dir.write_summary({**initial_summary(run.run_id, run.config.sweep, "completed"), "final_val_loss": 2.5})


def test_conflicting_run_folders_refused(corpus_dir, tmp_path, capsys):
    """Completed runs of another corpus or config are neither skipped nor shown as completed."""
    from sweeps.launcher import check_existing_runs

    root = tmp_path / "runs"
    spec = parse_spec(tiny_raw(corpus_dir))
    record_completed_runs(expand(spec, root), root)
    plan = make_plan(spec, root, probe=False)
    assert [row.state for row in plan.rows] == ["completed", "completed"]
    assert plan.to_dict()["totals"]["runs_in_conflict"] == 0

    other_text = tmp_path / "other"
    other_text.mkdir()
    (other_text / "a.txt").write_text("a different corpus, with other words in it\n" * 300)
    for changed, named in ((tiny_raw(other_text), f"trained on another corpus (source {corpus_dir} -> {other_text}"),
                           (tiny_raw(corpus_dir, optimizer={"peak_lr": "3e-2", "warmup_steps": 5}),
                            "optimizer.peak_lr 0.01 -> 0.03")):
        changed_spec = parse_spec(changed)
        plan = make_plan(changed_spec, root, probe=False)
        assert [row.state for row in plan.rows] == ["conflict", "conflict"]
        assert all(named in row.conflict for row in plan.rows)
        totals = plan.to_dict()["totals"]
        assert (totals["runs_to_do"], totals["runs_in_conflict"]) == (0, 2)
        plan.print()
        printed = " ".join(capsys.readouterr().out.split())
        assert "`scaling sweep launch` refuses the sweep" in printed
        assert ("remaining: 0 runs, 0 s on one worker, about 0 s wall with 1 worker; and 2 runs in conflict (below), "
                "so `launch` refuses the whole sweep until they are resolved") in printed
        with pytest.raises(UserError, match=re.escape(named)):
            check_existing_runs(expand(changed_spec, root), root)
        with pytest.raises(UserError, match=re.escape(named)):
            run_sweep(changed_spec, root, workers=1, progress=False)
    assert not (root / "tiny" / LOGS_FOLDER).exists()  # no worker was started


def test_sweep_corpus_below_one_batch(tmp_path):
    text = tmp_path / "tiny_text"
    text.mkdir()
    (text / "a.txt").write_text("hello world\nsecond line\nthird line\n")
    spec = parse_spec(tiny_raw(text))
    for attempt in (lambda: make_plan(spec, tmp_path / "runs", probe=False),
                    lambda: run_sweep(spec, tmp_path / "runs", workers=1, progress=False)):
        with pytest.raises(UserError, match=r"fewer than one batch of batch_size \* seq_len \+ 1 = 129; use a larger "
                                            r"data.source, or lower train.batch_size"):
            attempt()


def test_plan_worker_start_once(corpus_dir, tmp_path):
    from dataclasses import replace

    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["1e9", "3e9"], "params": ["4K", "1.2e4"]}))
    plan = make_plan(spec, tmp_path / "runs", probe=False, workers=2)
    # A long worker start shows where it is charged: once on each of the 2 workers, once on a single worker.
    slow_start = replace(plan, cost=replace(plan.cost, startup_s=100.0, tracking_service_s=0.0))
    runs = [row.seconds for row in plan.rows]
    assert slow_start.one_worker_seconds() == pytest.approx(sum(runs) + 100.0)
    assert 100.0 + max(runs) <= slow_start.wall_seconds() <= 100.0 + sum(runs)
    assert all(row.seconds < 100.0 for row in plan.rows)


def test_outcome_table_train_time(corpus_dir, tmp_path):
    from rich.console import Console

    from sweeps.display import outcomes_table
    from sweeps.outcomes import RunOutcome

    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"budgets": ["1e9"], "params": ["4K", "1.2e4"]}))
    first, second = expand(spec, tmp_path / "runs")
    # A run done earlier and a run trained now both show summary.json's time; CPU time only for this launch.
    outcomes = [RunOutcome(first, "skipped", {"final_val_loss": 2.5, "wall_time_s": 41.0}, 0.0, None),
                RunOutcome(second, "completed", {"final_val_loss": 2.25, "wall_time_s": 17.0}, 19.5, None, 12.0)]
    console = Console(width=200, record=True)
    console.print(outcomes_table(spec, outcomes))
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if "C1e9" in line}
    assert "41 s" in rows[first.run_id]
    assert "done earlier" in rows[first.run_id]
    assert "17 s" in rows[second.run_id]
    assert "12 s" in rows[second.run_id]
    assert "19 s" not in rows[second.run_id]
    assert "20 s" not in rows[second.run_id]


# ---------------------------------------------------------------- resources


def test_cores_are_split_into_disjoint_equal_slots():
    slots = split_cores(2, cores=[0, 1, 2, 3, 4])
    assert [slot.cores for slot in slots] == [(0, 1), (2, 3)]
    assert split_cores(3, cores=[0, 1])[2].cores == (0,)
    env = slots[0].environment({"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env[CORES_ENV] == "0,1"
    assert "xla_cpu_multi_thread_eigen" not in env["XLA_FLAGS"]
    single = split_cores(1, cores=[3])[0].environment({"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert single["XLA_FLAGS"] == f"{SINGLE_THREAD_XLA_FLAGS} --xla_dump_to=/tmp/x"
    assert single["OMP_NUM_THREADS"] == "1"


def test_single_core_worker_keeps_xla_flags():
    # The worker's flags come first; a token XLA cannot read there would hide the user's flags after it.
    env = split_cores(1, cores=[0])[0].environment(
        {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert all(token.startswith("--") for token in env["XLA_FLAGS"].split())
    result = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "2", result.stderr


def test_worker_process_pins_itself_to_its_cores():
    core = sorted(os.sched_getaffinity(0))[-1]
    env = split_cores(1, cores=[core])[0].environment()
    code = "from sweeps.resources import pin_to_assigned_cores as p; p(); import os; print(sorted(os.sched_getaffinity(0)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [core]


# ---------------------------------------------------------------- launcher (trains tiny models)


def test_launch_completes_runs_then_skips_them(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir))
    runs = tmp_path / "runs"
    outcomes = run_sweep(spec, runs, workers=2, progress=False)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    for outcome in outcomes:
        summary = RunDir.at(runs, "tiny", outcome.run.run_id).summary()
        assert summary["status"] == "completed"
        assert summary["steps_done"] == outcome.run.steps
        assert math.isfinite(summary["final_val_loss"])
        assert summary["final_val_loss"] < math.log(256)  # below the loss of a uniform guess over bytes
        assert outcome.summary == summary

    logs = {path: path.read_text() for path in (runs / "tiny" / LOGS_FOLDER).iterdir()}
    again = run_sweep(spec, runs, workers=2, progress=False)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert [o.summary for o in again] == [o.summary for o in outcomes]
    assert {path: path.read_text() for path in logs} == logs  # no worker was started


def test_launch_relays_the_warnings_runs_log(corpus_dir, tmp_path, caplog):
    """A warning logged inside a worker (here: a warmup longer than a fifth of the run) reaches the launcher's
    log as it happens, named by run, and stays in the run's own log."""
    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["20K"]},
                               optimizer={"peak_lr": "1e-2", "warmup_steps": 5000}))
    caplog.set_level(logging.WARNING, logger="sweeps.launcher")
    (outcome,) = run_sweep(spec, tmp_path / "runs", workers=1, progress=False)
    assert outcome.status == "completed"
    relayed = [record.getMessage() for record in caplog.records if record.name == "sweeps.launcher"]
    expected = f"run {outcome.run.run_id}: warmup_steps=5000 exceeds 20% of the run's {outcome.run.steps} steps"
    assert [message for message in relayed if message.startswith(expected)], relayed
    assert "warmup_steps=5000 exceeds" in outcome.log_path.read_text()


def test_launch_reports_failed_run_and_finishes_others(corpus_dir, tmp_path, capsys):
    import yaml

    path = tmp_path / "fails.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(corpus_dir, name="fails")))
    runs = tmp_path / "runs"
    blocked = runs / "fails" / "N4e3-D2e4"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run folder should be")

    args = argparse.Namespace(spec=str(path), runs=str(runs), workers=2, no_progress=False)
    assert cli.launch_command(args) == 1
    out = capsys.readouterr().out
    assert "failed" in out
    assert "completed" in out
    assert RunDir.at(runs, "fails", "N1.2e4-D2e4").summary()["status"] == "completed"
    log_text = (runs / "fails" / LOGS_FOLDER / "N4e3-D2e4.log").read_text()
    assert "N4e3-D2e4" in log_text
    assert "N4e3-D2e4 is a file; move it" in log_text  # the reason, in one line


def test_launch_resumes_killed_run_from_checkpoint(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir, name="resume", grid={"params": ["4K"], "tokens": ["80K"]}))
    runs = tmp_path / "runs"
    (run,) = expand(spec, runs)
    run_dir = RunDir.at(runs, "resume", run.run_id)
    entry = start_run(run, split_cores(1)[0], runs, worker=None)
    process = entry.worker.process
    deadline = time.time() + 120
    try:
        while not any(p.name.isdigit() for p in run_dir.checkpoint_dir.glob("*")) and process.poll() is None:
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.stdin.close()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed; lengthen it"
    log_path = entry.log_path
    assert run_dir.summary()["status"] == "running"
    rows_before = {row["step"]: row for row in run_dir.metrics()}

    (outcome,) = run_sweep(spec, runs, workers=1, progress=False)
    assert outcome.status == "completed"
    assert outcome.summary["steps_done"] == run.steps
    resumed_from = int(log_path.read_text().split("resumes from step ")[1].split()[0])
    assert 0 < resumed_from < run.steps
    rows_after = {row["step"]: row for row in run_dir.metrics()}
    assert sorted(rows_after) == sorted(set(rows_after))
    # Rows up to the checkpoint are the ones written before the kill, untouched (their wall clock included).
    steps_kept = [step for step in rows_before if step <= resumed_from]
    assert steps_kept
    assert all(rows_after[step] == rows_before[step] for step in steps_kept)
    assert max(rows_after) == run.steps


@pytest.mark.slow
def test_plan_probe_measures_step_time(corpus_dir, tmp_path):
    spec = parse_spec(tiny_raw(corpus_dir))
    plan = make_plan(spec, tmp_path / "runs", probe=True, workers=1)
    assert plan.cost.method.startswith("measured")
    assert plan.cost.seconds_per_flop > 0
    assert plan.cost.compile_s > 0
    assert all(row.seconds > plan.cost.compile_s for row in plan.rows)


def test_next_run_prefers_worker_programs_within_share():
    """A worker goes on with a run of a shape it has compiled if that run is at least half as long as the
    longest waiting. Otherwise the longest run goes first."""
    from types import SimpleNamespace

    from scaling.config import ModelConfig, program_identity
    from sweeps.launcher import next_run_index

    def run(run_id: str, d_model: int):
        model = ModelConfig(vocab_size=256, d_model=d_model, n_layers=1, n_heads=2, max_seq_len=128)
        return SimpleNamespace(run_id=run_id, config=TrainConfig(model=model))

    todo = [run("long", 64), run("mid", 32), run("short", 16)]
    weights = {"long": 10.0, "mid": 6.0, "short": 2.0}

    def worker(*d_models: int):
        return SimpleNamespace(alive=True, programs=[program_identity(todo_run.config) for todo_run in todo
                                                     if todo_run.config.model.d_model in d_models])

    assert next_run_index(todo, None, weights) == 0
    assert next_run_index(todo, worker(), weights) == 0
    assert next_run_index(todo, worker(32), weights) == 1
    assert next_run_index(todo, worker(16), weights) == 0  # 2 s is below half of 10 s
    assert next_run_index(todo, worker(64, 32), weights) == 0


def test_corpus_difference_names_the_changed_settings():
    from scaling.run_checks import corpus_difference

    old = {"source": "a.txt", "settings": {"tokenizer": "bytes", "val_fraction": 0.05}}
    assert corpus_difference(old, {**old, "settings": {"tokenizer": "bytes", "val_fraction": 0.1}}) == (
        "val_fraction 0.05 -> 0.1")
    assert corpus_difference(old, {**old, "source": "b.txt"}) == "source a.txt -> b.txt"
    assert corpus_difference(old, dict(old)) == "same source and settings, other text"


def test_plan_warns_about_clipped_warmup_and_repeated_data(corpus_dir, tmp_path, capsys):
    """What a launch would warn about run by run, the plan prints once, before anything runs."""
    spec = parse_spec(tiny_raw(corpus_dir, optimizer={"peak_lr": "1e-2", "warmup_steps": 5000},
                               grid={"params": ["4K"], "tokens": ["20K", "2e5"]}))
    plan = make_plan(spec, tmp_path / "runs", probe=False)
    plan.print()
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: optimizer.warmup_steps=5000 is more than a fifth of 2 runs" in out
    repeated = [row for row in plan.rows if row.epochs > 1]
    assert repeated
    runs_word = "run" if len(repeated) == 1 else "runs"
    assert f"warning: {len(repeated)} {runs_word} will see training data more than once" in out


def test_plan_title_shows_the_description(corpus_dir, tmp_path, capsys):
    spec = parse_spec({**tiny_raw(corpus_dir), "description": "two token counts on the test corpus"})
    make_plan(spec, tmp_path / "runs", probe=False).print()
    assert "(grid, 2 runs) from <spec>: two token counts on the test corpus" in " ".join(capsys.readouterr().out.split())


def test_plan_warns_about_budgets_approach2_cannot_use(corpus_dir, tmp_path, capsys):
    """A reviewer wrote `3e10: 3e3`, one size where a list belongs. The plan now warns that approach 2 drops it."""
    spec = parse_spec(tiny_raw(corpus_dir, isoflop={"params": {"1e9": "4K", "3e9": ["4K", "8K", "1.2e4"]}}))
    make_plan(spec, tmp_path / "runs", probe=False).print()
    out = " ".join(capsys.readouterr().out.split())
    assert ("warning: 1 budget (1e9) has fewer than 3 sizes, so approach 2 (a parabola per budget) leaves it out; "
            "list at least 3 sizes around each budget's optimum") in out


def test_plan_warns_about_tokens_rounded_to_whole_batches(corpus_dir, tmp_path, capsys):
    """A reviewer's grid of 700 tokens trained 512 with no word about it."""
    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["700", "20K"]}))
    plan = make_plan(spec, tmp_path / "runs", probe=False)
    per_step = spec.train.tokens_per_step
    assert [row.run.tokens for row in plan.rows] == [round(700 / per_step) * per_step,
                                                     round(20_000 / per_step) * per_step]
    plan.print()
    out = " ".join(capsys.readouterr().out.split())
    short = plan.rows[0].run
    assert (f"warning: 1 run trains on more than 1% more or fewer tokens than the spec gives, since D is rounded to "
            f"whole batches of {per_step} tokens ({short.run_id}; {short.run_id}: 700 to {short.tokens:,})") in out


def test_size_far_from_what_ladder_builds_warned(corpus_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sweeps.spec"):
        expand(parse_spec(tiny_raw(corpus_dir, grid={"params": ["1K", "4K"], "tokens": ["20K"]})), tmp_path / "runs")
    (message,) = [record.getMessage() for record in caplog.records if "nearest shape" in record.getMessage()]
    assert message.startswith("model size 1e3: the nearest shape the ladder builds is d8 L1")


def test_grouped_query_attention_in_a_sweep(corpus_dir, tmp_path, caplog):
    """model.query_heads_per_kv gives each shape n_heads / g key/value heads; a shape with fewer heads keeps
    multi-head attention and warns."""
    raw = tiny_raw(corpus_dir, grid={"params": ["4K", "4e4"], "tokens": ["20K"]})
    raw["model"] = {"head_dim": 8, "aspect_ratio": 8, "query_heads_per_kv": 2}
    with caplog.at_level(logging.WARNING, logger="sweeps.spec"):
        small, large = expand(parse_spec(raw), tmp_path / "runs")
    assert large.config.model.n_heads % 2 == 0
    assert large.config.model.kv_heads * 2 == large.config.model.n_heads
    if small.config.model.n_heads % 2:
        assert small.config.model.kv_heads == small.config.model.n_heads
        assert "not a multiple of model.query_heads_per_kv=2, so it uses multi-head attention" in caplog.text
    assert parse_spec(tiny_raw(corpus_dir)).model.query_heads_per_kv == 1


def test_size_ten_times_from_what_ladder_builds_refused(corpus_dir, tmp_path):
    """A reviewer's typo 3 (for 3K) trained a 3.1K model under the id N3e0; now the plan refuses it."""
    with pytest.raises(UserError, match=r"^sweep tiny: model size 3e0: the nearest shape the ladder builds, d8 L1 "
                                        r"H1/1 \(3.1K total, [^)]*\), is 1,03\d times the size asked for \(a suffix "
                                        r"left out, K for thousands\?\); ask for sizes within 10 times of what the "
                                        r"ladder builds$"):
        expand(parse_spec(tiny_raw(corpus_dir, grid={"params": ["3", "4K"], "tokens": ["20K"]})), tmp_path / "runs")


def test_run_completed_meanwhile_is_skipped(corpus_dir, tmp_path):
    from scaling.run_store import RunDir, initial_summary
    from sweeps.launcher import _completed_meanwhile

    runs = tmp_path / "runs"
    first, second = expand(parse_spec(tiny_raw(corpus_dir)), runs)
    RunDir.at(runs, "tiny", first.run_id).path.mkdir(parents=True)
    RunDir.at(runs, "tiny", first.run_id).write_summary(initial_summary(first.run_id, "tiny", "completed"))
    assert _completed_meanwhile(first, runs).status == "skipped"
    assert _completed_meanwhile(second, runs) is None


def test_locked_run_trains_elsewhere(corpus_dir, tmp_path, caplog):
    """A second launch of a sweep reports the runs locked by the first one as trained elsewhere, not failed."""
    from scaling.run_lock import RunLock
    from scaling.run_store import RunDir

    spec = parse_spec(tiny_raw(corpus_dir))
    runs = tmp_path / "runs"
    locked, free = expand(spec, runs)
    locked_dir = RunDir.at(runs, "tiny", locked.run_id)
    locked_dir.path.mkdir(parents=True)
    with RunLock(locked_dir.path):  # as the first launch's worker locks it while it trains the run
        with caplog.at_level(logging.WARNING, logger="sweeps.outcomes"):
            outcomes = {outcome.run.run_id: outcome for outcome in run_sweep(spec, runs, workers=1, progress=False)}
    assert f"is being trained by process {os.getpid()} on " in caplog.text  # not the lock file's raw JSON
    assert outcomes[locked.run_id].status == "elsewhere"
    assert not outcomes[locked.run_id].ok
    assert locked_dir.summary() is None  # its summary is left to the process that has the lock
    assert outcomes[free.run_id].status == "completed"
    # Left to the lock's holder before any worker started on it, so this launch wrote no log for it.
    assert not run_log_path(runs, "tiny", locked.run_id).exists()
    assert run_log_path(runs, "tiny", free.run_id).exists()


def test_launch_exit_status_for_locked_run(corpus_dir, tmp_path, caplog):
    import yaml

    from scaling.run_lock import RunLock
    from scaling.run_store import RunDir

    path = tmp_path / "held.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(corpus_dir, name="held")))
    runs = tmp_path / "runs"
    locked, _ = expand(parse_spec(tiny_raw(corpus_dir, name="held")), runs)
    locked_dir = RunDir.at(runs, "held", locked.run_id)
    locked_dir.path.mkdir(parents=True)
    args = argparse.Namespace(spec=str(path), runs=str(runs), workers=1, no_progress=True)

    with RunLock(locked_dir.path):
        status = cli.launch_command(args)

    assert status == cli.EXIT_RUNS_ELSEWHERE  # not 1: no run failed
    assert "rerun this command once it has finished" in caplog.text


@pytest.mark.parametrize("backend", ["ray", "slurm"])
def test_workers_rejected_off_local(backend, corpus_dir, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(corpus_dir)))
    args = argparse.Namespace(spec=str(path), runs=str(tmp_path / "runs"), workers=4, no_progress=True,
                              backend=backend, address=None)
    with pytest.raises(UserError, match=f"--workers 4 applies to --backend local only; {backend} gives each run"):
        cli.launch_command(args)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_workers_capped_at_runs_left(corpus_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sweeps.launcher")
    outcomes = run_sweep(parse_spec(tiny_raw(corpus_dir)), tmp_path / "runs", workers=5, progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    assert "--workers 5: starting 2 workers, one per run left to train" in caplog.text


def test_local_backend_warns_of_resources(corpus_dir, tmp_path, caplog):
    spec = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["20K"]}, resources={"gpus": 1}))
    outcomes = run_with_backend("local", spec, tmp_path / "runs", workers=1, progress=False)
    assert outcomes[0].status == "completed"
    assert "resources: (1 CPU, 1 GPU per run) apply to --backend ray and slurm" in caplog.text


def test_plan_names_dropped_runs(corpus_dir, tmp_path, capsys):
    root = tmp_path / "runs"
    spec = parse_spec(tiny_raw(corpus_dir))
    record_completed_runs(expand(spec, root), root)
    smaller = parse_spec(tiny_raw(corpus_dir, grid={"params": ["4K"], "tokens": ["20K"]}))
    plan = make_plan(smaller, root, probe=False)
    dropped = sorted({run.run_id for run in expand(spec, root)} - {row.run.run_id for row in plan.rows})
    assert plan.to_dict()["other_runs"] == dropped
    plan.print()
    out = " ".join(capsys.readouterr().out.split())
    assert f"note: sweep tiny has 1 run folder that this spec no longer gives ({dropped[0]})" in out


def test_run_locked_after_plan_reported_elsewhere(corpus_dir, tmp_path):
    """A run locked between the launch's look and its worker's start: the worker exits with EXIT_LOCKED."""
    from scaling.run_store import RunDir
    from sweeps.outcomes import ended_outcome
    from sweeps.worker import EXIT_LOCKED

    runs = tmp_path / "runs"
    locked, _ = expand(parse_spec(tiny_raw(corpus_dir)), runs)
    outcome = ended_outcome(locked, runs, EXIT_LOCKED, reason="worker exited with status 4", wall_s=0.5, cpu_s=0.2)
    assert outcome.status == "elsewhere"
    assert outcome.summary["status"] == "running"
    assert RunDir.at(runs, "tiny", locked.run_id).summary() is None  # the store is left to the lock's holder
