"""Answer a parsed question with every published law, and with the user's own fit when one is given.

One row per law, always with the same keys: law, params (N), tokens (D), tokens_per_param (D/N),
flops (C = 6ND), loss (nats/token, None when the law predicts none), data (the corpus the loss is measured
on), source, and interval. Compute is 6ND throughout. A value beyond floating point is infinite, and a note
says which law gives it. `interval` is None unless the law comes with bootstrap replicates (a fit.json written with
bootstraps); then it maps each numeric key to its [low, high] percentile interval, with its "level".

With a fit.json, the row of its approach 3 law comes first. For allocation questions the rows of its approach 2
and approach 1 power laws follow when they were fitted, each with an interval from its own replicates.

A KV-cache question uses no law: its rows, one per attention variant (MHA, GQA, MQA), have the keys of
KV_ROW_KEYS, with bytes = 2 x layers x KV heads x head dim x context x batch x bytes per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scaling.errors import UserError

from analysis.allocation import FLOPS_PER_PARAM_TOKEN
from analysis.bootstrap import interval_note, percentile_interval, too_few_replicates
from analysis.defaults import DEFAULT_BOOTSTRAPS
from analysis.fit import fitted_noun, missing_result, read_fit
from analysis.laws import Law, ParametricLaw, PowerLawAllocation, all_laws, get_law
from analysis.query import Query, check_gqa_kv_heads, far_notes, parse_query

# `convention` is what N counts: "total" parameters, or "non_embedding" ones (Kaplan et al. 2020).
ROW_KEYS = ("law", "params", "convention", "tokens", "tokens_per_param", "flops", "loss", "data", "source", "interval")
KV_ROW_KEYS = ("attention", "kv_heads", "bytes", "gib", "n_layers", "n_heads", "head_dim", "context", "batch_size",
               "bytes_per_value", "source")
INTERVAL_KEYS = ("params", "tokens", "tokens_per_param", "flops", "loss")
DISAGREEMENT_FACTOR = 2.0  # laws whose answers differ by more than this are called out

# The quantity each kind of question asks for, which is the one compared across laws.
_ASKED = {
    "tokens_for_params": "tokens",
    "compute_for_params": "flops",
    "params_for_flops": "params",
    "tokens_per_param": "tokens_per_param",
    "loss_at": "loss",
    "kv_cache": "bytes",
}
_ALLOCATING = ("tokens_for_params", "compute_for_params", "params_for_flops", "tokens_per_param")


@dataclass(frozen=True)
class Answer:
    """The rows for one question, and notes such as disagreement between laws."""

    query: Query
    rows: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = field(default=())


def ask(question: str | Query, *, fit: str | Path | dict[str, Any] | None = None,
        law_keys: Sequence[str] | None = None) -> Answer:
    """Answer `question` with the registered laws (or those named in `law_keys`) and an optional fit.

    `fit` is a fit.json path or record written by `scaling fit`; its approach 3 law answers first, then, for
    allocation questions, its approach 2 and approach 1 power laws.
    """
    query = question if isinstance(question, Query) else parse_query(question)
    if query.kind == "kv_cache":
        passed = [option for option, value in (("--law", law_keys), ("--fit", fit is not None)) if value]
        if passed:
            raise UserError(f"a kv cache question uses no scaling law or fit; drop {' and '.join(passed)}")
        rows = kv_cache_rows(query)
        return Answer(query, tuple(rows), tuple(kv_cache_notes(query, rows)))
    # A law named twice gets one row: dict.fromkeys keeps the first of each key, in the order given.
    laws: list[Law] = [get_law(key) for key in dict.fromkeys(law_keys)] if law_keys else all_laws()
    rows = [answer_row(law, query) for law in laws]
    if query.kind == "loss_at" and not law_keys:
        # Allocation rules predict no loss, so their rows would only repeat the question.
        rows = [row for row in rows if row["loss"] is not None]
    quantity = _ASKED[query.kind]
    if fit is not None:
        record = fit if isinstance(fit, dict) else read_fit(fit)
        check_fit_record(record, _fit_source(fit))
        law = fitted_law(record, source=_fit_source(fit))
        if query.kind in _ALLOCATING and record["approach3"].get("allocation_identified") is False:
            # Fits written before this flag existed carry their one-budget warning in the notes instead.
            row = _empty_row(law, query, f"its {fitted_noun(record)} lie on one compute budget, which does not "
                                         "separate the N and D terms")
        else:
            row = answer_row(law, query)
        row["interval"] = bootstrap_interval(record, query) if _finite(row[quantity]) else None
        own_rows = [row]
        if query.kind in _ALLOCATING:
            for approach in ("approach2", "approach1"):
                allocation_law = fitted_allocation(record, approach, source=_fit_source(fit))
                if allocation_law is not None:
                    allocation_row = answer_row(allocation_law, query)
                    # A row without a value gets no interval either, because replicates cannot stand in for the estimate.
                    allocation_row["interval"] = (allocation_interval(record, approach, query)
                                                  if _finite(allocation_row[quantity]) else None)
                    own_rows.append(allocation_row)
        rows[:0] = own_rows
    rows = tuple(rows)
    notes = far_notes(query) + disagreement_notes(query, rows)
    if fit is not None:
        notes[:0] = fit_notes(record, query, own_rows, published=len(rows) > len(own_rows)) + beyond_fit_notes(record,
                                                                                                             query)
        for row in own_rows:
            missing = (row["interval"] or {}).get("note")
            if missing:
                notes.append(f"{row['law']}: no {100 * row['interval']['level']:.0f}% interval: {missing}")
            wide = _wide_interval_note(row, quantity)
            if wide:
                notes.append(wide)
    overflowed = [row["law"] for row in rows
                  if any(row[key] is not None and not _finite(row[key]) for key in INTERVAL_KEYS)]
    if overflowed:
        notes.append(f"values beyond floating point (shown as overflow) from: {'; '.join(overflowed)}. At this size "
                     "their power laws leave the range of a float, so those values are no answer")
    if query.kind == "loss_at":
        silent = [row["law"] for row in rows if row["loss"] is None]
        if silent:
            notes.append(f"{', '.join(silent)} predicts no loss (an allocation rule only); "
                         "ask a law with a loss, e.g. --law hoffmann-a3-printed")
    return Answer(query, rows, tuple(notes))


def kv_cache_rows(query: Query) -> list[dict[str, Any]]:
    """Return the KV-cache size of multi-head, grouped-query and multi-query attention for a kv_cache question."""
    from models.kv_cache import kv_cache_comparison  # imports JAX, so it loads only for this question

    shape = query.kv_cache
    check_gqa_kv_heads(shape.gqa_kv_heads, shape.n_heads)  # a Query built without parse_query is checked here
    rows = kv_cache_comparison(shape.n_layers, shape.n_heads, shape.head_dim, shape.context, shape.batch_size,
                               shape.bytes_per_value, gqa_kv_heads=shape.gqa_kv_heads)
    if shape.gqa_kv_heads is not None and not any(row["attention"] == "GQA" for row in rows):
        # The comparison leaves out a GQA row equal to MHA (G = heads) or MQA (G = 1). The user requested that
        # G, so its row is shown between them, and kv_cache_notes states which one it equals.
        same = next(row for row in rows if row["kv_heads"] == shape.gqa_kv_heads)
        rows.insert(1, {**same, "attention": "GQA"})
    common = {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "head_dim": shape.head_dim,
              "context": shape.context, "batch_size": shape.batch_size, "bytes_per_value": shape.bytes_per_value,
              "source": shape.source}
    return [{key: {**row, **common}[key] for key in KV_ROW_KEYS} for row in rows]


def kv_cache_notes(query: Query, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Return notes on a grouped-query row that equals another variant or is missing."""
    shape = query.kv_cache
    gqa = [row for row in rows if row["attention"] == "GQA"]
    if shape.n_heads == 1:
        return ["a single query head has a single key/value head in every variant, so multi-head and multi-query "
                "attention coincide" + (", and gqa 1 equals both" if gqa else " and there is no grouped-query row")]
    if not gqa:
        return [f"no grouped-query row: {shape.n_heads} query heads have no divisor strictly between 1 and "
                f"{shape.n_heads}, so any grouping equals multi-head or multi-query attention"]
    kv_heads = gqa[0]["kv_heads"]
    if kv_heads == shape.n_heads:
        return [f"gqa {kv_heads} keeps a key/value head per query head, so it equals multi-head attention (MHA)"]
    if kv_heads == 1:
        return ["gqa 1 shares one key/value head across all query heads, so it equals multi-query attention (MQA)"]
    return []


