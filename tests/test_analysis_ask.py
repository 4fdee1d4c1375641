"""Questions: parsing, one row per law, disagreement notes, the fit's own row, and the CLI's --json output."""

import argparse
import json
import math

import pytest

from analysis import cli
from analysis.ask import KV_ROW_KEYS, ROW_KEYS, ask
from analysis.query import parse_query
from scaling.errors import UserError


@pytest.mark.parametrize("text, kind, params, tokens, flops", [
    ("tokens for 7B", "tokens_for_params", 7e9, None, None),
    ("Tokens for 7e9", "tokens_for_params", 7e9, None, None),
    ("tokens for 350M params", "tokens_for_params", 3.5e8, None, None),
    ("tokens for 1.5t", "tokens_for_params", 1.5e12, None, None),
    ("tokens for 125k", "tokens_for_params", 1.25e5, None, None),
    ("compute for 70B", "compute_for_params", 7e10, None, None),
    ("params for 1e23 FLOPs", "params_for_flops", None, None, 1e23),
    ("tokens per param at 1e22 FLOPs", "tokens_per_param", None, None, 1e22),
    ("loss at 7B params and 1.4T tokens", "loss_at", 7e9, 1.4e12, None),
    ("loss at 7B params, 1.4T tokens?", "loss_at", 7e9, 1.4e12, None),
    ("tokens for 7bn", "tokens_for_params", 7e9, None, None),
    ("tokens for 7 billion params", "tokens_for_params", 7e9, None, None),
    ("tokens for 7,000,000,000", "tokens_for_params", 7e9, None, None),
    ("compute for 1.5 Trillion", "compute_for_params", 1.5e12, None, None),
    ("params for 1e23", "params_for_flops", None, None, 1e23),
    ("tokens per param at 3 million", "tokens_per_param", None, None, 3e6),
    ("loss at 1.4T tokens and 7B params", "loss_at", 7e9, 1.4e12, None),
    # Phrased as people ask (a reviewer's questions, 2026-12-06), read as the forms above.
    ("loss at 1e21 FLOPs", "params_for_flops", None, None, 1e21),
    ("how many tokens for a 7B model", "tokens_for_params", 7e9, None, None),
    ("optimal tokens for 7B", "tokens_for_params", 7e9, None, None),
    ("What is the compute-optimal model size for 1e23 FLOPs?", "params_for_flops", None, None, 1e23),
    ("loss for 7B with 140B tokens", "loss_at", 7e9, 1.4e11, None),
    ("loss of a 7B model trained on 1.4T tokens", "loss_at", 7e9, 1.4e12, None),
    ("params for 10^23 FLOPs", "params_for_flops", None, None, 1e23),
    ("params for 2x10^23", "params_for_flops", None, None, 2e23),
    ("how much compute for 70B", "compute_for_params", 7e10, None, None),
])
def test_parse_forms(text, kind, params, tokens, flops):
    query = parse_query(text)
    assert query.kind == kind
    assert query.params == params
    assert query.tokens == tokens
    assert query.flops == flops


def test_commas_not_grouping_digits_stay():
    """Only a comma followed by exactly three digits groups them; "7,00B" is no number."""
    with pytest.raises(UserError, match="not understood"):
        parse_query("tokens for 7,00B")


def test_unknown_question_lists_forms():
    with pytest.raises(UserError, match="tokens for 7B.*params for 1e23 FLOPs"):
        parse_query("how big should my model be")


def test_kv_cache_for_a_named_model():
    assert parse_query("kv cache for a 7B model at 4096 tokens").kv_cache.n_layers == 32


def test_zero_is_rejected():
    with pytest.raises(UserError, match="number 0B in the question must be positive"):
        parse_query("tokens for 0B")


def test_tokens_for_7b_rows_and_disagreement_note():
    answer = ask("tokens for 7B")
    assert [tuple(row) for row in answer.rows] == [ROW_KEYS] * len(answer.rows)
    by_law = {row["law"].split(" (")[0].split(",")[0]: row for row in answer.rows}
    assert by_law["20 tokens per parameter"]["loss"] is None
    assert by_law["20 tokens per parameter"]["tokens"] == pytest.approx(1.4e11)
    tokens = [row["tokens"] for row in answer.rows]
    assert len(answer.notes) == 1
    assert f"disagree by {max(tokens) / min(tokens):.3g}x on tokens" in answer.notes[0]


