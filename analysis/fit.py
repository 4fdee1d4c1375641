"""`scaling fit`: fit approach 3 (and approach 2 when the sweep has IsoFLOP budgets) to a folder of runs.

Writes `fit.json` and PNG plots into an output folder. Every number in fit.json is written with Python's
float repr, so each parameter reads back bit for bit (17 significant digits).

A fit that replaces an earlier one in the same folder moves the earlier fit.json, plots and report.md
(FIT_OUTPUTS, by name; nothing else) into `previous/<time it was written>/` there, so the folder never mixes
two fits. The PREVIOUS_KEPT newest earlier fits stay readable.

fit.json's top-level "warnings" list contains every warning that the `analysis` modules logged during the
fit, in the order logged and with the text printed: caveats about the runs read, approach 3's fit and
bootstrap, approaches 1 and 2 (budgets dropped, or why an approach gives no power laws) and intervals that
could not be reported. A warning about one method starts with its name ("approach 3: ...",
"approach 1 has no power laws: ...", "Kaplan-style L(N): ...").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scaling.errors import UserError
from scaling.run_store import json_safe

from analysis.bootstrap import BootstrapResult, bootstrap_approach3, fewest_replicates
from analysis.bootstrap_methods import Replicates, bootstrap_envelope, bootstrap_isoflop, bootstrap_kaplan
from analysis.csv_points import DEFAULT_COLUMNS, load_csv
from analysis.defaults import DEFAULT_BOOTSTRAPS, DEFAULT_FIT_STARTS, OPTIONAL_METHODS, RESAMPLING
from analysis.extrapolation import DEFAULT_HOLDOUT_FRACTION, extrapolation_check
from analysis.fit_envelope import EnvelopeFit, fit_envelope
from analysis.fit_kaplan import fit_kaplan, other_term_share
from analysis.fit_isoflop import IsoFlopFit, fit_isoflop, group_by_budget
from analysis.fit_parametric import Approach3Options, ParametricFit, fit_approach3
from analysis.laws import ParametricLaw
from analysis.progress import StepProgress
from analysis.runs import CONVENTIONS, RunTable, load_runs
from analysis.wandb_runs import is_wandb_source, load_wandb

logger = logging.getLogger(__name__)
# Warnings logged under this logger and its children during a fit are copied into fit.json.
WARNING_LOGGER = "analysis"
APPROACH2_NOT_REQUESTED = "approach 2 not requested"

FIT_FILE = "fit.json"
PLOT_FILES = ("isoflop.png", "loss_vs_params.png", "loss_vs_tokens.png", "loss_vs_flops.png",
              "optimal_allocation.png", "residuals.png")
REPORT_FILE = "report.md"  # analysis.report writes it beside fit.json
FIT_OUTPUTS = (*PLOT_FILES, REPORT_FILE)  # what an earlier fit may have left in a folder, besides fit.json
PREVIOUS_FOLDER = "previous"  # <out>/previous/<time>/: the fits that newer ones replaced
PREVIOUS_KEPT = 5  # earlier fits kept there; the oldest beyond this are deleted
PREVIOUS_STAMP = "%Y-%m-%d_%H-%M-%S"  # local time at which the earlier fit's fit.json was written
NAMED_RUNS = 8  # a warning about runs left out of a method names this many, then gives the count of the rest
REPORT_FOLDER = "_report"  # a sweep's fit goes to RUNS/<sweep>/_report/ by default (scaling fit, scaling demo)
FIT_SCHEMA = 1
APPROACH3_PARAMETERS = 5
# Fewer points than this many per fitted parameter draw a warning: a rule of thumb, not a derived bound.
FEW_POINTS_PER_PARAMETER = 2

CONVENTION_DESCRIPTIONS = {
    "total": "N counts every parameter, embeddings and output head included (Hoffmann et al. 2022); C = 6 N D",
    "non_embedding": "N counts attention and MLP matrices only (Kaplan et al. 2020); C = 6 N D with that N",
}


def fit_runs(runs_path: str | Path, out_dir: str | Path, *, convention: str = "total",
             starts: int = DEFAULT_FIT_STARTS,
             bootstraps: int = DEFAULT_BOOTSTRAPS, seed: int = 0, allow_mixed: bool = False, plot: bool = True,
             options: Approach3Options | None = None, methods: tuple[str, ...] = OPTIONAL_METHODS,
             columns: str | None = None, filters: list[str] | None = None,
             holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, resample: str = "luck",
             progress: bool = False) -> dict[str, Any]:
    """Fit the completed runs under `runs_path`; write fit.json and plots to `out_dir`; return the record.

    `runs_path` is a run store folder, "wandb:ENTITY/PROJECT[/GROUP]" (see `analysis.wandb_runs`), or a CSV
    of points read with the `columns` mapping (and `filters`, see `analysis.csv_points`). Approach 3 always
    runs; `methods` picks the others ("approach1", "approach2", "kaplan", "extrapolation"), each skipped with
    a note where the data cannot support it. `starts` is the minimum size of approach 3's start grid.
    `bootstraps` replicates (0 for none), drawn with `seed`, give 95% intervals for every fitted parameter
    of every method that ran (see `analysis.bootstrap` and `analysis.bootstrap_methods`). `resample` picks
    what approaches 1 and 2 redraw: "luck" (each run's residual, keeping the sweep's sizes; the default) or
    "runs" (runs with replacement). `progress` shows the steps on a terminal (analysis.progress).
    Raises UserError, before any fitting, for arguments that cannot work: an `out_dir` that is or lies in a
    file, `columns` or `filters` for a source that is not a CSV, fewer than 40 `bootstraps` (other than 0).
    Raises UserError when there are fewer completed runs than approach 3's 5 parameters, or a single model
    size or token count.
    """
    _check_fit_arguments(convention, starts, holdout_fraction, resample, bootstraps, methods, seed)
    _check_source_options(runs_path, columns, filters)
    out = Path(out_dir)
    _check_out_folder(out)
    replaced = (out / FIT_FILE).exists()
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    # The new fit is written aside and moved in only once complete, so a fit that fails leaves the earlier one.
    staging = out / f".fit-partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        with _WarningLog() as warning_log:
            record = _fit_runs(runs_path, staging, convention, starts, bootstraps, seed, allow_mixed, plot, options,
                               methods, columns, filters, holdout_fraction, resample, progress)
        record["warnings"] = list(warning_log.messages)
        if record.get("source_type") == "csv":  # which rows of the file this fit used, to redo or check it later
            record["csv"] = {"columns": columns or DEFAULT_COLUMNS, "where": list(filters or [])}
        # An unbounded interval or standard error is written as null: fit.json stays valid JSON.
        (staging / FIT_FILE).write_text(json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
        if replaced:
            _keep_earlier_fit(out)
        for name in (*record.get("plots", []), FIT_FILE):
            os.replace(staging / name, out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; only folders this call made, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s%s", out / FIT_FILE, ", replacing the earlier fit" if replaced else "")
    return record


def _check_out_folder(out: Path) -> None:
    """Raise UserError when fit.json could not be written into `out`, so that no fit runs only to fail there."""
    folder = out.expanduser().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        problem = "is a file" if existing == folder else f"lies inside {existing}, which is a file"
        raise UserError(f"output folder {out} {problem}; pass --out with a folder for fit.json and the plots "
                        "(it is created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out} cannot be written here ({existing} is not writable); pass --out with "
                        "a folder you can write to")
    folders = [name for name in (FIT_FILE, *FIT_OUTPUTS) if (folder / name).is_dir()]
    if folders:
        raise UserError(f"output folder {out} contains a folder named {folders[0]}, where the fit writes a file; pass "
                        "--out with another folder, or rename it")
    if (folder / PREVIOUS_FOLDER).exists() and not (folder / PREVIOUS_FOLDER).is_dir():
        raise UserError(f"output folder {out} contains a file named {PREVIOUS_FOLDER}, where the fit keeps the "
                        "earlier fit; pass --out with another folder, or rename it")
    # A fit replaces an earlier fit's files only: never files of the same names that someone else put there.
    if (folder / FIT_FILE).exists():
        if not _is_fit_record(folder / FIT_FILE):
            raise UserError(f"output folder {out} contains a {FIT_FILE} that `scaling fit` did not write; pass --out "
                            "with another folder, or move that file")
        return
    theirs = [name for name in FIT_OUTPUTS if (folder / name).exists()]
    if theirs:
        raise UserError(f"output folder {out} contains {', '.join(theirs)} but no {FIT_FILE}, so they are not an "
                        "earlier fit's and a fit would overwrite them; pass --out with another folder, or move them")


def _is_fit_record(path: Path) -> bool:
    """Return whether `path` reads as a fit.json that `scaling fit` wrote (a JSON object with its keys)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and "schema" in record and "approach3" in record


