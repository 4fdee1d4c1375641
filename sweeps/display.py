"""The display of a sweep launch: a progress bar for the sweep and one per active run, and the table of outcomes.

The bars read each active run's progress from the tail of its metrics.jsonl, so the launcher needs no
channel from its workers beyond their one reply per run. `entry` arguments are the launcher's records of
active runs (sweeps.launcher._Active): the run, and the bar of its task.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from scaling.numbers import human_count
from scaling.run_store import RunDir
from sweeps.outcomes import RunOutcome
from sweeps.spec import PlannedRun, SweepSpec


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


class SweepProgress:
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

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add_run(self, run: PlannedRun) -> TaskID:
        return self.progress.add_task(f"  {run.run_id}", total=run.steps, info=f"0/{run.steps} steps")

    def update_run(self, entry: Any, weight: float, runs_root: Path) -> None:
        step, loss = last_step(RunDir.at(runs_root, entry.run.config.sweep, entry.run.run_id))
        info = f"{step}/{entry.run.steps} steps" + (f"  loss {loss:.3f}" if loss is not None else "")
        if entry.task is not None:
            self.progress.update(entry.task, completed=step, info=info)
        self.partial[entry.run.run_id] = weight * min(step / entry.run.steps, 1.0)
        self._update_sweep()

    def finish_run(self, entry: Any, weight: float, outcome: RunOutcome) -> None:
        self.runs_done += 1
        self.done_weight += weight
        self.partial.pop(entry.run.run_id, None)
        if entry.task is not None:
            self.progress.remove_task(entry.task)
        self._update_sweep()

    def skip_run(self, weight: float) -> None:
        """Count a run that another launch completed before this one started it."""
        self.runs_done += 1
        self.done_weight += weight
        self._update_sweep()

    def _update_sweep(self) -> None:
        self.progress.update(self.sweep_task, completed=self.done_weight + sum(self.partial.values()),
                             info=f"{self.runs_done}/{self.runs_total} runs")


def outcomes_table(spec: SweepSpec, outcomes: list[RunOutcome]) -> Table:
    """Return the final table of a launch: run id, N, D, status, final validation loss, and times.

    "train time" is the run's own wall time in training over all its attempts (summary.json), so it means the
    same for runs trained now and runs done earlier. "CPU time" is what this launch spent on the run.
    """
    table = Table(title=f"sweep {spec.name}", title_justify="left")
    for header in ("run", "N total", "D tokens", "status", "val loss (nats/token)", "train time",
                   "CPU time (this launch)"):
        table.add_column(header, justify="left" if header in ("run", "status") else "right")
    for outcome in outcomes:
        summary = outcome.summary
        loss = summary.get("final_val_loss")
        wall = summary.get("wall_time_s") or (None if outcome.status in ("skipped", "not started") else outcome.wall_s)
        status = {"skipped": "done earlier", "elsewhere": "training elsewhere"}.get(outcome.status, outcome.status)
        if outcome.status in ("failed", "diverged"):
            status = f"[bold red]{status}[/]"
        elif outcome.status in ("interrupted", "elsewhere"):
            if outcome.status == "interrupted" and summary.get("steps_done") is not None:
                status += f" at step {summary['steps_done']}"  # where the next launch resumes
            status = f"[bold yellow]{status}[/]"
        table.add_row(outcome.run.run_id, human_count(outcome.run.params_total), human_count(outcome.run.tokens),
                      status, f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                      f"{wall:.0f} s" if isinstance(wall, (int, float)) else "-",
                      "-" if outcome.status in ("skipped", "not started") or math.isnan(outcome.cpu_s)
                      else f"{outcome.cpu_s:.0f} s")
    return table
