"""`scaling report`: a Markdown report of a fit, its plots and the answers to questions.

The report is written from a fit.json record, so it can be regenerated without refitting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from analysis.ask import Answer, asked_quantity, law_label, ratio_format
from analysis.fit import REPORT_FILE, fitted_noun
from analysis.fit_isoflop import budget_counts

logger = logging.getLogger(__name__)

_PLOT_CAPTIONS = {
    "isoflop.png": "IsoFLOP profiles: final loss against N per FLOP budget, parabola in ln N, star at N_opt(C)",
    "loss_vs_params.png": "Final loss against N with the fitted approach 3 law",
    "loss_vs_tokens.png": "Final loss against D with the fitted approach 3 law",
    "loss_vs_flops.png": "Final loss against C = 6ND with the law's compute-optimal loss",
    "optimal_allocation.png": "N_opt(C) and D_opt(C): your fit with its 95% bootstrap band, approaches 1 and 2, "
                              "and the published laws",
    "residuals.png": "Residuals ln L - ln L_fit of approach 3 against C",
}


def write_report(out_dir: str | Path, fit: dict[str, Any], answers: Sequence[Answer] = (),
                 limitations: str = "", title: str = "Scaling-law report") -> Path:
    """Write `report.md` into `out_dir` from a fit.json record and answered questions; return its path.

    `limitations` fills the section on what the study can and cannot tell; the caller knows the sweep's
    scale and corpus, so it writes that paragraph.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += _runs_section(fit)
    lines += _warnings_section(fit)
    lines += _approach3_section(fit)
    lines += _approach2_section(fit)
    lines += _approach1_section(fit)
    lines += _kaplan_section(fit)
    lines += _extrapolation_section(fit)
    lines += _plots_section(fit)
    for answer in answers:
        lines += _answer_section(answer)
    lines += ["## What this study can and cannot tell", "",
              limitations.strip() or "_No statement given: say at which scale and on which corpus these runs "
              "were trained before reading the numbers above as general (`scaling report --limitations TEXT` "
              "writes it here)._", ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    logger.info("wrote %s", path)
    return path


def _corpora(fit: dict[str, Any]) -> str:
    """Return each corpus fingerprint of the fit with what it was prepared from, when fit.json records it."""
    sources = fit.get("corpus_sources") or {}
    named = [f"{sources[fingerprint]}, fingerprint {fingerprint}" if fingerprint in sources else
             f"fingerprint {fingerprint}" for fingerprint in fit.get("corpus_fingerprints", [])]
    return "; ".join(named) or "unknown"


def _runs_section(fit: dict[str, Any]) -> list[str]:
    lines = ["## Runs", "",
             f"- source: `{fit.get('runs_source')}`",
             f"- {'completed runs' if fitted_noun(fit) == 'runs' else 'points'} fitted: {fit.get('n_runs')}",
             f"- corpus: {_corpora(fit)}",
             f"- parameter convention: **{fit.get('convention')}**: {fit.get('convention_description')}",
             f"- units: {', '.join(f'{k} in {v}' for k, v in fit.get('units', {}).items())}"]
    excluded = fit.get("excluded_runs") or {}
    if excluded:
        lines.append(f"- excluded runs ({len(excluded)}): "
                     + "; ".join(f"`{name}` ({reason})" for name, reason in excluded.items()))
    return lines + [""]


def _warnings_section(fit: dict[str, Any]) -> list[str]:
    """Return the list of warnings `scaling fit` printed (fit.json's "warnings"), or nothing when there are none."""
    warnings = fit.get("warnings") or []
    if not warnings:
        return []
    return ["## Warnings", "", *[f"- {warning}" for warning in warnings], ""]


def _approach3_section(fit: dict[str, Any]) -> list[str]:
    approach3 = fit["approach3"]
    values = approach3["parameters"]
    method = approach3["method"]
    lines = ["## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", "",
             f"Status: **{approach3['status']}**. Objective (sum of Huber losses): {approach3['objective']:.6g} "
             f"over {approach3['n_points']} {fitted_noun(fit)}.", ""]
    bootstrap = fit.get("bootstrap")
    intervals = (bootstrap or {}).get("intervals", {})
    lines += _table(["parameter", "value", "95% bootstrap interval"],
                    [[name, f"{value:.6g}", _bounds(intervals.get(name), ".4g")] for name, value in values.items()],
                    intervals=bool(bootstrap))
    if bootstrap:
        lines += ["", f"Intervals: {bootstrap['method']}; {bootstrap['converged_replicates']} of "
                  f"{bootstrap['replicates']} replicates converged (seed {bootstrap['seed']})."]
        if bootstrap.get("interval_note"):
            lines += ["", f"Missing intervals: {bootstrap['interval_note']}."]
    else:
        lines += ["", "No bootstrap was run, so the values above come without intervals."]
    lines += ["", f"a = beta / (alpha + beta) is the exponent of N_opt(C), b = alpha / (alpha + beta) that of "
              f"D_opt(C). N is counted as: {fit.get('convention')} parameters.", "",
              f"Method: {method['loss']} (delta {method['huber_delta']:g}) on {method['space']}; "
              f"{method['optimizer']}; {method['starts']} starts; parameters {method['parameters']}.", ""]
    return lines


def _approach2_section(fit: dict[str, Any]) -> list[str]:
    approach2 = fit.get("approach2")
    if approach2 is None:
        return ["## Approach 2: IsoFLOP profiles", "", fit.get("approach2_note") or "not run", ""]
    lines = ["## Approach 2: IsoFLOP profiles", ""]
    if approach2.get("a") is not None:
        lines.append(f"N_opt = {approach2['params_coefficient']:.4g} C^{approach2['a']:.4f}, "
                     f"D_opt = {approach2['tokens_coefficient']:.4g} C^{approach2['b']:.4f} "
                     f"(C in FLOPs, N {fit.get('convention')} parameters, D tokens), over {budget_counts(approach2)}.")
        lines += [""] + _allocation_table(approach2)
    lines += ["", "| budget C (FLOPs) | sizes | N_opt | D_opt | at edge |", "| --- | --- | --- | --- | --- |"]
    for profile in approach2["profiles"]:
        lines.append(f"| {profile['flops']:.3g} | {len(profile['params'])} | {profile['params_opt']:.4g} | "
                     f"{profile['tokens_opt']:.4g} | {'yes' if profile['at_edge'] else 'no'} |")
    for warning in approach2.get("warnings", []):
        lines.append(f"\n> warning: {warning}")
    return lines + [""]


def _approach1_section(fit: dict[str, Any]) -> list[str]:
    approach1 = fit.get("approach1")
    if not approach1:
        return []
    lines = ["## Approach 1: minimum over learning curves", ""]
    if "skipped" in approach1:
        return lines + [approach1["skipped"], ""]
    if approach1.get("a") is None:
        reason = approach1.get("note") or "fewer than 2 model sizes win inside the sampled range"
        return lines + [f"No power law was fitted: {reason}.", ""]
    return lines + [
        f"N_opt = {approach1['params_coefficient']:.4g} C^{approach1['a']:.4f}, "
        f"D_opt = {approach1['tokens_coefficient']:.4g} C^{approach1['b']:.4f} over "
        f"{approach1['budgets_fitted']} envelope budgets ({fit.get('convention')} parameters).",
        ""] + _allocation_table(approach1) + ["", f"Caveat: {approach1['method']['caveat']}.", ""]


_ALLOCATION_ROWS = (("a", "a: exponent of N_opt(C)", ".4f"), ("params_coefficient", "coefficient of N_opt(C)", ".4g"),
                    ("b", "b: exponent of D_opt(C)", ".4f"), ("tokens_coefficient", "coefficient of D_opt(C)", ".4g"))


def _allocation_table(method: dict[str, Any]) -> list[str]:
    """Return a Markdown table of a, b and the coefficients of approach 1 or 2 with their bootstrap intervals."""
    bootstrap = method.get("bootstrap")
    level = f"{100 * bootstrap['level']:.0f}%" if bootstrap else "95%"
    intervals = bootstrap["intervals"] if bootstrap else {}
    lines = _table(["quantity", "value", f"{level} bootstrap interval"],
                   [[label, f"{method[key]:{spec}}", _bounds(intervals.get(key), spec)]
                    for key, label, spec in _ALLOCATION_ROWS], intervals=bool(bootstrap))
    if bootstrap:
        lines += ["", f"Intervals: {bootstrap['method']}; {bootstrap['valid_replicates']} of "
                  f"{bootstrap['replicates']} replicates could be fitted (seed {bootstrap['seed']})."]
        if bootstrap.get("interval_note"):
            lines += ["", f"Missing intervals: {bootstrap['interval_note']}."]
    else:
        lines += ["", "No bootstrap was run, so these values come without intervals."]
    return lines


def _bounds(bounds: list[float] | None, spec: str) -> str:
    return "-" if bounds is None else f"{bounds[0]:{spec}} .. {bounds[1]:{spec}}"


def _table(headers: list[str], rows: list[list[str]], *, intervals: bool) -> list[str]:
    """Return the lines of a Markdown table. Without `intervals` (no bootstrap was run), the columns whose
    header names an interval are left out rather than filled with dashes."""
    shown = [intervals or "interval" not in header for header in headers]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell for cell, is_shown in zip(cells, shown) if is_shown) + " |"

    return [line(headers), "|" + " --- |" * sum(shown), *(line(row) for row in rows)]


