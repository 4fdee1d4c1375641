"""Read published (N, D, L) points from a CSV file into the same table as the run store.

A column mapping names the CSV column of each quantity, e.g. "N=params,D=tokens,L=loss". Exactly two of
N (parameters), D (tokens) and C (FLOPs) are mapped: the third follows from C = 6 N D, so a third column
could only disagree with it. An optional "budget=COLUMN" names the IsoFLOP budget each point belongs to, and
"id=COLUMN" a row name. Filters such as "epoch_excluded_outlier=0" keep only the rows whose column equals
that value: as numbers when both parse as numbers (so "C=1e19" keeps a row holding 1e+19), else as text.
A row must pass every filter, two on one column included.

The file is read as UTF-8, with or without the byte-order mark that spreadsheets write.

The CSV carries one parameter count, so both conventions of a row get it; the caller states which
convention the source used.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

from scaling.errors import UserError

from analysis.runs import RunRow, RunTable

logger = logging.getLogger(__name__)

QUANTITIES = ("N", "D", "C", "L", "budget", "id")
SEEN_VALUES = 8  # distinct values of a filtered column named when no row matches
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
    numeric = [(quantity, mapping[quantity]) for quantity in ("N", "D", "C", "L", "budget") if quantity in mapping]
    for quantity, column in numeric:
        others = [other for other, same in numeric if same == column and other != quantity]
        if others:
            raise UserError(f"column mapping {spec!r} reads both {quantity} and {others[0]} from column {column!r}; "
                            f"map each quantity to its own column, e.g. {DEFAULT_COLUMNS}")
    if all(q in mapping for q in ("N", "D", "C")):
        raise UserError(f"column mapping {spec!r} maps all of N, D and C; map two of them, since the third "
                        f"follows from C = 6ND, e.g. {DEFAULT_COLUMNS}")
    return mapping


def parse_filters(filters: list[str] | None) -> list[tuple[str, str]]:
    """Parse ["column=value", ...] into (column, value) pairs; raise UserError on an entry without "="."""
    parsed: list[tuple[str, str]] = []
    for entry in filters or []:
        column, sep, value = entry.partition("=")
        if not sep or not column.strip():
            raise UserError(f"invalid filter {entry!r}; use COLUMN=VALUE, e.g. epoch_excluded_outlier=0")
        if value.startswith("=") or column.rstrip()[-1:] in ("!", "<", ">"):
            operator = "==" if value.startswith("=") else column.rstrip()[-1] + "="
            name, expected = column.rstrip("!<> "), value.lstrip("= ")
            raise UserError(f"filter {entry!r} uses {operator}; --where keeps rows equal to a value and takes one "
                            f"'=': {name}={expected}")
        parsed.append((column.strip(), value.strip()))
    return parsed


def load_csv(path: str | Path, columns: str = DEFAULT_COLUMNS, filters: list[str] | None = None,
             source: str = "csv") -> RunTable:
    """Read the rows of `path` that pass `filters` into a RunTable (status "completed", one row per line)."""
    path = Path(path)
    mapping = parse_columns(columns)
    required = parse_filters(filters)
    seen: dict[str, set[str]] = defaultdict(set)  # values of each filtered column, for the error when none match
    try:
        # utf-8-sig: spreadsheets' "CSV UTF-8" starts with a byte-order mark, which would stick to the first name.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next((row for row in reader if row), [])  # the first line that is not blank
            if not header:
                raise UserError(f"{path} is empty; it needs a header line naming its columns, e.g. params,tokens,loss")
            needed = list(mapping.values()) + [column for column, _ in required]
            missing = [column for column in needed if column not in header]
            if missing:
                hint = "" if columns != DEFAULT_COLUMNS else (
                    "; name the header's columns with --columns, e.g. --columns N=params,D=tokens,L=val_loss")
                raise UserError(f"{path}: column(s) {', '.join(missing)} not found; the header has: "
                                f"{', '.join(header)}{hint}")
            repeated = sorted({column for column in needed if header.count(column) > 1})
            if repeated:
                raise UserError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header, so "
                                "a value could come from either; rename the copies")
            numbered = []  # (line number in the file, row), so that messages and ids name the file's lines
            data_rows = 0
            start = reader.line_num + 1  # the line the next row begins on; a quoted field may span lines
            for fields in reader:
                number, start = start, reader.line_num + 1
                if not fields:
                    continue  # a blank line
                data_rows += 1
                line = {name: fields[index] if index < len(fields) else None for index, name in enumerate(header)}
                # Too many fields usually means an unquoted comma inside a value, which shifts the columns.
                if any(line[column] is None for column in needed) or len(fields) > len(header):
                    raise UserError(f"{path} line {number}: {len(fields)} field(s) where the header has {len(header)}; "
                                    "complete, quote or remove that line")
                if all(_matches(line[column], value) for column, value in required):
                    numbered.append((number, line))
                for column, _ in required:
                    if len(seen[column]) < SEEN_VALUES:
                        seen[column].add(line[column].strip())
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start} cannot be read); save it as a UTF-8 CSV "
                        "file") from None
    except FileNotFoundError:
        raise UserError(f"CSV file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a CSV file; drop --columns to fit the runs in it") from None

    if not data_rows:
        raise UserError(f"{path} has a header but no data rows; add one line per point below the header")
    rows = [_row(line, number, mapping, path, source) for number, line in numbered]
    if not rows:
        filter_text = ", ".join(f"{column}={value}" for column, value in required)
        found = "; ".join(f"{column} contains {', '.join(sorted(seen[column]))}"
                         f"{' and more' if len(seen[column]) >= SEEN_VALUES else ''}" for column in dict(required))
        raise UserError(f"{path}: no rows left after the filters {filter_text}: none of its {data_rows} data rows "
                        f"matches them all ({found}); filter on one of those values")
    _warn_duplicates(rows, [number for number, _ in numbered], path)
    # A CSV does not state its loss's unit or kind (Chinchilla's points are final training losses).
    return RunTable(tuple(rows), {}, str(path), source_type="csv", loss_label=f"loss (CSV column {mapping['L']})",
                    loss_unit=f"the unit of its source (CSV column {mapping['L']})")


def _matches(text: str, required: str) -> bool:
    """Return whether a CSV field equals a filter's value: as numbers when both are numbers, else as text."""
    text = text.strip()
    if text == required:
        return True
    try:
        return float(text) == float(required)
    except ValueError:
        return False