def _keep_earlier_fit(out: Path) -> None:
    """Move the earlier fit in `out` (fit.json, its plots and report.md) into `out/previous/<time>/`.

    A quick refit (`--bootstraps 0`, another method) must not cost a finished report, so each earlier fit gets
    a folder named after the time its fit.json was written, and the PREVIOUS_KEPT newest stay. Only the names
    in FIT_FILE and FIT_OUTPUTS are moved or deleted, so a folder never mixes two fits.
    """
    previous = out / PREVIOUS_FOLDER
    previous.mkdir(exist_ok=True)  # _check_out_folder made sure no file has its name
    _move_fit_files(previous, previous)  # an earlier version kept one fit directly in previous/
    moved_to = _move_fit_files(out, previous)
    if moved_to is None:
        return
    stamped = sorted((path for path in previous.iterdir() if path.is_dir() and _is_stamp(path.name)),
                     key=lambda path: (path.name[:19], int(path.name[20:] or 1)))  # "-10" after "-9"
    for old in stamped[:-PREVIOUS_KEPT]:
        for name in (FIT_FILE, *FIT_OUTPUTS):
            if (old / name).is_file():
                (old / name).unlink()
        with contextlib.suppress(OSError):  # a file someone else put there keeps its folder
            old.rmdir()
    moved = sorted(path.name for path in moved_to.iterdir())
    logger.info("kept the earlier fit (%s) in %s", ", ".join(moved), moved_to)


def _move_fit_files(source: Path, previous: Path) -> Path | None:
    """Move the fit files in `source` to a new folder of `previous`, named after their fit.json's time.
    Return that folder, or None when `source` contains none."""
    names = [name for name in (FIT_FILE, *FIT_OUTPUTS) if (source / name).is_file()]
    if not names:
        return None
    written = (source / FIT_FILE) if FIT_FILE in names else (source / names[0])
    stamp = time.strftime(PREVIOUS_STAMP, time.localtime(written.stat().st_mtime))
    folder, number = previous / stamp, 1
    while folder.exists():  # two fits written within one second
        number += 1
        folder = previous / f"{stamp}-{number}"
    folder.mkdir()
    for name in names:
        os.replace(source / name, folder / name)
    return folder


def _is_stamp(name: str) -> bool:
    """Return whether a folder name is one `_move_fit_files` gives: a time, perhaps followed by -2, -3, ..."""
    try:
        time.strptime(name[:19], PREVIOUS_STAMP)
    except ValueError:
        return False
    return len(name) == 19 or (name[19] == "-" and name[20:].isdigit())


