"""Configs reject invalid shapes and unknown keys with one-line errors that name the value."""

import pytest

from scaling.config import ModelConfig, TrainConfig
from scaling.errors import UserError


def test_d_model_not_divisible_by_heads():
    with pytest.raises(UserError, match="d_model=100 is not divisible by n_heads=3"):
        ModelConfig(d_model=100, n_heads=3)


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(UserError, match="n_heads=8 is not divisible by n_kv_heads=3"):
        ModelConfig(d_model=64, n_heads=8, n_kv_heads=3)


def test_unknown_choice():
    with pytest.raises(UserError, match="norm='batchnorm'"):
        ModelConfig(norm="batchnorm")


def test_unknown_key_in_dict():
    with pytest.raises(UserError, match="unknown model key 'widht'"):
        TrainConfig.from_dict({"model": {"widht": 3}})


def test_round_trip_through_dict():
    config = TrainConfig.from_dict({"model": {"d_model": 64, "n_heads": 4, "n_kv_heads": 2}, "tokens": 123456})
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_error_messages_are_one_line():
    with pytest.raises(UserError) as info:
        ModelConfig(d_model=100, n_heads=3)
    assert "\n" not in str(info.value)


def test_eval_interval_must_be_multiple_of_log_interval():
    with pytest.raises(UserError, match="eval_interval=25 is not a multiple of log_interval=10"):
        TrainConfig(eval_interval=25, log_interval=10)