def test_printed_and_20_rule_disagree():
    # Printed Hoffmann (4.677e11 tokens) against 20 tokens per parameter (1.4e11) is 3.34x apart.
    answer = ask("tokens for 7B", law_keys=["tokens-20", "hoffmann-a3-printed"])
    assert len(answer.notes) == 1
    assert "disagree by 3.34x on tokens" in answer.notes[0]


def test_agreeing_laws_give_no_note():
    answer = ask("tokens for 7B", law_keys=["tokens-20", "epoch-2024"])
    assert answer.notes == ()


def test_params_for_flops_is_compute_optimal():
    answer = ask("params for 5.88e21 FLOPs", law_keys=["tokens-20"])
    row = answer.rows[0]
    assert row["params"] == pytest.approx(7e9)
    assert row["flops"] == pytest.approx(5.88e21)


def test_loss_at_uses_given_point():
    answer = ask("loss at 7B params and 1.4T tokens", law_keys=["hoffmann-a3-printed"])
    row = answer.rows[0]
    assert row["loss"] == pytest.approx(1.69 + 406.4 / 7e9**0.34 + 410.7 / 1.4e12**0.28)
    assert row["tokens_per_param"] == pytest.approx(200.0)


def test_loss_from_allocation_rule_notes_why_empty():
    answer = ask("loss at 7B params and 1.4T tokens", law_keys=["tokens-20"])
    assert answer.rows[0]["loss"] is None
    assert len(answer.notes) == 1
    assert "predicts no loss" in answer.notes[0]
    assert ask("loss at 7B params and 1.4T tokens").notes == ()  # rules without a loss are left out by default


