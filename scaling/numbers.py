"""Numbers as people write them in configs, sweep specs and questions ("3e-4", "1e6", "1.5M", 2_000_000),
and counts as run ids and tables show them.

YAML 1.1 (PyYAML) reads `1e6` and `3e-4` as strings, because its float syntax needs a decimal point, so
every number a config file or spec gives as text goes through `parse_number`. Suffixes are decimal and
either case: K = 1e3, M = 1e6, B or G = 1e9, T = 1e12 ("125m" is 1.25e8, as in model names).
"""

from __future__ import annotations

import argparse
import math
import re

from scaling.errors import UserError

SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
SUFFIX_PATTERN = "[kmbgt]"  # for parsers of larger texts (analysis.query), matched without case
_NUMBER = re.compile(rf"^\s*([+-]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:e[+-]?[0-9]+)?)\s*({SUFFIX_PATTERN}?)\s*$",
                     re.IGNORECASE)
RUN_ID_DIGITS = 3  # significant digits of a count inside a run id


def parse_number(value: object, where: str) -> float:
    """Return `value` (a number, or a string such as "3e-4", "1e6" or "1.5M") as a finite float.

    `where` names the config or spec key for the error message, e.g. "optimizer.lr" or "isoflop.budgets[2]".
    """
    if isinstance(value, bool):
        raise UserError(f"{where}={value!r} is not a number; write it as e.g. 3e-4, 1e6 or 1M")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        if not match:
            raise UserError(f"{where}={value!r} is not a number; write it as e.g. 3e-4, 1e6 or 1M")
        number = float(match.group(1).replace("_", "")) * SUFFIXES.get(match.group(2).lower(), 1.0)
    else:
        raise UserError(f"{where}={value!r} is not a number; write it as e.g. 3e-4, 1e6 or 1M")
    if not math.isfinite(number):
        raise UserError(f"{where}={value!r} is not a finite number")
    return number


def parse_count(value: object, where: str) -> float:
    """Return `value` as `parse_number` does, and require it to be positive: a count of tokens, FLOPs or sizes."""
    number = parse_number(value, where)
    if number <= 0:
        raise UserError(f"{where}={value!r} must be a positive number, such as 8, 1e6 or 1M")
    return number


def whole_number(text: str) -> int:
    """Parse a command-line count ("200", "1e3" or "4K") into an int, as an argparse type; callers check its range."""
    try:
        number = parse_number(text, "value")
    except UserError:
        number = math.nan
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; write e.g. 200, 1e3 or 4K")
    return int(number)


def format_count(value: float, digits: int = RUN_ID_DIGITS) -> str:
    """Return `value` in short scientific notation for run ids: 320000 -> "3.2e5", 1e13 -> "1e13", 7 -> "7e0".

    Three significant digits, no plus sign and no trailing zeros, so ids stay readable and file-name safe.
    """
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def human_count(value: float) -> str:
    """Return `value` with a decimal suffix for tables: 1234567 -> "1.23M", 980 -> "980"."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        # Values that round up to the next unit at three digits (999,936 -> "1M", not "1e+03K") take that unit.
        if abs(value) >= scale * (1 - 5e-4):
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def counted(count: int, noun: str) -> str:
    """Return "1 run" or "3 runs": `count` with `noun`, plural by an added "s" unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
