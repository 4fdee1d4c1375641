"""`scaling ask` at the edges: sizes beyond floating point or far beyond the data, too small to be a model,
losses of different corpora, and fit.json records edited by hand."""

import copy
import json
import math

import pytest

from analysis import cli
from analysis.ask import ask
from analysis.laws import MASSIVETEXT
from analysis.query import parse_query
from scaling.errors import UserError

FIT = {"approach3": {"log_a": 6.0, "log_b": 7.0, "log_e": 0.5, "alpha": 0.3, "beta": 0.35, "converged": True},
       "convention": "total", "n_runs": 12, "runs_source": "runs/demo",
       "approach2": {"a": 0.5, "params_coefficient": 0.1}}


def row_of(answer, prefix: str) -> dict:
    return next(row for row in answer.rows if row["law"].startswith(prefix))


def test_compute_beyond_float_is_overflow_with_note():
    answer = ask("compute for 1e300")

    kaplan = row_of(answer, "Kaplan 2020")
    assert kaplan["flops"] == math.inf
    overflow = [note for note in answer.notes if note.startswith("values beyond floating point")]
    assert len(overflow) == 1
    assert kaplan["law"] in overflow[0]


def test_overflow_in_other_column_noted():
    # The question requests a loss; C = 6ND of 1e200 parameters and 1e200 tokens is what overflows.
    answer = ask("loss at 1e200 params and 1e200 tokens")

    overflow = [note for note in answer.notes if note.startswith("values beyond floating point")]
    assert len(overflow) == 1
    assert "Epoch 2024 refit" in overflow[0]


def test_allocation_that_underflows_gives_empty_row():
    # N_opt = 0.1 C^-2 is 1e-501 at C = 1e250: zero in floating point, which would divide by zero.
    fit = {**FIT, "approach2": {"a": -2.0, "params_coefficient": 0.1}}

    answer = ask("params for 1e250 FLOPs", fit=fit)

    row = row_of(answer, "your fit (approach 2")
    assert row["params"] is None
    assert "beyond floating point" in row["source"]


def test_far_beyond_chinchilla_noted():
    answer = ask("tokens for 1e40")

    far = [note for note in answer.notes if "times Chinchilla's" in note]
    assert len(far) == 1
    assert far[0].startswith("1e+40 parameters is 1.43e+29 times")


def test_sizes_near_the_data_not_noted():
    assert not [note for note in ask("tokens for 70B").notes if "Chinchilla" in note]


@pytest.mark.parametrize("question, message", [
    ("tokens for 1e-5", "1e-5 parameters is less than 1"),
    ("tokens per param at 1e-30 FLOPs", "1e-30 FLOPs is less than 6"),
    ("loss at 7B params and 0.5 tokens", "0.5 tokens is less than 1"),
])
def test_below_one_parameter_rejected(question: str, message: str):
    with pytest.raises(UserError, match=message):
        parse_query(question)


def test_losses_of_other_corpora_not_compared():
    # The fit's E of e^0.5 = 1.65 nats/token on its own runs is no evidence against MassiveText losses.
    fit = copy.deepcopy(FIT)
    fit["approach3"]["log_e"] = math.log(8.0)

    answer = ask("loss at 7B params and 1.4T tokens", fit=fit)

    assert row_of(answer, "your fit")["data"] == "your runs (runs/demo)"
    assert row_of(answer, "Epoch 2024")["data"] == MASSIVETEXT
    assert not [note for note in answer.notes if "on loss" in note]


def test_losses_of_one_corpus_compared():
    # Hoffmann's printed law and Epoch's refit share MassiveText; at 1K parameters they part by about 2.1x.
    answer = ask("loss at 1K params and 1K tokens", law_keys=["hoffmann-a3-printed", "epoch-2024"])

    compared = [note for note in answer.notes if "on loss" in note]
    assert len(compared) == 1
    assert compared[0].startswith("the laws disagree by 2.1")


@pytest.mark.parametrize("edit, field", [
    (lambda fit: fit["approach3"].update(log_a="x"), "approach3.log_a is 'x', not a number"),
    (lambda fit: fit["approach3"].pop("beta"), "approach3.beta is None, not a number"),
    (lambda fit: fit["approach2"].update(a="x"), "approach2.a is 'x', not a number"),
    (lambda fit: fit.pop("approach3"), "approach3 is missing"),
    (lambda fit: fit.update(bootstrap={"level": 0.95, "samples": {"values": [[1, 2]], "converged": [True]}}),
     r"bootstrap.samples.values\[0\] is \[1, 2\], not five numbers"),
])
def test_edited_fit_record_names_the_field(edit, field: str):
    fit = copy.deepcopy(FIT)
    edit(fit)
    with pytest.raises(UserError, match=field):
        ask("tokens for 7B", fit=fit)


def test_fit_file_holding_a_list_rejected(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps([FIT]))
    with pytest.raises(UserError, match="contains no approach 3 fit"):
        ask("tokens for 7B", fit=path)


def test_kv_heads_error_quotes_the_question():
    with pytest.raises(UserError, match="^0 kv heads: grouped-query attention"):
        parse_query("kv cache for 7B at 4096 tokens 0 kv heads")


@pytest.mark.parametrize("value, text", [
    (20.0, "20.00"), (0.68, "0.68"), (5.88e-19, "5.88e-19"), (1.93e8, "1.93e+08"), (math.inf, "overflow"),
    (None, "-"),
])
def test_ratio_column_text(value, text: str):
    assert cli._ratio_text(value) == text


def test_question_beyond_fit_runs_noted():
    fit = {**FIT, "data_range": {"params": [8240.0, 357024.0], "tokens": [245760.0, 7715840.0]}}

    answer = ask("tokens for 7B", fit=fit)

    beyond = [note for note in answer.notes if note.startswith("your fit: its runs reach")]
    assert beyond == ["your fit: its runs reach 3.57e+05 parameters, and 7e+09 is 1.96e+04 times that, so its rows "
                      "extrapolate that far beyond its data"]


def test_question_within_fit_runs_not_noted():
    fit = {**FIT, "data_range": {"params": [8240.0, 357024.0]}}
    assert not [note for note in ask("tokens for 1M", fit=fit).notes if "its runs" in note]


def test_law_named_twice_answers_once():
    from analysis.ask import ask

    answer = ask("tokens for 7B", law_keys=["epoch-2024", "epoch-2024"])
    assert len(answer.rows) == 1


def test_fit_warnings_capped_per_method():
    from analysis.ask import WARNINGS_PER_METHOD, _first_of_each_method

    warnings = [f"approach 2: budget {index} dropped" for index in range(13)] + ["approach 3: E is at zero"]
    listed = _first_of_each_method(warnings)
    assert listed[:WARNINGS_PER_METHOD] == warnings[:WARNINGS_PER_METHOD]
    assert "approach 3: E is at zero" in listed
    count = 13 - WARNINGS_PER_METHOD
    assert listed[-1] == f"{count} more warning(s) about approach 2, listed in fit.json's \"warnings\""
    assert len(listed) == WARNINGS_PER_METHOD + 2
