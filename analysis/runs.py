"""Read a run store back into the analysis table: one row per run.

`load_runs(path)` accepts the RUNS root, one sweep folder or one run folder (the layout of
docs/run_format.md, read through `scaling.run_store`). Only completed runs with a finite final validation
loss become rows; the others are listed in `RunTable.excluded` with the reason and named in a warning.
A run folder whose summary.json or config.json is missing or hand-edited into something unusable (a loss
that is not a positive number, a parameter count below 1, a list where an object belongs) is excluded the
same way, never with a traceback. Runs from different corpus or tokenizer fingerprints are never mixed
unless the caller passes allow_mixed=True (`--allow-mixed` on the command line).

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
from scaling.numbers import human_count
from scaling.paths import DATA_FOLDER
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
    epochs: float | None = None  # D over the corpus's training tokens; above 1 the run saw tokens again
    corpus_source: str | None = None  # what the corpus was prepared from, and its tokenizer, for reports

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
            "epochs": self.epochs, "corpus_source": self.corpus_source,
        }


@dataclass(frozen=True)
class RunTable:
    """Completed runs as rows, and every run left out with the reason."""

    rows: tuple[RunRow, ...]
    excluded: dict[str, str]  # "<sweep>/<run_id>" -> reason (status, missing summary, missing loss)
    source: str
    warnings: tuple[str, ...] = ()  # caveats about the set of runs as a whole, logged when it was read
    # "runs" for a run store or W&B project; "csv" for published points. Those have no learning curves, and
    # their loss is whatever the CSV's loss column contains (Chinchilla's points are final training losses).
    source_type: str = "runs"
    loss_label: str = "final validation loss (nats/token)"  # what each row's final_loss is, for plot axes
    loss_unit: str = "nats/token, final validation"  # the same for fit.json's units

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def noun(self) -> str:
        """Return what a row is called in messages: "runs" (a run store or W&B) or "points" (a CSV)."""
        return "points" if self.source_type == "csv" else "runs"

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
        near = sorted(folder.name for folder in root.parent.glob("*/")
                      if not folder.name.startswith(("_", ".")) and any(folder.glob("*/config.json")))
        listed = f" ({root.parent} holds the sweeps {', '.join(near)})" if near else ""
        raise UserError(f"runs folder {root} not found; pass the RUNS folder or one sweep folder inside it{listed}")
    if root.is_file():
        raise UserError(f"{root} is a file, not a folder of runs; pass the RUNS folder or a sweep folder, or a CSV "
                        "of points with --columns")
    items = []
    for run_dir in iter_run_dirs(root):
        row, reason = _read_run(run_dir)
        items.append((f"{run_dir.sweep}/{run_dir.run_id}", row, reason))
    # The run store lists runs by their config.json, so a run whose config.json was deleted would vanish
    # from the fit without a word. Such a run is listed as excluded instead.
    for folder in _runs_without_config(root):
        items.append((f"{folder.parent.name}/{folder.name}", None,
                      "no config.json, so its parameter counts are unknown; restore the file or delete the folder"))
    return build_table(items, str(root), allow_mixed)


RUN_FILES = ("summary.json", "metrics.jsonl")  # a folder holding one of these without config.json lost its config


def _runs_without_config(root: Path) -> list[Path]:
    """Return the run folders under `root` (at the depths `iter_run_dirs` reads) that have no config.json."""
    if (root / "config.json").exists() or not root.is_dir():
        return []
    candidates = [root, *root.glob("*/"), *root.glob("*/*/")]
    return sorted(folder for folder in candidates
                  if folder.is_dir() and DATA_FOLDER not in folder.relative_to(root).parts
                  and not (folder / "config.json").exists() and any((folder / name).is_file() for name in RUN_FILES))


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
    for name, record in (("config.json", config), ("summary.json", summary)):
        if not isinstance(record, dict):
            return None, (f"{name} holds a JSON {type(record).__name__} where an object belongs; restore the file "
                          "or delete the run's folder")
    return row_from_records(config, summary, run_dir.metrics, run_dir.run_id, run_dir.sweep, str(run_dir.path))


def _number(value: Any) -> float | None:
    """Return `value` as a float, or None when it is not a number (a string such as "abc", a list, true)."""
    if isinstance(value, bool):
        return None  # float(True) is 1.0, but a hand-edited true is not a count or a loss
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _count_problem(field_name: str, value: Any) -> str | None:
    """Return why a parameter or token count is unusable, or None for a finite number of at least 1."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 1:
        return f"{field_name} is {value!r}, not a count of at least 1"
    return None


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
    if final_loss is None:
        return None, "completed without a final_val_loss"
    loss = _number(final_loss)
    if loss is None or not math.isfinite(loss) or loss <= 0:
        # A loss in nats/token is positive, and the fits take its logarithm.
        return None, f"completed with final_val_loss {final_loss!r}, not a finite number > 0"

    for section in ("params", "flops", "corpus", "config"):
        if config.get(section) is not None and not isinstance(config[section], dict):
            return None, f"config's {section} is a JSON {type(config[section]).__name__} where an object belongs"
    params = config.get("params") or {}
    flops = config.get("flops") or {}
    if "total" not in params or "non_embedding" not in params:
        return None, "config lacks parameter counts (params.total and params.non_embedding)"
    tokens_value = config.get("tokens", summary.get("tokens_seen"))
    for field_name, value in (("params.total", params["total"]), ("params.non_embedding", params["non_embedding"]),
                              ("tokens", tokens_value)):
        problem = _count_problem(field_name, value)
        if problem:
            return None, f"config's {problem}"
    params_total, params_non_embedding = int(_number(params["total"])), int(_number(params["non_embedding"]))
    tokens = int(_number(tokens_value))

    corpus = config.get("corpus") or {}
    train_config = config.get("config") or {}
    budget = train_config.get("flop_budget", config.get("flop_budget"))
    budget_flops = None if budget is None else _number(budget)
    if budget is not None and not (budget_flops is not None and math.isfinite(budget_flops) and budget_flops > 0):
        return None, f"config's flop_budget is {budget!r}, not a number of FLOPs > 0"
    curve = _learning_curve(metrics())
    row = RunRow(
        run_id=str(config.get("run_id", run_id)),
        sweep=str(config.get("sweep", sweep)),
        corpus_fingerprint=corpus.get("fingerprint"),
        params_total=params_total,
        params_non_embedding=params_non_embedding,
        tokens=tokens,
        flops_6nd=6.0 * params_total * tokens,
        flops_exact=_number(flops.get("exact")),  # recorded only; no fit reads it
        flop_budget=budget_flops,
        final_loss=loss,
        status=str(status),
        learning_curve=curve,
        path=path,
        epochs=_epochs(tokens, corpus),
        corpus_source=_corpus_source(corpus),
    )
    return row, ""


