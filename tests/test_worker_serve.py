"""Long-lived sweep workers: several runs through one `python -m sweeps.worker --serve` process.

The runs are tiny real trainings on the tiny corpus of tests/test_sweeps.py. A worker trains run after
run, each run's output in its own log. Runs trained one after another in one process equal, bit for bit,
the same runs trained each in a fresh process. A worker killed mid-run costs that run only, and user
errors and locked runs do not end a worker. W&B makes one offline run per training run. An interrupt
stops the workers, and a relaunch resumes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from scaling.run_lock import RunLock
from scaling.run_store import RunDir
from sweeps.launcher import run_sweep
from sweeps.outcomes import LOGS_FOLDER, run_log_path
from sweeps.resources import split_cores
from sweeps.spec import expand, parse_spec
from sweeps.worker import EXIT_COMPLETED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USER_ERROR
from tests.faults import shared_jax_cache, stop_once, wandb_history, wandb_offline_runs  # noqa: F401
from tests.test_sweeps import corpus_dir, tiny_raw  # noqa: F401
from tests.test_train import COMPARED_KEYS

REPO = Path(__file__).resolve().parents[1]
WORKER_PID = re.compile(r"worker (\d+) for run (\S+)")


def sweep_raw(corpus: Path, name: str, tokens: list[str], **train) -> dict:
    """Two model shapes x the given token budgets: the same shape comes back with another shape between."""
    return tiny_raw(corpus, name=name, grid={"params": ["4K", "1.2e4"], "tokens": tokens},
                    train={"seq_len": 32, "batch_size": 4, "eval_tokens": 512, "wandb_mode": "disabled", **train})


def worker_pids(log_text: str) -> dict[str, int]:
    """Return {run id: pid of the worker that trained it} from the lines sweeps.worker logs per run."""
    return {run_id: int(pid) for pid, run_id in WORKER_PID.findall(log_text)}


def compared(rows: list[dict]) -> list[dict]:
    return [{key: row.get(key) for key in COMPARED_KEYS} for row in rows]


def start_server(slot_cores: tuple[int, ...] | None = None) -> subprocess.Popen:
    """Start `python -m sweeps.worker --serve` by hand, as the launcher does, with its stderr kept."""
    slot = split_cores(1, cores=slot_cores)[0]
    env = slot.environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "sweeps.worker", "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)


def request(server: subprocess.Popen, run, runs: Path) -> dict:
    """Send one run to the server and return its reply."""
    log_path = run_log_path(runs, run.config.sweep, run.run_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server.stdin.write(json.dumps({"config": run.config.to_dict(), "runs_root": str(runs),
                                   "log_path": str(log_path)}) + "\n")
    server.stdin.flush()
    line = server.stdout.readline()
    assert line, f"the worker exited without replying:\n{server.stderr.read()[-3000:]}"
    return json.loads(line)


# ---------------------------------------------------------------- the protocol, by hand


def test_server_replies_once_per_run_and_keeps_serving(corpus_dir, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    good, other = expand(parse_spec(sweep_raw(corpus_dir, "serve", ["1e4"])), runs)
    missing_corpus = replace(good.config.data, path=str(tmp_path / "no-such-corpus"))
    bad = replace(good, run_id="bad", config=good.config.replace(run_id="bad", data=missing_corpus))
    server = start_server()
    try:
        first = request(server, good, runs)
        assert first["run_id"] == good.run_id
        assert first["exit_status"] == EXIT_COMPLETED
        assert first["error"] is None
        assert 0 < first["cpu_s"]
        assert 0 < first["wall_s"]

        # A user error (missing corpus) and a locked run are replied to, and the worker goes on serving.
        rejected = request(server, bad, runs)
        assert rejected["exit_status"] == EXIT_USER_ERROR
        assert "no-such-corpus" in rejected["error"]  # the launcher shows this line, not only the run's log
        with RunLock(RunDir.at(runs, "serve", other.run_id).path):
            assert request(server, other, runs)["exit_status"] == EXIT_LOCKED
        assert request(server, other, runs)["exit_status"] == EXIT_COMPLETED

        server.stdin.close()  # end of input: the worker exits with status 0
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert RunDir.at(runs, "serve", good.run_id).status() == "completed"
    assert RunDir.at(runs, "serve", other.run_id).status() == "completed"

    logs = runs / "serve" / LOGS_FOLDER
    good_log = (logs / f"{good.run_id}.log").read_text()
    assert f"run {good.run_id} completed" in good_log
    assert other.run_id not in good_log  # each run's output goes to its own log only
    other_log = (logs / f"{other.run_id}.log").read_text()
    assert "is being trained by" in other_log
    assert f"run {other.run_id} completed" in other_log
    assert "no-such-corpus" in (logs / "bad.log").read_text()
    assert server.stderr.read() == ""  # nothing leaked to the stderr the worker started with


# ---------------------------------------------------------------- through the launcher


def test_server_exits_quietly_when_the_launcher_is_gone(corpus_dir, tmp_path):  # noqa: F811
    """A launcher that exits before reading a reply (after an interrupt) leaves no traceback in the run's log."""
    runs = tmp_path / "runs"
    run = expand(parse_spec(sweep_raw(corpus_dir, "gone", ["1e4"])), runs)[0]
    log_path = run_log_path(runs, run.config.sweep, run.run_id)
    log_path.parent.mkdir(parents=True)
    server = start_server()
    server.stdin.write(json.dumps({"config": run.config.to_dict(), "runs_root": str(runs),
                                   "log_path": str(log_path)}) + "\n")
    server.stdin.flush()
    server.stdout.close()  # the reply now has no reader
    assert server.wait(timeout=300) == EXIT_INTERRUPTED, server.stderr.read()[-3000:]
    server.stdin.close()
    server.stderr.close()
    text = log_path.read_text()
    assert "the launcher is gone, so the worker exits without replying" in text
    assert "Traceback" not in text
    assert "Exception ignored" not in text
    assert RunDir.at(runs, run.config.sweep, run.run_id).summary()["status"] == "completed"