class _WarningLog(logging.Handler):
    """Collect the distinct warnings logged under WARNING_LOGGER while in a `with` block."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)

    def __enter__(self) -> "_WarningLog":
        logging.getLogger(WARNING_LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        logging.getLogger(WARNING_LOGGER).removeHandler(self)


def _fit_runs(runs_path: str | Path, out_dir: str | Path, convention: str, starts: int, bootstraps: int, seed: int,
              allow_mixed: bool, plot: bool, options: Approach3Options | None, methods: tuple[str, ...],
              columns: str | None, filters: list[str] | None, holdout_fraction: float, resample: str,
              progress: bool) -> dict[str, Any]:
    """Run every fit of `fit_runs` and draw the plots; return the record, without its warnings yet."""
    table = _load_table(runs_path, allow_mixed, columns, filters)
    params, tokens, losses = _points(table, convention)
    _check_enough(table, params, tokens)
    noun = table.noun
    approach3_options = replace(options or Approach3Options(), n_starts=starts)
    curves = [row.learning_curve for row in table.rows]
    budget_groups = _budget_groups(table, convention)
    steps = 1 + bool(bootstraps) + 2 + len(set(methods) & {"kaplan", "extrapolation"}) + plot

    with StepProgress(steps, enabled=progress) as progress_line:
        with progress_line.step(f"approach 3 from {starts} or more starts"):
            started = time.perf_counter()
            approach3 = fit_approach3(params, tokens, losses, options=approach3_options)
            logger.info("approach 3 on %d %s from %d starts: %s (%.1f s)", len(params), noun, approach3.n_starts,
                        approach3.status, time.perf_counter() - started)
        bootstrap = None
        if bootstraps:
            with progress_line.step(f"approach 3 bootstrap, {bootstraps} replicates"):
                started = time.perf_counter()
                bootstrap = bootstrap_approach3(params, tokens, losses, approach3, n_bootstraps=bootstraps,
                                                seed=seed, options=approach3_options)
                logger.info("bootstrap: %d replicates, %d converged (%.1f s)", bootstraps,
                            int(bootstrap.converged.sum()), time.perf_counter() - started)
                if bootstrap.interval_note():
                    logger.warning("approach 3: %s", bootstrap.interval_note())

        record = _record(table, convention, approach3, params, tokens, losses)
        record["bootstrap"] = None if bootstrap is None else bootstrap.to_dict()
        for warning in _approach3_warnings(approach3, params, tokens, noun):
            logger.warning("approach 3: %s", warning)
        for warning in far_point_warnings(approach3.law(), table, params, tokens, losses):
            logger.warning("approach 3: %s", warning)
        repeated = repeated_data_warning(table)
        if repeated:
            logger.warning("%s", repeated)
        # `ask` answers allocation questions from this law only where the runs separate its N and D terms.
        record["approach3"]["allocation_identified"] = bool(spans_budgets(params, tokens))
        record["warnings"] = []  # fit_runs fills this with every warning logged, once all steps have run

        started = time.perf_counter()
        resampling = {"bootstraps": bootstraps, "seed": seed, "resample": resample}
        with progress_line.step("approach 2" + (" and its bootstrap" if bootstraps else "")):
            approach2, approach2_replicates = _approach2_section(record, methods, params, losses, budget_groups,
                                                                 **resampling)
        envelope, no_curves = None, None
        if {"approach1", "kaplan"} & set(methods):
            envelope = fit_envelope(params, curves)
            no_curves = _curves_missing(table, methods)
        with progress_line.step("approach 1" + (" and its bootstrap" if bootstraps else "")):
            approach1_replicates = _approach1_section(record, methods, params, curves, envelope, no_curves,
                                                      **resampling)
        kaplan_replicates = False
        if "kaplan" in methods:
            with progress_line.step("Kaplan-style fits" + (" and their bootstrap" if bootstraps else "")):
                kaplan_replicates = _kaplan_section(record, params, tokens, losses, curves, envelope,
                                                    table.source_type, bootstraps, seed, approach3.law(), noun)
        bootstrapped = [name for name, ran in (("approach 1", approach1_replicates is not None),
                                               ("approach 2", approach2_replicates is not None),
                                               ("the Kaplan-style fits", kaplan_replicates)) if ran]
        if bootstrapped:
            logger.info("bootstrap of %s: %d replicates each (%.1f s)", _join_names(bootstrapped), bootstraps,
                        time.perf_counter() - started)

        if "extrapolation" in methods:
            with progress_line.step("extrapolation check"):
                started = time.perf_counter()
                record["extrapolation"] = extrapolation_check(params, tokens, losses,
                                                              [row.run_id for row in table.rows],
                                                              approach3_options, holdout_fraction, noun=noun)
                logger.info("extrapolation check (%.1f s): %s", time.perf_counter() - started,
                            record["extrapolation"].get("skipped") or f"mean |error| "
                            f"{record['extrapolation']['mean_abs_relative_error']:.2%} on the held-out {noun}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plot:
            with progress_line.step("plots"):
                record["plots"] = _draw(out, approach3, approach2, params, tokens, losses, budget_groups,
                                        convention, bootstrap, envelope, approach2_replicates, approach1_replicates,
                                        table.loss_label)
    return record


def fitted_noun(record: dict[str, Any]) -> str:
    """Return what a fit record's points are called: "points" for a CSV source, else "runs"."""
    return "points" if record.get("source_type") == "csv" else "runs"