def fit_notes(record: dict[str, Any], query: Query, own_rows: Sequence[dict[str, Any]],
              published: bool) -> list[str]:
    """Return the notes on a fit's own rows: its warnings, the approaches without a row, and missing intervals.

    A warning is left out where the rows shown do not depend on it: the Kaplan-style fits always, and
    approaches 1 and 2 for questions they do not answer. The fit's own interval notes are left out too,
    because they concern its parameters, and `ask` notes the interval of the requested quantity per row.
    `published` is whether rows of published laws follow the fit's own.
    """
    allocating = query.kind in _ALLOCATING
    missing = {approach: missing_result(record, approach) for approach in ("approach2", "approach1")}
    skipped_prefixes = ["Kaplan-style"]
    for approach in ("approach2", "approach1"):
        if not allocating or missing[approach]:
            # A missing approach's own warnings are summarised by its note below.
            skipped_prefixes.append(f"approach {approach[-1]}")
    interval_notes = [note for note in (_bootstrap_note(record.get("bootstrap")),
                                        _bootstrap_note((record.get("approach2") or {}).get("bootstrap")),
                                        _bootstrap_note((record.get("approach1") or {}).get("bootstrap"))) if note]
    relevant = [warning for warning in record.get("warnings", [])
                if not warning.startswith(tuple(skipped_prefixes))
                and not any(note in warning for note in interval_notes)]
    notes = [f"your fit: {warning}" for warning in _first_of_each_method(relevant)]
    if allocating:
        notes += [f"your fit: {reason}" for reason in missing.values() if reason]
    if record.get("bootstrap") is None:
        notes.append("your fit was made with --bootstraps 0, so it has no intervals; refit without that option "
                     f"({DEFAULT_BOOTSTRAPS} replicates by default) for them")
    elif published and any(row["interval"] for row in own_rows):
        notes.append("the published laws' rows have no interval, because each law is used at its published point "
                     "estimate")
    return notes


