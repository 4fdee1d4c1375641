"""Read a run store back into the analysis table: one row per run.

`load_runs(path)` accepts the RUNS root, one sweep folder or one run folder (the layout of
docs/run_format.md, read through `scaling.run_store`). Only completed runs with a finite final validation
loss become rows; the others are listed in `RunTable.excluded` with the reason and named in a warning.
Runs from different corpus or tokenizer fingerprints are never mixed unless the caller passes allow_mixed=True (--allow-mixed).

This module imports no JAX.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from scaling.errors import UserError
from scaling.run_store import RunDir, iter_run_dirs

logger = logging.getLogger(__name__)

CONVENTIONS = ("total", "non_embedding")


@dataclass(frozen=True)
class RunRow:
    """One run as the fits see it. N is in parameters, D in tokens, C in FLOPs, losses in nats/token."""

    run_id: str
    sweep: str
    corpus_fingerprint: str | None
    # Counts are whole numbers for runs; points read from a CSV of published data may carry fractions.
    params_total: float  # N, every parameter including embeddings (Hoffmann et al. 2022's convention)
    params_non_embedding: float  # N without embeddings (Kaplan et al. 2020's convention)
    tokens: float  # D actually trained
    flops_6nd: float  # C = 6 N_total D
    flops_exact: float | None  # forward + backward matrix multiplies, with attention and logits
    flop_budget: float | None  # the IsoFLOP budget this run belongs to, from its sweep spec, when recorded
    final_loss: float  # summary.final_val_loss
    status: str
    learning_curve: tuple[tuple[float, float], ...] = field(default=(), repr=False)  # (tokens, val_loss)
    path: str = ""

    def params(self, convention: str = "total") -> float:
        """Return N under `convention`: "total" or "non_embedding"."""
        if convention == "total":
            return self.params_total
        if convention == "non_embedding":
            return self.params_non_embedding
        raise UserError(f"unknown parameter convention {convention!r}; use one of: {', '.join(CONVENTIONS)}")

    def flops(self, convention: str = "total") -> float:
        """Return C = 6 N D under `convention`."""
        return 6.0 * self.params(convention) * self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "sweep": self.sweep, "corpus_fingerprint": self.corpus_fingerprint,
            "params_total": self.params_total, "params_non_embedding": self.params_non_embedding,
            "tokens": self.tokens, "flops_6nd": self.flops_6nd, "flops_exact": self.flops_exact,
            "flop_budget": self.flop_budget, "final_loss": self.final_loss, "status": self.status,
            "learning_curve": [list(point) for point in self.learning_curve],
        }


@dataclass(frozen=True)
class RunTable:
    """Completed runs as rows, and every run left out with the reason."""

    rows: tuple[RunRow, ...]
    excluded: dict[str, str]  # "<sweep>/<run_id>" -> reason (status, missing summary, missing loss)
    source: str
    warnings: tuple[str, ...] = ()  # caveats about the set of runs as a whole, logged when it was read

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fingerprints(self) -> set[str | None]:
        return {row.corpus_fingerprint for row in self.rows}


def load_runs(path: str | Path, *, allow_mixed: bool = False) -> RunTable:
    """Read every run under `path` (RUNS root, sweep folder or run folder) into a RunTable.

    Raises UserError when `path` contains no runs, or when completed runs come from more than one corpus or
    tokenizer fingerprint and `allow_mixed` is False.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"runs folder {root} not found; pass the RUNS folder or one sweep folder inside it")
    items = []
    for run_dir in iter_run_dirs(root):
        row, reason = _read_run(run_dir)
        items.append((f"{run_dir.sweep}/{run_dir.run_id}", row, reason))
    return build_table(items, str(root), allow_mixed)


def _read_run(run_dir: RunDir) -> tuple[RunRow | None, str]:
    """Return (row, "") for a usable run, or (None, reason)."""
    try:
        config = run_dir.config()
    except (OSError, ValueError) as error:
        return None, f"unreadable config.json: {error}"
    try:
        summary = run_dir.summary()
    except (OSError, ValueError) as error:
        return None, f"unreadable summary.json: {error}"
    if summary is None:
        return None, "no summary.json (never started)"
    return row_from_records(config, summary, run_dir.metrics, run_dir.run_id, run_dir.sweep, str(run_dir.path))


