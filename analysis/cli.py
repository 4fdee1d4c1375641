"""Subcommands `scaling fit`, `scaling ask` and `scaling report`.

`add_parsers(subparsers)` registers them on the main `scaling` parser; each sets `handler`, a function of
the parsed arguments that returns the exit status. UserError propagates to the caller, which prints it.
When the reader of stdout goes away (`scaling ask ... | head -2`), the subcommands exit quietly with
status 141 (scaling.terminal).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from analysis.defaults import DEFAULT_BOOTSTRAPS, DEFAULT_FIT_STARTS, OPTIONAL_METHODS, RESAMPLING
from analysis.runs import CONVENTIONS
from scaling.errors import UserError
from scaling.numbers import whole_number
from scaling.run_store import json_safe
from scaling.terminal import print_stdout

# The keys of analysis.laws.LAWS, kept here so parsing imports no numpy (a test keeps them equal).
LAW_KEYS = ("tokens-20", "hoffmann-a1", "hoffmann-a2", "hoffmann-a3-printed", "hoffmann-a3-unrounded", "epoch-2024",
            "kaplan-2020")
REPORTS_FOLDER = "_reports"  # fits of CSV and W&B sources go to RUNS/_reports/<name>
WIDE_OUTPUT = 200  # columns for tables written to a pipe or file, where rich would otherwise assume 80


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register fit, ask and report on `subparsers` (from ArgumentParser.add_subparsers)."""
    fit = subparsers.add_parser(
        "fit", help="fit scaling laws (Chinchilla approaches 1, 2 and 3, Kaplan-style) to completed runs")
    _add_fit_arguments(fit)
    fit.add_argument("--json", action="store_true",
                     help="print the fit record as JSON to stdout in place of the table; fit.json and the plots "
                          "are still written to --out, replacing an earlier fit there")
    fit.set_defaults(handler=run_fit)

    ask = subparsers.add_parser("ask", help='answer a question such as "tokens for 7B" with every law')
    ask.add_argument("question", help='e.g. "tokens for 7B", "params for 1e23 FLOPs", '
                     '"loss at 7B params and 1.4T tokens", "kv cache for 7B at 4096 tokens"')
    ask.add_argument("--fit", metavar="FIT_JSON", help="fit.json from `scaling fit`, or the folder it is in, or the "
                     "sweep folder whose _report/ holds it: add your own fit to the table")
    ask.add_argument("--law", action="append", metavar="KEY", help="answer with this registered law only "
                     f"(repeatable; default: all): {', '.join(LAW_KEYS)}")
    ask.add_argument("--json", action="store_true", help="print a JSON list of answer rows")
    ask.set_defaults(handler=run_ask)

    report = subparsers.add_parser("report", help="fit the runs and write report.md with plots and answers")
    _add_fit_arguments(report)
    report.add_argument("--question", action="append", metavar="Q",
                        help='question to answer in the report (repeatable; default: "tokens for 7B")')
    report.add_argument("--limitations", default="", metavar="TEXT",
                        help="paragraph on what this study can and cannot tell")
    report.set_defaults(handler=run_report)


def _add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="?", metavar="RUNS",
                        help="RUNS folder, one sweep folder, wandb:ENTITY/PROJECT[/GROUP], or a CSV of points "
                             "(default: $SCALING_RUNS or ./runs)")
    parser.add_argument("--columns", metavar="MAP",
                        help="CSV column mapping, e.g. N=params,D=tokens,L=loss (any two of N, D, C; optional "
                             "budget=COLUMN, id=COLUMN); implies RUNS is a CSV file")
    parser.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                        help="keep only CSV rows whose COLUMN equals VALUE (repeatable)")
    parser.add_argument("--method", action="append", choices=OPTIONAL_METHODS, metavar="METHOD",
                        help=f"run only these methods beside approach 3 (repeatable; default: all of "
                             f"{', '.join(OPTIONAL_METHODS)})")
    parser.add_argument("--log-plots", action="store_true",
                        help="with a wandb: source, log the plots and fitted parameters back to that W&B project")
    parser.add_argument("--holdout", type=float, default=0.1, metavar="FRACTION",
                        help="share of the largest-compute runs held out by the extrapolation check (default 0.1)")
    parser.add_argument("--runs", dest="runs_root", metavar="DIR",
                        help="run store root, used when RUNS is not given (default: $SCALING_RUNS or ./runs)")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for fit.json and plots (default: <runs folder>/_report, or "
                             f"RUNS/{REPORTS_FOLDER}/<name> for a CSV file or a W&B project)")
    parser.add_argument("--starts", type=whole_number, default=DEFAULT_FIT_STARTS, metavar="N",
                        help=f"minimum size of approach 3's start grid (default: {DEFAULT_FIT_STARTS})")
    parser.add_argument("--bootstraps", type=whole_number, default=DEFAULT_BOOTSTRAPS, metavar="N",
                        help=f"bootstrap replicates for 95%% intervals: 0 for none, else at least 40 (default: "
                             f"{DEFAULT_BOOTSTRAPS})")
    parser.add_argument("--seed", type=whole_number, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--resample", choices=RESAMPLING, default="luck",
                        help="what the bootstraps of approaches 1 and 2 redraw: each run's luck, keeping the "
                             "sweep's sizes (default), or whole runs with replacement")
    parser.add_argument("--convention", choices=CONVENTIONS, default="total",
                        help="how N is counted: total (embeddings included) or non_embedding")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="fit runs from different corpora or tokenizers together")


