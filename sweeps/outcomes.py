"""The end state of a sweep's run, read the same way by every backend (local workers, Ray tasks, SLURM jobs).

A worker writes the run's summary.json as it goes. When the worker's run ends, the backend reads it back:
`completed`, `diverged` and `interrupted` are the run's own word. Anything else (a user error, a killed
worker, a run locked by another process) is a failure, and the backend records it in summary.json unless
the run belongs to another live process. Runs completed before a launch are skipped, never retrained.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.run_lock import lock_holder
from scaling.run_store import RunDir, initial_summary
from sweeps.worker import EXIT_INTERRUPTED, EXIT_LOCKED

log = logging.getLogger(__name__)

LOGS_FOLDER = "_logs"  # RUNS/<sweep>/_logs/<run_id>.log: the run's output, from every attempt
LOG_TAIL_BYTES = 8192  # how much of a run's log is searched for the reason its worker stopped it


@dataclass(frozen=True)
class RunOutcome:
    """The end state of one run of the sweep in this launch."""

    run: Any  # sweeps.spec.PlannedRun
    status: str  # "completed", "skipped" (completed before this launch), "diverged", "interrupted", "failed",
    # "elsewhere" (another live process holds the run's lock and trains it), or "not started" (the launch was
    # interrupted before the run's turn)
    summary: dict[str, Any]  # the run's summary.json, or a stand-in when the worker could not write one
    wall_s: float  # seconds of this launch spent on the run (0 when skipped)
    log_path: Path | None  # the run's log, None when skipped
    cpu_s: float = 0.0  # CPU seconds (user + system) of the worker on the run; below wall_s * threads on shared CPUs

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "skipped")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a launch; `outcomes` contains one outcome per run, in plan order, for the table."""

    def __init__(self, outcomes: list[RunOutcome]):
        super().__init__()
        self.outcomes = outcomes


def run_log_path(root: str | Path, sweep: str, run_id: str) -> Path:
    """Return RUNS/<sweep>/_logs/<run_id>.log, where every attempt of the run appends its output."""
    return Path(root) / sweep / LOGS_FOLDER / f"{run_id}.log"


def split_completed(runs: list, root: Path) -> tuple[dict[str, RunOutcome], list]:
    """Return (the outcomes of runs completed before this launch, by run id; the runs still to do).

    A run still to do that stopped part-way is logged with the step its checkpoint resumes from. A run whose
    lock a live process holds (another launch of the sweep, say) is left to that process without starting a
    worker for it, as "elsewhere". One locked between this look and its start still reaches the worker,
    which reports it the same way (`ended_outcome`).
    """
    outcomes: dict[str, RunOutcome] = {}
    todo = []
    for run in runs:
        run_dir = RunDir.at(root, run.config.sweep, run.run_id)
        summary = run_dir.summary()
        status = (summary or {}).get("status")
        if status == "completed":
            log.info("run %s already completed; skipping", run.run_id)
            outcomes[run.run_id] = RunOutcome(run, "skipped", summary, 0.0, None)
            continue
        holder = lock_holder(run_dir.path)
        if holder is not None:
            log.warning("run %s is being trained by %s, which keeps it; launch again after that process ends to "
                        "see it in this table as done", run.run_id, holder)
            held_summary = summary or initial_summary(run.run_id, run.config.sweep, "running")
            outcomes[run.run_id] = RunOutcome(run, "elsewhere", held_summary, 0.0, None)
            continue
        if status in ("interrupted", "running") and summary.get("steps_done"):
            # The run itself logs where it resumes: a damaged checkpoint is set aside for the one before it.
            log.info("run %s was %s after its checkpoint at step %d; it resumes from its newest readable "
                     "checkpoint", run.run_id, "interrupted" if status == "interrupted" else "killed",
                     summary["steps_done"])
        todo.append(run)
    return outcomes, todo