def _kaplan_section(fit: dict[str, Any]) -> list[str]:
    kaplan = fit.get("kaplan")
    if not kaplan:
        return []
    bootstrap = kaplan.get("bootstrap")
    level = f"{100 * bootstrap['level']:.0f}%" if bootstrap else "95%"
    published = kaplan.get("published", {})
    rows = []
    for name, law in kaplan["fits"].items():
        their = f"{published[name]['exponent']:.3f}" if name in published else "-"
        if law is None:
            rows.append([name, (kaplan.get("missing") or {}).get(name, "not enough points"), "", their, "", "", "", "",
                         "", ""])
            continue
        intervals = law.get("intervals", {})
        rows.append([name, f"{law['exponent']:.4f}", _bounds(intervals.get("exponent"), ".4f"), their,
                     f"{law['scale']:.4g} ({law['variable']})", _bounds(intervals.get("scale"), ".3g"),
                     f"{law['irreducible']:.4g}", _bounds(intervals.get("irreducible"), ".3g"), str(law["points"]),
                     f"{law['rms_log_residual']:.3g}"])
    headers = ["law", "exponent", f"{level} interval", "Kaplan 2020", "scale", f"{level} interval", "E",
               f"{level} interval", "points", "rms of ln residuals"]
    lines = ["## Kaplan-style single-variable fits", "", *_table(headers, rows, intervals=bool(bootstrap))]
    if bootstrap:
        lines += ["", f"Intervals: {bootstrap['method']}; {bootstrap['replicates']} replicates (seed "
                  f"{bootstrap['seed']}); each fit's count of usable replicates is in fit.json."]
        lines += [f"- {name}: {law['interval_note']}." for name, law in kaplan["fits"].items()
                  if law is not None and law.get("interval_note")]
    else:
        lines += ["", "No bootstrap was run, so these values come without intervals."]
    sources = sorted({entry["citation"] for entry in published.values()})
    if sources:
        lines += ["", "Kaplan 2020 is the published exponent of the same form, for comparison: exponents compare "
                  "across corpora and tokenizers, scales do not. Sources: " + "; ".join(sources) + "."]
    return lines + ["", f"N is counted as {fit.get('convention')} parameters; Kaplan et al. counted non-embedding "
                    "parameters.", ""]


