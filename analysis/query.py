"""Parse `scaling ask` questions into a Query.

Understood forms (case-insensitive; numbers take suffixes K, M, B, T for 1e3, 1e6, 1e9, 1e12, the words
thousand, million, billion (or bn) and trillion, plain notation such as 7e9, or digits grouped by commas
such as 7,000,000,000):

- "tokens for 7B"                          compute-optimal D for N = 7e9
- "compute for 70B"                        C = 6 N D at the compute-optimal D for N = 70e9
- "params for 1e23 FLOPs"                  compute-optimal N (and D) for C = 1e23
- "tokens per param at 1e22 FLOPs"         compute-optimal D / N for C = 1e22
- "loss at 7B params and 1.4T tokens"      predicted L(N, D); the tokens may come first
- "params for 1e23"                        as "params for 1e23 FLOPs": the number is the compute budget
- "loss at 1e21 FLOPs"                     as "params for 1e21 FLOPs", whose answer gives the optimum's loss
- "kv cache for 7B at 4096 tokens"         KV-cache bytes of MHA, GQA and MQA for a reference 7B shape
- "kv cache for 32 layers 32 heads 128 head dim at 4096 tokens batch 8"
                                           the same for a shape given in full

A KV-cache question may end with "batch B", "gqa G" (or "G kv heads") for the grouped-query row, and a
value type: float32 or fp32 (4 bytes), bfloat16, bf16, float16 or fp16 (2 bytes, the default), int8 or
fp8 (1 byte), each at most once. Its counts are whole numbers of at least 1 without suffixes, so
"4096 tokens" is never read as 4.096e3, and G must divide the number of query heads.

Questions may be phrased as people ask them: "how many tokens for a 7B model", "what is the optimal tokens
for 7B", "loss for 7B with 140B tokens", "params for 10^23 FLOPs" (or 2x10^23, 10**23) are read as the
forms above.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from scaling.errors import UserError
from scaling.numbers import SUFFIX_PATTERN, SUFFIXES

logger = logging.getLogger(__name__)

# The sign is matched so that "-7B" gets the same "must be positive" error as "0B", not "not understood".
_NUMBER = rf"(-?\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*({SUFFIX_PATTERN})?"
FORMS = (
    '"tokens for 7B"',
    '"compute for 70B"',
    '"params for 1e23 FLOPs"',
    '"tokens per param at 1e22 FLOPs"',
    '"loss at 7B params and 1.4T tokens"',
    '"kv cache for 7B at 4096 tokens"',
    '"kv cache for 32 layers 32 heads 128 head dim at 4096 tokens batch 8"',
)

LLAMA_2023 = "Touvron et al. 2023, LLaMA: Open and Efficient Foundation Language Models, arXiv:2302.13971"
# Reference shapes for named sizes: (layers, heads, head dim). LLaMA's table 2 lists dimension, heads and
# layers for its 6.7B, 13.0B, 32.5B and 65.2B models, released as 7B, 13B, 33B and 65B; head dim is
# dimension / heads, 128 in every row.
REFERENCE_SHAPES = {
    7e9: (32, 32, 128, f"LLaMA 7B (6.7B): dimension 4096, 32 heads, 32 layers; {LLAMA_2023}, table 2"),
    13e9: (40, 40, 128, f"LLaMA 13B: dimension 5120, 40 heads, 40 layers; {LLAMA_2023}, table 2"),
    33e9: (60, 52, 128, f"LLaMA 33B (32.5B): dimension 6656, 52 heads, 60 layers; {LLAMA_2023}, table 2"),
    65e9: (80, 64, 128, f"LLaMA 65B (65.2B): dimension 8192, 64 heads, 80 layers; {LLAMA_2023}, table 2"),
}
_REFERENCE_ALIASES = {6.7e9: 7e9, 32.5e9: 33e9, 65.2e9: 65e9}  # the sizes as table 2 prints them
# Chinchilla, the largest run behind the published laws here: 70B parameters on 1.4T tokens (Hoffmann et al.
# 2022, section 4), C = 6ND = 5.88e23 FLOPs. Beyond FAR_FACTOR times its N, D or C, every law extrapolates far
# outside its data, so `ask` adds a note with the factor.
CHINCHILLA = {"params": (70e9, "parameters"), "tokens": (1.4e12, "tokens"), "flops": (6 * 70e9 * 1.4e12, "FLOPs")}
FAR_FACTOR = 1e3
# The smallest meaningful quantities: one parameter, one token, and C = 6ND for both.
LEAST = {"params": 1.0, "tokens": 1.0, "flops": 6.0}
# An N below this, written without a suffix ("tokens for 7"), is more likely a forgotten B than a real model.
# A suffix shows the size was meant, so "tokens for 8K" (the demo's smallest model) gets no warning.
SMALL_MODEL_PARAMS = 1e5
GIVEN_SHAPE = "shape as given in the question"
BYTES_PER_VALUE = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1, "fp8": 1}

_KV_CACHE = re.compile(r"^kv[ -]?cache\s+(?:for|of)\s+(?P<model>.+?)\s+at\s+(?P<context>\d+(?:\.\d+)?\s*[a-z]?)\s*"
                       r"tokens?(?P<options>.*)$")
_KV_SHAPE = re.compile(r"^(?P<layers>\d+)\s*layers?,?\s*(?P<heads>\d+)\s*heads?,?\s*(?P<head_dim>\d+)\s*"
                       r"(?:head[ _-]?dim(?:ension)?|dim)$")
# Numbers are matched with a sign and decimals so that "gqa 4.5" or "batch -2" is rejected as a whole value,
# not split into "gqa 4" and a leftover ".5". The lookbehind keeps "G kv heads" from starting inside a number.
_KV_COUNT = r"(-?\d+(?:\.\d*)?)"
_KV_OPTIONS = (
    ("batch_size", re.compile(rf"\bbatch(?:\s+size)?\s+{_KV_COUNT}(?![\w.])")),
    ("gqa_kv_heads", re.compile(rf"(?:\bgqa\s+{_KV_COUNT}(?![\w.])|(?<![\w.-]){_KV_COUNT}\s+kv\s+heads?\b)")),
    ("dtype", re.compile(rf"\b(?:in\s+)?({'|'.join(BYTES_PER_VALUE)})\b")),
)
# Each option as messages name it, the quantity its number counts, and an example.
_KV_OPTION_NAMES = {"batch_size": ("batch", "the batch size", "batch 8"),
                    "gqa_kv_heads": ("gqa", "the number of key/value heads", "gqa 8"),
                    "dtype": ("the value type", "", "bf16")}

_JOIN = r"(?:,|and|,\s*and|with|trained\s+on|on)?"  # between the two numbers of a loss question
_PATTERNS = (
    ("tokens_per_param", re.compile(rf"^tokens?\s+per\s+param(?:eter)?s?\s+(?:at|for)\s+{_NUMBER}(?:\s*flops?)?$")),
    ("tokens_for_params", re.compile(rf"^(?:tokens?|data)\s+for\s+{_NUMBER}(?:\s*param(?:eter)?s?)?$")),
    ("compute_for_params", re.compile(rf"^(?:compute|flops?)\s+for\s+{_NUMBER}(?:\s*param(?:eter)?s?)?$")),
    # The number of a "params for" question is a compute budget, with or without the word FLOPs.
    ("params_for_flops", re.compile(rf"^(?:params|parameters|model size|size)\s+for\s+{_NUMBER}(?:\s*flops?)?$")),
    ("loss_at_flops", re.compile(rf"^loss\s+(?:at|for|with)\s+{_NUMBER}\s*flops?$")),
    ("loss_at", re.compile(
        rf"^loss\s+(?:at|for|of)\s+{_NUMBER}\s*(?:param(?:eter)?s?)?\s*{_JOIN}\s*{_NUMBER}\s*tokens?$")),
    ("loss_at_tokens_first", re.compile(
        rf"^loss\s+(?:at|for|of)\s+{_NUMBER}\s*tokens?\s*{_JOIN}\s*{_NUMBER}\s*param(?:eter)?s?$")),
)
# Words for the suffixes, as people write sizes: "7 billion", "7bn", "1.4 trillion".
_SUFFIX_WORDS = (("thousand", "k"), ("million", "m"), ("billion", "b"), ("bn", "b"), ("trillion", "t"))
# Words that frame a question without changing it: "how many tokens for a 7B model" is "tokens for 7B".
# Every result is compute-optimal already, so "optimal" adds nothing either.
_LEADING_WORDS = re.compile(r"^(?:how\s+many|how\s+much|what(?:'s|\s+is|\s+are)?(?:\s+the)?|the)\s+")
_FILLER_WORDS = re.compile(r"\b(?:compute[- ]optimal|chinchilla[- ]optimal|optimal|an?|the)\s+")
_MODEL_WORD = re.compile(r"\s*\bmodel\b(?!\s+size)")  # "7b model"; "model size for 1e23" keeps it
# Powers of ten as people type them: 10^23, 10**23, 2x10^23, 2*10^23, 2×10^23.
_POWER_OF_TEN = re.compile(r"(?<![\d.e])(?:(\d+(?:\.\d+)?)\s*[x*×]\s*)?10\s*(?:\^|\*\*)\s*([+-]?\d+)")


@dataclass(frozen=True)
class KVCacheShape:
    """The model shape and cache size of a KV-cache question."""

    n_layers: int
    n_heads: int  # query heads; multi-head attention keeps keys and values for all of them
    head_dim: int
    context: int  # tokens held per sequence
    batch_size: int = 1  # sequences
    bytes_per_value: int = 2
    gqa_kv_heads: int | None = None  # key/value heads of the grouped-query row; None for the default
    source: str = GIVEN_SHAPE  # where the layers, heads and head dim come from


@dataclass(frozen=True)
class Query:
    """A parsed question. Unused quantities are None."""

    kind: str  # tokens_for_params, compute_for_params, params_for_flops, tokens_per_param, loss_at, kv_cache
    text: str  # the question as asked
    params: float | None = None  # N, parameters
    tokens: float | None = None  # D, tokens
    flops: float | None = None  # C, FLOPs
    kv_cache: KVCacheShape | None = None  # the shape of a kv_cache question


def _question_number(text: str, suffix: str | None = None) -> float:
    """Return `text` times the multiplier of `suffix` (scaling.numbers.SUFFIXES: K, M, B or G, T; any case)."""
    value = float(text) * (SUFFIXES[suffix.lower()] if suffix else 1.0)
    if not math.isfinite(value):
        raise UserError(f"the number {text}{(suffix or '').upper()} in the question is beyond floating point; "
                        "write a finite number such as 7B, 1e23 or 1.4T")
    if not value > 0:
        raise UserError(f"the number {text}{(suffix or '').upper()} in the question must be positive; "
                        "write e.g. 7B, 1e23 or 1.4T")
    return value


def parse_query(text: str) -> Query:
    """Parse `text` into a Query; raise UserError listing the understood forms when it matches none."""
    normalised = " ".join(text.strip().lower().replace("?", "").split())
    normalised = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", normalised)  # 7,000,000,000 is 7000000000
    for word, suffix in _SUFFIX_WORDS:
        normalised = re.sub(rf"(?<=\d)\s*{word}\b", suffix, normalised)
    normalised = _POWER_OF_TEN.sub(lambda m: f"{m.group(1) or '1'}e{m.group(2)}", normalised)
    normalised = _LEADING_WORDS.sub("", normalised)
    normalised = _FILLER_WORDS.sub("", normalised)
    normalised = _MODEL_WORD.sub("", normalised).strip()
    kv_match = _KV_CACHE.match(normalised)
    if kv_match is not None:
        return Query("kv_cache", text, kv_cache=_kv_cache_shape(kv_match))
    for kind, pattern in _PATTERNS:
        match = pattern.match(normalised)
        if match is None:
            continue
        first = _question_number(match.group(1), match.group(2))
        if kind in ("params_for_flops", "tokens_per_param", "loss_at_flops"):
            kind = "params_for_flops" if kind == "loss_at_flops" else kind
            return Query(kind, text, flops=_at_least(first, "flops", match.group(1), match.group(2)))
        if kind == "loss_at_tokens_first":
            tokens = _at_least(first, "tokens", match.group(1), match.group(2))
            params = _question_number(match.group(3), match.group(4))
            _warn_if_suffix_missing(params, match.group(3), match.group(4))
            return Query("loss_at", text, params=_at_least(params, "params", match.group(3), match.group(4)),
                         tokens=tokens)
        _at_least(first, "params", match.group(1), match.group(2))
        _warn_if_suffix_missing(first, match.group(1), match.group(2))
        if kind in ("tokens_for_params", "compute_for_params"):
            return Query(kind, text, params=first)
        tokens = _question_number(match.group(3), match.group(4))
        return Query(kind, text, params=first, tokens=_at_least(tokens, "tokens", match.group(3), match.group(4)))
    raise UserError(f"question {text!r} is not understood; ask one of: {', '.join(FORMS)}")


def _at_least(value: float, quantity: str, number: str, suffix: str | None) -> float:
    """Return `value`, or raise UserError when it is below one parameter, one token or 6 FLOPs."""
    least = LEAST[quantity]
    if value < least:
        unit = CHINCHILLA[quantity][1]
        raise UserError(f"{number}{(suffix or '').upper()} {unit} is less than {least:g}, too small for any model; "
                        "write the size with a suffix, e.g. 7B parameters, 1.4T tokens or 1e23 FLOPs")
    return value


def far_notes(query: Query) -> list[str]:
    """Return a note for each of the question's N, D and C that lies far beyond Chinchilla's (CHINCHILLA)."""
    notes = []
    for quantity, (chinchilla, unit) in CHINCHILLA.items():
        value = getattr(query, quantity)
        if value is not None and value > FAR_FACTOR * chinchilla:
            notes.append(f"{value:.3g} {unit} is {value / chinchilla:.3g} times Chinchilla's {chinchilla:.3g} "
                         "(Hoffmann et al. 2022), the largest run behind the published laws; every answer here "
                         "extrapolates that far beyond the data")
    return notes


def _warn_if_suffix_missing(params: float, number: str, suffix: str | None) -> None:
    """Log a warning when N has no suffix and is below SMALL_MODEL_PARAMS, as in "tokens for 7" typed for 7B."""
    if suffix is None and params < SMALL_MODEL_PARAMS:
        logger.warning("N = %s parameters is implausibly small for a language model; if you meant %s billion, "
                       "write %sB (suffixes K, M, B, T)", number, number, number)


def _kv_cache_shape(match: re.Match) -> KVCacheShape:
    """Return the shape of a matched KV-cache question; raise UserError on an unknown size or option."""
    model = match.group("model")
    shape = _KV_SHAPE.match(model)
    if shape is not None:
        layers, heads, head_dim = (int(shape.group(name)) for name in ("layers", "heads", "head_dim"))
        source = GIVEN_SHAPE
    else:
        layers, heads, head_dim, source = _reference_shape(model)
    options: dict[str, int] = {}
    written: dict[str, str] = {}  # each option as the question wrote it, for messages
    rest = match.group("options")
    for name, pattern in _KV_OPTIONS:
        found = list(pattern.finditer(rest))
        if not found:
            continue
        if len(found) > 1:
            option, _, example = _KV_OPTION_NAMES[name]
            repeats = ", ".join(repr(item.group(0).strip()) for item in found)
            times = "twice" if len(found) == 2 else f"{len(found)} times"
            raise UserError(f"kv cache question: {option} is given {times} ({repeats}); give it once, "
                            f"e.g. \"{example}\"")
        [option_match] = found
        value = next(group for group in option_match.groups() if group is not None)
        if name == "dtype":
            options[name] = BYTES_PER_VALUE[value]
        else:
            options[name] = _kv_count(option_match.group(0).strip(), value, name)
            written[name] = option_match.group(0).strip()
        rest = rest[:option_match.start()] + rest[option_match.end():]
    leftover = rest.replace(",", " ").replace(" and ", " ").replace(" with ", " ").strip()
    if leftover:
        raise UserError(f"kv cache question: {leftover!r} is not understood; after the tokens it takes "
                        f"\"batch B\", \"gqa G\" and a value type ({', '.join(BYTES_PER_VALUE)})")
    context = _context_tokens(match.group("context").strip())
    batch = options.get("batch_size", 1)
    for count, text in ((layers, f"{layers} layers"), (heads, f"{heads} heads"), (head_dim, f"{head_dim} head dim"),
                        (context, f"at {context} tokens"), (batch, f"batch {batch}")):
        if count < 1:
            raise UserError(f"kv cache question: {text!r} must be at least 1; a KV cache needs at least one layer, "
                            "head, head dimension, token and sequence")
    check_gqa_kv_heads(options.get("gqa_kv_heads"), heads, written.get("gqa_kv_heads"))
    return KVCacheShape(layers, heads, head_dim, context, batch, options.get("dtype", 2), options.get("gqa_kv_heads"),
                        source)


def _kv_count(text: str, value: str, name: str) -> int:
    """Return the whole number `value` of a KV-cache option; raise UserError naming `text` when it is not one."""
    number = float(value)
    if not number.is_integer():
        _, quantity, example = _KV_OPTION_NAMES[name]
        raise UserError(f"kv cache question: {text!r}: {quantity} must be a whole number, e.g. \"{example}\"")
    return int(number)


def check_gqa_kv_heads(kv_heads: int | None, n_heads: int, written: str | None = None) -> None:
    """Raise UserError unless `kv_heads` divides the `n_heads` query heads.

    `kv_heads` is the key/value head count of the grouped-query row, None for the default; `written` is how
    the question gave it ("gqa 8" or "8 kv heads"), for the message.
    """
    if kv_heads is None or n_heads < 1:  # a shape without heads is rejected by the shape's own check
        return
    written = written or f"gqa {kv_heads}"
    if kv_heads < 1 or n_heads % kv_heads:
        if n_heads == 1:
            raise UserError(f"{written}: a single query head has a single key/value head; use gqa 1 or leave "
                            "gqa out")
        raise UserError(f"{written}: grouped-query attention splits the {n_heads} query heads into equal "
                        f"groups, one per key/value head, so G must divide {n_heads}; choose one of "
                        f"{', '.join(map(str, _divisors(n_heads)))}")


def _divisors(number: int) -> list[int]:
    """Return the positive divisors of `number` >= 1 in increasing order."""
    small = [d for d in range(1, math.isqrt(number) + 1) if number % d == 0]
    return small + [number // d for d in reversed(small) if d * d != number]


def _context_tokens(text: str) -> int:
    """Return the context length of a KV-cache question, which must be written out in tokens."""
    if not text.isdigit():
        # "4k" context means 4096 tokens in model cards but 4000 by the decimal suffixes used elsewhere.
        number = re.fullmatch(r"(\d+(?:\.\d+)?)\s*k", text)
        choices = (f"\"at {round(float(number.group(1)) * 1024)} tokens\" or "
                   f"\"at {round(float(number.group(1)) * 1000)} tokens\"") if number else "\"at 4096 tokens\""
        raise UserError(f"context {text!r} is ambiguous or not a whole number; write the tokens out, e.g. {choices}")
    return int(text)


def _reference_shape(model: str) -> tuple[int, int, int, str]:
    number = re.fullmatch(_NUMBER, model.removeprefix("llama").strip())
    if number is not None:
        size = _question_number(number.group(1), number.group(2))
        size = next((alias for printed, alias in _REFERENCE_ALIASES.items() if abs(size - printed) <= 1e-9 * printed),
                    size)
        for reference, (layers, heads, head_dim, source) in REFERENCE_SHAPES.items():
            if abs(size - reference) <= 1e-9 * reference:
                return layers, heads, head_dim, source
    named = ", ".join(f"{size / 1e9:g}B" for size in REFERENCE_SHAPES)
    raise UserError(f"no reference shape for {model!r}: named sizes are {named} ({LLAMA_2023}, table 2); "
                    "otherwise give the shape, e.g. \"kv cache for 32 layers 32 heads 128 head dim at 4096 tokens\"")
