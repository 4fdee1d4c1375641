"""Compile and step time of the training step with AdamW on one flat vector, beside AdamW per parameter.

XLA's CPU backend runs clipping and AdamW as about four loop fusions per parameter array, and compiling them
is 30-44% of the step's compile time (docs/benchmarks.md, "Sweep overhead"). `optax.flatten` joins the
gradients into one vector before clipping and Adam, so those become a few fusions for the whole model, at
the price of copying the gradients into the vector and the updates out of it on every step. Weight decay
stays per parameter, outside the flattened part, because its mask picks matrices by their rank.

For each shape the script builds `scaling.train.Trainer` twice, once per optimizer, in the order that
`--order` gives, so that order effects can be checked. `--mode compile` compiles the step with JAX's
compilation cache off (seconds and fusions). `--mode step` times it (best of 5 rounds of 20 steps, in
milliseconds). Shapes and batches are those of `benchmarks/init_compile.py`.

    python benchmarks/flat_optimizer.py --mode compile --shapes 16x1,48x2,96x3 --json
    python benchmarks/flat_optimizer.py --mode step --shapes 64x4,256x4 --json
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
import numpy as np  # noqa: E402
import optax  # noqa: E402

import scaling.train as train_module  # noqa: E402
from benchmarks.init_compile import config_for, parse_shapes  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.step_compile import compile_stage  # noqa: E402
from scaling.config import TrainConfig  # noqa: E402
from scaling.errors import UserError  # noqa: E402
from scaling.schedule import schedule_values  # noqa: E402

ROUNDS = 5  # timed rounds per optimizer; the fastest counts, since other processes only slow a round down
STEPS_PER_ROUND = 20


def flat_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Return `scaling.train.make_optimizer`'s transformation with clipping and Adam on one flat vector."""
    opt = config.optimizer
    inner = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    inner.append(optax.scale_by_adam(b1=opt.beta1, b2=opt.beta2, eps=opt.eps))
    parts = [optax.flatten(optax.chain(*inner))]
    if opt.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt.weight_decay,
                                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    return optax.chain(*parts)


OPTIMIZERS = {"per_leaf": train_module.make_optimizer, "flat": flat_optimizer}


def measure(d_model: int, n_layers: int, name: str, mode: str) -> dict:
    """Build a Trainer whose optimizer is OPTIMIZERS[name], then compile or time its step."""
    original = train_module.make_optimizer
    train_module.make_optimizer = OPTIMIZERS[name]
    try:
        trainer = train_module.Trainer(config_for(d_model, n_layers))
    finally:
        train_module.make_optimizer = original
    state = trainer.init_state(0)
    batch_size, seq_len = trainer.config.data.batch_size, trainer.config.data.seq_len
    tokens = np.random.default_rng(0).integers(0, 256, (batch_size, seq_len + 1)).astype(np.int32)
    batch = trainer.put_batch(tokens)
    schedule = {key: jnp.asarray(value, jnp.float32)
                for key, value in schedule_values(trainer.config.optimizer, 1000).items()}
    row = {"d_model": d_model, "n_layers": n_layers, "optimizer": name, "batch": [batch_size, seq_len]}
    if mode == "compile":
        return {**row, **compile_stage(trainer, "step", (state, batch, schedule), {})}

    step = jax.jit(lambda state, batch, schedule: trainer._train_step(state, batch, schedule), donate_argnums=0)
    state = jax.block_until_ready(step(state, batch, schedule)[0])
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(STEPS_PER_ROUND):
            state = step(state, batch, schedule)[0]
        jax.block_until_ready(state)
        best = min(best, (time.perf_counter() - started) / STEPS_PER_ROUND)
    return {**row, "step_ms": round(1e3 * best, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("compile", "step"), default="compile")
    parser.add_argument("--shapes", default="16x1,48x2,96x3", help="comma-separated DxL (default 16x1,48x2,96x3)")
    parser.add_argument("--order", choices=("per_leaf_first", "flat_first"), default="per_leaf_first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jax.config.update("jax_enable_compilation_cache", False)
    names = list(OPTIMIZERS) if args.order == "per_leaf_first" else list(OPTIMIZERS)[::-1]

    rows = []
    for d_model, n_layers in shapes:
        for name in names:
            row = measure(d_model, n_layers, name, args.mode)
            rows.append(row)
            if not args.json:
                value = (f"compile {row['compile_s']:5.2f} s, {row['fusions']:4d} fusions" if args.mode == "compile"
                         else f"step {row['step_ms']:8.2f} ms")
                print(f"d_model {d_model:4d} L{n_layers} {name:9s} {value}", flush=True)

    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "jax": jax.__version__,
              "optax": optax.__version__, "mode": args.mode, "order": args.order, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
