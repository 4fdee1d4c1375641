"""Seconds to compile a run's programs for a new model shape, taken apart by what the step adds.

With a cold compilation cache every new shape of a sweep compiles its training step and its evaluation
program once (docs/benchmarks.md, "Sweep overhead"). This script compiles, for each shape, the step in four
stages, each a program of its own: the forward pass and loss, then its gradient, then the gradient's
global norm, then the whole step of `scaling.train.Trainer` (clipping, AdamW, learning rate). The
evaluation program is the Trainer's own. Each row gives the seconds to trace and lower, the seconds XLA
took to compile, and the fusions in the optimized program. The difference between two stages is what the
later part costs to compile.

JAX's persistent compilation cache is off, and every program is a new function, so each number includes
compiling. `--option KEY=VALUE` passes an XLA option to every compile (`jax.jit(compiler_options=...)`),
so that options can be compared shape by shape. Shapes default to the demo sweep's six.

    python benchmarks/step_compile.py --json
    python benchmarks/step_compile.py --shapes 16x1,96x3 --option xla_backend_optimization_level=1
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

from benchmarks.init_compile import DEMO_SHAPES, config_for, parse_shapes  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from models.transformer import next_token_loss  # noqa: E402
from scaling.errors import UserError  # noqa: E402
from scaling.schedule import schedule_values  # noqa: E402
from scaling.train import Trainer  # noqa: E402

STAGES = ("forward", "gradient", "gradient_norm", "step", "eval")


def parse_option(text: str) -> tuple[str, bool | int | float | str]:
    """Return ("xla_backend_optimization_level", 1) for "xla_backend_optimization_level=1"."""
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("xla_"):
        raise UserError(f"--option {text!r} is not KEY=VALUE with an XLA option name, "
                        "e.g. xla_backend_optimization_level=1")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def stage_function(trainer: Trainer, stage: str):
    """Return a new function computing `stage` of the training step (or the Trainer's own step or eval)."""
    if stage == "step":
        return lambda state, batch, schedule: trainer._train_step(state, batch, schedule)
    if stage == "eval":
        return lambda params, windows, weights: trainer._eval_nats(params, windows, weights)

    def objective(params, batch_BxL1):
        logits_BxLxV = trainer.model.apply({"params": params}, batch_BxL1[:, :-1])
        loss, total = next_token_loss(logits_BxLxV, batch_BxL1[:, 1:], z_loss=trainer.config.model.z_loss)
        return total, loss

    def partial_step(state, batch_BxL1, schedule):
        if stage == "forward":
            return objective(state["params"], batch_BxL1)[1]
        (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(state["params"], batch_BxL1)
        if stage == "gradient":
            return loss, grads
        return loss, grads, optax.tree.norm(grads)

    return partial_step


def compile_stage(trainer: Trainer, stage: str, args: tuple, options: dict) -> dict:
    started = time.perf_counter()
    lowered = jax.jit(stage_function(trainer, stage), compiler_options=options or None).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    return {"stage": stage, "lower_s": round(lowered_at - started, 3), "compile_s": round(compiled_at - lowered_at, 3),
            "fusions": compiled.as_text().count(" fusion(")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEMO_SHAPES, help=f"comma-separated DxL (default {DEMO_SHAPES})")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an XLA compile option for every program (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
        options = dict(parse_option(text) for text in args.option)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jax.config.update("jax_enable_compilation_cache", False)

    rows = []
    for d_model, n_layers in shapes:
        trainer = Trainer(config_for(d_model, n_layers))
        state = trainer.init_state(0)
        batch_size, seq_len = trainer.config.data.batch_size, trainer.config.data.seq_len
        batch = trainer.put_batch(np.zeros((batch_size, seq_len + 1), np.int32))
        weights = trainer.put_batch(np.ones(batch_size, np.float32))
        schedule = {key: jnp.asarray(value, jnp.float32)
                    for key, value in schedule_values(trainer.config.optimizer, 1000).items()}
        for stage in STAGES:
            stage_args = (state["params"], batch, weights) if stage == "eval" else (state, batch, schedule)
            row = {"d_model": d_model, "n_layers": n_layers, **compile_stage(trainer, stage, stage_args, options)}
            rows.append(row)
            if not args.json:
                print(f"d_model {d_model:4d} L{n_layers} {stage:14s} lower {row['lower_s']:5.2f} s, "
                      f"compile {row['compile_s']:5.2f} s, {row['fusions']:4d} fusions", flush=True)

    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "jax": jax.__version__,
              "backend": jax.default_backend(), "options": options, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