def _curves_missing(table: RunTable, methods: tuple[str, ...]) -> str:
    """Warn naming the runs without a learning curve; return why approach 1 has none, should it have too few.

    Approach 1 and Kaplan's L(C) read the curves (val_loss rows). A run with fewer than 2 points of one is
    left out of both, while the other methods still fit its final loss. A CSV contains final losses only.
    """
    if table.source_type == "csv":
        return "approach 1 skipped: it needs learning curves, and a CSV of points gives one final loss per point"
    where = "the W&B history" if is_wandb_source(table.source) else "metrics.jsonl"
    short = [row for row in table.rows if len(row.learning_curve) < 2]
    if short:
        names = ", ".join(f"{row.sweep}/{row.run_id} ({len(row.learning_curve)})" for row in short[:NAMED_RUNS])
        more = f" and {len(short) - NAMED_RUNS} more" if len(short) > NAMED_RUNS else ""
        used_by = [name for name, key in (("approach 1", "approach1"), ("Kaplan-style L(C)", "kaplan"))
                   if key in methods]
        logger.warning("%s %s out %d run(s) whose %s has fewer than 2 val_loss rows (the count in brackets): %s%s; "
                       "the other methods still fit their final losses", " and ".join(used_by),
                       "leave" if len(used_by) > 1 else "leaves", len(short), where, names, more)
    return f"approach 1 needs learning curves (val_loss rows in {where}) from at least 2 runs"


