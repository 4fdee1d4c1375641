"""The local run store: one directory per run, the contract between training and analysis.

`RUNS/<sweep>/<run_id>/` holds `config.json` (written once), `metrics.jsonl` (append-only), `summary.json`
(rewritten atomically) and `checkpoints/`. docs/run_format.md lists every key. This module imports no JAX,
so analysis can read runs without initialising a training backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

from scaling.paths import DATA_FOLDER

STATUSES = ("running", "interrupted", "completed", "diverged", "failed")

# The process's umask, read once at import (setting it is the only way to read it). mkstemp creates files
# readable by their owner only, so atomic writes widen them to what open() would have given.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def initial_summary(run_id: str, sweep: str, status: str) -> dict[str, Any]:
    """Return a summary.json with every key and nothing done yet: the start of a run, or the stand-in that
    records a run whose worker died before writing one."""
    return {
        "status": status,
        "run_id": run_id,
        "sweep": sweep,
        "final_val_loss": None,  # nats/token
        "final_val_bpb": None,  # bits per byte
        "tokens_seen": 0,
        "steps_done": 0,
        "flops_spent": 0,  # 6 N_total D over the tokens seen
        "wall_time_s": 0.0,
        "diverged_step": None,
        "error": None,
    }


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # readable by the group, as the other run files, on a shared run store
        with os.fdopen(fd, "w") as handle:
            json.dump(json_safe(payload), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a torn line (an interrupted append) with a warning naming the file."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping torn line %d of %s", number, path)
    return rows


def json_safe(value: Any) -> Any:
    """Return `value` with NaN and infinities replaced by None, because JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@dataclass(frozen=True)
class RunDir:
    """Paths and readers/writers of one run directory."""

    path: Path

    @classmethod
    def at(cls, runs_root: Path, sweep: str, run_id: str) -> RunDir:
        return cls(Path(runs_root) / sweep / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def sweep(self) -> str:
        return self.path.parent.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def pending_metrics_path(self) -> Path:
        return self.path / "pending_metrics.json"

    def config(self) -> dict[str, Any]:
        return read_json(self.config_path)

    def summary(self) -> dict[str, Any] | None:
        """Return summary.json, or None when the run never started."""
        if not self.summary_path.exists():
            return None
        return read_json(self.summary_path)

    def status(self) -> str | None:
        summary = self.summary()
        return None if summary is None else summary.get("status")

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def write_config(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.config_path, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status {summary.get('status')!r} is not one of {STATUSES}")
        write_json_atomic(self.summary_path, summary)

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to metrics.jsonl, each on one line, flushed and synced before returning."""
        if not rows:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(json_safe(row), sort_keys=True) + "\n" for row in rows)
        with open(self.metrics_path, "a") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def write_pending_metrics(self, step: int, steps: list[dict[str, Any]]) -> None:
        """Record the per-step metrics of a row that an interrupt cut short at checkpoint `step`."""
        rows = [{key: float(value) for key, value in metrics.items()} for metrics in steps]
        write_json_atomic(self.pending_metrics_path, {"step": step, "steps": rows})

    def pending_metrics(self, step: int) -> list[dict[str, Any]]:
        """Return the metrics recorded with checkpoint `step` by `write_pending_metrics`, one dict per step.

        Returns [] when none were, or when they belong to another checkpoint (say, one found unreadable).
        """
        if not self.pending_metrics_path.exists():
            return []
        recorded = read_json(self.pending_metrics_path)
        if recorded.get("step") != step:
            return []
        return recorded["steps"]

    def clear_pending_metrics(self) -> None:
        """Delete pending_metrics.json: a completed run has no row left to finish."""
        self.pending_metrics_path.unlink(missing_ok=True)

    def truncate_metrics_after(self, step: int) -> int:
        """Drop metric rows past `step` (written after the checkpoint a resume starts from); return how many.

        Rewrites the file atomically, so a resumed run has no duplicated or missing steps.
        """
        rows = self.metrics()
        kept = [row for row in rows if row.get("step", -1) <= step]
        dropped = len(rows) - len(kept)
        if dropped or (self.metrics_path.exists() and len(rows) != _line_count(self.metrics_path)):
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            with open(tmp, "w") as handle:
                handle.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.metrics_path)
        return dropped


def _line_count(path: Path) -> int:
    with open(path) as handle:
        return sum(1 for line in handle if line.strip())


def iter_run_dirs(root: Path) -> Iterator[RunDir]:
    """Yield every run under `root`: a RUNS folder, one sweep folder, or one run folder."""
    root = Path(root)
    if (root / "config.json").exists():
        yield RunDir(root)
        return
    if not root.is_dir():
        return
    for config_path in sorted(root.glob("*/config.json")) + sorted(root.glob("*/*/config.json")):
        if DATA_FOLDER in config_path.parts:
            continue
        yield RunDir(config_path.parent)
