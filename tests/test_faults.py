"""Runs survive kill -9 at chosen points, NaN losses and a failing W&B.

Each kill test trains in a child process that SIGKILLs itself at one point (tests/faults.py). It resumes
in this process and compares with one uninterrupted run of the same config. On CPU the final loss and
every metric row must be equal bit for bit, with no step duplicated or missing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.run_store import RunDir
from scaling.train import train
from tests.faults import (finished_steps, shared_jax_cache, stop_once, train_until_fault,  # noqa: F401
                          wandb_history, wandb_offline_runs)
from tests.test_train import COMPARED_KEYS, tiny_config

STEPS = 60  # 60 steps: rows every 5, evaluations and checkpoints every 20


def fault_config(corpus: Path, run_id: str, **changes):
    return tiny_config(corpus, tokens=STEPS * 32 * 8, run_id=run_id, sweep="faults", **changes)


@pytest.fixture(scope="module")
def reference(small_corpus, tmp_path_factory):
    """The uninterrupted run every faulted run must equal: (summary, metric rows)."""
    runs = tmp_path_factory.mktemp("reference_runs")
    summary = train(fault_config(small_corpus, "straight"), runs, progress=False)
    assert summary["status"] == "completed"
    run = RunDir.at(runs, "faults", "straight")
    return summary, run.metrics(), run


def compared(rows):
    return [{key: row.get(key) for key in COMPARED_KEYS} for row in rows]


def assert_equals_reference(run: RunDir, summary: dict, reference) -> None:
    reference_summary, reference_rows, _ = reference
    rows = run.metrics()
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    assert steps == [row["step"] for row in reference_rows]
    assert compared(rows) == compared(reference_rows)  # bitwise: floats compared with ==
    assert summary["status"] == "completed"
    assert summary["final_val_loss"] == reference_summary["final_val_loss"]
    assert summary["final_val_bpb"] == reference_summary["final_val_bpb"]
    assert summary["tokens_seen"] == reference_summary["tokens_seen"]
    assert run.summary() == summary


# (fault, metric rows on disk after the kill, finished checkpoints after the kill)
KILL_POINTS = [
    ("step:33", list(range(5, 31, 5)), [20]),  # mid-interval: rows to 30, resume from 20 drops 25 and 30
    ("checkpoint:40", list(range(5, 41, 5)), [20]),  # the write of 40 started, never finished
    ("eval:40", list(range(5, 36, 5)), [20]),  # evaluation of 40 under way: its row is not written
]


@pytest.mark.parametrize("fault, rows_after_kill, checkpoints_after_kill", KILL_POINTS,
                         ids=[point[0].split(":")[0] for point in KILL_POINTS])
def test_resume_after_kill_equals_uninterrupted(fault, rows_after_kill, checkpoints_after_kill, small_corpus,
                                                tmp_path, reference, caplog):
    run_id = f"killed-{fault.split(':')[0]}"  # one W&B id per case: the W&B service of this process keeps ids
    config = fault_config(small_corpus, run_id, wandb_mode="offline")
    run = RunDir.at(tmp_path, "faults", run_id)

    train_until_fault(config, tmp_path, fault)

    assert run.status() == "running"
    assert [row["step"] for row in run.metrics()] == rows_after_kill
    assert finished_steps(run.checkpoint_dir) == checkpoints_after_kill
    # summary.json names only a checkpoint whose write has ended: never one that the kill cut short.
    assert run.summary()["steps_done"] == checkpoints_after_kill[-1]
    if fault.startswith("checkpoint"):  # the kill landed inside the write: its folder keeps Orbax's temporary name
        assert any(path.name.startswith("40.") for path in run.checkpoint_dir.iterdir())

    with caplog.at_level(logging.INFO, logger="scaling.train"):
        summary = train(config, tmp_path, progress=False)
    assert f"resumes from step {checkpoints_after_kill[-1]}" in caplog.text

    assert_equals_reference(run, summary, reference)

    # W&B, offline: both attempts wrote to the same run id. The killed one lost what W&B had not written
    # yet (often everything). The resumed one sent the kept rows again, so it alone contains every step
    # once, with the values of metrics.jsonl.
    attempts = wandb_offline_runs(run.path)
    assert len(attempts) == 2, attempts
    assert attempts[0].parent.parent.name == "superseded"  # so `wandb sync wandb/offline-run-*` takes one
    assert list((run.path / "wandb").glob("offline-run-*")) == [attempts[1].parent]
    assert {path.name for path in attempts} == {f"run-faults-{run_id}.wandb"}
    killed_steps = [row["_step"] for row in wandb_history(attempts[0])]
    assert killed_steps == sorted(set(killed_steps))
    assert set(killed_steps) <= set(rows_after_kill)
    history = wandb_history(attempts[1], wait_for_exit=30)
    assert [row["_step"] for row in history] == [row["step"] for row in reference[1]]
    assert [row["train_loss"] for row in history] == [row["train_loss"] for row in reference[1]]


def test_killed_twice_and_torn_metrics_line(small_corpus, tmp_path, reference):
    """A second kill during the resumed run, then a torn last metrics line: still equal to the reference."""
    config = fault_config(small_corpus, "twice", wandb_mode="disabled")
    run = RunDir.at(tmp_path, "faults", "twice")
    train_until_fault(config, tmp_path, "step:27")
    train_until_fault(config, tmp_path, "eval:60")  # resumes from 20, killed while evaluating the last step
    assert finished_steps(run.checkpoint_dir) == [20, 40]
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 60, "tokens": 15')  # an append cut short

    summary = train(config, tmp_path, progress=False)

    assert_equals_reference(run, summary, reference)


def _train_until_ctrl_c_at(stop_step: int, config, runs: Path, monkeypatch) -> None:
    """Train `config` until a KeyboardInterrupt raised where step `stop_step` reads its batch, as a second
    Ctrl-C raises one; the patch is undone afterwards."""
    import scaling.train as train_module

    real_batch_at = train_module.batch_at

    def batch_at(tokens, step, **kwargs):
        if step == stop_step:
            raise KeyboardInterrupt
        return real_batch_at(tokens, step, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", batch_at)
    with pytest.raises(KeyboardInterrupt):
        train(config, runs, progress=False)
    monkeypatch.undo()


def test_ctrl_c_interrupted_then_resumed(small_corpus, tmp_path, reference, monkeypatch):
    """A KeyboardInterrupt at step 33, raised where the step's batch is read, as a second Ctrl-C raises one.
    summary.json records "interrupted" with the progress of checkpoint 20, the lock is free, and the next
    attempt resumes from 20 and ends equal to the uninterrupted run."""
    config = fault_config(small_corpus, "ctrl-c", wandb_mode="disabled")
    run = RunDir.at(tmp_path, "faults", "ctrl-c")
    _train_until_ctrl_c_at(33, config, tmp_path, monkeypatch)

    interrupted = run.summary()
    assert interrupted["status"] == "interrupted"
    assert interrupted["steps_done"] == 20
    assert interrupted["interrupted_at_step"] == 33  # 33 steps had finished; the 34th was reading its batch
    assert interrupted["tokens_seen"] == 20 * 32 * 8
    assert interrupted["error"] is None
    assert interrupted["final_val_loss"] is None
    assert finished_steps(run.checkpoint_dir) == [20]

    summary = train(config, tmp_path, progress=False)  # would raise RunLocked if the lock were still held
    assert_equals_reference(run, summary, reference)
    assert "interrupted_at_step" not in run.summary()


def test_ctrl_c_during_setup_records_the_run(small_corpus, tmp_path, reference, monkeypatch, caplog):
    """A KeyboardInterrupt while W&B starts, before the first step: summary.json records "interrupted", with
    nothing done on a fresh run and the checkpoint's progress on a resumed one, and the next attempt
    still ends equal to the uninterrupted run. Before, a fresh run stopped there had config.json alone."""
    import wandb

    def init(*args, **kwargs):
        raise KeyboardInterrupt

    config = fault_config(small_corpus, "setup-stop", wandb_mode="offline")
    run = RunDir.at(tmp_path, "faults", "setup-stop")
    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.WARNING, logger="scaling.train"), pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, progress=False)
    assert run.config_path.exists()
    fresh = run.summary()
    assert fresh["status"] == "interrupted"
    assert fresh["steps_done"] == 0
    assert fresh["interrupted_at_step"] == 0
    assert "interrupted during setup, before its first step; the next launch starts it afresh" in caplog.text

    # Stop the next attempt at step 33 (checkpoint 20), then the one after it while W&B starts again.
    monkeypatch.undo()
    _train_until_ctrl_c_at(33, config, tmp_path, monkeypatch)
    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, progress=False)
    resumed = run.summary()
    assert resumed["status"] == "interrupted"
    assert resumed["steps_done"] == 20
    assert resumed["tokens_seen"] == 20 * 32 * 8
    assert finished_steps(run.checkpoint_dir) == [20]

    monkeypatch.undo()
    summary = train(config.replace(wandb_mode="disabled"), tmp_path, progress=False)
    assert_equals_reference(run, summary, reference)


def test_failure_during_setup_is_recorded(small_corpus, tmp_path, monkeypatch):
    """An error while the initial state is drawn marks the run failed, with the error, not "never started"."""
    from scaling.train import Trainer

    def init_state(self, seed):
        raise MemoryError("cannot allocate the initial state (stand-in)")

    monkeypatch.setattr(Trainer, "init_state", init_state)
    config = fault_config(small_corpus, "setup-fails", wandb_mode="disabled")
    with pytest.raises(MemoryError):
        train(config, tmp_path, progress=False)
    summary = RunDir.at(tmp_path, "faults", "setup-fails").summary()
    assert summary["status"] == "failed"
    assert summary["error"] == "MemoryError: cannot allocate the initial state (stand-in)"


def test_signal_checkpoint_resume_equals_uninterrupted(small_corpus, tmp_path, reference, caplog):
    """SIGINT right after step 33, in a child process: the step ends, and a checkpoint of step 33 saves the
    steps of the row it cut (31 to 33). The next attempt resumes from 33 and ends equal to the uninterrupted
    run, the cut row's mean loss included."""
    from tests.faults import train_in_child

    config = fault_config(small_corpus, "signal", wandb_mode="disabled")
    run = RunDir.at(tmp_path, "faults", "signal")

    result = train_in_child(config, tmp_path, "signal:33")

    assert result.returncode != 0, result.stderr[-2000:]
    assert "the next launch resumes from step 33, its newest checkpoint" in result.stderr
    interrupted = run.summary()
    assert interrupted["status"] == "interrupted"
    assert interrupted["steps_done"] == 33
    assert interrupted["interrupted_at_step"] == 33
    assert interrupted["tokens_seen"] == 33 * 32 * 8
    assert finished_steps(run.checkpoint_dir) == [20, 33]
    assert [row["step"] for row in run.metrics()] == list(range(5, 31, 5))
    assert len(run.pending_metrics(33)) == 3

    with caplog.at_level(logging.INFO, logger="scaling.train"):
        summary = train(config, tmp_path, progress=False)
    assert "resumes from step 33" in caplog.text
    assert_equals_reference(run, summary, reference)
    assert not run.pending_metrics_path.exists()  # a completed run has no cut row left


