"""Check docs/sweep_spec.md against the code that reads sweep specs.

The page lists every spec key in one table row per key, under a `## ` heading per section: "Top-level
keys", then one heading per section whose first code span names it (`data:`, `model:`, ...). These tests
fail when the page misses a key that the code accepts, or lists one that it rejects. They also fail when a
default stated on the page is not the code's default, and when an example spec on the page does not parse.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from scaling.config import ModelConfig, OptimizerConfig
from scaling.numbers import SUFFIXES
from scaling.yaml_text import load_yaml
from sweeps.backend_slurm import SlurmOptions
from sweeps.backends import RESOURCE_KEYS, RunResources
from sweeps.spec import (DATA_KEYS, GRID_KEYS, ISOFLOP_KEYS, LADDER_KEYS, SHAPE_FIELDS, TOP_KEYS, TRAIN_KEYS,
                         SweepSpec, load_spec, parse_spec)

DOC = Path(__file__).resolve().parents[1] / "docs" / "sweep_spec.md"

# Keys of each section as the code accepts them. The model section also lists SHAPE_FIELDS, which the parser
# recognizes only to reject them with a message of their own. The page explains why.
SPEC_KEYS = {
    "top": set(TOP_KEYS),
    "data": set(DATA_KEYS),
    "model": set(LADDER_KEYS) | {f.name for f in dataclasses.fields(ModelConfig)},
    "optimizer": {f.name for f in dataclasses.fields(OptimizerConfig)},
    "train": set(TRAIN_KEYS),
    "isoflop": set(ISOFLOP_KEYS),
    "grid": set(GRID_KEYS),
    "resources": set(RESOURCE_KEYS),
    "slurm": {f.name for f in dataclasses.fields(SlurmOptions)},
}

# Keys whose Default cell is prose ("required", "same as `train.seq_len`") rather than a YAML value.
PROSE_DEFAULTS = {("top", "name"), ("top", "grid"), ("top", "isoflop"), ("model", "max_seq_len"),
                  ("isoflop", "budgets"), ("isoflop", "params"), ("grid", "params"), ("grid", "tokens")}

# The smallest valid spec. Each default on the page is written into it, and the result must parse to the
# same spec as without it.
BASE_SPEC = {"name": "defaults", "grid": {"params": [1e5], "tokens": [1e6]}}

_KEY_CELL = re.compile(r"`(\w+)`")
_SECTION_SPAN = re.compile(r"`(\w+):?`")
_LEADING_CODE = re.compile(r"`([^`]*)`")


def section_of(heading: str) -> str | None:
    """Return the section a `## ` heading opens: "top", the name in its first code span, or None."""
    if heading.lower().startswith("top-level"):
        return "top"
    match = _SECTION_SPAN.search(heading)
    return match.group(1) if match else None


def key_rows(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """Return {section: {key: {column header: cell}}} from the key tables of the page.

    A key row is a table row whose first cell is one code span. Fenced code blocks are skipped.
    """
    rows: dict[str, dict[str, dict[str, str]]] = {}
    section = None
    header: list[str] | None = None
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("## "):
            section = section_of(line[3:].strip())
            header = None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
            continue
        if set(line.strip()) <= set("|-: "):  # the separator row under the header
            continue
        match = _KEY_CELL.fullmatch(cells[0])
        if section is None or match is None:
            continue
        rows.setdefault(section, {})[match.group(1)] = dict(zip(header, cells))
    return rows


@pytest.fixture(scope="module")
def doc_text() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doc_rows(doc_text: str) -> dict[str, dict[str, dict[str, str]]]:
    return key_rows(doc_text)


@pytest.mark.parametrize("section", sorted(SPEC_KEYS))
def test_doc_lists_every_key(doc_rows, section: str) -> None:
    missing = SPEC_KEYS[section] - set(doc_rows.get(section, {}))
    assert not missing, f"docs/sweep_spec.md has no row for {section} keys {sorted(missing)}"


@pytest.mark.parametrize("section", sorted(SPEC_KEYS))
def test_doc_lists_no_unknown_key(doc_rows, section: str) -> None:
    unknown = set(doc_rows.get(section, {})) - SPEC_KEYS[section]
    assert not unknown, f"docs/sweep_spec.md lists {section} keys {sorted(unknown)} that the spec parser rejects"


def test_doc_has_no_unknown_section(doc_rows) -> None:
    unknown = set(doc_rows) - set(SPEC_KEYS)
    assert not unknown, f"docs/sweep_spec.md has key tables under unknown sections {sorted(unknown)}"


def comparable(spec: SweepSpec) -> tuple[Any, ...]:
    """Return the parsed values of `spec` in a form where a key set to its default equals the key left out."""
    model = spec.model
    return (spec.name, spec.description, spec.flops_per_token, spec.data, model.convention, model.aspect_ratio,
            model.head_dim, ModelConfig(**model.fields), spec.optimizer, spec.train, spec.grid, spec.isoflop,
            RunResources.from_mapping(spec.resources), SlurmOptions.from_mapping(spec.slurm))


def spec_with(section: str, key: str, value: Any) -> dict[str, Any]:
    raw = {name: dict(part) if isinstance(part, dict) else part for name, part in BASE_SPEC.items()}
    if section == "top":
        raw[key] = value
    else:
        raw[section] = {key: value}
    return raw


@pytest.mark.parametrize("section", sorted(SPEC_KEYS))
def test_doc_defaults_match_code(doc_rows, section: str) -> None:
    expected = comparable(parse_spec(BASE_SPEC))
    settable = SPEC_KEYS[section] - (set(SHAPE_FIELDS) if section == "model" else set())
    rows = doc_rows.get(section, {})
    without_default = sorted(key for key in settable if "default" not in rows.get(key, {}))
    assert not without_default, f"{section} keys {without_default} have no Default cell in docs/sweep_spec.md"

    for key in sorted(settable):
        cell = rows[key]["default"]
        if (section, key) in PROSE_DEFAULTS:
            continue
        match = _LEADING_CODE.match(cell)
        assert match, f"{section}.{key}: Default cell {cell!r} does not start with a YAML value in backticks"
        value = load_yaml(f"value: {match.group(1)}")["value"]
        parsed = comparable(parse_spec(spec_with(section, key, value)))
        assert parsed == expected, f"{section}.{key}: the page's default {match.group(1)} is not the code's default"


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_doc_examples_parse(doc_text: str, tmp_path: Path) -> None:
    blocks = yaml_blocks(doc_text)
    assert len(blocks) >= 2, "docs/sweep_spec.md should contain an IsoFLOP and a grid example in ```yaml blocks"

    kinds = []
    for index, block in enumerate(blocks):
        path = tmp_path / f"example_{index}.yaml"
        path.write_text(block, encoding="utf-8")
        kinds.append(load_spec(path).kind)
    assert "isoflop" in kinds, "no example in docs/sweep_spec.md is an IsoFLOP sweep"
    assert "grid" in kinds, "no example in docs/sweep_spec.md is a grid sweep"


def test_doc_names_number_suffixes(doc_text: str) -> None:
    for suffix in SUFFIXES:
        assert f"`{suffix.upper()}`" in doc_text, f"docs/sweep_spec.md does not explain the suffix {suffix.upper()}"
