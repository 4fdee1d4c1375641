"""Counts as people write them in sweep specs ("1e6", "3.2e5", "1M", 2_000_000) and as run ids show them.

YAML 1.1 (PyYAML) reads `1e6` as a string, because its float syntax needs a decimal point, so every count
in a spec goes through `parse_count`. Suffixes are decimal: K = 1e3, M = 1e6, B or G = 1e9, T = 1e12.
"""

from __future__ import annotations

import math
import re

from scaling.errors import UserError

SUFFIXES = {"K": 1e3, "k": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT = re.compile(r"^\s*([+-]?[0-9][0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9]+)?)\s*([KkMBGT]?)\s*$")
RUN_ID_DIGITS = 3  # significant digits of a count inside a run id


def parse_count(value: object, where: str) -> float:
    """Return `value` (a number, or a string such as "1e6", "3.2e5", "1.5M") as a positive finite float.

    `where` names the spec key for the error message, e.g. "isoflop.budgets[2]".
    """
    if isinstance(value, bool):
        raise UserError(f"{where}={value!r} is not a number; write a count such as 1e6 or 1M")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _COUNT.match(value)
        if not match:
            raise UserError(f"{where}={value!r} is not a number; write a count such as 1e6, 3.2e5 or 1M")
        number = float(match.group(1).replace("_", "")) * SUFFIXES.get(match.group(2), 1.0)
    else:
        raise UserError(f"{where}={value!r} is not a number; write a count such as 1e6 or 1M")
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{where}={value!r} must be a positive number, such as 8, 1e6 or 1M")
    return number


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