WARNINGS_PER_METHOD = 3  # notes repeat this many of a fit's warnings about one method, then count the rest


def _first_of_each_method(warnings: Sequence[str]) -> list[str]:
    """Return the warnings with at most WARNINGS_PER_METHOD per method ("approach 2: ..."), and a count of the
    rest, so that a fit with one warning per IsoFLOP budget does not bury the rows in notes."""
    listed: list[str] = []
    left_out: dict[str, int] = {}
    for warning in warnings:
        method = warning.split(":", 1)[0] if ":" in warning else ""
        if method and sum(line.startswith(f"{method}:") for line in listed) >= WARNINGS_PER_METHOD:
            left_out[method] = left_out.get(method, 0) + 1
            continue
        listed.append(warning)
    listed += [f"{count} more warning(s) about {method}, listed in fit.json's \"warnings\""
              for method, count in left_out.items()]
    return listed


FIT_RANGE_FACTOR = 10.0  # a question this many times beyond the fit's runs gets a note
_UNITS = {"params": "parameters", "tokens": "tokens", "flops": "FLOPs"}


def beyond_fit_notes(record: dict[str, Any], query: Query) -> list[str]:
    """Return a note for each of the question's N, D and C more than FIT_RANGE_FACTOR beyond the fit's runs.

    fit.json's `data_range` gives the smallest and largest N, D and C of the runs fitted; an older fit.json
    without it gets no note.
    """
    notes = []
    for quantity, unit in _UNITS.items():
        value, bounds = getattr(query, quantity), (record.get("data_range") or {}).get(quantity)
        if value is None or not bounds or not all(_is_number(bound) and bound > 0 for bound in bounds):
            continue
        low, high = min(bounds), max(bounds)
        if value > FIT_RANGE_FACTOR * high:
            notes.append(f"your fit: its runs reach {high:.3g} {unit}, and {value:.3g} is {value / high:.3g} times "
                         "that, so its rows extrapolate that far beyond its data")
        elif value < low / FIT_RANGE_FACTOR:
            notes.append(f"your fit: its runs start at {low:.3g} {unit}, and {value:.3g} is {low / value:.3g} times "
                         "smaller, so its rows extrapolate that far below its data")
    return notes


def _bootstrap_note(bootstrap: dict[str, Any] | None) -> str | None:
    return (bootstrap or {}).get("interval_note")