def _join_names(names: list[str]) -> str:
    """Return "x", "x and y" or "x, y and z"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def missing_result(record: dict[str, Any], approach: str) -> str | None:
    """Return why approach 1 or 2 ("approach1", "approach2") of a fit record gives no N_opt(C) power law.

    Returns None when it gives one, and when it was not requested (`--method` left it out).
    """
    fitted = record.get(approach)
    if fitted is not None and fitted.get("a") is not None:
        return None
    if approach == "approach2":
        note = record.get("approach2_note")
        if fitted is None:
            return None if not note or note == APPROACH2_NOT_REQUESTED else note
        return f"approach 2 has no power laws: {note or 'fewer than 2 budgets have a minimum inside their sizes'}"
    if fitted is None:
        return None
    if "skipped" in fitted:
        return fitted["skipped"]  # "approach 1 needs learning curves ..."
    return f"approach 1 has no power laws: {fitted.get('note') or 'fewer than 2 sizes win inside the size range'}"


def _check_fit_arguments(convention: str, starts: int, holdout_fraction: float, resample: str, bootstraps: int,
                         methods: tuple[str, ...], seed: int = 0) -> None:
    """Raise UserError naming the first argument that cannot work; the fit has not started yet."""
    if seed < 0:
        raise UserError(f"--seed {seed} must be a whole number >= 0 (it seeds the bootstrap's draws)")
    if convention not in CONVENTIONS:
        raise UserError(f"unknown parameter convention {convention!r}; use one of: {', '.join(CONVENTIONS)}")
    if starts < 1:
        raise UserError(f"starts={starts}: approach 3 needs at least 1 start (1000 or more for publication use)")
    if not 0 < holdout_fraction < 1:
        raise UserError(f"holdout fraction {holdout_fraction} must lie between 0 and 1, e.g. 0.1 for the "
                        "largest-compute tenth of the runs")
    if resample not in RESAMPLING:
        raise UserError(f"unknown resampling {resample!r}; use one of: {', '.join(RESAMPLING)}")
    fewest = fewest_replicates()  # every interval in the fit is a 95% one
    if bootstraps < 0 or 0 < bootstraps < fewest:
        # Fewer replicates than this never give an interval (analysis.bootstrap.min_usable_replicates).
        raise UserError(f"--bootstraps {bootstraps} gives no 95% interval; use 0 for none or at least {fewest} "
                        f"({DEFAULT_BOOTSTRAPS}, the default, leaves room for replicates that do not converge)")
    unknown = sorted(set(methods) - set(OPTIONAL_METHODS))
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(OPTIONAL_METHODS)}")


def _approach2_section(record: dict[str, Any], methods: tuple[str, ...], params: np.ndarray, losses: np.ndarray,
                       budget_groups: list[tuple[float, np.ndarray]], bootstraps: int, seed: int,
                       resample: str) -> tuple[IsoFlopFit | None, Replicates | None]:
    """Fit approach 2 (one parabola per IsoFLOP budget) into `record`, with its bootstrap; return both."""
    approach2, note = None, APPROACH2_NOT_REQUESTED
    if "approach2" in methods:
        approach2, note = _try_approach2(params, losses, budget_groups)
    record["approach2"] = None if approach2 is None else approach2.to_dict()
    record["approach2_note"] = note
    if approach2 is None:
        if "approach2" in methods:
            logger.warning("%s", missing_result(record, "approach2"))
        return None, None
    record["approach2"]["bootstrap"] = None
    _warn_if_shrinking("approach 2", approach2.params_law, approach2.tokens_law)
    if not bootstraps or approach2.params_law is None:
        return approach2, None
    # Approach 2's "luck" is each run's residual from its budget's parabola (analysis.bootstrap_methods).
    replicates = bootstrap_isoflop(params, losses, _budget_labels(budget_groups, len(params)),
                                   n_bootstraps=bootstraps, seed=seed, resample=resample)
    record["approach2"]["bootstrap"] = replicates.to_dict()
    _warn_if_few_replicates("approach 2", replicates, record["approach2"])
    return approach2, replicates


def _approach1_section(record: dict[str, Any], methods: tuple[str, ...], params: np.ndarray, curves: list,
                       envelope: EnvelopeFit | None, no_curves: str | None, bootstraps: int, seed: int,
                       resample: str) -> Replicates | None:
    """Put approach 1 (the envelope of the learning curves) into `record`, with its bootstrap; return that.

    `no_curves` is why there is no envelope, when there is none (`_curves_missing`).
    """
    record["approach1"] = None
    if "approach1" not in methods:
        return None
    if envelope is None:
        record["approach1"] = {"skipped": no_curves}
        logger.warning("%s", missing_result(record, "approach1"))
        return None
    record["approach1"] = envelope.to_dict()
    record["approach1"]["bootstrap"] = None
    if envelope.params_law is None:
        logger.warning("%s", missing_result(record, "approach1"))
    elif envelope.distinct_sizes < MIN_ENVELOPE_SIZES:
        logger.warning("approach 1: only %d sizes win on the envelope, so its power laws rest on %d points; add sizes "
                       "between them", envelope.distinct_sizes, envelope.distinct_sizes)
    _warn_if_shrinking("approach 1", envelope.params_law, envelope.tokens_law)
    if not bootstraps or envelope.params_law is None:
        return None
    replicates = bootstrap_envelope(params, curves, n_bootstraps=bootstraps, seed=seed, resample=resample)
    record["approach1"]["bootstrap"] = replicates.to_dict()
    _warn_if_few_replicates("approach 1", replicates, record["approach1"])
    return replicates


def _warn_if_shrinking(name: str, params_law, tokens_law) -> None:
    """Warn when approach 1's or 2's N_opt or D_opt falls as compute grows: no allocation follows from it."""
    for quantity, law in (("N_opt", params_law), ("D_opt", tokens_law)):
        if law is not None and not law.exponent > 0:
            consequence = "`scaling ask` gives no allocation from it" if quantity == "N_opt" else \
                "its allocations put ever fewer tokens into larger budgets"
            logger.warning("%s: %s = k C^%.3g falls as compute grows, which no compute-optimal allocation does, so "
                           "%s; the sizes or budgets are too few or too noisy to place the optimum, so add sizes "
                           "around each budget's optimum", name, quantity, law.exponent, consequence)


def _kaplan_section(record: dict[str, Any], params: np.ndarray, tokens: np.ndarray, losses: np.ndarray,
                    curves: list, envelope: EnvelopeFit | None, source_type: str, bootstraps: int,
                    seed: int, law: ParametricLaw, noun: str = "runs") -> bool:
    """Put the Kaplan-style single-variable fits into `record`, with intervals when `bootstraps` > 0.

    A fit left out gets its reason in "missing" where it is not simply too few points: L(C) without learning
    curves. `law` is approach 3's fit, which tells how far the points behind L(N) and L(D) are from the limits
    Kaplan et al. measured. Returns whether they were bootstrapped.
    """
    frontier = (None, None) if envelope is None else envelope.interior_frontier()
    record["kaplan"] = fit_kaplan(params, tokens, losses, *frontier)
    record["kaplan"]["missing"] = {}
    shares = other_term_share(law, params, tokens, losses) if law.alpha > 0 and law.beta > 0 else {}
    record["kaplan"]["other_term_share"] = shares
    for name, share in shares.items():
        fitted = record["kaplan"]["fits"].get(name)
        if fitted is None or not share > KAPLAN_LIMIT_SHARE:
            continue
        limit, other, remedy = {
            "L(N)": ("models trained to convergence", "finite data", "some sizes on many more tokens"),
            "L(D)": ("models large enough not to limit the loss", "finite model size",
                     "larger models on these token counts"),
        }[name]
        logger.warning("Kaplan-style %s: by the approach 3 fit, %s accounts for a median %.0f%% of the reducible "
                       "loss of the %s it is fitted to, so its exponent %.3g is not comparable with Kaplan et al.'s "
                       "%.3g, which holds for %s; train %s to measure it", name, other, 100 * share, noun,
                       fitted["exponent"], record["kaplan"]["published"][name]["exponent"], limit, remedy)
    if envelope is None:
        record["kaplan"]["missing"]["L(C)"] = ("needs learning curves, which CSV points lack" if source_type == "csv"
                                               else "needs learning curves from at least 2 runs")
    record["kaplan"]["bootstrap"] = None
    if not bootstraps:
        return False
    _add_kaplan_intervals(record["kaplan"], bootstrap_kaplan(
        params, tokens, losses, None if envelope is None else curves, n_bootstraps=bootstraps, seed=seed))
    return True


def _warn_if_few_replicates(name: str, replicates: Replicates, estimates: dict[str, Any] | None = None) -> None:
    """Warn when the replicates give some value no interval, and when an estimate in `estimates` lies outside
    its own 95% interval (a bootstrap distribution so skewed that the interval means little)."""
    note = replicates.interval_note()
    if note:
        logger.warning("%s: %s; add sizes per budget or budgets for intervals", name, note)
    for value_name, bounds in replicates.intervals().items():
        if value_name == "a" and bounds is not None and not 0 <= bounds[0] <= bounds[1] <= 1:
            # Basic intervals reflect the replicates around the estimate, so skewed ones can cross 0 or 1. The
            # interval of b = 1 - a crosses the other end at the same time, so a alone is named.
            logger.warning("%s: the 95%% interval of %s, [%.3g, %.3g], reaches beyond 0 to 1, where a compute-optimal "
                           "exponent lies, because its replicates are skewed; read only the part inside, and add "
                           "sizes near the optimum of each budget to narrow it", name, value_name, *bounds)
        estimate = (estimates or {}).get(value_name)
        if bounds is None or not isinstance(estimate, (int, float)) or bounds[0] <= estimate <= bounds[1]:
            continue
        logger.warning("%s: %s = %.3g lies outside its own 95%% interval [%.3g, %.3g], so the replicates scatter "
                       "too unevenly for the interval to mean much; add sizes near the optimum of each budget",
                       name, value_name, estimate, bounds[0], bounds[1])


# Above this median share of the other term (finite data for L(N), finite size for L(D)) a Kaplan-style exponent
# measures a mix of both limits, so a warning calls it not comparable with the published one.
KAPLAN_LIMIT_SHARE = 0.25
MIN_ENVELOPE_SIZES = 3  # fewer sizes winning on approach 1's envelope than this draws a warning
E_AT_ZERO = 1e-3  # nats/token: an irreducible loss below this means the fit pushed E to its bound
ONE_BUDGET_SPAN = 2.0  # runs whose compute spans less than this factor count as one budget
# Published exponents lie between 0.076 (Kaplan et al. 2020, alpha_N) and 0.37 (Besiroglu et al. 2024,
# beta). An exponent above this is the optimizer trading a term away, not a measurement.
IMPLAUSIBLE_EXPONENT = 2.0


# A point whose ln-loss residual from the approach 3 law exceeds both of these is named in a warning. The Huber
# loss keeps it from moving approach 3, but approaches 2 and 1 and the Kaplan-style fits take it at face value.
FAR_POINT_MIN_RESIDUAL = 0.1  # |ln L - ln L_fit|: 10% off the law
FAR_POINT_MAD_FACTOR = 10.0  # times the median |residual| of all points
FAR_POINTS_NAMED = 3


# Muennighoff et al. 2023 (arXiv:2305.16264): up to about 4 epochs, repeated tokens lowered the loss almost as
# much as new ones; beyond that, less and less. The laws fitted here assume every token is new.
REPEATED_DATA_NEGLIGIBLE_EPOCHS = 4.0


def repeated_data_warning(table: RunTable) -> str | None:
    """Return a warning naming the runs that trained on more than one pass over their corpus, or None."""
    repeated = sorted((row for row in table.rows if row.epochs is not None and row.epochs > 1),
                      key=lambda row: -row.epochs)
    if not repeated:
        return None
    most = repeated[0].epochs
    named = ", ".join(f"{row.run_id} ({row.epochs:.2f})" for row in repeated[:5])
    more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    effect = ("so the effect here should be small" if most <= REPEATED_DATA_NEGLIGIBLE_EPOCHS else
              "and later ones worth less and less, so runs beyond 4 epochs may lie above a law for new data")
    return (f"{len(repeated)} of {len(table.rows)} runs saw their training data more than once (epochs: {named}"
            f"{more}); the laws assume every token is new. Muennighoff et al. 2023 (arXiv:2305.16264) found "
            f"repeats up to about 4 epochs worth almost as much as new tokens, {effect}; a larger corpus removes "
            "the doubt")


def far_point_warnings(law: ParametricLaw, table: RunTable, params: np.ndarray, tokens: np.ndarray,
                       losses: np.ndarray) -> list[str]:
    """Return one warning naming the points far from the fitted law (a typo, a failed run), or none."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        residuals = np.abs(np.log(losses) - np.log(law.loss(params, tokens)))
    if not np.all(np.isfinite(residuals)):
        return []
    typical = float(np.median(residuals))
    far = np.flatnonzero((residuals > FAR_POINT_MIN_RESIDUAL) & (residuals > FAR_POINT_MAD_FACTOR * typical))
    if far.size == 0:
        return []
    far = far[np.argsort(-residuals[far])]
    names = [row.run_id if table.source_type == "csv" else f"{row.sweep}/{row.run_id}" for row in table.rows]
    named = "; ".join(f"{names[i]} (N {params[i]:.3g}, D {tokens[i]:.3g}, loss "
                      f"{losses[i]:.4g}, law {float(law.loss(params[i], tokens[i])):.4g})"
                      for i in far[:FAR_POINTS_NAMED])
    more = f" and {far.size - FAR_POINTS_NAMED} more" if far.size > FAR_POINTS_NAMED else ""
    return [f"{far.size} of {len(losses)} {table.noun} lie far from the fitted law, more than "
            f"{FAR_POINT_MAD_FACTOR:g} times the median |ln L residual| ({typical:.3g}): {named}{more}. Approaches "
            f"2 and 1 and the Kaplan-style fits use them as they are; check them for a typo or a failed run, and "
            f"leave them out (--where, or delete the run) if they are wrong"]


