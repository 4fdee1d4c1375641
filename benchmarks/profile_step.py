"""A profile of one training step on CPU: XLA's kernel time, grouped by the model part each kernel comes from.

The script traces a few calls of the compiled step of the throughput benchmark's model
(`scaling.train.Trainer`, 4 layers, heads of 32, vocabulary 256, batch 8 x 256) with `jax.profiler`.
It then sums each kernel's time under the `op_name` that XLA's optimized HLO records for it, such as
"block_N/attention" or "block_N/mlp/up". The backward pass's kernels are those under "transpose(...)".
Times are thread time: on 2 cores a step's wall time is about half their sum.

    python benchmarks/profile_step.py --d-model 64 --top 25
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from scaling.schedule import schedule_values  # noqa: E402
from scaling.train import Trainer  # noqa: E402

# Primitive names at the end of an op_name, dropped so that a model part's kernels group together.
PRIMITIVES = re.compile(r"/(dot_general|mul|add|add_any|reduce_sum|reduce_max|sub|exp|div|select_n|broadcast_in_dim|"
                        r"reshape|concatenate|pad|slice|dynamic_slice|convert_element_type|square|rsqrt|"
                        r"integer_pow|max|neg|log|transpose|copy|gather|scatter-add|squeeze|iota|eq|lt|and|ge|"
                        r"sin|cos|logistic|stop_gradient)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--layers", type=int, default=4, help="layers (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="traced steps (default 10)")
    parser.add_argument("--top", type=int, default=25, help="model parts to list (default 25)")
    return parser.parse_args(argv)


def model_part(op_name: str) -> str:
    """Return "fwd block_N/mlp/up" or "bwd block_N/attention" for an op_name of the step's HLO."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    part = re.sub(r"block_\d+", "block_N", op_name.split(";")[0])
    part = re.sub(r"^jit\([^)]*\)/", "", part)
    part = re.sub(r"(transpose\()?(jvp\()?Transformer\)*/?", "", part)
    part = re.sub(r"^(transpose\()?(jvp\()?", "", part).rstrip(")")
    return f"{direction} {PRIMITIVES.sub('', part) or '(loss and optimizer)'}"


def main() -> int:
    args = parse_args()
    model = ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers,
                        n_heads=max(1, args.d_model // 32), max_seq_len=256)
    config = TrainConfig(model=model, optimizer=OptimizerConfig(warmup_steps=2),
                         data=DataConfig(path="unused", seq_len=256, batch_size=8), tokens=1000 * 2048,
                         wandb_mode="disabled")
    trainer = Trainer(config)
    state = trainer.init_state(0)
    schedule = {key: jnp.asarray(value, jnp.float32)
                for key, value in schedule_values(config.optimizer, config.total_steps).items()}
    batch = trainer.put_batch(np.random.default_rng(0).integers(0, 256, (8, 257)).astype(np.int32))

    state, metrics = trainer.step_fn(state, batch, schedule)  # compile, then time the steps untraced
    jax.block_until_ready(metrics)
    time.sleep(0.3)
    best = float("inf")
    for _ in range(args.steps):
        started = time.perf_counter()
        state, metrics = trainer.step_fn(state, batch, schedule)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - started)

    hlo = trainer.step_fn.lower(state, batch, schedule).compile().as_text()
    op_names = {match.group(1): match.group(2)
                for match in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo)}
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        for _ in range(args.steps):
            state, metrics = trainer.step_fn(state, batch, schedule)
            jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        trace = jax.profiler.ProfileData.from_file(sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1])

    seconds: collections.Counter = collections.Counter()
    kernels: collections.Counter = collections.Counter()
    busy_per_thread = []  # seconds per step in which each of XLA's worker threads ran a kernel
    for plane in trace.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's worker threads, where the kernels run
                continue
            busy = 0.0
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener")):
                    continue  # the executor's own spans contain the kernels, and the pool's markers last 0 ns
                part = model_part(op_names.get(event.name, "?"))
                seconds[part] += event.duration_ns / 1e9 / args.steps
                kernels[part] += 1 / args.steps
                busy += event.duration_ns / 1e9 / args.steps
            busy_per_thread.append(busy)

    total = sum(seconds.values())
    print(f"d_model {args.d_model}, {args.layers} layers: step {1e3 * best:.1f} ms wall (fastest of {args.steps}), "
          f"{1e3 * total:.1f} ms of kernel thread time in {sum(kernels.values()):.0f} kernels per step")
    # A thread busy for less than the step's wall time waited for work: the step kept fewer cores busy.
    print("busy share of the step's wall time, per XLA worker thread: "
          + ", ".join(f"{busy / best:.2f}" for busy in sorted(busy_per_thread, reverse=True)))
    for part, value in seconds.most_common(args.top):
        print(f"{1e3 * value:8.2f} ms {100 * value / total:5.1f}% {kernels[part]:6.0f} kernels  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