def fitted_law(record: dict[str, Any], source: str = "your fit.json") -> ParametricLaw:
    """Return the approach 3 law of a fit.json record."""
    fitted = record["approach3"]
    convention = record.get("convention", "total")
    status = "converged" if fitted.get("converged") else "NOT converged"
    return ParametricLaw.from_logs(
        key="fit",
        name=f"your fit (approach 3, {convention} parameters, {record.get('n_runs', '?')} {fitted_noun(record)}, "
             f"{status})",
        citation=source,
        log_a=fitted["log_a"], log_b=fitted["log_b"], log_e=fitted["log_e"],
        alpha=fitted["alpha"], beta=fitted["beta"], convention=convention, data=fit_data(record),
    )


def fit_data(record: dict[str, Any]) -> str:
    """Return what a fit's losses are measured on: its runs' corpus, named by its source."""
    return f"your runs ({record.get('runs_source', 'fit.json')})"


def check_fit_record(record: Any, source: str) -> None:
    """Raise UserError naming the first field of a fit.json record that `ask` needs and cannot use.

    A fit.json written by `scaling fit` always passes; a hand-edited or truncated one gets a message naming
    the field instead of a traceback.
    """
    def reject(field_name: str, problem: str) -> None:
        raise UserError(f"{source}: {field_name} {problem}; write it again with `scaling fit RUNS`")

    if not isinstance(record, dict):
        reject("the record", f"is a JSON {type(record).__name__}, not an object")
    approach3 = record.get("approach3")
    if not isinstance(approach3, dict):
        reject("approach3", "is missing, so there is no fitted L(N, D)")
    for name in ("log_a", "log_b", "log_e", "alpha", "beta"):
        if not _is_number(approach3.get(name)):
            reject(f"approach3.{name}", f"is {approach3.get(name)!r}, not a number")
    for approach in ("approach2", "approach1"):
        fitted = record.get(approach) or {}
        if not isinstance(fitted, dict):
            reject(approach, f"is a JSON {type(fitted).__name__}, not an object")
        for name in ("a", "params_coefficient"):
            if fitted.get(name) is not None and not _is_number(fitted[name]):
                reject(f"{approach}.{name}", f"is {fitted[name]!r}, not a number")
    bootstrap = record.get("bootstrap")
    if bootstrap:
        samples = bootstrap.get("samples") if isinstance(bootstrap, dict) else None
        values = samples.get("values") if isinstance(samples, dict) else None
        converged = samples.get("converged") if isinstance(samples, dict) else None
        if not isinstance(values, list) or not isinstance(converged, list) or len(values) != len(converged):
            reject("bootstrap.samples", "does not hold matching lists of values and converged flags")
        if not _is_number(bootstrap.get("level")) or not 0 < bootstrap["level"] < 1:
            reject("bootstrap.level", f"is {bootstrap.get('level')!r}, not a level between 0 and 1")
        for index, theta in enumerate(values):
            if not isinstance(theta, list) or len(theta) != 5 or not all(_is_number(value) for value in theta):
                reject(f"bootstrap.samples.values[{index}]", f"is {theta!r}, not five numbers")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def fitted_allocation(record: dict[str, Any], approach: str,
                      source: str = "your fit.json") -> PowerLawAllocation | None:
    """Return N_opt(C) of a fit.json's approach 1 or 2 ("approach1", "approach2"), or None where it was not fitted."""
    fitted = record.get(approach) or {}
    if fitted.get("a") is None or fitted.get("params_coefficient") is None:
        return None
    number = approach[-1]
    convention = record.get("convention", "total")
    return PowerLawAllocation(f"fit-{approach}", f"your fit (approach {number}, {convention} parameters, "
                              f"{_runs_used(record, approach)})", source, fitted["a"],
                              fitted["params_coefficient"], convention)


def _runs_used(record: dict[str, Any], approach: str) -> str:
    """Return how many runs an approach's power law rests on: approach 2 uses only the budgets it kept."""
    fitted = record.get(approach) or {}
    if approach == "approach2" and "budgets_used" in fitted:
        used = set(fitted["budgets_used"])
        runs = sum(len(profile["params"]) for profile in fitted.get("profiles", []) if profile["flops"] in used)
        return f"{runs} {fitted_noun(record)} in {len(used)} budgets"
    return f"{record.get('n_runs', '?')} {fitted_noun(record)}"


