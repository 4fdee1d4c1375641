"""Where a sweep's runs execute: `local` worker processes (sweeps.launcher), Ray tasks (sweeps.backend_ray),
or SLURM jobs through submitit (sweeps.backend_slurm). Every backend skips completed runs and writes to the
same run store, so a sweep can move between them and resume. Ray and SLURM train each run in a fresh
Python process. The local launcher keeps one long-lived worker process per slot, which trains the slot's
runs one after another.

A spec's optional `resources:` mapping states what one run needs from a Ray cluster or a SLURM node:
`cpus` (default 1) and `gpus` (default 0). The local backend splits this machine's cores instead
(`--workers`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.run_store import RunDir
from sweeps.resources import SINGLE_THREAD_XLA_FLAGS, THREAD_COUNT_VARIABLES

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray", "slurm")
RESOURCE_KEYS = ("cpus", "gpus")


@dataclass(frozen=True)
class RunResources:
    """The CPU cores and GPUs one run requests from a cluster."""

    cpus: float = 1  # CPU cores per run (Ray may take fractions; SLURM rounds up)
    gpus: float = 0  # GPUs per run

    def __post_init__(self) -> None:
        if not (isinstance(self.cpus, (int, float)) and self.cpus > 0):
            raise UserError(f"resources.cpus={self.cpus!r} must be a positive number of cores")
        if not (isinstance(self.gpus, (int, float)) and self.gpus >= 0):
            raise UserError(f"resources.gpus={self.gpus!r} must be zero or a positive number of GPUs")

    @classmethod
    def from_mapping(cls, raw: dict[str, Any] | None) -> RunResources:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(RESOURCE_KEYS))
        if unknown:
            raise UserError(f"unknown resources key {unknown[0]!r}; known keys are: {', '.join(RESOURCE_KEYS)}")
        return cls(**raw)

    @classmethod
    def from_spec(cls, spec: Any) -> RunResources:
        return cls.from_mapping(getattr(spec, "resources", None))

    @property
    def threads(self) -> int:
        return max(1, math.ceil(self.cpus))

    def threads_env(self) -> dict[str, str]:
        """Return environment variables that keep a run's native thread pools within its cores."""
        env = {name: str(self.threads) for name in THREAD_COUNT_VARIABLES}
        if self.threads == 1:
            # The user's own XLA flags come last, so they win where both name the same flag.
            env["XLA_FLAGS"] = f"{SINGLE_THREAD_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
        return env

    def describe(self) -> str:
        return f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")


def run_with_backend(backend: str, spec: Any, runs_root: str | Path | None, *, workers: int = 2,
                     address: str | None = None, progress: bool = True, show_table: bool | None = None) -> list:
    """Run the sweep on `backend` and return one sweeps.launcher.RunOutcome per run, in plan order."""
    if backend == "local":
        from sweeps.launcher import run_sweep

        if address:
            raise UserError("--address names a Ray cluster; use it with --backend ray")
        return run_sweep(spec, runs_root, workers=workers, progress=progress, show_table=show_table)
    if backend == "ray":
        from sweeps.backend_ray import run_sweep_ray

        outcomes = run_sweep_ray(spec, runs_root, address=address)
    elif backend == "slurm":
        from sweeps.backend_slurm import run_sweep_slurm

        if address:
            raise UserError("--address names a Ray cluster; use it with --backend ray")
        outcomes = run_sweep_slurm(spec, runs_root)
    else:
        raise UserError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if progress if show_table is None else show_table:
        from rich import get_console

        from sweeps.launcher import outcomes_table

        get_console().print(outcomes_table(spec, outcomes))
    return outcomes


