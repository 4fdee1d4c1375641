"""Initial parameters drawn on the host (models/initializers.py): the same distributions as Flax's
`model.init`, determined by the seed and each parameter's path, and no program compiled per model shape."""

from __future__ import annotations

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.initializers import (BLOCK, GROUP, Constant, Normal, Recorded, draw_params, parameter_initializers,
                                 standard_normal)
from models.transformer import INIT_STD, Transformer
from scaling.config import DataConfig, ModelConfig, TrainConfig
from scaling.train import Trainer

SHAPES = {
    "rmsnorm-swiglu-rope-tied": ModelConfig(d_model=32, n_layers=2, n_heads=2),
    "layernorm-gelu-learned-untied": ModelConfig(d_model=32, n_layers=3, n_heads=4, norm="layernorm", mlp="gelu",
                                                 positions="learned", tie_embeddings=False, max_seq_len=16),
    "grouped-query": ModelConfig(d_model=48, n_layers=1, n_heads=6, n_kv_heads=2),
}


def _initializers(model: ModelConfig) -> dict:
    return parameter_initializers(Transformer(model), jnp.zeros((1, 8), jnp.int32))


def _leaves(tree) -> dict[str, object]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda leaf: isinstance(leaf, Recorded))[0]
    return {"/".join(entry.key for entry in path): leaf for path, leaf in flat}


def test_flax_init_values_unchanged():
    """`Normal` and `Constant` leave `model.init` as Flax's own normal, ones and zeros would make it."""
    key, x = jax.random.key(3), jnp.ones((2, 5))
    ours = nn.Dense(7, kernel_init=Normal(0.02), bias_init=Constant(0.0)).init(key, x)
    flax = nn.Dense(7, kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros).init(key, x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, flax))
    scale = nn.RMSNorm(scale_init=Constant(1.0)).init(key, x)["params"]["scale"]
    assert bool(jnp.all(scale == 1.0))


@pytest.mark.parametrize("name", list(SHAPES))
def test_recorded_initializers_match_model(name):
    """Every parameter of `model.init` is recorded with its shape, dtype and initializer: std 0.02, output
    projections 0.02 / sqrt(2 n_layers) (GPT-2), norm scales 1 and LayerNorm biases 0."""
    model = SHAPES[name]
    recorded = _leaves(_initializers(model))
    real = jax.eval_shape(lambda: Transformer(model).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    real = _leaves(real)
    assert sorted(recorded) == sorted(real)
    out_std = INIT_STD / math.sqrt(2 * model.n_layers)
    for path, leaf in recorded.items():
        assert (leaf.value.shape, leaf.value.dtype) == (real[path].shape, real[path].dtype), path
        if path.endswith(("attention/out/kernel", "mlp/down/kernel")):
            assert leaf.initializer == Normal(out_std), path
        elif path.endswith("scale"):
            assert leaf.initializer == Constant(1.0), path
        elif path.endswith("bias"):
            assert leaf.initializer == Constant(0.0), path
        else:
            assert leaf.initializer == Normal(INIT_STD), path


@pytest.mark.parametrize("name", list(SHAPES))
def test_drawn_params_follow_initializers(name):
    """Each drawn parameter has its recorded shape and dtype; normal ones have mean 0 and their std within
    five standard errors, constants are exact."""
    initializers = _initializers(SHAPES[name])
    drawn = _leaves(draw_params(initializers, jax.random.key(0)))
    for path, recorded in _leaves(initializers).items():
        values = drawn[path]
        assert values.shape == recorded.value.shape, path
        assert values.dtype == recorded.value.dtype, path
        if isinstance(recorded.initializer, Constant):
            assert np.all(values == recorded.initializer.value), path
            continue
        std = recorded.initializer.std
        standard_error = 1 / math.sqrt(2 * values.size)  # of the sample std, relative to std
        assert abs(values.std() / std - 1) < 5 * standard_error, path
        assert abs(values.mean()) < 5 * std / math.sqrt(values.size), path


def test_draw_depends_on_key_and_path():
    """The same key draws the same bits, and another key other values. A parameter keeps its values when the
    model gains a layer, so query kernels are equal and the output projections' values scale by their std."""
    two, three = SHAPES["rmsnorm-swiglu-rope-tied"], ModelConfig(d_model=32, n_layers=3, n_heads=2)
    first = _leaves(draw_params(_initializers(two), jax.random.key(0)))
    again = _leaves(draw_params(_initializers(two), jax.random.key(0)))
    other = _leaves(draw_params(_initializers(two), jax.random.key(1)))
    deeper = _leaves(draw_params(_initializers(three), jax.random.key(0)))
    assert all(np.array_equal(first[path], again[path]) for path in first)
    assert not np.array_equal(first["embed/embedding"], other["embed/embedding"])
    for path in ("embed/embedding", "block_1/attention/query/kernel", "block_0/mlp/up/kernel"):
        assert np.array_equal(first[path], deeper[path]), path
    ratio = math.sqrt(2 * 2) / math.sqrt(2 * 3)
    np.testing.assert_allclose(deeper["block_0/mlp/down/kernel"], first["block_0/mlp/down/kernel"] * ratio, rtol=1e-6)
    assert not np.array_equal(first["block_0/mlp/up/kernel"], first["block_1/mlp/up/kernel"])


def test_standard_normal_streams_blocks():
    """A stream longer than one block continues the shorter one, and names select different streams."""
    key = jax.random.key(0)
    long = standard_normal(key, "a", BLOCK + 10)
    assert long.shape == (BLOCK + 10,)
    assert long.dtype == np.float32
    assert np.array_equal(standard_normal(key, "a", 10), long[:10])
    grouped = standard_normal(key, "a", GROUP * BLOCK + BLOCK + 1)  # one call for GROUP blocks, then two alone
    assert np.array_equal(grouped[:BLOCK + 10], long)
    assert not np.array_equal(standard_normal(key, "b", 10), long[:10])
    assert not np.array_equal(long[:10], long[BLOCK:])
    assert standard_normal(key, "a", 0).shape == (0,)


def test_unknown_initializer_is_named():
    class Other(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, kernel_init=Normal(0.1), bias_init=nn.initializers.uniform())(x)

    with pytest.raises(TypeError, match=r"Dense_0/bias has an unsupported initializer"):
        parameter_initializers(Other(), jnp.ones((1, 4)))


def _config(d_model: int, n_layers: int) -> TrainConfig:
    return TrainConfig(model=ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=d_model // 16),
                       data=DataConfig(path="unused", seq_len=16, batch_size=2), tokens=1024, wandb_mode="disabled")


def test_init_state_new_shape_compiles_one_program(caplog):
    """Once a process has drawn one model, the next shape's initial state compiles one program, the
    optimizer's (zero moments of that shape): no random-number program per shape."""
    Trainer(_config(32, 1)).init_state(0)
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        trainer = Trainer(_config(48, 2))
        state = trainer.init_state(0)
    compiled = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Compiling ")]
    assert len(compiled) == 1, compiled
    assert "_normal_block" not in compiled[0]
    assert jax.tree.all(jax.tree.map(lambda a: bool(jnp.all(a == 0)), state["opt_state"][1].mu))


def test_abstract_state_describes_init_state():
    trainer = Trainer(_config(32, 2))
    state, abstract = trainer.init_state(5), trainer.abstract_state()
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    for real, stand_in in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
        assert (real.shape, real.dtype, real.sharding) == (stand_in.shape, stand_in.dtype, stand_in.sharding)
