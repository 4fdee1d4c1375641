"""Configs reject invalid shapes and unknown keys with one-line errors that name the value."""

import dataclasses
import re

import pytest

from scaling.config import LAYOUT_FIELDS, OPERATION_FIELDS, ModelConfig, TrainConfig, run_identity, same_run
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


@pytest.mark.parametrize("mesh, fragment", [
    ("foo=2", "mesh 'foo=2' is not data=N or fsdp=N"),
    ("data=0", "mesh 'data=0' asks for 0 devices; use at least 1"),
    ("fsdp=-1", "mesh 'fsdp=-1' is not data=N or fsdp=N"),
    ("data=3", "mesh 'data=3' splits each batch over 3 devices, but data.batch_size=16 is not a multiple of 3"),
    (4, "mesh=4 must be a string such as 'data=4'"),
], ids=["unknown_axis", "zero", "negative", "indivisible", "not_a_string"])
def test_invalid_mesh(mesh, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)) as info:
        TrainConfig(mesh=mesh)
    assert "\n" not in str(info.value)


def test_valid_meshes_round_trip():
    for mesh in ("", "data=4", "fsdp=16", "fsdp", "data=all", "fsdp=1"):
        config = TrainConfig(mesh=mesh)
        assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({}).mesh == ""  # a config.json written before the field existed


def test_same_run_ignores_the_mesh():
    config = TrainConfig(tokens=123456)
    recorded = config.to_dict()
    assert same_run(recorded, config.replace(mesh="fsdp=4"))
    assert same_run(config.replace(mesh="data=2").to_dict(), config)
    assert same_run({key: value for key, value in recorded.items() if key != "mesh"}, config)
    assert not same_run(recorded, config.replace(tokens=123456 * 2))
    assert not same_run(recorded, config.replace(mesh="fsdp=4", seed=1))
    assert not same_run(None, config)


def test_run_identity_drops_only_layout_and_operation_fields():
    raw = TrainConfig(mesh="fsdp=2").to_dict()
    identity = run_identity(raw)
    assert "mesh" not in identity
    assert set(raw) - set(identity) == set(LAYOUT_FIELDS) | set(OPERATION_FIELDS)


def test_same_run_under_other_operation_settings():
    """How a run is checkpointed, guarded and logged may change between attempts; what it trains may not."""
    config = TrainConfig(tokens=123456)
    resumed = config.replace(checkpoint_interval=50, keep_checkpoints=5, max_epochs=100.0, wandb_mode="disabled",
                             wandb_project="other")
    assert same_run(config.to_dict(), resumed)
    assert not same_run(config.to_dict(), resumed.replace(seed=3))


def test_same_run_under_another_attention():
    # A run recorded with "xla" (the default before "auto") resumes under "auto": both compute the same model.
    config = TrainConfig(tokens=123456)
    recorded = config.replace(model=dataclasses.replace(config.model, attention_impl="xla")).to_dict()
    assert config.model.attention_impl == "auto"
    assert same_run(recorded, config)
    assert "attention_impl" not in run_identity(recorded)["model"]
    assert not same_run(recorded, config.replace(model=dataclasses.replace(config.model, d_model=96)))


def test_same_run_under_another_corpus_path():
    """The corpus path may change (relative to absolute, a moved folder): its fingerprint identifies it."""
    relative = TrainConfig.from_dict({"data": {"path": "runs/_data/corpus"}})
    absolute = TrainConfig.from_dict({"data": {"path": "/work/runs/_data/corpus"}})
    assert same_run(relative.to_dict(), absolute)
    assert not same_run(relative.to_dict(), absolute.replace(seed=1))
    assert set(run_identity(relative.to_dict())["data"]) == set(relative.to_dict()["data"]) - {"path"}


def test_yaml_exponent_reads_as_float():
    # YAML 1.1 reads 3e-3 as the string "3e-3"; the packaged specs write learning rates that way.
    import yaml

    raw = yaml.safe_load("optimizer: {peak_lr: 3e-3, eps: 1e-8}\nmax_epochs: 2e0\n")
    assert raw["optimizer"]["peak_lr"] == "3e-3"
    config = TrainConfig.from_dict(raw)
    assert config.optimizer.peak_lr == 0.003
    assert config.optimizer.eps == 1e-8
    assert config.max_epochs == 2.0


def test_float_field_not_a_number():
    with pytest.raises(UserError, match=r"optimizer.peak_lr='fast' is not a number"):
        TrainConfig.from_dict({"optimizer": {"peak_lr": "fast"}})


def test_example_train_config_is_valid():
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "train_small.yaml").read_text())
    config = TrainConfig.from_dict(raw)
    assert config.tokens == 2_000_000
    assert config.optimizer.peak_lr == 0.003
    assert config.model.kv_heads == 2
    assert config.eval_interval % config.log_interval == 0


@pytest.mark.parametrize("text, value", [("2e6", 2_000_000), ("150K", 150_000), ("1.5M", 1_500_000)])
def test_whole_numbers_written_as_text(text, value):
    assert TrainConfig.from_dict({"tokens": text}).tokens == value


@pytest.mark.parametrize("key, value, expected", [("seed", 3.0, 3), ("tokens", 2.0e6, 2_000_000)])
def test_whole_floats_are_counts(key, value, expected):
    assert getattr(TrainConfig.from_dict({key: value}), key) == expected


@pytest.mark.parametrize("value", [1.5, float("nan")])
def test_fractional_seed_names_the_key(value):
    with pytest.raises(UserError, match=f"run.seed={value!r}"):
        TrainConfig.from_dict({"seed": value})


@pytest.mark.parametrize("text, fragment", [("2.5", "must be a whole number"), ("lots", "is not a number")])
def test_bad_whole_number_names_the_key(text, fragment):
    with pytest.raises(UserError, match=f"run.tokens='{text}' {fragment}"):
        TrainConfig.from_dict({"tokens": text})


@pytest.mark.parametrize("raw, key", [
    ({"tokens": -2e6}, "tokens=-2000000"),
    ({"model": {"d_model": 0}}, "model.d_model=0"),
    ({"data": {"path": "x", "batch_size": -8}}, "data.batch_size=-8"),
    ({"optimizer": {"schedule": "cosin"}}, "optimizer.schedule='cosin' is not one of"),
], ids=["tokens", "model", "data", "optimizer"])
def test_invalid_value_named_by_config_key(raw, key):
    """Errors name the key as a config file writes it (model.d_model), not the dataclass behind it."""
    with pytest.raises(UserError, match=re.escape(key)) as error:
        TrainConfig.from_dict({"data": {"path": "x"}, **raw})
    assert "Config." not in str(error.value)


def test_yaml_repeated_key_refused():
    """A repeated key names both lines; overriding a key merged from an anchor is intended and allowed."""
    import yaml

    from scaling.yaml_text import load_yaml

    with pytest.raises(yaml.YAMLError, match=r"the key 'peak_lr' appears again \(first on line 1\)"):
        load_yaml("peak_lr: 3e-3\npeak_lr: 1e-3\n")
    merged = load_yaml("base: &base {seq_len: 64, batch_size: 8}\ntrain:\n  <<: *base\n  batch_size: 16\n")
    assert merged["train"] == {"seq_len": 64, "batch_size": 16}
