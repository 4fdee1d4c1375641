"""Seconds to build a run's initial state for a new model shape, two ways.

Until 2026-12-05 training compiled a jitted `model.init` per shape. `Trainer.init_state` now draws the
parameters on the host (models/initializers.py) and compiles only the optimizer state's program per shape.

Both run in one process, one shape after another, with JAX's persistent compilation cache off, so each
number includes compiling. The shapes default to the demo sweep's six (heads of 16, 8 x 64 tokens).
The first shape of `init_state` also compiles the programs every shape shares (the normal block, key
splitting), once per process. Its row is marked `includes_shared_programs`.

    python benchmarks/init_compile.py --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from scaling.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from scaling.errors import UserError  # noqa: E402
from scaling.train import Trainer  # noqa: E402

DEMO_SHAPES = "16x1,32x1,48x1,48x2,64x2,96x3"  # d_model x n_layers of sweeps/specs/demo.yaml
HEAD_DIM = 16


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            d_model, n_layers = (int(part) for part in item.lower().split("x"))
        except ValueError:
            d_model = n_layers = 0
        if d_model < HEAD_DIM or d_model % HEAD_DIM or n_layers < 1:
            raise UserError(f"--shapes item {item!r} is not DxL with d_model a multiple of {HEAD_DIM} and "
                            "n_layers >= 1, e.g. 48x2")
        shapes.append((d_model, n_layers))
    return shapes


def config_for(d_model: int, n_layers: int) -> TrainConfig:
    model = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=d_model // HEAD_DIM, max_seq_len=64)
    return TrainConfig(model=model, data=DataConfig(path="unused", seq_len=64, batch_size=8), tokens=65_536,
                       wandb_mode="disabled")


def jitted_init_s(trainer: Trainer) -> float:
    """Return the seconds to compile and run the whole state as one jitted program of `model.init`."""
    dummy_BxL = jnp.zeros((1, trainer.config.data.seq_len), jnp.int32)

    def init(init_key, state_key):
        params = trainer.model.init(init_key, dummy_BxL)["params"]
        return {"params": params, "opt_state": trainer.optimizer.init(params), "step": jnp.zeros((), jnp.int32),
                "rng": jax.random.key_data(state_key)}

    keys = jax.random.split(jax.random.key(0))
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(init)(*keys))
    return time.perf_counter() - start


def host_init_s(trainer: Trainer) -> float:
    start = time.perf_counter()
    jax.block_until_ready(trainer.init_state(0))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEMO_SHAPES, help=f"comma-separated DxL (default {DEMO_SHAPES})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jax.config.update("jax_enable_compilation_cache", False)

    rows = []
    for index, (d_model, n_layers) in enumerate(shapes):
        trainer = Trainer(config_for(d_model, n_layers))
        host = host_init_s(trainer)  # first, so its first row pays the shared programs, as a new worker does
        jitted = jitted_init_s(trainer)
        rows.append({"d_model": d_model, "n_layers": n_layers, "jitted_model_init_s": round(jitted, 3),
                     "host_draw_init_state_s": round(host, 3), "ratio": round(jitted / host, 2),
                     "includes_shared_programs": index == 0})
        if not args.json:
            print(f"d_model {d_model:4d} L{n_layers}: jitted model.init {jitted:6.2f} s, init_state {host:6.2f} s "
                  f"({jitted / host:.1f}x){'  (first: shared programs compiled here)' if index == 0 else ''}")

    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "jax": jax.__version__,
              "backend": jax.default_backend(), "shapes": rows,
              "total_jitted_model_init_s": round(sum(row["jitted_model_init_s"] for row in rows), 3),
              "total_host_draw_init_state_s": round(sum(row["host_draw_init_state_s"] for row in rows), 3)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"total: jitted model.init {result['total_jitted_model_init_s']:.2f} s, "
              f"init_state {result['total_host_draw_init_state_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
