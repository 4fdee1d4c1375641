"""The learning-rate schedule is tied to the run's own length."""

import logging
import math

import pytest

from scaling.config import DataConfig, OptimizerConfig, TrainConfig
from scaling.errors import UserError
from scaling.schedule import learning_rate, resolve_warmup

COSINE = OptimizerConfig(peak_lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, schedule="cosine")


@pytest.mark.parametrize("step, expected", [(550, 5.5e-4), (900, 1.2714e-4)])
def test_cosine_values(step, expected):
    assert float(learning_rate(step, COSINE, 1000)) == pytest.approx(expected, rel=1e-4)


def test_cosine_last_step_just_above_floor():
    """At step 999 of 1000 the rate is 1e-4 + 9e-4 (1 + cos(pi 899/900)) / 2 = 1.0000274e-4. A tolerance
    relative to the whole rate could not tell it from 1.0000027e-4, so the part above the floor is compared."""
    above_floor = float(learning_rate(999, COSINE, 1000)) - 1e-4
    expected = 9e-4 * 0.5 * (1 + math.cos(math.pi * 899 / 900))
    assert above_floor == pytest.approx(expected, rel=1e-2)  # float32: the rate's last bit is 0.3% of this part


def test_first_update_positive_and_peak_after_warmup():
    assert float(learning_rate(0, COSINE, 1000)) > 0
    assert float(learning_rate(99, COSINE, 1000)) == pytest.approx(1e-3, rel=1e-6)


def test_never_evaluated_past_last_step():
    last = float(learning_rate(999, COSINE, 1000))
    assert float(learning_rate(5000, COSINE, 1000)) == pytest.approx(last)
    assert last > COSINE.peak_lr * COSINE.min_lr_ratio


def test_linear_decay_reaches_floor_at_the_end():
    linear = OptimizerConfig(peak_lr=1e-3, min_lr_ratio=0.1, warmup_steps=0, schedule="linear")
    assert float(learning_rate(0, linear, 11)) == pytest.approx(1e-3)
    assert float(learning_rate(10, linear, 11)) == pytest.approx(1e-3 - 9e-4 * 10 / 11, rel=1e-5)


def test_warmup_longer_than_run_is_clipped(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_warmup(500, 100) == 20
    assert "clipped to 20" in caplog.text


def test_tokens_trained_are_whole_batches():
    config = TrainConfig(data=DataConfig(seq_len=10, batch_size=4), tokens=1005)
    assert config.total_steps == 25
    assert config.tokens_trained == 1000


def test_budget_below_one_batch_rejected():
    with pytest.raises(UserError, match="smaller than one batch"):
        TrainConfig(data=DataConfig(seq_len=10, batch_size=4), tokens=39)


def test_clipped_warmup_is_recorded_as_used():
    from scaling.config import clipped_warmup

    assert clipped_warmup(100, 195) == 39  # a fifth of 195 steps
    assert clipped_warmup(10, 195) == 10