def _extrapolation_section(fit: dict[str, Any]) -> list[str]:
    check = fit.get("extrapolation")
    if not check:
        return []
    lines = ["## Extrapolation check", ""]
    if "skipped" in check:
        return lines + [f"Skipped: {check['skipped']}.", ""]
    method = check["method"]
    return lines + [
        f"{method[:1].upper()}{method[1:]}. Mean |relative error| {check['mean_abs_relative_error']:.2%}, max "
        f"{check['max_abs_relative_error']:.2%}, for runs up to "
        f"{max(run['flops'] for run in check['held_out']):.3g} FLOPs predicted from runs up to "
        f"{check['largest_fitted_flops']:.3g} FLOPs.", ""]


def _plots_section(fit: dict[str, Any]) -> list[str]:
    lines = ["## Plots", ""]
    for name in fit.get("plots", []):
        lines += [f"![{_PLOT_CAPTIONS.get(name, name)}]({name})", "", f"_{_PLOT_CAPTIONS.get(name, name)}._", ""]
    return lines


def _answer_section(answer: Answer) -> list[str]:
    if answer.query.kind == "kv_cache":
        return _kv_cache_section(answer)
    key = asked_quantity(answer.query.kind)
    rows = []
    for row in answer.rows:
        interval = (row.get("interval") or {}).get(key)
        ratio = row["tokens_per_param"]
        rows.append([law_label(row), _cell(row["params"], ".4g"), _cell(row["tokens"], ".4g"),
                     _cell(ratio, ratio_format(ratio)), _cell(row["flops"], ".4g"), _cell(row["loss"], ".4f"),
                     "-" if interval is None else f"{key} {interval[0]:.3g} .. {interval[1]:.3g}", row["source"]])
    # Without a bootstrapped fit no row has an interval, so the column is left out, as `scaling ask` does.
    lines = [f"## Question: {answer.query.text}", "",
             *_table(["law", "N (params)", "D (tokens)", "D/N", "C = 6ND (FLOPs)", "loss (nats/token)",
                      "95% interval", "source"], rows, intervals=any(row.get("interval") for row in answer.rows))]
    lines += [f"\n> {note}" for note in answer.notes]
    return lines + [""]


def _kv_cache_section(answer: Answer) -> list[str]:
    shape = answer.query.kv_cache
    lines = [f"## Question: {answer.query.text}", "",
             f"{shape.n_layers} layers, {shape.n_heads} query heads, head dim {shape.head_dim}, {shape.context} "
             f"tokens, batch {shape.batch_size}, {shape.bytes_per_value} byte(s) per value ({shape.source}). "
             "Bytes = 2 x layers x KV heads x head dim x context x batch x bytes per value.", "",
             "| attention | KV heads | bytes | GiB |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['attention']} | {row['kv_heads']} | {row['bytes']} | {row['gib']:.4g} |" for row in answer.rows]
    return lines + [""]


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