@pytest.mark.slow
def test_random_kills_equal_uninterrupted(small_corpus, tmp_path, reference):
    """Five kills at random points and kinds, each attempt resuming the last; the end is bitwise equal."""
    chooser = random.Random(6)
    config = fault_config(small_corpus, "random", wandb_mode="disabled")
    run = RunDir.at(tmp_path, "faults", "random")
    done = 0
    for _ in range(5):
        step = chooser.randint(done + 1, STEPS)
        kind = chooser.choice(["step", "checkpoint", "eval"])
        if kind in ("checkpoint", "eval"):  # both happen at multiples of 20 only
            step = 20 * -(-step // 20)
        train_until_fault(config, tmp_path, f"{kind}:{step}")
        done = max(finished_steps(run.checkpoint_dir) or [0])
    summary = train(config, tmp_path, progress=False)
    assert_equals_reference(run, summary, reference)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # see test_faults_checkpoint.py
def test_resume_past_damaged_checkpoint(small_corpus, tmp_path, reference, caplog):
    """Checkpoints 20 and 40 finished, then 40 truncated. The resume uses 20 and warns naming 40. It saves
    40 again and ends equal to the uninterrupted run."""
    from tests.faults import damage_checkpoint

    config = fault_config(small_corpus, "damaged", wandb_mode="disabled")
    run = RunDir.at(tmp_path, "faults", "damaged")
    train_until_fault(config, tmp_path, "step:47")
    assert finished_steps(run.checkpoint_dir) == [20, 40]
    damage_checkpoint(run.checkpoint_dir / "40", "truncate_arrays")

    with caplog.at_level(logging.INFO):
        summary = train(config, tmp_path, progress=False)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("checkpoint at step 40" in message and "unreadable" in message for message in warnings), warnings
    assert "resumes from step 20" in caplog.text
    assert_equals_reference(run, summary, reference)
    assert finished_steps(run.checkpoint_dir) == [40, 60]  # 40 saved again; keep_checkpoints=2
    assert (run.checkpoint_dir / "unreadable-40").is_dir()  # the damaged copy is kept aside, not deleted


def test_nan_loss_stops_run_as_diverged(small_corpus, tmp_path, reference, monkeypatch, caplog):
    monkeypatch.setenv("SCALING_FAULT", "nan:23")
    config = fault_config(small_corpus, "nan")
    with caplog.at_level(logging.ERROR, logger="scaling.train"):
        summary = train(config, tmp_path, progress=False)
    run = RunDir.at(tmp_path, "faults", "nan")

    assert summary["status"] == "diverged"
    assert summary["diverged_step"] == 23  # the step itself, not the row that reported it
    assert summary["steps_done"] == 25
    assert run.summary() == summary
    rows = run.metrics()
    assert [row["step"] for row in rows] == list(range(5, 26, 5))
    assert rows[-1]["train_loss"] is None  # NaN has no JSON spelling
    assert compared(rows[:-1]) == compared(reference[1][:4])  # the steps before it are untouched
    assert finished_steps(run.checkpoint_dir) == [20]  # no checkpoint of a diverged state
    assert "diverged" in caplog.text
    assert "step 23" in caplog.text

    monkeypatch.delenv("SCALING_FAULT")
    assert train(config, tmp_path, progress=False) == summary  # a diverged run is final: not retrained


def test_huge_learning_rate_diverges(small_corpus, tmp_path, reference, caplog):
    from analysis.runs import load_runs
    from scaling.config import OptimizerConfig

    optimizer = OptimizerConfig(peak_lr=1.0, warmup_steps=1)
    # Configs reject a peak rate above 1 as a typo; set one anyway, since only such a rate diverges for certain.
    object.__setattr__(optimizer, "peak_lr", 1e30)
    config = fault_config(small_corpus, "lr1e30", optimizer=optimizer)
    summary = train(config, tmp_path, progress=False)
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_step"] <= summary["steps_done"] <= STEPS

    shutil.copytree(reference[2].path, tmp_path / "faults" / "straight", ignore=shutil.ignore_patterns("checkpoints"))
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        table = load_runs(tmp_path / "faults")
    assert [row.run_id for row in table.rows] == ["straight"]
    assert table.excluded == {"faults/lr1e30": "status diverged"}
    assert "faults/lr1e30" in caplog.text


class _BrokenLog:
    """Wraps a real W&B run, raising from `log` from the `fail_at`-th call on (as a dropped network would)."""

    def __init__(self, run, fail_at: int):
        self.run, self.fail_at, self.calls = run, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.run, name)

    def log(self, row, step):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise ConnectionError("W&B unreachable (stand-in for a network failure)")
        self.run.log(row, step=step)


