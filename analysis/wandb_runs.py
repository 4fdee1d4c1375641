"""Read runs back from a Weights & Biases project: `wandb:ENTITY/PROJECT[/GROUP]`.

Training sends each run's config.json record as the W&B run config, its summary.json as the run summary and
its metric rows as the history (`scaling.tracking`), with the sweep as the W&B group. So a W&B run becomes
the same row as its run folder, through `analysis.runs.row_from_records`. The W&B public API needs network
access and, for private projects, an API key; the local run store needs neither and contains the same data.
"""

from __future__ import annotations

import logging
from typing import Any

from scaling.errors import UserError

from analysis.runs import RunTable, build_table, row_from_records

logger = logging.getLogger(__name__)

PREFIX = "wandb:"
HISTORY_KEYS = ["tokens", "val_loss"]


def is_wandb_source(source: object) -> bool:
    return str(source).startswith(PREFIX)


def parse_source(source: str) -> tuple[str, str | None]:
    """Split "wandb:ENTITY/PROJECT[/GROUP]" into ("ENTITY/PROJECT", GROUP or None)."""
    parts = [part for part in source[len(PREFIX):].split("/") if part]
    if len(parts) not in (2, 3):
        raise UserError(f"invalid W&B source {source!r}; use wandb:ENTITY/PROJECT or wandb:ENTITY/PROJECT/GROUP")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def load_wandb(source: str, *, allow_mixed: bool = False, api: Any = None) -> RunTable:
    """Read the runs of a W&B project (one group when given) into a RunTable.

    `api` is a `wandb.Api()`-like object with `runs(path, filters=...)`; None creates `wandb.Api()`.
    """
    path, group = parse_source(source)
    if api is None:
        try:
            import wandb
        except ImportError:
            raise UserError("reading runs from W&B needs the wandb package: pip install wandb") from None
        api = wandb.Api()
    try:
        runs = list(api.runs(path, filters={"group": group} if group else {}))
    except Exception as error:  # the W&B client raises its own error types for network and auth failures
        raise UserError(f"could not list W&B runs of {path}: {error}; check the name, the network and "
                        "WANDB_API_KEY, or read the local run store instead") from None

    items = []
    for run in runs:
        sweep = run.group or group or "wandb"
        config = dict(run.config)
        summary = dict(run.summary)

        def history(run: Any = run) -> list[dict[str, Any]]:
            return list(run.scan_history(keys=HISTORY_KEYS))

        row, reason = row_from_records(config, summary, history, run.name, sweep, f"{PREFIX}{path}/{run.id}")
        items.append((f"{sweep}/{run.name}", row, reason))
    logger.info("read %d W&B run(s) from %s%s", len(items), path, f" group {group}" if group else "")
    return build_table(items, source, allow_mixed)