def allocation_interval(record: dict[str, Any], approach: str, query: Query) -> dict[str, Any] | None:
    """Return percentile intervals of approach 1's or 2's result over its bootstrap replicates, or None."""
    bootstrap = (record.get(approach) or {}).get("bootstrap") or {}
    samples = bootstrap.get("samples")
    if not samples:
        return None
    names = samples["names"]
    laws = []
    for values in samples["values"]:
        named = dict(zip(names, values))
        if named.get("a") is not None and named.get("params_coefficient") is not None:
            laws.append(PowerLawAllocation("replicate", "replicate", "bootstrap", named["a"],
                                           named["params_coefficient"]))
    return _interval_over(laws, query, float(bootstrap["level"]), len(samples["values"]))


def answer_row(law: Law, query: Query) -> dict[str, Any]:
    """Return one law's answer to `query` as a row with the keys of ROW_KEYS.

    A fitted law far from its data can overflow: the row's values are then infinite, without a numpy warning.
    """
    try:
        if query.kind in ("tokens_for_params", "compute_for_params"):
            params = query.params
            with np.errstate(over="ignore"):
                tokens = law.tokens_for_params(params)
        elif query.kind in ("params_for_flops", "tokens_per_param"):
            with np.errstate(over="ignore", invalid="ignore"):
                params, tokens = law.compute_optimal(query.flops)
        elif query.kind == "loss_at":
            params, tokens = query.params, query.tokens
        else:
            raise ValueError(f"unknown query kind {query.kind!r}")
    except ValueError as error:
        # A fitted law with alpha or beta <= 0 has no compute-optimal allocation: the row stays, empty.
        if query.kind not in _ALLOCATING:
            raise
        return _empty_row(law, query, str(error))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        loss = law.loss(params, tokens)
        # numpy division: N that underflowed to 0 or overflowed gives an infinite or zero ratio, not an error.
        tokens_per_param = float(np.float64(tokens) / np.float64(params))
        flops = float(np.float64(FLOPS_PER_PARAM_TOKEN) * np.float64(params) * np.float64(tokens))
    return {
        "law": law.name,
        "params": float(params),
        "convention": getattr(law, "convention", "total"),
        "tokens": float(tokens),
        "tokens_per_param": tokens_per_param,
        "flops": flops,
        "loss": None if loss is None else float(loss),
        "data": law.data,
        "source": law.citation,
        "interval": None,
    }


def law_label(row: dict[str, Any]) -> str:
    """Return a row's law name for tables, naming its N's convention where that is not total parameters."""
    if row.get("convention") == "non_embedding" and "non_embedding" not in row["law"]:
        return row["law"] + "; N non-embedding"  # the N column is total parameters in the other rows
    return row["law"]


def ratio_format(value: float | None) -> str:
    """Return the format spec for a D/N value: two decimals from 0.01 to 1e5, else scientific notation."""
    if value is not None and math.isfinite(value) and not 0.01 <= value < 1e5:
        return ".3g"
    return ".2f"


def asked_quantity(kind: str) -> str:
    """Return the row key a kind of question asks for: tokens, flops, params, tokens_per_param, loss or bytes."""
    return _ASKED[kind]


def bootstrap_interval(record: dict[str, Any], query: Query) -> dict[str, Any] | None:
    """Return percentile intervals of the fit's answer over its converged bootstrap replicates, or None."""
    bootstrap = record.get("bootstrap")
    if not bootstrap:
        return None
    samples = bootstrap["samples"]
    laws = []
    for theta, converged in zip(samples["values"], samples["converged"]):
        if not converged:
            continue
        log_a, log_b, log_e, alpha, beta = theta
        laws.append(ParametricLaw.from_logs("replicate", "replicate", "bootstrap", log_a=log_a, log_b=log_b,
                                            log_e=log_e, alpha=alpha, beta=beta))
    return _interval_over(laws, query, float(bootstrap["level"]), len(samples["values"]))