def _epochs(tokens: int, corpus: dict[str, Any]) -> float | None:
    """Return the passes over the corpus's training split that `tokens` make, or None when it is not recorded."""
    counts = corpus.get("tokens")
    train_tokens = _number(counts.get("train")) if isinstance(counts, dict) else None
    if train_tokens is None or not math.isfinite(train_tokens) or train_tokens <= 0:
        return None
    return tokens / train_tokens


def _corpus_source(corpus: dict[str, Any]) -> str | None:
    """Return "SOURCE (TOKENIZER tokenizer)" from a run's corpus record, or None when it names no source."""
    source = corpus.get("source")
    if not source:
        return None
    tokenizer = corpus.get("tokenizer")
    return f"{source} ({tokenizer} tokenizer)" if tokenizer else str(source)


def _learning_curve(rows: Iterable[Any]) -> tuple[tuple[float, float], ...]:
    """Return the (tokens, val_loss) points of metric rows; rows without both as positive numbers are skipped.

    A row that is not an object, or whose tokens or val_loss is not a positive number, is no point of the
    curve. A run left with fewer than 2 points is named by approach 1, which needs the curve.
    """
    curve = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        tokens, loss = _number(row.get("tokens")), _number(row.get("val_loss"))
        if tokens is not None and loss is not None and math.isfinite(tokens) and math.isfinite(loss) and loss > 0:
            curve.append((tokens, loss))
    return tuple(curve)


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

    sweeps_by_fingerprint: dict[str, set[str]] = {}
    for row in rows:
        sweeps_by_fingerprint.setdefault(str(row.corpus_fingerprint), set()).add(row.sweep)
    if len(sweeps_by_fingerprint) > 1 and not allow_mixed:
        named = "; ".join(f"{fingerprint} (sweep {', '.join(sorted(sweeps))})"
                          for fingerprint, sweeps in sorted(sweeps_by_fingerprint.items()))
        example = ""
        first = sorted(sweeps_by_fingerprint.items())[0][1]
        shared = any(first & sweeps for sweeps in list(sweeps_by_fingerprint.values())[1:])
        if not shared and not str(source).startswith("wandb:"):  # one sweep folder then contains one corpus
            example = f", e.g. {Path(source) / sorted(first)[0]}"
        raise UserError(
            f"runs under {source} come from {len(sweeps_by_fingerprint)} corpus/tokenizer fingerprints ({named}); "
            f"fit one corpus at a time{example}, or pass --allow-mixed to fit them together"
        )
    warnings = []
    sweeps = Counter(row.sweep for row in rows)
    if len(sweeps) > 1:
        # Sweeps may differ in sequence length, batch or schedule, which shifts their losses apart.
        counts = ", ".join(f"{name}: {count}" for name, count in sorted(sweeps.items()))
        warnings.append(f"fitting the runs of {len(sweeps)} sweeps together ({counts}); their training settings "
                        f"may differ, so to fit one sweep pass its folder, e.g. "
                        f"{Path(source) / sweeps.most_common(1)[0][0]}")
        repeated = _repeated_across_sweeps(rows)
        if repeated:
            warnings.append(repeated)
    for warning in warnings:
        logger.warning(warning)
    rows.sort(key=lambda row: (row.sweep, row.flops_6nd, row.params_total, row.run_id))
    return RunTable(tuple(rows), excluded, source, tuple(warnings))


def _repeated_across_sweeps(rows: list[RunRow]) -> str | None:
    """Name the (N, D) pairs trained in more than one sweep, or return None when there are none.

    Seeds repeated within one sweep are a deliberate design. The same pair in two sweeps is usually a
    relaunch under a new name, so fitting both counts that point twice.
    """
    sweeps_by_pair: dict[tuple[float, float], set[str]] = {}
    for row in rows:
        sweeps_by_pair.setdefault((row.params_total, row.tokens), set()).add(row.sweep)
    repeated = sorted((pair, sweeps) for pair, sweeps in sweeps_by_pair.items() if len(sweeps) > 1)
    if not repeated:
        return None
    (params, tokens), sweeps = repeated[0]
    return (f"{len(repeated)} (N, D) pair(s) were trained in more than one sweep (e.g. N = {human_count(params)}, "
            f"D = {human_count(tokens)} in {', '.join(sorted(sweeps))}); each run counts as its own point, so "
            f"those pairs weigh more in the fit. Fit one sweep folder if they repeat the same study")