# ---------------------------------------------------------------------------------------------- shared by Ray and SLURM


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def run_worker_process(config: dict[str, Any], runs_root: str, env_overrides: dict[str, str]) -> tuple[int, float, float, str]:
    """Train one run in a `python -m sweeps.worker` child process of this one, as a Ray task or a SLURM job
    does; return (exit status, CPU seconds of the child, wall seconds, host name).

    The child's output goes to RUNS/<sweep>/_logs/<run_id>.log, as with the local launcher.
    """
    import resource

    from sweeps.launcher import LOGS_FOLDER

    log_path = Path(runs_root) / config["sweep"] / LOGS_FOLDER / f"{config['run_id']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env_overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH")]))
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "a") as log_file:
        log_file.write(f"--- worker start {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}\n")
        log_file.flush()
        process = subprocess.Popen([sys.executable, "-m", "sweeps.worker"], stdin=subprocess.PIPE, stdout=log_file,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        try:
            process.communicate(json.dumps({"config": config, "runs_root": runs_root}))
        except BaseException:  # Ctrl-C, or Ray cancelling the task: let the run record "interrupted" first
            _stop_child(process)
            raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return process.returncode, cpu_s, time.time() - started, socket.gethostname()


CHILD_STOP_WAIT_S = 60.0  # how long a stopped worker may take to write its summary before it is killed


def _stop_child(process: subprocess.Popen) -> None:
    """Send SIGINT to a worker child and wait for it, so that its run ends "interrupted"; kill it after a while."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=CHILD_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def split_completed(runs: list, root: Path) -> tuple[dict[str, Any], list]:
    """Return (outcomes of the runs completed before this launch, by run id; the runs still to do)."""
    from sweeps.launcher import RunOutcome

    outcomes: dict[str, Any] = {}
    todo = []
    for run in runs:
        summary = RunDir.at(root, run.config.sweep, run.run_id).summary()
        if summary is not None and summary.get("status") == "completed":
            log.info("run %s already completed; skipping", run.run_id)
            outcomes[run.run_id] = RunOutcome(run, "skipped", summary, 0.0, None)
        else:
            todo.append(run)
    return outcomes, todo


def outcome_from_exit(run: Any, root: Path, returncode: int, cpu_s: float, wall_s: float, host: str):
    """Return the RunOutcome of a worker that exited with `returncode`, reading the run's summary."""
    from sweeps.launcher import LOGS_FOLDER, RunOutcome, _exit_reason
    from sweeps.worker import EXIT_LOCKED

    log_path = root / run.config.sweep / LOGS_FOLDER / f"{run.run_id}.log"
    summary = _read_summary(RunDir.at(root, run.config.sweep, run.run_id))
    status = (summary or {}).get("status")
    if returncode == 0 and status == "completed":
        log.info("run %s completed on %s: val loss %.4f, %.0f s wall", run.run_id, host, summary["final_val_loss"],
                 wall_s)
        return RunOutcome(run, "completed", summary, wall_s, log_path, cpu_s)
    if status == "diverged":
        log.error("run %s diverged at step %s; see %s", run.run_id, summary.get("diverged_step"), log_path)
        return RunOutcome(run, "diverged", summary, wall_s, log_path, cpu_s)
    if status == "interrupted":
        log.warning("run %s interrupted on %s at step %s; rerun the launch to resume it", run.run_id, host,
                    summary.get("steps_done"))
        return RunOutcome(run, "interrupted", summary, wall_s, log_path, cpu_s)
    if returncode == EXIT_LOCKED:
        return failed_outcome(run, root, f"run is being trained by another process; see {log_path}", write=False)
    error = (summary or {}).get("error") or f"worker {_exit_reason(returncode)} on {host}; see {log_path}"
    cause = _stop_reason(log_path, run.run_id)
    if cause and cause not in error:
        error = f"{cause} ({error})"
    return failed_outcome(run, root, error, wall_s=wall_s, cpu_s=cpu_s, write=status in (None, "running"))


def _stop_reason(log_path: Path, run_id: str) -> str | None:
    """Return the reason a worker logged for stopping `run_id` (sweeps.worker: "run X stopped: ..."), if any."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    marker = f"run {run_id} stopped: "
    stops = [line.split(marker, 1)[1].strip() for line in lines if marker in line]
    return stops[-1][:300] if stops else None


def failed_outcome(run: Any, root: Path, error: str, *, wall_s: float = 0.0, cpu_s: float = 0.0,
                   write: bool = True):
    """Return a failed RunOutcome; with `write`, also record the failure in the run's summary.json."""
    from sweeps.launcher import LOGS_FOLDER, RunOutcome, _stand_in_summary

    run_dir = RunDir.at(root, run.config.sweep, run.run_id)
    failed = {**(_read_summary(run_dir) or _stand_in_summary(run)), "status": "failed", "error": error}
    if write:
        try:
            run_dir.write_summary(failed)
        except OSError as write_error:
            log.warning("run %s: could not record the failure in %s: %s", run.run_id, run_dir.path, write_error)
    log.error("run %s failed: %s", run.run_id, error)
    return RunOutcome(run, "failed", failed, wall_s, root / run.config.sweep / LOGS_FOLDER / f"{run.run_id}.log",
                      cpu_s)


def _read_summary(run_dir: RunDir) -> dict[str, Any] | None:
    try:
        return run_dir.summary()
    except (OSError, ValueError):
        return None