def row_from_records(config: dict[str, Any], summary: dict[str, Any], metrics: Callable[[], Iterable[dict[str, Any]]],
                     run_id: str, sweep: str, path: str) -> tuple[RunRow | None, str]:
    """Build a row from a run's config record, summary and metric rows; return (None, reason) when unusable.

    The same records come from a run folder (config.json, summary.json, metrics.jsonl) or from W&B (run
    config, summary and history). `metrics` is called only for completed runs.
    """
    status = summary.get("status")
    if status != "completed":
        return None, f"status {status}"
    final_loss = summary.get("final_val_loss")
    if final_loss is None or not math.isfinite(float(final_loss)):
        return None, "completed without a finite final_val_loss"

    params = config.get("params", {})
    flops = config.get("flops", {})
    try:
        params_total = int(params["total"])
        params_non_embedding = int(params["non_embedding"])
        tokens = int(config.get("tokens", summary.get("tokens_seen")))
    except (KeyError, TypeError, ValueError) as error:
        return None, f"config lacks parameter counts or tokens ({error})"

    corpus = config.get("corpus") or {}
    train_config = config.get("config") or {}
    budget = train_config.get("flop_budget", config.get("flop_budget"))
    curve = tuple(
        (float(row["tokens"]), float(row["val_loss"]))
        for row in metrics()
        if row.get("val_loss") is not None and row.get("tokens") is not None
    )
    row = RunRow(
        run_id=str(config.get("run_id", run_id)),
        sweep=str(config.get("sweep", sweep)),
        corpus_fingerprint=corpus.get("fingerprint"),
        params_total=params_total,
        params_non_embedding=params_non_embedding,
        tokens=tokens,
        flops_6nd=6.0 * params_total * tokens,
        flops_exact=None if flops.get("exact") is None else float(flops["exact"]),
        flop_budget=None if budget is None else float(budget),
        final_loss=float(final_loss),
        status=str(status),
        learning_curve=curve,
        path=path,
    )
    return row, ""


def build_table(items: Iterable[tuple[str, RunRow | None, str]], source: str, allow_mixed: bool) -> RunTable:
    """Collect (name, row or None, reason) items into a RunTable, warning about exclusions and mixed corpora."""
    rows: list[RunRow] = []
    excluded: dict[str, str] = {}
    for name, row, reason in items:
        if row is None:
            excluded[name] = reason
        else:
            rows.append(row)
    if not rows and not excluded:
        raise UserError(f"no runs found under {source}: expected <sweep>/<run_id>/config.json folders")
    if excluded:
        logger.warning("excluded %d run(s) that are not usable: %s", len(excluded),
                       "; ".join(f"{name} ({reason})" for name, reason in sorted(excluded.items())))

    fingerprints = sorted({str(row.corpus_fingerprint) for row in rows})
    if len(fingerprints) > 1 and not allow_mixed:
        raise UserError(
            f"runs under {source} come from {len(fingerprints)} corpus/tokenizer fingerprints "
            f"({', '.join(fingerprints)}); fit one corpus at a time, or pass --allow-mixed (allow_mixed=True) to fit them together"
        )
    warnings = []
    sweeps = Counter(row.sweep for row in rows)
    if len(sweeps) > 1:
        # Sweeps may differ in sequence length, batch or schedule, which shifts their losses apart.
        counts = ", ".join(f"{name}: {count}" for name, count in sorted(sweeps.items()))
        warnings.append(f"fitting the runs of {len(sweeps)} sweeps together ({counts}); their training settings "
                        f"may differ, so to fit one sweep pass its folder, e.g. "
                        f"{Path(source) / sweeps.most_common(1)[0][0]}")
    for warning in warnings:
        logger.warning(warning)
    rows.sort(key=lambda row: (row.sweep, row.flops_6nd, row.params_total, row.run_id))
    return RunTable(tuple(rows), excluded, source, tuple(warnings))
