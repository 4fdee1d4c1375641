"""Experiment tracking with Weights & Biases, where a failure never stops training.

Mode `auto` runs online when an API key is configured (WANDB_API_KEY or a `wandb login` netrc entry) and
offline otherwise; offline runs are written under `<run>/wandb/` and can be uploaded later with
`wandb sync`. The local run store is always written first: W&B is never the only copy.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KNOWN_WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # values wandb itself accepts


def resolve_mode(mode: str) -> str:
    """Return 'online', 'offline' or 'disabled' for a configured mode (including 'auto')."""
    environment_mode = os.environ.get("WANDB_MODE")
    if mode == "auto" and environment_mode in ("online", "offline", "disabled"):
        return environment_mode
    if mode == "auto":
        return "online" if _has_api_key() else "offline"
    return mode


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """A W&B run named by run_id and grouped by sweep; every call logs and swallows W&B errors.

    A resumed training run resumes its W&B run (the id is a function of sweep and run_id) and sends its
    kept metric rows again (`log_rows`), because a killed process loses the rows W&B had not yet written.
    Rows below the `starting_step` of a resumed online run (W&B already contains them) are not sent, so
    the W&B history has every step once. Offline, each attempt writes a new `wandb/offline-run-*` folder
    with the whole history, so the folders of earlier attempts move to `wandb/superseded/`: syncing
    `wandb/offline-run-*` then uploads one consistent history.
    """

    def __init__(self, *, mode: str, project: str, run_id: str, sweep: str, run_dir: Path, config: dict[str, Any]):
        self.mode = resolve_mode(mode)
        self.run = None
        self.first_new_step = 0  # W&B already contains the steps below this one
        if self.mode == "disabled":
            return
        if self.mode == "offline":
            _set_aside_earlier_attempts(Path(run_dir))
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=project,
                group=sweep,
                name=run_id,
                id=_wandb_id(sweep, run_id),
                resume="allow",
                dir=str(run_dir),
                config=config,
                mode=self.mode,
                reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
            )
            self.first_new_step = int(getattr(self.run, "starting_step", 0) or 0)
            log.info("W&B run %s (%s mode) in group %s", run_id, self.mode, sweep)
        except Exception as error:  # W&B may fail in many ways (network, auth, service); training goes on.
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            environment_mode = os.environ.get("WANDB_MODE")
            if environment_mode not in (None, "", *KNOWN_WANDB_MODES):
                reason += f" (WANDB_MODE={environment_mode!r}; use online, offline or disabled)"
            log.error("W&B init failed for run %s, continuing with the local run store only: %s", run_id, reason)
            self.run = None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is None or step < self.first_new_step:
            return
        try:
            self.run.log(row, step=step)
        except Exception as error:
            log.error("W&B log failed at step %d, disabling W&B for this run: %s", step, error)
            self.run = None

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        """Send metric rows read back from metrics.jsonl, each at its own step."""
        for row in rows:
            self.log(row, step=int(row["step"]))

    def summary(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
        except Exception as error:
            log.error("W&B summary update failed: %s", error)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as error:
            log.error("W&B finish failed: %s", error)
        self.run = None


SUPERSEDED_FOLDER = "superseded"  # <run>/wandb/superseded/: offline W&B runs of earlier attempts


def _set_aside_earlier_attempts(run_dir: Path) -> None:
    """Move the offline W&B runs of this run's earlier attempts to `wandb/superseded/`.

    An interrupted attempt's folder has rows past the checkpoint it resumed from, and the new attempt trains
    those steps again. So uploading both would give W&B two values for those steps. A rename keeps W&B's
    open files valid.
    """
    earlier = sorted((run_dir / "wandb").glob("offline-run-*"))
    if not earlier:
        return
    superseded = run_dir / "wandb" / SUPERSEDED_FOLDER
    superseded.mkdir(exist_ok=True)
    for folder in earlier:
        folder.rename(superseded / folder.name)
    log.info("moved %d offline W&B run(s) of earlier attempts of %s to %s; the new attempt logs the whole "
             "history again", len(earlier), run_dir.name, superseded)


def _wandb_id(sweep: str, run_id: str) -> str:
    """Return a W&B run id stable across resumes; W&B ids may not contain '/' or spaces."""
    raw = f"{sweep}-{run_id}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:128]
