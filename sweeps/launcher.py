"""The local launcher: run a sweep's runs in worker processes on this machine.

`launch(spec, runs_root, workers=K)` expands the spec (sweeps.spec), skips runs whose summary status is
completed, and runs the rest K at a time, each in a fresh `python -m sweeps.worker` process pinned to its
own share of the cores (sweeps.resources). Processes are started, never forked, so no JAX state is copied.
A run that stopped part-way resumes from its newest checkpoint (scaling.train does that). A run that fails
is logged with its run id and the sweep goes on. The final table marks it, and `scaling sweep launch` then
exits with status 1. Longest runs start first, which shortens the sweep's wall time on a fixed number of workers.
Each worker's output goes to RUNS/<sweep>/_logs/<run_id>.log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from scaling.config import same_run
from scaling.errors import UserError
from scaling.paths import runs_root as resolve_runs_root
from scaling.run_store import RunDir, read_json
from sweeps.numbers import human_count
from sweeps.plan import WIDE_OUTPUT, assumed_cost_model
from sweeps.resources import WorkerSlot, split_cores
from sweeps.spec import PlannedRun, SweepSpec, expand
from sweeps.worker import EXIT_LOCKED

log = logging.getLogger(__name__)

LOGS_FOLDER = "_logs"  # RUNS/<sweep>/_logs/<run_id>.log: each worker's stdout and stderr
POLL_S = 0.5  # seconds between looks at the workers and their metrics
STOP_GRACE_S = 20.0  # seconds a worker gets to checkpoint-close after an interrupt before it is killed


@dataclass(frozen=True)
class RunOutcome:
    """The end state of one run of the sweep in this launch."""

    run: PlannedRun
    status: str  # "completed", "skipped" (completed before this launch), "diverged" or "failed"
    summary: dict[str, Any]  # the run's summary.json, or a stand-in when the worker could not write one
    wall_s: float  # seconds of this launch spent on the run (0 when skipped)
    log_path: Path | None  # the worker's log, None when skipped
    cpu_s: float = 0.0  # CPU seconds (user + system) of the worker process; below wall_s * threads when CPUs are shared

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "skipped")


@dataclass
class _Active:
    """A run in progress: its worker process and where its progress shows."""

    run: PlannedRun
    slot: WorkerSlot
    process: subprocess.Popen
    log_file: IO[str]
    log_path: Path
    started: float
    task: TaskID | None = None


def start_worker(run: PlannedRun, slot: WorkerSlot, runs_root: Path) -> tuple[subprocess.Popen, IO[str], Path]:
    """Start `python -m sweeps.worker` for `run` on `slot`; return the process, its open log file and its path."""
    log_path = Path(runs_root) / run.config.sweep / LOGS_FOLDER / f"{run.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a")  # appended: a resumed run keeps the log of its earlier attempts
    log_file.write(f"--- worker start {time.strftime('%Y-%m-%d %H:%M:%S')} on cores {list(slot.cores)}\n")
    log_file.flush()
    env = slot.environment()
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeps.worker"], stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
        env=env, text=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps({"config": run.config.to_dict(), "runs_root": str(runs_root)}))
    process.stdin.close()
    return process, log_file, log_path


def check_existing_configs(runs: list[PlannedRun], runs_root: Path) -> None:
    """Raise UserError when a run folder already contains a run with another config (the spec changed).

    scaling.train would refuse such a run too, but only inside its worker; checking here stops the sweep
    before anything runs and names the folder. A change of `train.mesh` alone is allowed, because it lays
    the run out differently but trains the same model.
    """
    for run in runs:
        run_dir = RunDir.at(runs_root, run.config.sweep, run.run_id)
        if not run_dir.config_path.is_file():
            continue
        if not same_run(read_json(run_dir.config_path).get("config"), run.config):
            raise UserError(
                f"run folder {run_dir.path} contains run {run.run_id} with a different config than the spec "
                "now gives; rename the sweep (name:) or delete that folder"
            )


def run_sweep(spec: SweepSpec, runs_root: str | Path | None = None, workers: int = 2, progress: bool = True,
              show_table: bool | None = None, console: Console | None = None) -> list[RunOutcome]:
    """Run every run of the sweep that is not completed yet; return one outcome per run, in plan order.

    `progress` shows the bars; `show_table` (default: same as `progress`) prints the final table of runs.
    """
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    root = resolve_runs_root(runs_root)
    runs = expand(spec, root, progress=progress)
    check_existing_configs(runs, root)
    console = console or get_console()  # the console logging's RichHandler uses, so logs print above the bars

    outcomes: dict[str, RunOutcome] = {}
    todo: list[PlannedRun] = []
    for run in runs:
        summary = RunDir.at(root, spec.name, run.run_id).summary()
        if summary is not None and summary.get("status") == "completed":
            log.info("run %s already completed; skipping", run.run_id)
            outcomes[run.run_id] = RunOutcome(run, "skipped", summary, 0.0, None)
        else:
            todo.append(run)

    cost = assumed_cost_model()  # relative run sizes for the overall progress bar; its ETA rescales by the pace seen
    weights = {run.run_id: cost.run_seconds(run) for run in runs}
    todo.sort(key=lambda run: weights[run.run_id], reverse=True)
    slots = split_cores(workers)
    log.info("sweep %s: %d runs, %d to run on %d workers (cores %s)", spec.name, len(runs), len(todo), len(slots),
             " | ".join(",".join(map(str, slot.cores)) for slot in slots))

    bar = _SweepProgress(console, enabled=progress, total_weight=sum(weights[run.run_id] for run in todo),
                         runs_total=len(todo))
    active: dict[int, _Active] = {}
    try:
        with bar:
            while todo or active:
                for slot in slots:
                    if slot.index not in active and todo:
                        run = todo.pop(0)
                        process, log_file, log_path = start_worker(run, slot, root)
                        entry = _Active(run, slot, process, log_file, log_path, started=time.time())
                        entry.task = bar.add_run(run)
                        active[slot.index] = entry
                        log.info("run %s started on cores %s (log %s)", run.run_id, list(slot.cores), log_path)
                time.sleep(POLL_S)
                for index, entry in list(active.items()):
                    ended = _reap(entry.process)
                    if ended is None:
                        bar.update_run(entry, weights[entry.run.run_id], root)
                        continue
                    del active[index]
                    entry.log_file.close()
                    outcome = _finish(entry, *ended, root)
                    outcomes[entry.run.run_id] = outcome
                    bar.finish_run(entry, weights[entry.run.run_id], outcome)
    except KeyboardInterrupt:
        _stop_workers(list(active.values()))
        raise

    ordered = [outcomes[run.run_id] for run in runs]
    if progress if show_table is None else show_table:
        # Piped output has no terminal width; rich would assume 80 columns and wrap the cells.
        table_console = console if console.is_terminal else Console(width=WIDE_OUTPUT, file=console.file)
        table_console.print(outcomes_table(spec, ordered))
    return ordered


def launch(spec: SweepSpec, runs_root: str | Path | None = None, workers: int = 2, progress: bool = True) -> list[dict]:
    """Run the sweep (see `run_sweep`) and return each run's summary, in plan order."""
    return [outcome.summary for outcome in run_sweep(spec, runs_root, workers=workers, progress=progress)]