def _fit(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.fit import fit_runs

    from scaling.errors import UserError
    from scaling.paths import runs_root

    source = _runs_path(args.runs or args.runs_root)
    if args.runs and args.runs_root:
        runs_root(args.runs_root)  # --runs must name a folder even where RUNS is given and the fit goes beside it
    args.out = args.out or str(_default_out(source, args.runs_root))
    if args.log_plots and not str(source).startswith("wandb:"):
        raise UserError("--log-plots needs a wandb:ENTITY/PROJECT[/GROUP] source; drop it for local runs")
    record = fit_runs(source, args.out, convention=args.convention, starts=args.starts,
                      bootstraps=args.bootstraps, seed=args.seed, allow_mixed=args.allow_mixed,
                      methods=tuple(args.method or OPTIONAL_METHODS), columns=args.columns, filters=args.where,
                      holdout_fraction=args.holdout, resample=args.resample, progress=True)
    if args.log_plots:
        from analysis.wandb_runs import log_plots

        log_plots(str(source), Path(args.out), record.get("plots", []), record)
    return record


def run_fit(args: argparse.Namespace) -> int:
    record = _fit(args)
    if args.json:
        print_stdout(json.dumps(json_safe(record), indent=2, allow_nan=False))
    else:
        _print_fit(record, Path(args.out))
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from analysis.ask import ask

    answer = ask(args.question, fit=args.fit, law_keys=args.law)
    if args.json:
        print_stdout(json.dumps(json_safe(list(answer.rows)), indent=2, allow_nan=False))
        for note in answer.notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    print_answer(answer)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from analysis.ask import ask
    from analysis.report import write_report

    queries = _check_report_questions(args.question or ["tokens for 7B"])  # before the fit replaces fit.json
    record = _fit(args)
    answers = [ask(query, fit=record) for query in queries]
    path = write_report(args.out, record, answers, limitations=args.limitations)
    print_stdout(f"wrote {path}")
    return 0


def _check_report_questions(questions: list[str]) -> list:
    """Return each --question parsed (analysis.query.Query); raise UserError for one the report cannot answer.

    Each is answered once with the published laws here, before the fit, so that a question `scaling ask`
    would reject stops the report before fit.json and the plots are replaced. KV-cache questions use no
    fit, so the report rejects them too.
    """
    from analysis.ask import ask
    from analysis.query import parse_query

    queries = []
    for question in questions:
        try:
            query = parse_query(question)
            if query.kind != "kv_cache":
                ask(query)
        except UserError as error:
            raise UserError(f"--question {question!r}: {error}") from None
        if query.kind == "kv_cache":
            raise UserError(f"--question {question!r} asks for KV-cache bytes, which no fit answers; "
                            f"ask it with `scaling ask {question!r}` instead")
        queries.append(query)
    return queries


def _default_out(source: Path | str, runs_root_option: str | None) -> Path:
    """Return where a fit goes by default: beside the runs it fits, or under RUNS/_reports for other sources."""
    from analysis.fit import REPORT_FOLDER
    from scaling.paths import runs_root

    if isinstance(source, Path) and source.is_dir():
        return source / REPORT_FOLDER
    name = str(source).removeprefix("wandb:").replace("/", "_")
    if isinstance(source, Path):
        name = source.stem
    return runs_root(runs_root_option) / REPORTS_FOLDER / name


def _console():
    """Return the Console for tables on stdout (scaling.terminal)."""
    from scaling.terminal import stdout_console

    return stdout_console(WIDE_OUTPUT)


def _runs_path(runs: str | None) -> Path | str:
    from scaling.paths import runs_root

    if runs is not None and runs.startswith("wandb:"):
        return runs
    return runs_root(runs, folder=False)  # a CSV of points may stand in place of a runs folder


def _print_fit(record: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from analysis.fit import fitted_noun, missing_result
    from analysis.fit_isoflop import budget_counts

    approach3 = record["approach3"]
    noun = fitted_noun(record)
    table = Table(title=f"approach 3 on {record['n_runs']} {noun}, N = {record['convention']} parameters")
    bootstrap = record.get("bootstrap") or {}
    intervals = bootstrap.get("intervals", {})
    table.add_column("parameter")
    table.add_column("value", justify="right")
    if bootstrap:  # with --bootstraps 0 the table has no interval column
        table.add_column(f"{100 * bootstrap['level']:.0f}% interval ({bootstrap['replicates']} bootstraps)")
    for name, value in approach3["parameters"].items():
        cells = [name, f"{value:.6g}"]
        if bootstrap:
            bounds = intervals.get(name)
            cells.append("-" if bounds is None else f"{bounds[0]:.4g} .. {bounds[1]:.4g}")
        table.add_row(*cells)
    table.add_row("objective (sum of Huber losses)", f"{approach3['objective']:.6g}", *([""] if bootstrap else []))
    console = _console()
    console.print(table)
    console.print(f"status: {approach3['status']}")
    if bootstrap.get("interval_note"):
        console.print(f"approach 3 intervals: {bootstrap['interval_note']}", markup=False, highlight=False)
    approach1 = record.get("approach1") or {}
    if approach1.get("a") is not None:
        console.print(f"approach 1: {_allocation_text(approach1)} (envelope of learning curves)")
    elif missing_result(record, "approach1"):
        console.print(missing_result(record, "approach1"), markup=False, highlight=False)
    approach2 = record.get("approach2")
    if approach2 and approach2.get("a") is not None:
        console.print(f"approach 2: {_allocation_text(approach2)} over {budget_counts(approach2)}")
    elif missing_result(record, "approach2") or record.get("approach2_note"):
        console.print(missing_result(record, "approach2") or record["approach2_note"], markup=False,
                      highlight=False)
    kaplan = record.get("kaplan")
    if kaplan and any(kaplan["fits"].values()):
        console.print(_kaplan_table(kaplan, "nats/token" if noun == "runs" else record["units"]["loss"]))
        for name, fit in kaplan["fits"].items():
            if fit is not None and fit.get("interval_note"):
                console.print(f"Kaplan-style {name} intervals: {fit['interval_note']}", markup=False,
                              highlight=False)
    extrapolation = record.get("extrapolation") or {}
    if "mean_abs_relative_error" in extrapolation:
        console.print(f"extrapolation: refit without the {len(extrapolation['held_out'])} largest-compute "
                      f"{noun.removesuffix('s')}(s) "
                      f"predicts their loss with mean |error| {extrapolation['mean_abs_relative_error']:.2%}")
    elif "skipped" in extrapolation:
        console.print(f"extrapolation check skipped: {extrapolation['skipped']}", markup=False, highlight=False)
    if record.get("excluded_runs"):
        console.print(f"excluded: {', '.join(record['excluded_runs'])}")
    console.print(f"wrote {out / 'fit.json'}")


def _allocation_text(fit: dict[str, Any]) -> str:
    """Return "N_opt = k C^a, D_opt = k' C^b" with each value's bootstrap interval where one was computed."""
    intervals = (fit.get("bootstrap") or {}).get("intervals", {})

    def value(name: str, spec: str) -> str:
        bounds = intervals.get(name)
        text = format(fit[name], spec)
        return text if bounds is None else f"{text} [{bounds[0]:{spec}} .. {bounds[1]:{spec}}]"

    bootstrap = fit.get("bootstrap") or {}
    level = bootstrap.get("level", 0.95)
    usable = (f", {bootstrap['valid_replicates']} of {bootstrap['replicates']} replicates usable"
              if "valid_replicates" in bootstrap else "")
    any_interval = any(bounds is not None for bounds in intervals.values())
    note = f" ({100 * level:.0f}% bootstrap intervals in brackets{usable})" if any_interval else ""
    if bootstrap.get("interval_note"):
        # Older fit.json files have no interval_note, so for them only the brackets present are printed.
        missing = "some values have no" if any_interval else "no"
        note += f" ({missing} {100 * level:.0f}% interval: {bootstrap['interval_note']})"
    return (f"N_opt = {value('params_coefficient', '.3g')} C^{value('a', '.4f')}, "
            f"D_opt = {value('tokens_coefficient', '.3g')} C^{value('b', '.4f')}{note}")


def _kaplan_table(kaplan: dict[str, Any], loss_unit: str = "nats/token"):
    """Return the Kaplan-style fits as a rich Table; `loss_unit` is fit.json's units.loss for CSV points."""
    from rich.table import Table

    summary = kaplan.get("bootstrap") or {}
    level = f"{100 * summary.get('level', 0.95):.0f}%"
    table = Table(title=f"Kaplan-style fits L = E + (x_c / x)^exponent, loss in {loss_unit}"
                  + (f", {level} intervals from {summary['replicates']} bootstraps" if summary else ""))
    published = kaplan.get("published", {})
    columns = ("law", "exponent", f"{level} interval", "Kaplan 2020", "x_c", f"{level} interval", "E", "points")
    # Without a bootstrap the interval columns are left out rather than filled with dashes.
    shown = [bool(summary) or "interval" not in column for column in columns]

    def add_row(*cells: str) -> None:
        table.add_row(*(cell for cell, is_shown in zip(cells, shown) if is_shown))

    for column, is_shown in zip(columns, shown):
        if is_shown:
            table.add_column(column, overflow="fold")
    for name, fit in kaplan["fits"].items():
        their = f"{published[name]['exponent']:.3f}" if name in published else "-"
        if fit is None:
            add_row(name, (kaplan.get("missing") or {}).get(name, "not enough points"), "", their, "", "", "", "")
            continue
        intervals = fit.get("intervals", {})
        add_row(name, f"{fit['exponent']:.4f}", _bounds_text(intervals.get("exponent"), ".4f"), their,
                f"{fit['scale']:.4g} ({fit['variable']})", _bounds_text(intervals.get("scale"), ".3g"),
                _with_bounds(fit["irreducible"], intervals.get("irreducible")), str(fit["points"]))
    if published:
        table.caption = ("Kaplan 2020: the published exponent (arXiv:2001.08361 equations 1.1-1.3, non-embedding N, "
                         "WebText2); only exponents compare across corpora")
    return table


def _with_bounds(value: float, bounds: list[float] | None) -> str:
    return f"{value:.4g}" if bounds is None else f"{value:.4g} [{bounds[0]:.3g} .. {bounds[1]:.3g}]"


def _bounds_text(bounds: list[float] | None, spec: str) -> str:
    return "-" if bounds is None else f"{bounds[0]:{spec}} .. {bounds[1]:{spec}}"


def print_answer(answer) -> None:
    """Print an Answer as a rich table, its sources as numbered notes below it, then its notes."""
    from rich.table import Table

    from analysis.ask import law_label

    if answer.query.kind == "kv_cache":
        _print_kv_cache(answer)
        return
    table = Table(title=f"{answer.query.text}  (C = 6ND; loss in nats/token on each law's own data)")
    # Without a bootstrapped fit no row has an interval, so the column is left out rather than filled with dashes.
    intervals = any(row.get("interval") for row in answer.rows)
    for column in ("law", "N (params)", "D (tokens)", "D/N", "C (FLOPs)", "loss", "95% interval", "source"):
        if intervals or column != "95% interval":
            table.add_column(column, overflow="fold")
    sources: list[str] = []
    for row in answer.rows:
        if row["source"] not in sources:
            sources.append(row["source"])
        interval = [_interval_text(row.get("interval"), answer.query.kind)] if intervals else []
        table.add_row(law_label(row), _number(row["params"]), _number(row["tokens"]),
                      _ratio_text(row["tokens_per_param"]), _number(row["flops"]), _number(row["loss"], ".4f"),
                      *interval, f"[{sources.index(row['source']) + 1}]")
    console = _console()
    console.print(table)
    for number, source in enumerate(sources, start=1):
        console.print(f"[{number}] {source}", markup=False, highlight=False)
    for note in answer.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _print_kv_cache(answer) -> None:
    """Print the KV-cache sizes of MHA, GQA and MQA side by side, with the shape and where it comes from."""
    from rich.table import Table

    shape = answer.query.kv_cache
    table = Table(title=f"{answer.query.text}  (bytes = 2 x layers x KV heads x head dim x context x batch x "
                  "bytes per value)")
    for column in ("attention", "KV heads", "bytes", "GiB"):
        table.add_column(column, justify="left" if column == "attention" else "right")
    for row in answer.rows:
        table.add_row(row["attention"], str(row["kv_heads"]), f"{row['bytes']:,}", f"{row['gib']:.4g}")
    console = _console()
    console.print(table)
    console.print(f"shape: {shape.n_layers} layers, {shape.n_heads} query heads, head dim {shape.head_dim}, "
                  f"{shape.context} tokens, batch {shape.batch_size}, {shape.bytes_per_value} byte(s) per value",
                  markup=False, highlight=False)
    console.print(f"source: {shape.source}", markup=False, highlight=False)
    for note in answer.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _interval_text(interval: dict[str, Any] | None, kind: str) -> str:
    """Return the interval of the quantity the question asks for, e.g. "tokens 1.1e11 .. 1.6e11"."""
    from analysis.ask import asked_quantity

    if not interval:
        return "-"
    key = asked_quantity(kind)
    bounds = interval.get(key)
    return "-" if bounds is None else f"{key} {bounds[0]:.3g} .. {bounds[1]:.3g}"


def _number(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else "overflow"  # a note names the law


def _ratio_text(value: float | None) -> str:
    """Return D/N as `ratio_format` writes it, "-" when missing and "overflow" when infinite."""
    from analysis.ask import ratio_format

    return _number(value, ratio_format(value))