def test_fit_row_comes_first():
    record = {"approach3": {"log_a": 6.0, "log_b": 7.0, "log_e": 0.5, "alpha": 0.3, "beta": 0.35,
                            "converged": True}, "convention": "total", "n_runs": 12}
    answer = ask("tokens for 7B", fit=record)
    assert answer.rows[0]["law"].startswith("your fit (approach 3, total parameters, 12 runs, converged)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_ask_json_keys(capsys):
    args = _parser().parse_args(["ask", "tokens for 7B", "--json"])
    assert args.handler(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 3
    for row in rows:
        assert set(row) == set(ROW_KEYS)


def test_cli_ask_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = _parser().parse_args(["ask", "compute for 70B", "--law", "tokens-20"])
    assert args.handler(args) == 0
    output = capsys.readouterr().out
    assert "20 tokens per parameter" in output
    assert "5.88e+23" in output


def test_cli_fit_options_parse():
    args = _parser().parse_args(["fit", "runs/demo", "--out", "o", "--starts", "200", "--convention",
                                 "non_embedding", "--json"])
    assert (args.runs, args.out, args.starts, args.convention, args.json) == ("runs/demo", "o", 200,
                                                                             "non_embedding", True)
    assert args.handler is cli.run_fit


def test_cli_report_registered():
    args = _parser().parse_args(["report", "runs", "--question", "tokens for 1B"])
    assert args.handler is cli.run_report
    assert args.question == ["tokens for 1B"]


def test_fit_without_allocation_gives_empty_row():
    record = {"approach3": {"log_a": 6.0, "log_b": 7.0, "log_e": 0.5, "alpha": -0.1, "beta": 0.35,
                            "converged": False}, "convention": "total", "n_runs": 6}
    answer = ask("tokens for 7B", fit=record)
    assert answer.rows[0]["tokens"] is None
    assert "no allocation" in answer.rows[0]["source"]
    assert answer.rows[1]["tokens"] == pytest.approx(1.4e11)


def test_loss_question_lists_only_laws_with_loss():
    answer = ask("loss at 7B params and 1.4T tokens")
    names = [row["law"] for row in answer.rows]
    assert len(names) == 4
    assert not any(name.startswith(("20 tokens", "Hoffmann 2022 approach 1", "Hoffmann 2022 approach 2"))
                   for name in names)
    for row in answer.rows:
        assert row["loss"] is not None


def test_kaplan_loss_at_7b_and_14t():
    row = ask("loss at 7B params and 1.4T tokens", law_keys=["kaplan-2020"]).rows[0]
    assert row["loss"] == pytest.approx(((6.4e13 / 7e9) ** (0.076 / 0.103) + 1.8e13 / 1.4e12) ** 0.103, rel=1e-12)
    assert "table 2" in row["source"]


@pytest.mark.parametrize("text, shape", [
    ("kv cache for 7B at 4096 tokens", (32, 32, 128, 4096, 1, 2, None)),
    ("KV cache for LLaMA 13B at 2048 tokens batch 8 in fp32", (40, 40, 128, 2048, 8, 4, None)),
    ("kv-cache for 65.2B at 1024 tokens, gqa 8, int8", (80, 64, 128, 1024, 1, 1, 8)),
    ("kv cache for 24 layers 16 heads 64 head dim at 512 tokens batch 3 with 4 kv heads",
     (24, 16, 64, 512, 3, 2, 4)),
])
def test_parse_kv_cache_forms(text, shape):
    query = parse_query(text)
    assert query.kind == "kv_cache"
    kv = query.kv_cache
    assert (kv.n_layers, kv.n_heads, kv.head_dim, kv.context, kv.batch_size, kv.bytes_per_value,
            kv.gqa_kv_heads) == shape


def test_kv_cache_named_size_cites_llama():
    assert "arXiv:2302.13971, table 2" in parse_query("kv cache for 7B at 4096 tokens").kv_cache.source
    assert parse_query("kv cache for 8 layers 4 heads 32 dim at 64 tokens").kv_cache.source == (
        "shape as given in the question")


def test_kv_cache_7b_sizes():
    # 2 (K and V) x 32 layers x KV heads x 128 x 4096 tokens x 1 sequence x 2 bytes.
    rows = ask("kv cache for 7B at 4096 tokens").rows
    assert [(row["attention"], row["kv_heads"]) for row in rows] == [("MHA", 32), ("GQA", 8), ("MQA", 1)]
    assert [row["bytes"] for row in rows] == [2 * 32 * heads * 128 * 4096 * 2 for heads in (32, 8, 1)]
    assert [row["gib"] for row in rows] == [2.0, 0.5, 0.0625]


def test_kv_cache_given_shape_with_options():
    rows = ask("kv cache for 24 layers 16 heads 64 head dim at 512 tokens batch 3 gqa 4 float32").rows
    assert [row["bytes"] for row in rows] == [2 * 24 * heads * 64 * 512 * 3 * 4 for heads in (16, 4, 1)]


def test_kv_cache_errors_name_the_fix():
    with pytest.raises(UserError, match="named sizes are 7B, 13B, 33B, 65B"):
        parse_query("kv cache for 70B at 4096 tokens")
    with pytest.raises(UserError, match="'please' is not understood"):
        parse_query("kv cache for 7B at 4096 tokens please")
    with pytest.raises(UserError, match="so G must divide 32; choose one of 1, 2, 4, 8, 16, 32"):
        ask("kv cache for 7B at 4096 tokens gqa 5")
    with pytest.raises(UserError, match="drop --law$"):
        ask("kv cache for 7B at 4096 tokens", law_keys=["tokens-20"])
    # "2k" context is 2048 tokens in model cards but 2000 by the K suffix, so it is rejected, naming both.
    for context in ("2k", "2 k", "1.5"):
        with pytest.raises(UserError, match=f"context '{context}' is ambiguous or not a whole number"):
            parse_query(f"kv cache for 7B at {context} tokens")
    with pytest.raises(UserError, match='"at 2048 tokens" or "at 2000 tokens"'):
        parse_query("kv cache for 7B at 2K tokens")


def test_unknown_question_lists_kv_form():
    with pytest.raises(UserError, match='"kv cache for 7B at 4096 tokens"'):
        parse_query("memory for 7B")


def test_cli_ask_kv_cache_json(capsys):
    args = _parser().parse_args(["ask", "kv cache for 13B at 2048 tokens batch 2", "--json"])
    assert args.handler(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["attention"] for row in rows] == ["MHA", "GQA", "MQA"]
    for row in rows:
        assert tuple(row) == KV_ROW_KEYS
        assert row["bytes"] == 2 * 40 * row["kv_heads"] * 128 * 2048 * 2 * 2


def test_cli_ask_kv_cache_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = _parser().parse_args(["ask", "kv cache for 7B at 4096 tokens"])
    assert args.handler(args) == 0
    output = capsys.readouterr().out
    assert "2,147,483,648" in output
    assert "536,870,912" in output
    assert "67,108,864" in output
    assert "32 layers, 32 query heads, head dim 128, 4096 tokens, batch 1" in output
    assert "Touvron et al. 2023" in output


def test_law_keys_in_help_match_registry():
    from analysis.laws import LAWS

    assert cli.LAW_KEYS == tuple(LAWS)


def approach1_record(a: float, coefficient: float) -> dict:
    """Return a fit record whose approach 1 is N_opt = coefficient C^a, with 41 bootstrap replicates.

    One replicate, N_opt = 1e6 C^0.01, puts the budget for 70B at (7e4)^100, about 10^484, beyond floating point.
    """
    return {"approach3": {"log_a": 6.0, "log_b": 7.0, "log_e": 0.5, "alpha": 0.3, "beta": 0.35,
                          "converged": True}, "convention": "total", "n_runs": 12,
            "approach1": {"a": a, "params_coefficient": coefficient, "bootstrap": {
                "level": 0.95, "samples": {"names": ["a", "params_coefficient", "b", "tokens_coefficient"],
                                           "values": [[0.01, 1e6, 0.99, 1e-7]]
                                           + [[0.5, 1.0, 0.5, 0.1], [0.4, 10.0, 0.6, 0.01]] * 20}}}}


def test_small_exponent_gives_empty_row():
    answer = ask("compute for 70B", fit=approach1_record(0.01, 1e6))
    row = next(row for row in answer.rows if row["law"].startswith("your fit (approach 1"))
    assert row["tokens"] is None
    assert "overflows" in row["source"]
    assert row["interval"] is None  # no interval around a value that does not exist


def test_overflowing_replicate_left_out_of_interval():
    answer = ask("compute for 70B", fit=approach1_record(0.5, 1.0))
    row = next(row for row in answer.rows if row["law"].startswith("your fit (approach 1"))
    assert row["flops"] == pytest.approx(7e10 ** 2)  # N_opt = C^0.5
    # The replicate that overflows gives no value; the 40 others, two laws alike, bound the interval.
    budgets = [(7e10 / 1.0) ** (1 / 0.5), (7e10 / 10.0) ** (1 / 0.4)]
    low, high = row["interval"]["flops"]
    assert min(budgets) * 0.999 < low < high < max(budgets) * 1.001


def test_replicates_without_an_answer_are_counted_apart():
    """A reviewer saw "70 of 200 replicates could be fitted" from ask and 73 from the fit: 3 fitted replicates
    had no allocation. The note now gives both counts."""
    record = approach1_record(0.5, 1.0)
    record["approach1"]["bootstrap"]["samples"]["values"] = (
        [[0.5, 1.0, 0.5, 0.1], [0.4, 10.0, 0.6, 0.01]] * 15 + [[-0.2, 1.0, 1.2, 0.1]] * 15)
    answer = ask("tokens for 7B", fit=record)
    row = next(row for row in answer.rows if row["law"].startswith("your fit (approach 1"))
    assert row["interval"]["note"] == (
        "only 30 of 45 bootstrap replicates answer this question (45 could be fitted, 15 of them have no answer), "
        "and a 95% interval needs at least 40, so none is reported")


def test_interval_spanning_orders_of_magnitude_gets_a_note():
    """A reviewer's approach 1 interval ran from 8e-13 to 8.6e25 parameters, with no comment."""
    record = approach1_record(0.5, 1.0)
    record["approach1"]["bootstrap"]["samples"]["values"] = [[0.5, 1.0, 0.5, 0.1], [0.1, 1e4, 0.9, 1e-5]] * 20
    answer = ask("params for 1e23", fit=record)
    row = next(row for row in answer.rows if row["law"].startswith("your fit (approach 1"))
    low, high = row["interval"]["params"]
    assert high / low > 1e3
    (note,) = [note for note in answer.notes if "orders of magnitude" in note]
    assert note.startswith(f"{row['law']}: its 95% interval of params spans {math.log10(high / low):.0f} orders of "
                           f"magnitude ({low:.3g} .. {high:.3g}), so its runs leave this answer open")

    narrow = ask("params for 1e23", fit=approach1_record(0.5, 1.0))
    assert not any("orders of magnitude" in note for note in narrow.notes)