def spans_budgets(params: np.ndarray, tokens: np.ndarray) -> bool:
    """Return whether the points' compute 6ND spans more than one budget (a factor ONE_BUDGET_SPAN or more)."""
    flops = 6 * np.asarray(params, dtype=float) * np.asarray(tokens, dtype=float)
    return flops.max() >= ONE_BUDGET_SPAN * flops.min()


def _approach3_warnings(approach3, params: np.ndarray, tokens: np.ndarray, noun: str = "runs") -> list[str]:
    """Return caveats about an approach 3 fit that its convergence status does not show.

    `noun` names the points: "runs", or "points" for a CSV.
    """
    warnings = []
    flops = 6 * params * tokens
    if not spans_budgets(params, tokens):
        # On one IsoFLOP budget N and D move together (D = C / 6N), so A/N^alpha and B/D^beta trade off freely.
        warnings.append(
            f"all {len(flops)} {noun} lie within a factor {ONE_BUDGET_SPAN:g} of compute ({flops.min():.3g} to "
            f"{flops.max():.3g} FLOPs), so the fit cannot tell the N and D terms apart and its allocations are "
            f"not identified; add {noun} at other compute budgets"
        )
    if len(params) < FEW_POINTS_PER_PARAMETER * APPROACH3_PARAMETERS:
        warnings.append(
            f"only {len(params)} {noun} for its {APPROACH3_PARAMETERS} parameters, so the law can bend to pass "
            f"close to each of them, and bootstrap replicates, which repeat some {noun}, have fewer still: its "
            f"intervals understate the uncertainty; fit {FEW_POINTS_PER_PARAMETER * APPROACH3_PARAMETERS} or more"
        )
    for name, term in (("alpha", "N"), ("beta", "D")):
        value = approach3.parameters()[name]
        if value <= 0:
            warnings.append(
                f"{name} = {value:.3g} is not positive: in this fit the loss does not fall as {term} grows, so "
                f"these {noun} do not identify the {term} term and the fit gives no allocation; add {noun} that "
                f"vary {term} more"
            )
        elif value > IMPLAUSIBLE_EXPONENT:
            warnings.append(
                f"{name} = {value:.3g} is far above published fits (0.08 to 0.37): these {noun} do not pin down "
                f"the {term} term, so the fit's allocations are not reliable; add {noun} that vary {term} more"
            )
    if approach3.parameters()["E"] < E_AT_ZERO:
        warnings.append(
            f"E = {approach3.parameters()['E']:.3g} is at zero: these {noun} do not identify the irreducible loss, so "
            "predicted losses far beyond them are too low; add larger budgets to pin E down"
        )
    return warnings


