"""Parse `scaling ask` questions into a Query.

Understood forms (case-insensitive; numbers take suffixes K, M, B, T for 1e3, 1e6, 1e9, 1e12, or plain
notation such as 7e9):

- "tokens for 7B"                          compute-optimal D for N = 7e9
- "compute for 70B"                        C = 6 N D at the compute-optimal D for N = 70e9
- "params for 1e23 FLOPs"                  compute-optimal N (and D) for C = 1e23
- "tokens per param at 1e22 FLOPs"         compute-optimal D / N for C = 1e22
- "loss at 7B params and 1.4T tokens"      predicted L(N, D)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scaling.errors import UserError

SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
_NUMBER = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([kmbt])?"
FORMS = (
    '"tokens for 7B"',
    '"compute for 70B"',
    '"params for 1e23 FLOPs"',
    '"tokens per param at 1e22 FLOPs"',
    '"loss at 7B params and 1.4T tokens"',
)

_PATTERNS = (
    ("tokens_per_param", re.compile(rf"^tokens?\s+per\s+param(?:eter)?s?\s+(?:at|for)\s+{_NUMBER}\s*flops?$")),
    ("tokens_for_params", re.compile(rf"^(?:tokens?|data)\s+for\s+{_NUMBER}(?:\s*param(?:eter)?s?)?$")),
    ("compute_for_params", re.compile(rf"^(?:compute|flops?)\s+for\s+{_NUMBER}(?:\s*param(?:eter)?s?)?$")),
    ("params_for_flops", re.compile(rf"^(?:params|parameters|model size|size)\s+for\s+{_NUMBER}\s*flops?$")),
    ("loss_at", re.compile(
        rf"^loss\s+(?:at|for)\s+{_NUMBER}\s*param(?:eter)?s?\s*(?:,|and|,\s*and)?\s*{_NUMBER}\s*tokens?$")),
)


@dataclass(frozen=True)
class Query:
    """A parsed question. Unused quantities are None."""

    kind: str  # tokens_for_params, compute_for_params, params_for_flops, tokens_per_param, loss_at
    text: str  # the question as asked
    params: float | None = None  # N, parameters
    tokens: float | None = None  # D, tokens
    flops: float | None = None  # C, FLOPs


def parse_number(text: str, suffix: str | None = None) -> float:
    """Return `text` times the multiplier of `suffix` (K, M, B, T; case-insensitive)."""
    value = float(text) * (SUFFIXES[suffix.lower()] if suffix else 1.0)
    if not value > 0:
        raise UserError(f"{text}{suffix or ''} must be > 0")
    return value


def parse_query(text: str) -> Query:
    """Parse `text` into a Query; raise UserError listing the understood forms when it matches none."""
    normalised = " ".join(text.strip().lower().replace("?", "").split())
    for kind, pattern in _PATTERNS:
        match = pattern.match(normalised)
        if match is None:
            continue
        first = parse_number(match.group(1), match.group(2))
        if kind in ("tokens_for_params", "compute_for_params"):
            return Query(kind, text, params=first)
        if kind in ("params_for_flops", "tokens_per_param"):
            return Query(kind, text, flops=first)
        return Query(kind, text, params=first, tokens=parse_number(match.group(3), match.group(4)))
    raise UserError(f"question {text!r} is not understood; ask one of: {', '.join(FORMS)}")