def _reap(process: subprocess.Popen) -> tuple[int, float] | None:
    """Return (exit status, CPU seconds) of a worker that has ended, or None while it runs.

    os.wait4 reports the child's resource usage, which Popen.poll does not. A negative status is the
    signal that ended the process, as in Popen.returncode.
    """
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    # The child is reaped now, and Popen.poll and Popen.wait return a set returncode without waiting again.
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def _finish(entry: _Active, returncode: int, cpu_s: float, runs_root: Path) -> RunOutcome:
    """Read the run's summary after its worker exited; record a failure the worker could not record itself."""
    run = entry.run
    wall = time.time() - entry.started
    run_dir = RunDir.at(runs_root, run.config.sweep, run.run_id)
    try:
        summary = run_dir.summary()
    except (OSError, ValueError):
        summary = None
    status = (summary or {}).get("status")
    if returncode == 0 and status == "completed":
        log.info("run %s completed: val loss %.4f, %.0f s wall, %.0f s CPU", run.run_id, summary["final_val_loss"],
                 wall, cpu_s)
        return RunOutcome(run, "completed", summary, wall, entry.log_path, cpu_s)
    if status == "diverged":
        log.error("run %s diverged at step %s; see %s", run.run_id, summary.get("diverged_step"), entry.log_path)
        return RunOutcome(run, "diverged", summary, wall, entry.log_path, cpu_s)

    reason = _exit_reason(returncode)
    if returncode == EXIT_LOCKED:
        # Another live process owns the run and its summary: report it here, leave the store alone.
        error = f"run is being trained by another process; see {entry.log_path}"
        log.error("run %s not run: %s", run.run_id, error)
        return RunOutcome(run, "failed", {**(summary or _stand_in_summary(run)), "status": "failed", "error": error},
                          wall, entry.log_path, cpu_s)
    error = (summary or {}).get("error") or f"worker {reason}; see {entry.log_path}"
    failed = {**(summary or _stand_in_summary(run)), "status": "failed", "error": error}
    if status in (None, "running"):
        # A killed worker leaves "running" behind. Record the failure, so the store does not show a live run.
        try:
            run_dir.write_summary(failed)
        except OSError as write_error:
            log.warning("run %s: could not record the failure in %s: %s", run.run_id, run_dir.path, write_error)
    log.error("run %s failed (worker %s): %s; log: %s", run.run_id, reason, error, entry.log_path)
    return RunOutcome(run, "failed", failed, wall, entry.log_path, cpu_s)


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _stand_in_summary(run: PlannedRun) -> dict[str, Any]:
    return {"status": "failed", "run_id": run.run_id, "sweep": run.config.sweep, "final_val_loss": None,
            "final_val_bpb": None, "tokens_seen": 0, "steps_done": 0, "flops_spent": 0, "wall_time_s": 0.0,
            "diverged_step": None, "error": None}