def read_fit(path: str | Path) -> dict[str, Any]:
    """Read a fit.json written by `fit_runs`; raise UserError when it is missing or not a fit record."""
    path = Path(path)
    searched = path.is_dir()  # a folder: its own fit.json, else its _report/fit.json
    if path.is_dir():
        # A sweep folder names its default fit, RUNS/<sweep>/_report/fit.json, as well as the fit's own folder.
        inside = path / REPORT_FOLDER / FIT_FILE
        path = inside if not (path / FIT_FILE).exists() and inside.exists() else path / FIT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"fit file {path} is not UTF-8 text; pass a fit.json written by `scaling fit`") from None
    except FileNotFoundError:
        looked = f"{path} or {path.parent / REPORT_FOLDER / FIT_FILE}" if path.name == FIT_FILE and searched else path
        # A fit of the whole run store lies one level up, beside the sweep folders.
        above = path.parent.parent / REPORT_FOLDER / FIT_FILE if searched else None
        hint = (f"; the fit of the run store above it is {above}" if above is not None and above.exists()
                else "; run `scaling fit RUNS --out DIR` first")
        raise UserError(f"fit file {looked} not found{hint}") from None
    except json.JSONDecodeError as error:
        if path.suffix in (".yaml", ".yml"):
            raise UserError(f"fit file {path} is YAML (a config or sweep spec), not a fit.json; pass the fit.json "
                            "that `scaling fit` wrote, or the sweep folder whose _report/ holds it") from None
        raise UserError(f"fit file {path} is not valid JSON ({error}); rerun `scaling fit`") from None
    if not isinstance(record, dict) or "approach3" not in record:
        raise UserError(f"fit file {path} contains no approach 3 fit; pass a fit.json written by `scaling fit`")
    schema = record.get("schema")
    if not isinstance(schema, int) or schema > FIT_SCHEMA:
        raise UserError(f"fit file {path} has schema {schema!r}, and this version reads schema {FIT_SCHEMA} or "
                        "earlier; update this project, or fit again with this version")
    return record


def _check_source_options(source: str | Path, columns: str | None, filters: list[str] | None) -> None:
    """Raise UserError when `columns` or `filters` (--columns, --where) are given for a source that is no CSV."""
    if columns is None and not filters:
        return
    option = f"--columns {columns}" if columns is not None else f"--where {filters[0]}"
    if is_wandb_source(source) or Path(source).is_dir():
        kind = "a W&B project" if is_wandb_source(source) else "a folder of runs"
        raise UserError(f"{option} applies only to a CSV file of points, and {source} is {kind}; drop it, or pass "
                        "a .csv file")
    if columns is None and not str(source).lower().endswith(".csv"):
        raise UserError(f"{option} applies only to a CSV file of points; drop it, or pass a .csv file")


def _load_table(source: str | Path, allow_mixed: bool, columns: str | None, filters: list[str] | None) -> RunTable:
    """Read the source: a W&B project, a folder of runs, or a CSV of points (with `columns` and `filters`)."""
    if is_wandb_source(source):
        return load_wandb(str(source), allow_mixed=allow_mixed)
    if columns is not None or str(source).lower().endswith(".csv"):
        return load_csv(source, columns or DEFAULT_COLUMNS, filters)
    return load_runs(source, allow_mixed=allow_mixed)