def ended_outcome(run: Any, root: Path, returncode: int, *, reason: str, wall_s: float, cpu_s: float,
                  message: str | None = None, where: str = "") -> RunOutcome:
    """Return the outcome of `run` after its worker reported `returncode`, from the run's summary.json.

    `reason` describes how the worker ended ("worker killed by SIGKILL on node7"); `message` is the worker's
    one-line explanation, when it gave one; `where` names the machine in log lines (" on node7").
    A failure the worker could not record itself is written to summary.json here.
    """
    log_path = run_log_path(root, run.config.sweep, run.run_id)
    summary = read_summary(RunDir.at(root, run.config.sweep, run.run_id))
    status = (summary or {}).get("status")
    if returncode == 0 and status == "completed":
        log.info("run %s completed%s: val loss %.4f, %.0f s wall, %.0f s CPU", run.run_id, where,
                 summary["final_val_loss"], wall_s, cpu_s)
        return RunOutcome(run, "completed", summary, wall_s, log_path, cpu_s)
    if status == "diverged":
        log.error("run %s diverged at step %s; see %s", run.run_id, summary.get("diverged_step"), log_path)
        return RunOutcome(run, "diverged", summary, wall_s, log_path, cpu_s)
    if status == "interrupted":  # its worker was stopped by a signal; its checkpoints stay for a relaunch
        log.warning("run %s interrupted%s at step %s; rerun the launch to resume it", run.run_id, where,
                    summary.get("steps_done"))
        return RunOutcome(run, "interrupted", summary, wall_s, log_path, cpu_s)
    if returncode in (EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM) and status in (None, "running"):
        # Stopped by Ctrl-C or a cancel while it started (importing, starting JAX): not a failure. A run that
        # began training records "interrupted" itself; this one resumes, or starts, at the next launch.
        log.warning("run %s interrupted%s before it recorded any progress; rerun the launch to %s it", run.run_id,
                    where, "resume" if status == "running" else "start")
        stand_in = summary or initial_summary(run.run_id, run.config.sweep, "interrupted")
        return RunOutcome(run, "interrupted" if status == "running" else "not started", stand_in, wall_s, log_path,
                          cpu_s)
    if returncode == EXIT_LOCKED:
        # Another live process (a second launch of this sweep, say) owns the run and its summary: leave both
        # to it. The run is not failed, only not this launch's to finish.
        log.warning("run %s is being trained by another process, which keeps it; launch again after that process "
                    "ends to see it in this table as done; log: %s", run.run_id, log_path)
        locked_summary = read_summary(RunDir.at(root, run.config.sweep, run.run_id)) or initial_summary(
            run.run_id, run.config.sweep, "running")
        return RunOutcome(run, "elsewhere", locked_summary, wall_s, log_path, cpu_s)
    error = (summary or {}).get("error") or message
    if not error:
        error = reason
    elif reason not in error:
        error = f"{error} ({reason})"
    # A killed worker leaves "running" behind. Record the failure, so the store does not show a live run.
    return failed_outcome(run, root, error, wall_s=wall_s, cpu_s=cpu_s, write=status in (None, "running"))


def failed_outcome(run: Any, root: Path, error: str, *, wall_s: float = 0.0, cpu_s: float = 0.0,
                   write: bool = True) -> RunOutcome:
    """Return a failed RunOutcome; with `write`, also record the failure in the run's summary.json."""
    run_dir = RunDir.at(root, run.config.sweep, run.run_id)
    stand_in = initial_summary(run.run_id, run.config.sweep, "failed")
    failed = {**(read_summary(run_dir) or stand_in), "status": "failed", "error": error}
    if write:
        try:
            run_dir.write_summary(failed)
        except OSError as write_error:
            log.warning("run %s: could not record the failure in %s: %s", run.run_id, run_dir.path, write_error)
    log_path = run_log_path(root, run.config.sweep, run.run_id)
    log.error("run %s failed: %s; log: %s", run.run_id, error, log_path)
    return RunOutcome(run, "failed", failed, wall_s, log_path, cpu_s)