def test_wandb_log_failing_mid_run(small_corpus, tmp_path, reference, monkeypatch, caplog):
    """W&B's log raises from the 3rd row on. No W&B server can run here, so the failure is a stand-in
    wrapped around a real offline run. Training, the local store and the summary must not notice."""
    import wandb

    real_init = wandb.init
    wrapped = []

    def init(*args, **kwargs):
        wrapped.append(_BrokenLog(real_init(*args, **kwargs), fail_at=3))
        return wrapped[-1]

    monkeypatch.setattr(wandb, "init", init)
    config = fault_config(small_corpus, "flaky", wandb_mode="offline")
    with caplog.at_level(logging.ERROR, logger="scaling.tracking"):
        summary = train(config, tmp_path, progress=False)

    assert_equals_reference(RunDir.at(tmp_path, "faults", "flaky"), summary, reference)
    failures = [record for record in caplog.records if record.name == "scaling.tracking"]
    assert len(failures) == 1, [record.getMessage() for record in failures]  # logged once, then W&B is off
    assert "W&B log failed at step 15" in failures[0].getMessage()
    assert wrapped[0].calls == 3  # nothing was sent after the failure
    wrapped[0].run.finish()


def test_wandb_init_failing(small_corpus, tmp_path, reference, monkeypatch, caplog):
    import wandb

    def init(*args, **kwargs):
        raise ConnectionError("W&B unreachable (stand-in: no server can run in the tests)")

    monkeypatch.setattr(wandb, "init", init)
    config = fault_config(small_corpus, "no_wandb", wandb_mode="online")
    with caplog.at_level(logging.ERROR, logger="scaling.tracking"):
        summary = train(config, tmp_path, progress=False)

    assert_equals_reference(RunDir.at(tmp_path, "faults", "no_wandb"), summary, reference)
    failures = [record.getMessage() for record in caplog.records if record.name == "scaling.tracking"]
    assert len(failures) == 1, failures
    assert "W&B init failed for run no_wandb" in failures[0]


