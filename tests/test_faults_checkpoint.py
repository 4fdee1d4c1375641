"""Checkpoints: damaged steps, restoring into the wrong model, and exact resume across processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling.checkpoint import Checkpointer, abstract_like
from scaling.config import DataConfig, ModelConfig, TrainConfig
from scaling.data import PreparedCorpus
from scaling.errors import UserError
from scaling.train import Trainer, enable_compilation_cache
from tests.faults import DAMAGES, damage_checkpoint, finished_steps, run_steps, shared_jax_cache  # noqa: F401


def small_state(value: float) -> dict:
    """A state shaped like training's: arrays under dicts, an optax named tuple, a step."""
    params = {"w": jnp.full((64, 32), value), "b": jnp.full((32,), value)}
    return {"params": params, "opt_state": (optax.EmptyState(), optax.ScaleByAdamState(
        count=jnp.asarray(int(value), jnp.int32), mu=params, nu=params)), "step": jnp.asarray(int(value))}


# Reading truncated array files, Orbax leaves asyncio callbacks that fire after their loop closed, each
# an "Event loop is closed" traceback on stderr. The checkpointer drops them: any that reached pytest fails.
NO_LOOP_NOISE = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@NO_LOOP_NOISE
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_latest_checkpoint(how, tmp_path, caplog):
    """Steps 100 and 200 finished, then 200 damaged. Restore uses 100 and warns naming 200. The next save
    of 200 succeeds, and the following restore returns it."""
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(100, small_state(1.0))
    checkpointer.save(200, small_state(2.0))
    checkpointer.close()
    damage_checkpoint(tmp_path / "checkpoints" / "200", how)

    checkpointer = Checkpointer(tmp_path / "checkpoints")
    step, _ = checkpointer.restore_latest(abstract_like(small_state(0.0)))  # a reader: moves nothing
    assert step == 100
    assert finished_steps(tmp_path / "checkpoints") == [100, 200]
    with caplog.at_level(logging.WARNING, logger="scaling.checkpoint"):
        step, state = checkpointer.restore_latest(abstract_like(small_state(0.0)), set_aside=True)
    assert step == 100
    assert float(state["params"]["w"][0, 0]) == 1.0
    warnings = [record.getMessage() for record in caplog.records if record.name == "scaling.checkpoint"]
    assert "checkpoint at step 200" in warnings[0]
    assert "unreadable" in warnings[0]
    assert finished_steps(tmp_path / "checkpoints") == [100]
    assert (tmp_path / "checkpoints" / "unreadable-200").is_dir()

    checkpointer.save(200, small_state(3.0))
    checkpointer.close()
    step, state = Checkpointer(tmp_path / "checkpoints").restore_latest(abstract_like(small_state(0.0)))
    assert step == 200
    assert float(state["params"]["w"][0, 0]) == 3.0


def test_no_readable_checkpoint_starts_over(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(100, small_state(1.0))
    checkpointer.close()
    damage_checkpoint(tmp_path / "checkpoints" / "100", "empty_folder")
    with caplog.at_level(logging.WARNING, logger="scaling.checkpoint"):
        restored = Checkpointer(tmp_path / "checkpoints").restore_latest(abstract_like(small_state(0.0)),
                                                                         set_aside=True)
    assert restored is None
    assert "step 100" in caplog.text
    assert finished_steps(tmp_path / "checkpoints") == []


def tiny(**model) -> TrainConfig:
    shape = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=32) | model
    return TrainConfig(model=ModelConfig(**shape), data=DataConfig(path="unused", seq_len=32, batch_size=8),
                       tokens=6 * 32 * 8)


@pytest.fixture(scope="module")
def two_layer_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("two_layers") / "checkpoints"
    checkpointer = Checkpointer(directory)
    checkpointer.save(3, Trainer(tiny()).init_state(0))
    checkpointer.close()
    return directory


@pytest.mark.parametrize("model, message", [
    ({"n_layers": 3}, r"params/block_2/attention/key/kernel \(32, 2, 16\) is in the model but not in the checkpoint"),
    ({"d_model": 64}, r"params/block_0/attention/key/kernel has shape \(32, 2, 16\) in the checkpoint and "
                      r"\(64, 2, 32\) in the model"),
    ({"n_layers": 1}, r"params/block_1/attention/key/kernel \(32, 2, 16\) is in the checkpoint but not in the model"),
], ids=["deeper", "wider", "shallower"])
def test_restore_into_wrong_model_names_first_mismatch(model, message, two_layer_checkpoint):
    """A 2-layer state restored into another shape raises a UserError naming the first differing
    parameter and both shapes. The checkpoint stays where it was."""
    other = Trainer(tiny(**model)).abstract_state()  # shapes only: nothing compiled
    with pytest.raises(UserError, match=message):
        Checkpointer(two_layer_checkpoint).restore_latest(other)
    assert sorted(path.name for path in two_layer_checkpoint.iterdir()) == ["3"]


REPO = Path(__file__).resolve().parents[1]
FRESH_PROCESS = """
import json, sys
from scaling.checkpoint import Checkpointer, abstract_like
from scaling.config import TrainConfig
from scaling.data import PreparedCorpus
from scaling.train import Trainer, enable_compilation_cache
from tests.faults import run_steps

enable_compilation_cache(sys.argv[2])  # SCALING_JAX_CACHE names the session's cache
config = TrainConfig.from_dict(json.load(open(sys.argv[1])))
trainer = Trainer(config)
checkpointer = Checkpointer(sys.argv[2])
step, state = checkpointer.restore_latest(abstract_like(trainer.init_state(config.seed)))
state = run_steps(trainer, state, PreparedCorpus.load(config.data.path).train, step, 6)
checkpointer.save(6, state)
checkpointer.close()
"""


def test_split_restore_equals_six_steps(small_corpus, tmp_path):
    """6 uninterrupted steps equal 3 steps, a save, a restore in a fresh process and 3 more steps, bit for
    bit. The restored optimizer state keeps its optax named tuples."""
    config = tiny().replace(data=DataConfig(path=str(small_corpus), seq_len=32, batch_size=8))
    enable_compilation_cache(tmp_path)  # SCALING_JAX_CACHE names the session's cache
    train_tokens = PreparedCorpus.load(small_corpus).train
    trainer = Trainer(config)
    six = run_steps(trainer, trainer.init_state(config.seed), train_tokens, 0, 6)

    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(3, run_steps(trainer, trainer.init_state(config.seed), train_tokens, 0, 3))
    checkpointer.close()
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    child = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(config_path), str(tmp_path / "checkpoints")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]

    step, resumed = Checkpointer(tmp_path / "checkpoints").restore_latest(abstract_like(six))
    assert step == 6
    assert jax.tree_util.tree_structure(resumed) == jax.tree_util.tree_structure(six)  # container types too
    assert isinstance(resumed["opt_state"][1], optax.ScaleByAdamState)
    assert isinstance(resumed["opt_state"][0], optax.EmptyState)
    assert int(resumed["step"]) == 6
    unequal = [jax.tree_util.keystr(path) for path, same in jax.tree_util.tree_leaves_with_path(
        jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), resumed, six)) if not same]
    assert unequal == []