def exit_reason(returncode: int) -> str:
    """Describe a process's exit status: "exited with status 2" or "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def logged_stop_reason(log_path: Path, run_id: str) -> str | None:
    """Return the reason a worker logged for stopping `run_id` (sweeps.worker: "run X stopped: ..."), if any."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    marker = f"run {run_id} stopped: "
    stops = [line.split(marker, 1)[1].strip() for line in lines if marker in line]
    return stops[-1][:300] if stops else None


# A warning line of this project's code in a worker's log (sweeps.worker's format: time, level, logger, message).
_WARNING_LINE = re.compile(r"^\S+ \S+ WARNING (?:scaling|models|analysis)\.[\w.]*: (.*)$")
RELAYED_WARNINGS = 20  # at most this many of a run's warnings are repeated on the launcher's console
ATTEMPT_MARKER = "--- worker start "


def logged_warnings(log_path: Path) -> list[str]:
    """Return the warnings this project's code logged in the newest attempt of a run (after the last
    ATTEMPT_MARKER of its log), up to RELAYED_WARNINGS, for backends whose workers cannot reply as they go."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    attempt = text[text.rfind(ATTEMPT_MARKER):] if ATTEMPT_MARKER in text else text
    found = [match.group(1) for match in map(_WARNING_LINE.match, attempt.splitlines()) if match]
    return found[:RELAYED_WARNINGS]


def read_summary(run_dir: RunDir) -> dict[str, Any] | None:
    """Return the run's summary.json, or None when it is missing or unreadable (a worker killed mid-start)."""
    try:
        return run_dir.summary()
    except (OSError, ValueError):
        return None


def outcomes_after_interrupt(runs: list, root: Path, outcomes: dict[str, RunOutcome],
                             cpu_in_flight: dict[str, float] | None = None) -> list[RunOutcome]:
    """Return one outcome per run, in plan order, for a launch that Ctrl-C stopped.

    Runs the launch saw end keep their outcome. The others are read from their summary.json: a run stopped
    in flight is "interrupted" (a worker killed after the grace period leaves "running", which resumes the
    same way), a run that ended before the launch collected it keeps its status, and a run that never
    started is "not started". Logs one line that counts each kind.
    """
    ordered = []
    for run in runs:
        outcome = outcomes.get(run.run_id)
        if outcome is None:
            summary = read_summary(RunDir.at(root, run.config.sweep, run.run_id))
            # A run may have ended before the launch collected it (a SLURM job that finished as Ctrl-C came).
            recorded = (summary or {}).get("status")
            status = {"completed": "completed", "diverged": "diverged", "failed": "failed", "interrupted":
                      "interrupted", "running": "interrupted"}.get(recorded, "not started")
            started = status != "not started"
            # CPU seconds of a run in flight come from its stopped worker (`cpu_in_flight`, local launcher
            # only). Elsewhere they are unknown: NaN, shown as "-".
            cpu_s = (cpu_in_flight or {}).get(run.run_id, math.nan)
            outcome = RunOutcome(run, status, summary or initial_summary(run.run_id, run.config.sweep, status),
                                 0.0, run_log_path(root, run.config.sweep, run.run_id) if started else None, cpu_s)
        ordered.append(outcome)

    done = sum(outcome.ok for outcome in ordered)
    stopped = [f"{o.run.run_id} at step {o.summary.get('steps_done') or 0}" for o in ordered
               if o.status == "interrupted"]
    waiting = sum(outcome.status == "not started" for outcome in ordered)
    parts = [f"{done} of {len(ordered)} runs completed"]
    if stopped:
        parts.append(f"{len(stopped)} stopped at their newest checkpoint ({', '.join(stopped)})")
    if waiting:
        parts.append(f"{waiting} not started")
    log.warning("sweep interrupted: %s; rerun the same command to resume", ", ".join(parts))
    return ordered
