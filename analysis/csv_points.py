"""Read published (N, D, L) points from a CSV file into the same table as the run store.

A column mapping names the CSV column of each quantity, e.g. "N=params,D=tokens,L=loss". Any two of
N (parameters), D (tokens) and C (FLOPs) are enough: the third follows from C = 6 N D. An optional
"budget=COLUMN" names the IsoFLOP budget each point belongs to, and "id=COLUMN" a row name. Filters such as
"epoch_excluded_outlier=0" keep only the rows whose column has that exact text.

The CSV carries one parameter count, so both conventions of a row get it; the caller states which
convention the source used.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from scaling.errors import UserError

from analysis.runs import RunRow, RunTable

QUANTITIES = ("N", "D", "C", "L", "budget", "id")
DEFAULT_COLUMNS = "N=params,D=tokens,L=loss"


def parse_columns(spec: str) -> dict[str, str]:
    """Parse "N=params,D=tokens,L=loss" into {"N": "params", ...}; raise UserError when it is unusable."""
    mapping: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        quantity, _, column = part.partition("=")
        quantity, column = quantity.strip(), column.strip()
        if quantity not in QUANTITIES or not column:
            raise UserError(f"invalid column mapping {part!r}; use QUANTITY=COLUMN with QUANTITY one of "
                            f"{', '.join(QUANTITIES)}, e.g. {DEFAULT_COLUMNS}")
        mapping[quantity] = column
    if "L" not in mapping or sum(q in mapping for q in ("N", "D", "C")) < 2:
        raise UserError(f"column mapping {spec!r} needs L and two of N, D, C; e.g. {DEFAULT_COLUMNS}")
    return mapping


def parse_filters(filters: list[str] | None) -> dict[str, str]:
    """Parse ["column=value", ...] into a dict; raise UserError on an entry without "="."""
    parsed: dict[str, str] = {}
    for entry in filters or []:
        column, sep, value = entry.partition("=")
        if not sep or not column.strip():
            raise UserError(f"invalid filter {entry!r}; use COLUMN=VALUE, e.g. epoch_excluded_outlier=0")
        parsed[column.strip()] = value.strip()
    return parsed


def load_csv(path: str | Path, columns: str = DEFAULT_COLUMNS, filters: list[str] | None = None,
             source: str = "csv") -> RunTable:
    """Read the rows of `path` that pass `filters` into a RunTable (status "completed", one row per line)."""
    path = Path(path)
    mapping = parse_columns(columns)
    wanted = parse_filters(filters)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [column for column in list(mapping.values()) + list(wanted) if column not in header]
            if missing:
                raise UserError(f"{path}: column(s) {', '.join(missing)} not found; the header has: "
                                f"{', '.join(header)}")
            lines = [line for line in reader if all(line[column].strip() == value for column, value in wanted.items())]
    except FileNotFoundError:
        raise UserError(f"CSV file {path} not found") from None

    rows = [_row(line, number, mapping, path, source) for number, line in enumerate(lines, start=2)]
    if not rows:
        raise UserError(f"{path}: no rows left after the filters {wanted or '(none)'}")
    return RunTable(tuple(rows), {}, str(path))


def _row(line: dict[str, str], number: int, mapping: dict[str, str], path: Path, source: str) -> RunRow:
    values: dict[str, float] = {}
    for quantity in ("N", "D", "C", "L", "budget"):
        if quantity in mapping:
            text = line[mapping[quantity]].strip()
            try:
                values[quantity] = float(text)
            except ValueError:
                raise UserError(f"{path} line {number}: {mapping[quantity]}={text!r} is not a number") from None
            if not (math.isfinite(values[quantity]) and values[quantity] > 0):
                raise UserError(f"{path} line {number}: {mapping[quantity]}={text} must be a finite number > 0")
    params = values.get("N") or values["C"] / (6 * values["D"])
    tokens = values.get("D") or values["C"] / (6 * params)
    name = line[mapping["id"]] if "id" in mapping else f"line{number}"
    return RunRow(
        run_id=name,
        sweep=source,
        corpus_fingerprint=str(path),
        params_total=params,
        params_non_embedding=params,
        tokens=tokens,
        flops_6nd=6.0 * params * tokens,
        flops_exact=values.get("C"),
        flop_budget=values.get("budget"),
        final_loss=values["L"],
        status="completed",
    )
