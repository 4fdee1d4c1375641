"""Read runs back from a Weights & Biases project: `wandb:ENTITY/PROJECT[/GROUP]`.

Training sends each run's config.json record as the W&B run config, its summary.json as the run summary and
its metric rows as the history (`scaling.tracking`), with the sweep as the W&B group. So a W&B run becomes
the same row as its run folder, through `analysis.runs.row_from_records`. The W&B public API needs network
access and, for private projects, an API key; the local run store needs neither and contains the same data.
"""

from __future__ import annotations

import logging
from pathlib import Path
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
    try:
        if api is None:  # wandb.Api() already fails without an API key, or with one the server rejects
            api = wandb.Api()
        runs = list(api.runs(path, filters={"group": group} if group else {}))
    except Exception as error:  # the W&B client raises its own error types for network and auth failures
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        login = "" if "wandb login" in reason else "run `wandb login` or set WANDB_API_KEY, "
        raise UserError(f"could not list W&B runs of {path}: {reason}; {login}check the name and the network, or fit "
                        "the local run store instead") from None

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


def log_plots(source: str, out_dir: Path, plot_names: list[str], record: dict[str, Any],
              wandb_module: Any = None) -> None:
    """Log a fit's PNG plots and its approach 3 parameters to the W&B project its runs came from.

    Creates one W&B run of job type "analysis" in the source's project and group. `wandb_module` replaces
    the wandb package (tests pass a stand-in). Raises UserError when W&B cannot be reached.
    """
    path, group = parse_source(source)
    entity, project = path.split("/")
    if wandb_module is None:
        try:
            import wandb as wandb_module
        except ImportError:
            raise UserError("logging plots to W&B needs the wandb package: pip install wandb") from None
    try:
        run = wandb_module.init(entity=entity, project=project, group=group, job_type="analysis",
                                name="scaling-fit", config={"convention": record.get("convention")})
        run.log({name.removesuffix(".png"): wandb_module.Image(str(Path(out_dir) / name)) for name in plot_names})
        run.summary.update({f"approach3/{key}": value for key, value in record["approach3"]["parameters"].items()})
        run.finish()
    except Exception as error:  # the W&B client raises its own error types for network and auth failures
        raise UserError(f"could not log plots to W&B project {path}: {error}; the plots are still in {out_dir}") from None
    logger.info("logged %d plot(s) to W&B project %s", len(plot_names), path)