def _stop_workers(active: list[_Active]) -> None:
    """Interrupt the workers (they keep their checkpoints), wait briefly, then kill the ones still running."""
    for entry in active:
        if entry.process.poll() is None:
            entry.process.send_signal(signal.SIGINT)
    deadline = time.time() + STOP_GRACE_S
    for entry in active:
        try:
            entry.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log.warning("run %s: worker did not stop within %.0f s; killing it", entry.run.run_id, STOP_GRACE_S)
            entry.process.kill()
            entry.process.wait()
        entry.log_file.close()
    log.warning("sweep interrupted; rerun the same command to resume the unfinished runs")


def last_step(run_dir: RunDir) -> tuple[int, float | None]:
    """Return the step and train loss of the last complete row of metrics.jsonl, reading only its tail."""
    try:
        with open(run_dir.metrics_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return 0, None
    for line in reversed(tail.splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn last line, or the first line of the tail cut in half
        return int(row.get("step", 0)), row.get("train_loss")
    return 0, None


class _SweepProgress:
    """One bar for the whole sweep (weighted by each run's estimated time, with an ETA) and one per active run.

    An active run counts with the share of its steps done, so the sweep bar moves between the ends of runs.
    """

    def __init__(self, console: Console, enabled: bool, total_weight: float, runs_total: int):
        self.runs_total = runs_total
        self.runs_done = 0
        self.done_weight = 0.0
        self.partial: dict[str, float] = {}  # run id -> weight of the steps done so far
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not enabled, speed_estimate_period=120.0,
        )
        self.sweep_task = self.progress.add_task("sweep", total=max(total_weight, 1e-9),
                                                 info=f"0/{runs_total} runs")

    def __enter__(self) -> _SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add_run(self, run: PlannedRun) -> TaskID:
        return self.progress.add_task(f"  {run.run_id}", total=run.steps, info=f"0/{run.steps} steps")

    def update_run(self, entry: _Active, weight: float, runs_root: Path) -> None:
        step, loss = last_step(RunDir.at(runs_root, entry.run.config.sweep, entry.run.run_id))
        info = f"{step}/{entry.run.steps} steps" + (f"  loss {loss:.3f}" if loss is not None else "")
        if entry.task is not None:
            self.progress.update(entry.task, completed=step, info=info)
        self.partial[entry.run.run_id] = weight * min(step / entry.run.steps, 1.0)
        self._update_sweep()

    def finish_run(self, entry: _Active, weight: float, outcome: RunOutcome) -> None:
        self.runs_done += 1
        self.done_weight += weight
        self.partial.pop(entry.run.run_id, None)
        if entry.task is not None:
            self.progress.remove_task(entry.task)
        self._update_sweep()

    def _update_sweep(self) -> None:
        self.progress.update(self.sweep_task, completed=self.done_weight + sum(self.partial.values()),
                             info=f"{self.runs_done}/{self.runs_total} runs")


def outcomes_table(spec: SweepSpec, outcomes: list[RunOutcome]) -> Table:
    """Return the final table of a launch: run id, N, D, status, final validation loss, wall time."""
    table = Table(title=f"sweep {spec.name}", title_justify="left")
    for header in ("run", "N total", "D tokens", "status", "val loss (nats/token)", "wall time", "CPU time"):
        table.add_column(header, justify="left" if header in ("run", "status") else "right")
    for outcome in outcomes:
        summary = outcome.summary
        loss = summary.get("final_val_loss")
        wall = summary.get("wall_time_s") if outcome.status == "skipped" else outcome.wall_s
        status = "done earlier" if outcome.status == "skipped" else outcome.status
        if outcome.status in ("failed", "diverged"):
            status = f"[bold red]{status}[/]"
        table.add_row(outcome.run.run_id, human_count(outcome.run.params_total), human_count(outcome.run.tokens),
                      status, f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                      f"{wall:.0f} s" if isinstance(wall, (int, float)) else "-",
                      "-" if outcome.status == "skipped" else f"{outcome.cpu_s:.0f} s")
    return table