def _interval_over(laws: Sequence[Law], query: Query, level: float, requested: int) -> dict[str, Any]:
    """Return the central `level` percentile interval of each of INTERVAL_KEYS over the laws' rows.

    `laws` are the usable ones of `requested` replicates, possibly none. With too few of them (the rule of
    `scaling fit`, analysis.bootstrap.MIN_USABLE_FRACTION), or where they all agree, a key's interval is None
    and "note" says why. A replicate far from the data (a single compute budget, say) can overflow: its values
    count as infinite, so the interval's bound becomes infinite ("inf" in tables, null in JSON), not an error.
    """
    if not laws:
        return {"level": level, "replicates": 0, **{key: None for key in INTERVAL_KEYS},
                "note": too_few_replicates(0, requested, level=level)}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        replicate_rows = [_replicate_row(law, query) for law in laws]
    interval: dict[str, Any] = {"level": level, "replicates": len(replicate_rows)}
    samples = {}
    for key in INTERVAL_KEYS:
        values = np.array([row[key] for row in replicate_rows if row[key] is not None], dtype=float)
        samples[key] = values[~np.isnan(values)]
        too_few = too_few_replicates(samples[key].size, requested, level=level)
        interval[key] = None if too_few else _listed(percentile_interval(samples[key], level))
    quantity = _ASKED[query.kind]
    if quantity not in samples:
        interval["note"] = None
        return interval
    # A fitted replicate may still give no value (an exponent <= 0 gives no allocation), so name both counts.
    answered = samples[quantity].size
    fitted = ("could be fitted" if answered == len(laws) else
              f"answer this question ({len(laws)} could be fitted, {len(laws) - answered} of them have no answer)")
    interval["note"] = interval_note({quantity: samples[quantity]}, requested, fitted=fitted, level=level)
    return interval


WIDE_INTERVAL_FACTOR = 1e3  # an interval whose bounds differ by more than this factor constrains little


def _wide_interval_note(row: dict[str, Any], quantity: str) -> str | None:
    """Return a note when the row's interval of the asked N, D, C or D/N spans more than WIDE_INTERVAL_FACTOR,
    or None. Such bounds (below one parameter, for example) only show that the runs leave the answer open."""
    bounds = (row["interval"] or {}).get(quantity)
    if quantity not in _UNITS and quantity != "tokens_per_param" or not bounds:
        return None
    low, high = bounds
    if not (_finite(low) and _finite(high) and low > 0 and high > WIDE_INTERVAL_FACTOR * low):
        return None
    return (f"{row['law']}: its {100 * row['interval']['level']:.0f}% interval of {quantity} spans "
            f"{math.log10(high / low):.0f} orders of magnitude ({low:.3g} .. {high:.3g}), so its runs leave this "
            "answer open; add sizes near each budget's optimum, or budgets, to narrow it")


def _listed(bounds: tuple[float, float] | None) -> list[float] | None:
    return None if bounds is None else list(bounds)


def _replicate_row(law: Law, query: Query) -> dict[str, Any]:
    """Return a replicate's row for `query`, with infinity for the quantities that overflow."""
    try:
        return answer_row(law, query)
    except OverflowError:
        return {key: math.inf for key in INTERVAL_KEYS}


def _empty_row(law: Law, query: Query, reason: str) -> dict[str, Any]:
    return {"law": law.name, "params": query.params, "convention": getattr(law, "convention", "total"),
            "tokens": None, "tokens_per_param": None,
            "flops": query.flops, "loss": None, "data": law.data, "source": f"{law.citation} (no allocation: {reason})",
            "interval": None}


def disagreement_notes(query: Query, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Return a note when the asked quantity differs by more than DISAGREEMENT_FACTOR across laws.

    Losses are compared only between laws measured on the same data: nats per token of different corpora
    and tokenizers are different units.
    """
    key = _ASKED[query.kind]
    answered = [row for row in rows if row[key] is not None and 0 < row[key] < math.inf]
    groups = [answered]
    if key == "loss":
        groups = [[row for row in answered if row["data"] == data] for data in dict.fromkeys(r["data"] for r in answered)]
    notes = []
    for group in groups:
        if len(group) < 2:
            continue
        low = min(group, key=lambda row: row[key])
        high = max(group, key=lambda row: row[key])
        ratio = high[key] / low[key]
        if ratio > DISAGREEMENT_FACTOR:
            notes.append(f"the laws disagree by {ratio:.3g}x on {key}: {low['law']} gives {low[key]:.4g}, "
                         f"{high['law']} gives {high[key]:.4g}")
    return notes


def _fit_source(fit: str | Path | dict[str, Any]) -> str:
    if isinstance(fit, dict):
        return f"your fit of {fit.get('runs_source', 'your runs')}"
    return f"your fit ({fit})"
