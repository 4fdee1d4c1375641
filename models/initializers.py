"""Parameter initializers that training can draw on the host, without compiling a program per model shape.

`Normal(std)` and `Constant(value)` are ordinary Flax initializers: `model.init` gives the same values
with them as with `nn.initializers.normal(std)`, `ones` and `zeros`. They also record what they draw, so
`draw_params` can produce a model's initial parameters from its config alone:

1. `parameter_initializers` traces `model.init` abstractly (`jax.eval_shape`, nothing compiled) and
   records which initializer made each parameter;
2. `draw_params` fills each parameter on the host. A normal parameter takes its values from a stream of
   standard normal blocks of `BLOCK` values, keyed by the seed's key and the parameter's path, and scales
   them by its std.

Why: a jitted `model.init` is one program per model shape, and with threefry and the normal transform
inlined for every parameter it took 1.5 s to compile for a 2-layer model of 60 K parameters on one core,
longer than such a model trains in a sweep (docs/benchmarks.md, "Sweep overhead"). The block program here
has the same shape for every model, so a process compiles it once, whatever the sweep's sizes.

Each parameter's values depend only on the seed and its own path, so adding a layer leaves the others'
initial values as they were. They differ from `model.init`'s values for the same seed; the distributions
are the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import zlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

BLOCK = 1 << 16  # values per drawn block: 256 KB of float32, small enough that tiny parameters waste little

_recording = contextvars.ContextVar("recording_initializers", default=False)


class Recorded(flax.struct.PyTreeNode, meta.AxisMetadata):
    """A parameter boxed with the initializer that made it; only `parameter_initializers` creates these."""

    value: Any
    initializer: Any = flax.struct.field(pytree_node=False)

    def unbox(self) -> Any:
        return self.value

    def replace_boxed(self, val: Any) -> Recorded:
        return self.replace(value=val)

    def add_axis(self, index: int, params: dict[Any, Any]) -> Recorded:
        return self

    def remove_axis(self, index: int, params: dict[Any, Any]) -> Recorded:
        return self


def _maybe_record(value: jax.Array, initializer: Any) -> Any:
    return Recorded(value, initializer) if _recording.get() else value


@dataclasses.dataclass(frozen=True)
class Normal:
    """Draw from a normal distribution with mean 0 and standard deviation `std`."""

    std: float

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
        value = jax.random.normal(key, shape, dtype) * jnp.asarray(self.std, dtype)
        return _maybe_record(value, self)

    def from_standard_normal(self, z: np.ndarray) -> np.ndarray:
        return z * np.asarray(self.std, z.dtype)


@dataclasses.dataclass(frozen=True)
class Constant:
    """Fill with `value` (1.0 for norm scales, 0.0 for biases)."""

    value: float

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
        return _maybe_record(jnp.full(shape, self.value, dtype), self)


@contextlib.contextmanager
def _recording_initializers():
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


def parameter_initializers(model: Any, *init_args: Any) -> dict[str, Any]:
    """Return the tree of `model.init(key, *init_args)["params"]` with a `Recorded` box at each leaf:
    its abstract value (shape and dtype) and the initializer that made it.

    Raise TypeError naming the first parameter whose initializer is neither `Normal` nor `Constant`.
    """
    with _recording_initializers():
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_args))["params"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=_is_recorded)[0]:
        if not _is_recorded(leaf):
            raise TypeError(f"parameter {_path_text(path)} has an unsupported initializer; give its module "
                            "models.initializers.Normal or Constant, so that training can draw it on the host")
    return boxed


def draw_params(initializers: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """Return the initial parameters for `key` as a tree of NumPy arrays, from `parameter_initializers`."""

    def draw(path, recorded: Recorded) -> np.ndarray:
        shape, dtype = tuple(recorded.value.shape), np.dtype(recorded.value.dtype)
        initializer = recorded.initializer
        if isinstance(initializer, Constant):
            return np.full(shape, initializer.value, dtype)
        z = standard_normal(key, _path_text(path), math.prod(shape)).reshape(shape).astype(dtype)
        return initializer.from_standard_normal(z)

    return jax.tree_util.tree_map_with_path(draw, initializers, is_leaf=_is_recorded)


@jax.jit
def _normal_block(key: jax.Array, stream: jax.Array, index: jax.Array) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, stream), index), (BLOCK,), jnp.float32)


def standard_normal(key: jax.Array, name: str, count: int) -> np.ndarray:
    """Return `count` float32 standard normal values of the stream that `key` and `name` select.

    The stream is blocks of `BLOCK` values, block i drawn with key fold_in(fold_in(key, crc32(name)), i),
    so the values depend on the key, the name and nothing else, and one compiled program serves every count.
    """
    stream = np.uint32(zlib.crc32(name.encode()))
    blocks = [_normal_block(key, stream, np.uint32(index)) for index in range(-(-count // BLOCK))]
    if not blocks:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(block) for block in blocks])[:count]


def _is_recorded(leaf: Any) -> bool:
    return isinstance(leaf, Recorded)


def _path_text(path: tuple) -> str:
    return "/".join(str(getattr(entry, "key", entry)) for entry in path)
