"""Numbers as configs, sweep specs and questions write them, and counts as run ids and tables show them."""

import pytest

from analysis.query import parse_query
from scaling.config import TrainConfig
from scaling.errors import UserError
from scaling.numbers import format_count, human_count, parse_count, parse_number
from sweeps.spec import parse_spec


@pytest.mark.parametrize("text, value", [
    ("1e6", 1e6), ("3.2e5", 3.2e5), ("1M", 1e6), ("1.5K", 1500), ("2B", 2e9), ("1_000", 1000), (1e13, 1e13), (7, 7),
])
def test_parse_count_accepts_the_usual_spellings(text, value):
    assert parse_count(text, "x") == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1e6", "0", 0, "1e6 tokens", "abc", True, None, [1]])
def test_parse_count_rejects_non_positive_and_malformed(text):
    with pytest.raises(UserError, match="x="):
        parse_count(text, "x")


def test_human_count_rounds_into_the_next_unit():
    assert [human_count(v) for v in (999_936, 999_400, 1_234_567, 980, 21_600)] == ["1M", "999K", "1.23M", "980", "21.6K"]


def test_parse_count_negative_is_not_positive():
    with pytest.raises(UserError, match=r"x='-1e10' must be a positive number"):
        parse_count("-1e10", "x")


def test_format_count_is_short_and_round_trips():
    assert [format_count(v) for v in (320000, 1e13, 3.16e5, 7)] == ["3.2e5", "1e13", "3.16e5", "7e0"]
    for value in (3.2e5, 1e13, 1.25e6, 42.0):
        assert parse_count(format_count(value), "x") == pytest.approx(value)


@pytest.mark.parametrize("text, value", [("1G", 1e9), ("125m", 1.25e8), ("20k", 2e4), ("1.5T", 1.5e12)])
def test_every_parser_reads_a_suffix_alike(text, value):
    """A train config, a sweep spec's train section, a sweep's counts and a question read "1G" the same way
    (each had its own suffix rules: `tokens: 1G` worked in a sweep spec but failed in a train config)."""
    assert parse_number(text, "x") == pytest.approx(value)
    assert parse_count(text, "x") == pytest.approx(value)
    assert TrainConfig.from_dict({"tokens": text}).tokens == round(value)
    spec = parse_spec({"name": "t", "data": {"source": "."}, "train": {"eval_tokens": text},
                       "grid": {"params": [text], "tokens": [text]}})
    assert spec.train.eval_tokens == round(value)
    assert spec.grid.params == (pytest.approx(value),)
    assert parse_query(f"tokens for {text}").params == pytest.approx(value)


@pytest.mark.parametrize("text", ["3e-4", "0.5", ".5", "-2", "1e-8"])
def test_parse_number_takes_small_and_negative_values(text):
    assert parse_number(text, "x") == float(text)


@pytest.mark.parametrize("text", ["nan", "inf", "1e999", "2X", "1 M tokens", ""])
def test_parse_number_names_the_key(text):
    with pytest.raises(UserError, match="x="):
        parse_number(text, "x")


def test_counted_nouns():
    from scaling.numbers import counted

    assert counted(1, "run") == "1 run"
    assert counted(0, "worker") == "0 workers"
    assert counted(3, "run folder") == "3 run folders"