def _points(table: RunTable, convention: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    params = np.array([row.params(convention) for row in table.rows], dtype=float)
    tokens = np.array([row.tokens for row in table.rows], dtype=float)
    losses = np.array([row.final_loss for row in table.rows], dtype=float)
    return params, tokens, losses


def _check_enough(table: RunTable, params: np.ndarray, tokens: np.ndarray) -> None:
    """Raise UserError when the runs (or CSV points) cannot identify approach 3, saying what to add."""
    excluded = f" ({len(table.excluded)} excluded: {', '.join(sorted(table.excluded))})" if table.excluded else ""
    if table.source_type == "csv":
        found = f"{len(params)} point(s) in {table.source}"
        more, sizes, counts = ("add points to the file, or filter fewer out with --where",
                               "add points of other sizes", "add points of other token counts")
    else:
        found = f"{len(params)} completed run(s) under {table.source}{excluded}"
        more, sizes, counts = "run more of the sweep", "add sizes to the sweep", "add token budgets to the sweep"
        if (Path(table.source) / "config.json").is_file():  # one run's folder, not its sweep's
            more = f"{table.source} is one run; pass its sweep folder {Path(table.source).parent} to fit all its runs"
    noun = table.noun
    if len(params) < APPROACH3_PARAMETERS:
        raise UserError(f"{found}; approach 3 fits {APPROACH3_PARAMETERS} parameters and needs at least "
                        f"{APPROACH3_PARAMETERS} {noun}: {more}")
    if np.unique(params).size < 2:
        raise UserError(f"all {len(params)} {noun} in {table.source} have one model size ({params[0]:.4g}); "
                        f"a scaling law needs at least 2 sizes: {sizes}")
    if np.unique(tokens).size < 2:
        raise UserError(f"all {len(tokens)} {noun} in {table.source} have one token count ({tokens[0]:.4g}); "
                        f"a scaling law in D needs at least 2: {counts}")


def _budget_groups(table: RunTable, convention: str) -> list[tuple[float, np.ndarray]]:
    """Group runs by IsoFLOP budget: the sweep's recorded budget, else 6 N_total D agreeing within 1%.

    Grouping always uses total-parameter compute, because that is what sweeps plan. Under the non-embedding
    convention, each group's C is then the median of its runs' 6 N_non_embedding D.
    """
    groups = group_by_budget([row.flops_6nd for row in table.rows], [row.flop_budget for row in table.rows])
    if convention == "total":
        return groups
    return [(float(np.median([table.rows[i].flops(convention) for i in indices])), indices)
            for _, indices in groups]


def _try_approach2(params: np.ndarray, losses: np.ndarray,
                   groups: list[tuple[float, np.ndarray]]) -> tuple[IsoFlopFit | None, str]:
    """Run approach 2 when at least 2 budgets have at least 3 sizes each; otherwise return the reason."""
    sized = [budget for budget, indices in groups if np.unique(params[indices]).size >= 3]
    if len(sized) < 2:
        return None, f"approach 2 skipped: {len(sized)} budget(s) with >= 3 sizes, it needs 2"
    labels = _budget_labels(groups, len(params))
    # Budgets without a minimum are skipped with a warning naming them: approach 3 stays valid either way.
    fit = fit_isoflop(params, labels, losses, labels, skip_invalid_budgets=True)
    return fit, "; ".join(fit.warnings)


def _budget_labels(groups: list[tuple[float, np.ndarray]], n_points: int) -> np.ndarray:
    """Return each point's IsoFLOP budget (FLOPs) from the groups of `_budget_groups`."""
    labels = np.empty(n_points)
    for budget, indices in groups:
        labels[indices] = budget
    return labels


def _add_kaplan_intervals(kaplan: dict[str, Any], replicates: dict[str, Replicates]) -> None:
    """Put each Kaplan-style fit's intervals beside its values, and the resampling method once."""
    for name, fit in kaplan["fits"].items():
        if fit is not None and name in replicates:
            summary = replicates[name].to_dict()
            fit["intervals"] = summary["intervals"]
            fit["interval_note"] = summary["interval_note"]
            fit["valid_replicates"] = summary["valid_replicates"]
            # A value left out of the bootstrap by design (L(C)'s x_c) is noted in fit.json and beside the
            # table, but is not a warning about these runs.
            sample_note = replicates[name].sample_note()
            if sample_note:
                logger.warning("Kaplan-style %s: %s", name, sample_note)
    if replicates:
        summary = next(iter(replicates.values())).to_dict()
        kaplan["bootstrap"] = {key: summary[key] for key in ("method", "replicates", "level", "seed")}


def _record(table: RunTable, convention: str, approach3: ParametricFit, params: np.ndarray, tokens: np.ndarray,
            losses: np.ndarray) -> dict[str, Any]:
    return {
        "schema": FIT_SCHEMA,
        "runs_source": table.source,
        "source_type": table.source_type,  # "runs" (run store, W&B) or "csv" (points; n_runs counts them)
        "n_runs": len(table.rows),
        "excluded_runs": dict(sorted(table.excluded.items())),
        "corpus_fingerprints": sorted(str(f) for f in table.fingerprints),
        # fingerprint -> what it was prepared from; runs of one fingerprint share their corpus and tokenizer
        "corpus_sources": {str(row.corpus_fingerprint): row.corpus_source for row in table.rows if row.corpus_source},
        "convention": convention,
        "convention_description": CONVENTION_DESCRIPTIONS[convention],
        "units": {"N": "parameters", "D": "tokens", "C": "FLOPs (6ND)", "loss": table.loss_unit},
        "data_range": {
            "params": [float(params.min()), float(params.max())],
            "tokens": [float(tokens.min()), float(tokens.max())],
            "flops": [float((6 * params * tokens).min()), float((6 * params * tokens).max())],
            "loss": [float(losses.min()), float(losses.max())],
        },
        "status": approach3.status,
        "converged": approach3.converged,
        "approach3": approach3.to_dict(),
        "points": [
            {"run_id": row.run_id, "sweep": row.sweep, "params": float(n), "tokens": float(d), "loss": float(loss)}
            for row, n, d, loss in zip(table.rows, params, tokens, losses)
        ],
    }


def _draw(out: Path, approach3: ParametricFit, approach2: IsoFlopFit | None, params: np.ndarray,
          tokens: np.ndarray, losses: np.ndarray, budget_groups: list[tuple[float, np.ndarray]],
          convention: str, bootstrap: BootstrapResult | None, envelope: EnvelopeFit | None,
          approach2_replicates: Replicates | None = None, approach1_replicates: Replicates | None = None,
          loss_label: str = "final validation loss (nats/token)") -> list[str]:
    from analysis import plots  # matplotlib loads only when drawing, so `scaling ask` stays quick

    isoflop, by_params, by_tokens, by_flops, allocation, residuals = (out / name for name in PLOT_FILES)
    law = approach3.law(convention=convention)
    written = []
    if approach2 is not None:
        written.append(plots.plot_isoflop(approach2, isoflop, convention, loss_label))
    if approach2 is not None:
        groups, along = [indices for _, indices in budget_groups], "budget"
    else:
        groups, along = _groups_by(tokens), "tokens"
    written.append(plots.plot_loss_vs_params(law, params, tokens, losses, groups, by_params, convention, along,
                                             loss_label))
    written.append(plots.plot_loss_vs_tokens(law, params, tokens, losses, _groups_by(params), by_tokens,
                                             convention, loss_label))
    written.append(plots.plot_loss_vs_flops(law, params, tokens, losses, by_flops, convention, loss_label))
    written.append(plots.plot_frontier(law, bootstrap, approach2, envelope, 6 * params * tokens, allocation,
                                       convention, approach2_replicates, approach1_replicates))
    written.append(plots.plot_residuals(law, params, tokens, losses, residuals, convention, loss_label))
    return [path.name for path in written]


def _groups_by(values: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(values == value) for value in np.unique(values)]