def test_one_worker_trains_all_runs_in_one_process(corpus_dir, tmp_path):  # noqa: F811
    spec = parse_spec(sweep_raw(corpus_dir, "one", ["1e4", "2e4"]))
    runs = tmp_path / "runs"
    outcomes = run_sweep(spec, runs, workers=1, progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed"] * 4

    logs = {outcome.run.run_id: outcome.log_path.read_text() for outcome in outcomes}
    pids = {}
    for run_id, text in logs.items():
        pids.update(worker_pids(text))
        assert set(worker_pids(text)) == {run_id}, f"{run_id}.log holds another run's output"
    assert len(set(pids.values())) == 1, pids
    headers = [line for text in logs.values() for line in text.splitlines() if line.startswith("---")]
    assert sum("worker start" in line for line in headers) == 1, headers
    assert sum(f"in worker {pids[outcomes[0].run.run_id]} on cores" in line for line in headers) == 3, headers
    for outcome in outcomes:
        assert outcome.cpu_s > 0
        assert outcome.wall_s > 0


def test_runs_in_one_worker_equal_fresh_processes(corpus_dir, tmp_path):  # noqa: F811
    """Four runs (two shapes, two budgets) through one worker equal each run in its own process, bit for bit."""
    spec = parse_spec(sweep_raw(corpus_dir, "same", ["1e4", "2e4"]))
    served_root, fresh_root = tmp_path / "served", tmp_path / "fresh"
    served = run_sweep(spec, served_root, workers=1, progress=False)
    assert [outcome.status for outcome in served] == ["completed"] * 4
    shapes = [outcome.run.config.model for outcome in served]
    assert len(set(shapes)) == 2  # the worker switched shape and came back to one it had trained

    for run in expand(spec, fresh_root):
        child = subprocess.run([sys.executable, "-m", "sweeps.worker"], cwd=REPO, capture_output=True, text=True,
                               input=json.dumps({"config": run.config.to_dict(), "runs_root": str(fresh_root)}),
                               timeout=300)
        assert child.returncode == 0, child.stderr[-3000:]

    for outcome in served:
        served_run = RunDir.at(served_root, "same", outcome.run.run_id)
        fresh_run = RunDir.at(fresh_root, "same", outcome.run.run_id)
        assert served_run.metrics(), outcome.run.run_id
        assert compared(served_run.metrics()) == compared(fresh_run.metrics()), outcome.run.run_id
        assert served_run.summary()["final_val_loss"] == fresh_run.summary()["final_val_loss"]
        assert served_run.summary()["final_val_bpb"] == fresh_run.summary()["final_val_bpb"]


def test_killed_worker_loses_only_its_run(corpus_dir, tmp_path, monkeypatch):  # noqa: F811
    """SIGKILL in the long run (the first, longest-first): it fails, the short run completes in a fresh
    worker, and the next launch resumes the long run from its checkpoint."""
    spec = parse_spec(sweep_raw(corpus_dir, "killed", ["1e4"], checkpoint_interval=20)
                      | {"grid": {"params": ["4K"], "tokens": ["5e3", "2e4"]}})
    runs = tmp_path / "runs"
    long_run, short_run = sorted(expand(spec, runs), key=lambda run: -run.steps)
    assert short_run.steps < 100 < long_run.steps
    monkeypatch.setenv("SCALING_FAULT", "step:100")  # reached by the long run only

    first = {outcome.run.run_id: outcome for outcome in run_sweep(spec, runs, workers=1, progress=False)}
    assert first[long_run.run_id].status == "failed"
    assert "killed by SIGKILL" in first[long_run.run_id].summary["error"]
    assert RunDir.at(runs, "killed", long_run.run_id).status() == "failed"
    assert first[short_run.run_id].status == "completed"
    long_pid = worker_pids(first[long_run.run_id].log_path.read_text())[long_run.run_id]
    short_log = first[short_run.run_id].log_path.read_text()
    assert "--- worker start" in short_log  # a fresh worker, not the killed one
    assert worker_pids(short_log)[short_run.run_id] != long_pid

    monkeypatch.delenv("SCALING_FAULT")
    second = {outcome.run.run_id: outcome for outcome in run_sweep(spec, runs, workers=1, progress=False)}
    assert second[short_run.run_id].status == "skipped"
    assert second[long_run.run_id].status == "completed"
    assert "resumes from step 80" in second[long_run.run_id].log_path.read_text()


def test_wandb_offline_run_per_training_run(corpus_dir, tmp_path):  # noqa: F811
    """Several wandb.init and finish calls in one worker: each run has its own offline W&B run, named by its
    id, holding exactly its metric rows."""
    spec = parse_spec(sweep_raw(corpus_dir, "wb", ["1e4"], wandb_mode="offline"))
    runs = tmp_path / "runs"
    outcomes = run_sweep(spec, runs, workers=1, progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    pids = [worker_pids(outcome.log_path.read_text())[outcome.run.run_id] for outcome in outcomes]
    assert pids[0] == pids[1]
    for outcome in outcomes:
        run = RunDir.at(runs, "wb", outcome.run.run_id)
        (offline,) = wandb_offline_runs(run.path)
        assert offline.name == f"run-wb-{outcome.run.run_id}.wandb"
        history = wandb_history(offline, wait_for_exit=30)
        assert [row["_step"] for row in history] == [row["step"] for row in run.metrics()]
        assert [row["train_loss"] for row in history] == [row["train_loss"] for row in run.metrics()]


# Python's SIGINT handler is restored as a terminal would have it: when the test suite itself runs as a
# shell's background job, SIGINT arrives ignored and the child would inherit that.
LAUNCH = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from scaling.cli import main; sys.exit(main(sys.argv[1:]))")


def _signal_twice(process: subprocess.Popen) -> None:
    """A quick double Ctrl-C, 0.3 s apart, as a reviewer pressed it."""
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)


@pytest.mark.parametrize("stop", [lambda process: process.send_signal(signal.SIGINT),
                                  lambda process: process.send_signal(signal.SIGTERM), _signal_twice],
                         ids=["SIGINT", "SIGTERM", "SIGINT twice"])
def test_interrupt_stops_workers_and_relaunch_resumes(stop, corpus_dir, tmp_path):  # noqa: F811
    """SIGINT or SIGTERM to the launcher: the workers stop (runs stay resumable, not failed), the launcher
    exits 130 after its table, and a relaunch completes every run. A second SIGINT while the workers save
    their checkpoints stops them at once; the table still follows (a reviewer's double Ctrl-C printed none)."""
    path = tmp_path / "int.yaml"
    # Runs of about 15 s, so that the signal lands mid-run even when this process is slow to see the first
    # checkpoint on a loaded machine.
    path.write_text(yaml.safe_dump(sweep_raw(corpus_dir, "int", ["1.6e5"], checkpoint_interval=20)))
    runs = tmp_path / "runs"
    command = [sys.executable, "-c", LAUNCH, "sweep", "launch", str(path), "--runs", str(runs), "--no-progress",
               "--workers", "2"]
    # The signal goes to the launcher only, as `kill` sends it; a terminal's Ctrl-C would reach every process.
    launcher = stop_once(command, lambda: list((runs / "int").glob("*/checkpoints/[0-9]*")), stop, cwd=REPO)
    stderr = launcher.stderr_text
    assert launcher.returncode == 130, stderr[-3000:]
    logged = " ".join(stderr.split())  # rich wraps long log lines
    # The run whose checkpoint set off the signal is named; the other may not have written its summary yet.
    assert "sweep interrupted: 0 of 2 runs completed, " in logged, logged[-3000:]
    assert "stopped at their newest checkpoint" in logged, logged[-3000:]
    if stop is _signal_twice:  # the second signal came while the workers were saving their checkpoints
        assert "second interrupt: the workers stop now, without checkpointing their step in flight" in logged
    table = launcher.stdout_text
    assert "sweep int" in table, table  # the table of runs, as at the end of a launch
    assert "interrupted" in table, table
    for line in table.splitlines():  # a stopped run's CPU seconds come from its worker (a reviewer saw "-")
        if "interrupted at step" in line:
            assert line.rstrip(" │").endswith(" s"), table

    run_ids = [run.run_id for run in expand(parse_spec(yaml.safe_load(path.read_text())), runs)]
    pids = {}
    for run_id in run_ids:
        log_path = runs / "int" / LOGS_FOLDER / f"{run_id}.log"
        if log_path.exists():
            log_text = log_path.read_text()
            pids.update(worker_pids(log_text))
            # Interrupted, never failed: "interrupted" after its first summary write, no summary before it.
            assert RunDir.at(runs, "int", run_id).status() in ("interrupted", None), log_text
            assert "interrupted" in log_text or "KeyboardInterrupt" in log_text, log_text
    assert pids
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no worker outlives the launcher

    relaunch = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert all(RunDir.at(runs, "int", run_id).status() == "completed" for run_id in run_ids)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_worker_run_resumes(stop_signal, corpus_dir, tmp_path):  # noqa: F811
    """SIGINT or SIGTERM (`kill`, a scheduler) to a worker alone, not the launcher: its run ends "interrupted"
    with its checkpoints, the launcher reports it as unfinished (exit 1), and a relaunch completes it."""
    path = tmp_path / "one.yaml"
    raw = tiny_raw(corpus_dir, name="one", grid={"params": ["4K"], "tokens": ["1.6e5"]},
                   train={"seq_len": 32, "batch_size": 4, "eval_tokens": 512, "wandb_mode": "disabled",
                          "checkpoint_interval": 20})
    path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    (run,) = expand(parse_spec(raw), runs)
    log_path = runs / "one" / LOGS_FOLDER / f"{run.run_id}.log"
    command = [sys.executable, "-c", LAUNCH, "sweep", "launch", str(path), "--runs", str(runs), "--no-progress",
               "--workers", "1"]
    launcher = stop_once(command, lambda: (RunDir.at(runs, "one", run.run_id).summary() or {}).get("steps_done"),
                         lambda _: os.kill(worker_pids(log_path.read_text())[run.run_id], stop_signal), cwd=REPO)
    stdout, stderr = launcher.stdout_text, launcher.stderr_text

    assert launcher.returncode == 1, stderr[-3000:]
    assert f"run {run.run_id} interrupted at step" in stderr
    assert "interrupted" in stdout  # the final table
    summary = RunDir.at(runs, "one", run.run_id).summary()
    assert summary["status"] == "interrupted"
    assert summary["error"] is None
    assert summary["steps_done"] > 0
    # The progress of the newest checkpoint: the step in flight at the signal ended and was saved.
    assert summary["steps_done"] == summary["interrupted_at_step"]

    relaunch = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"resumes from step {summary['steps_done']}" in log_path.read_text()
    logged = " ".join(relaunch.stderr.split())  # rich wraps long log lines
    assert (f"run {run.run_id} was interrupted after its checkpoint at step {summary['steps_done']}; it resumes from "
            "its newest readable checkpoint") in logged
    assert RunDir.at(runs, "one", run.run_id).status() == "completed"


def test_interrupt_before_start_is_logged(monkeypatch, caplog):
    # SIGINT while the worker still imports JAX or reads the config: the log names the run, nothing trained.
    from scaling.config import TrainConfig
    from sweeps import worker

    def interrupted(raw):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainConfig, "from_dict", staticmethod(interrupted))
    caplog.set_level("WARNING", logger="sweeps.worker")

    status, error = worker.train_request({"config": {"run_id": "N8e3-D1e5"}, "runs_root": "unused"}, None)

    assert status == EXIT_INTERRUPTED
    assert error == "interrupted"
    assert "run N8e3-D1e5 interrupted before it started" in caplog.text
