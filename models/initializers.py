"""Parameter initializers that training can draw on the host, without compiling a program per model shape.

`Normal(std)` and `Constant(value)` are ordinary Flax initializers: `model.init` gives the same values
with them as with `nn.initializers.normal(std)`, `ones` and `zeros`. They also record what they draw, so
`draw_params` can produce a model's initial parameters from its config alone:

1. `parameter_initializers` traces `model.init` abstractly (`jax.eval_shape`, nothing compiled) and
   records which initializer made each parameter;
2. `draw_params` fills each parameter on the host. A normal parameter takes its values from a stream of
   standard normal blocks of `BLOCK` values, keyed by the seed's key and the parameter's path, and scales
   them by its std.

Why: a jitted `model.init` is one program per model shape, with threefry and the normal transform inlined
for every parameter. For a 2-layer model of 68 K parameters it took 1.6 s to compile on one core, half the
time that model trains for in the demo sweep (docs/benchmarks.md, "Sweep overhead"). The block programs
here have the same shapes for every model, so a process compiles them once, whatever the sweep's sizes.

Each parameter's values depend only on the seed, its own path and its std. So adding a layer leaves the
other layers' values as they were, except that the output projections, whose std is 0.02 / sqrt(2 n_layers),
scale with depth. They differ from `model.init`'s values for the same seed; the distributions are the same.

Cost: the host keeps every parameter in float32 before the devices get them, and each process of a
several-host run draws them all. On this project's 2-core reference machine a model of 101 M parameters
took 1.5 s in all (a jitted `model.init` 3.2 s, compiling included), and the host's page faults made the
rate vary from 20 to 100 M values/s. NOTE: for models far beyond what a CPU trains, drawing
the blocks on the accelerator and shaping them there would avoid the host copies.
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
GROUP = 64  # blocks per call for parameters of at least 4 M values, so that large models draw at full speed

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
    """Initializer drawing from a normal distribution with mean 0 and standard deviation `std`."""

    std: float

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
        value = jax.random.normal(key, shape, dtype) * jnp.asarray(self.std, dtype)
        return _maybe_record(value, self)

    def scale_in_place(self, z: np.ndarray) -> np.ndarray:
        """Return `z` (float32 standard normal values) multiplied by std in place."""
        z *= np.float32(self.std)
        return z


@dataclasses.dataclass(frozen=True)
class Constant:
    """Initializer filling with `value` (1.0 for norm scales, 0.0 for biases)."""

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
        # Scaled in float32 and rounded once to the parameter's dtype, in place where it is float32.
        z = standard_normal(key, _path_text(path), math.prod(shape)).reshape(shape)
        return initializer.scale_in_place(z).astype(dtype, copy=False)

    return jax.tree_util.tree_map_with_path(draw, initializers, is_leaf=_is_recorded)


def _block(key: jax.Array, stream: jax.Array, index: jax.Array) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, stream), index), (BLOCK,), jnp.float32)


_normal_block = jax.jit(_block)


@jax.jit
def _normal_group(key: jax.Array, stream: jax.Array, first: jax.Array) -> jax.Array:
    """Return blocks first .. first + GROUP - 1 as one [GROUP, BLOCK] array, equal to drawing each alone."""
    return jax.vmap(_block, in_axes=(None, None, 0))(key, stream, first + jnp.arange(GROUP, dtype=jnp.uint32))


def standard_normal(key: jax.Array, name: str, count: int) -> np.ndarray:
    """Return `count` float32 standard normal values of the stream that `key` and `name` select.

    The stream is blocks of `BLOCK` values, block i drawn with key fold_in(fold_in(key, crc32(name)), i).
    So the values depend on the key and the name only, and two compiled programs serve every count: GROUP
    blocks per call while that many remain, then one block per call.
    """
    stream = np.uint32(zlib.crc32(name.encode()))
    n_blocks = -(-count // BLOCK)
    drawn, index = [], 0
    while index < n_blocks:  # every call is dispatched before the first result is read back
        if n_blocks - index >= GROUP:
            drawn.append(_normal_group(key, stream, np.uint32(index)))
            index += GROUP
        else:
            drawn.append(_normal_block(key, stream, np.uint32(index)))
            index += 1
    values = np.empty((count,), np.float32)
    filled = 0
    for blocks in drawn:
        flat = np.asarray(blocks).reshape(-1)[:count - filled]
        values[filled:filled + flat.size] = flat
        filled += flat.size
    return values


def _is_recorded(leaf: Any) -> bool:
    return isinstance(leaf, Recorded)


def _path_text(path: tuple) -> str:
    return "/".join(str(getattr(entry, "key", entry)) for entry in path)