def _warn_duplicates(rows: list[RunRow], numbers: list[int], path: Path) -> None:
    """Log a warning naming the lines that repeat an earlier line's N, D and L exactly."""
    lines_of: dict[tuple[float, float, float], list[int]] = defaultdict(list)
    for row, number in zip(rows, numbers):
        lines_of[(row.params_total, row.tokens, row.final_loss)].append(number)
    repeated = [lines for lines in lines_of.values() if len(lines) > 1]
    if repeated:
        listed = "; ".join(" = ".join(f"line {number}" for number in lines) for lines in repeated[:3])
        more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
        logger.warning("%s: %d point(s) appear more than once (%s%s). Every copy counts as a run, which narrows "
                       "the bootstrap intervals; remove the copies unless they are separate measurements",
                       path, len(repeated), listed, more)


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
    flops = 6.0 * params * tokens
    if not (math.isfinite(flops) and flops > 0 and params > 0 and tokens > 0):
        raise UserError(f"{path} line {number}: N={params:g} and D={tokens:g} give C = 6ND = {flops:g}, beyond "
                        "floating point; check the units of those columns")
    name = line[mapping["id"]] if "id" in mapping else f"line{number}"
    return RunRow(
        run_id=name,
        sweep=source,
        corpus_fingerprint=str(path),
        params_total=params,
        params_non_embedding=params,
        tokens=tokens,
        flops_6nd=flops,
        flops_exact=values.get("C"),
        flop_budget=values.get("budget"),
        final_loss=values["L"],
        status="completed",
    )