TRACKER_CHILD = """
import logging, sys
from pathlib import Path
from scaling.tracking import Tracker
logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
tracker = Tracker(mode="offline", project="p", run_id="r", sweep="s", run_dir=Path(sys.argv[1]), config={})
print("RUN", tracker.run is not None)
"""


def test_bad_wandb_mode_variable_is_one_line(tmp_path):
    # The real wandb client rejects the variable while reading its settings, with a multi-line message. It
    # runs in a fresh process, because a W&B service started by an earlier test keeps its own settings.
    env = {**os.environ, "WANDB_MODE": "bogus", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WANDB_SERVICE", None)
    done = subprocess.run([sys.executable, "-c", TRACKER_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert "RUN False" in done.stdout
    failures = [line for line in done.stderr.splitlines() if line.startswith("scaling.tracking:")]
    assert len(failures) == 1
    assert "WANDB_MODE='bogus'; use online, offline or disabled" in failures[0]
    assert done.stderr.strip().splitlines()[-1] == failures[0]  # nothing of the W&B message after it


def test_fault_hook_rejects_a_bad_spec(monkeypatch):
    from scaling.train import fault_from_env

    monkeypatch.delenv("SCALING_FAULT", raising=False)
    assert fault_from_env() is None
    monkeypatch.setenv("SCALING_FAULT", "checkpoint:40")
    assert fault_from_env() == ("checkpoint", 40)
    monkeypatch.setenv("SCALING_FAULT", "disk:3")
    with pytest.raises(ValueError, match="SCALING_FAULT"):
        fault_from_env()


class _RecordingRun:
    """Stand-in for a resumed online W&B run (no W&B server can run in the tests), which already contains
    the steps below `starting_step`."""

    def __init__(self, starting_step: int):
        self.starting_step = starting_step
        self.logged: list[int] = []

    def log(self, row, step):
        self.logged.append(step)

    def finish(self, exit_code=0):
        pass


def test_resumed_wandb_run_gets_each_step_once(monkeypatch, tmp_path):
    import wandb

    from scaling.tracking import Tracker

    run = _RecordingRun(starting_step=25)
    monkeypatch.setattr(wandb, "init", lambda *args, **kwargs: run)
    tracker = Tracker(mode="online", project="p", run_id="r", sweep="s", run_dir=tmp_path, config={})
    tracker.log_rows([{"step": step} for step in range(5, 21, 5)])  # kept rows, resent after a resume
    for step in range(25, 61, 5):
        tracker.log({"step": step}, step=step)
    assert run.logged == list(range(25, 61, 5))


def test_failed_summary_write_keeps_the_old_file(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_summary({"status": "running", "steps_done": 20})
    with pytest.raises(TypeError):
        run.write_summary({"status": "completed", "steps_done": object()})  # fails midway through writing
    assert run.summary() == {"status": "running", "steps_done": 20}
    assert sorted(path.name for path in run.path.iterdir()) == ["summary.json"]  # no temporary file left


def test_torn_metrics_line_is_skipped_with_a_warning(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    run.append_metrics([{"step": 5, "train_loss": 3.0}, {"step": 10, "train_loss": 2.5}])
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 15, "train_lo')
    with caplog.at_level(logging.WARNING, logger="scaling.run_store"):
        assert [row["step"] for row in run.metrics()] == [5, 10]
    assert f"torn line 3 of {run.metrics_path}" in caplog.text


def test_killed_run_keeps_its_wall_time(small_corpus, tmp_path):
    config = tiny_config(small_corpus, tokens=60 * 32 * 8)
    train_until_fault(config, tmp_path, "step:47")
    run = RunDir.at(tmp_path, config.sweep, config.run_id)
    killed = run.summary()
    assert killed["status"] == "running"
    assert killed["steps_done"] == 40  # the last checkpoint before the kill
    assert killed["wall_time_s"] > 0

    assert killed["flops_spent"] == 6 * run.config()["params"]["total"] * killed["tokens_seen"]

    # A second attempt killed before its own first checkpoint keeps what the first one recorded.
    train_until_fault(config, tmp_path, "step:43")
    again = run.summary()
    assert (again["steps_done"], again["tokens_seen"], again["flops_spent"]) == (
        40, killed["tokens_seen"], killed["flops_spent"])
    assert again["wall_time_s"] == killed["wall_time_s"]

    resumed = train(config, tmp_path, progress=False)
    assert resumed["status"] == "completed"
    assert resumed["wall_time_s"] > killed["wall_time_s"]


def test_sigterm_to_train_marks_interrupted(small_corpus, tmp_path):
    """`scaling train` under a scheduler's SIGTERM stops as after Ctrl-C: exit 130, status "interrupted"."""
    config = fault_config(small_corpus, "sigterm", wandb_mode="disabled").replace(tokens=4000 * 32 * 8)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    run = RunDir.at(tmp_path / "runs", "faults", "sigterm")
    command = [sys.executable, "-m", "scaling.cli", "train", str(path), "--runs", str(tmp_path / "runs"),
               "--no-progress"]

    process = stop_once(command, lambda: (run.summary() or {}).get("steps_done"),
                        lambda process: process.send_signal(signal.SIGTERM), cwd=Path(__file__).resolve().parents[1])

    assert process.returncode == 130, process.stderr_text[-3000:]
    summary = run.summary()
    assert summary["status"] == "interrupted"
    # The step in flight ended and was saved: the next attempt resumes exactly where this one stopped.
    assert summary["steps_done"] == summary["interrupted_at_step"]
    assert summary["steps_done"] in finished_steps(run.checkpoint_dir)
