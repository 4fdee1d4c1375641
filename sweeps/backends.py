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
from scaling.numbers import parse_number
from sweeps.outcomes import (RunOutcome, SweepInterrupted, ended_outcome, exit_reason, logged_stop_reason,
                             logged_warnings, run_log_path)
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
        # A number written as text ("0.5", "1e0") reads as elsewhere in a spec; true and false are no counts.
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, parse_number(value, f"resources.{name}"))
        if isinstance(self.cpus, bool) or not (isinstance(self.cpus, (int, float)) and self.cpus > 0):
            raise UserError(f"resources.cpus={self.cpus!r} must be a positive number of cores")
        if isinstance(self.gpus, bool) or not (isinstance(self.gpus, (int, float)) and self.gpus >= 0):
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
        if getattr(spec, "resources", None):
            log.warning("the spec's resources: (%s per run) apply to --backend ray and slurm; the local backend "
                        "splits this machine's cores by --workers and trains on the devices JAX finds here",
                        RunResources.from_spec(spec).describe())
        return run_sweep(spec, runs_root, workers=workers, progress=progress, show_table=show_table)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if backend == "slurm" and address:
        raise UserError("--address names a Ray cluster; use it with --backend ray")
    try:
        if backend == "ray":
            from sweeps.backend_ray import run_sweep_ray

            outcomes = run_sweep_ray(spec, runs_root, address=address)
        else:
            from sweeps.backend_slurm import run_sweep_slurm

            outcomes = run_sweep_slurm(spec, runs_root)
    except SweepInterrupted as interrupted:
        if progress if show_table is None else show_table:
            print_outcomes_table(spec, interrupted.outcomes)
        raise
    if progress if show_table is None else show_table:
        print_outcomes_table(spec, outcomes)
    return outcomes


def print_outcomes_table(spec: Any, outcomes: list) -> None:
    """Print the launch's table of runs, as the local launcher does at its end."""
    from rich import get_console

    from sweeps.launcher import print_outcomes

    print_outcomes(spec, outcomes, get_console())


# ---------------------------------------------------------------------------------------------- shared by Ray and SLURM


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def run_worker_process(config: dict[str, Any], runs_root: str, env_overrides: dict[str, str]) -> tuple[int, float, float, str]:
    """Train one run in a `python -m sweeps.worker` child process of this one, as a SLURM job does.

    Return (exit status, CPU seconds of the child, wall seconds, host name). Ray tasks use
    sweeps.backend_ray.train_run_in_task instead, because it also stops the child when the task is cancelled.

    The child's output goes to RUNS/<sweep>/_logs/<run_id>.log, as with the local launcher.
    """
    import resource

    log_path = run_log_path(runs_root, config["sweep"], config["run_id"])
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
        except KeyboardInterrupt:
            # Ctrl-C, or a cancelled job: the run records "interrupted" at its step, and the job returns the
            # child's exit status (130) like any other, rather than a traceback in its log.
            stop_worker_child(process, config["run_id"])
        except BaseException:
            stop_worker_child(process, config["run_id"])
            raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return process.returncode, cpu_s, time.time() - started, socket.gethostname()


CHILD_STOP_WAIT_S = 60.0  # how long a stopped worker may take to write its summary before it is killed


def stop_worker_child(process: subprocess.Popen, run_id: str, stop_signal: int = signal.SIGINT,
                      wait_s: float = CHILD_STOP_WAIT_S) -> None:
    """Send `stop_signal` to a worker child and wait for it, so that its run ends "interrupted".

    sweeps.worker stops a run on SIGINT and SIGTERM alike. A child still running after `wait_s` is killed.
    """
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        log.warning("run %s: worker %d did not stop within %.0f s of %s; killing it", run_id, process.pid, wait_s,
                    signal.Signals(stop_signal).name)
        process.kill()
        process.wait()


def outcome_from_exit(run: Any, root: Path, returncode: int, cpu_s: float, wall_s: float, host: str) -> RunOutcome:
    """Return the RunOutcome of a worker process on `host` that exited with `returncode`. The warnings its run
    logged are repeated on this console first, as the local launcher shows them while the run goes on."""
    log_path = run_log_path(root, run.config.sweep, run.run_id)
    for message in logged_warnings(log_path):
        log.warning("%s", message if message.startswith(f"run {run.run_id} ") else f"run {run.run_id}: {message}")
    return ended_outcome(run, root, returncode, reason=f"worker {exit_reason(returncode)} on {host}; see {log_path}",
                         message=logged_stop_reason(log_path, run.run_id), wall_s=wall_s, cpu_s=cpu_s,
                         where=f" on {host}")
