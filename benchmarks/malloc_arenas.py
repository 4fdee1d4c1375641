"""Training tokens per second and page faults per step under glibc malloc settings (scaling/host_memory.py).

glibc reads the arena settings when a thread first allocates, so each setting needs its own process: the
script starts one child per (setting, d_model) and prints their results side by side. The settings:

- `none`: glibc's defaults;
- `one-arena`: what `train()` applies to steps with 32 MB or more of temporaries (no mmap blocks, no
  trimming, one arena for all threads), before JAX starts its threads;
- `arena-per-thread`: the same without the one-arena limit;
- `after-threads`: `one-arena` applied after JAX has started its threads, which keep the arenas they had.

    python benchmarks/malloc_arenas.py --sizes 64,128,512 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.widths import parse_widths  # noqa: E402

SETTINGS = ("none", "one-arena", "arena-per-thread", "after-threads")

CHILD = r"""
import json, resource, sys, time
setting, d_model, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from scaling import host_memory
if setting == "arena-per-thread":
    host_memory.SETTINGS.pop(host_memory.M_ARENA_MAX)
if setting in ("one-arena", "arena-per-thread"):
    host_memory.keep_freed_memory(2**40)
import jax, jax.numpy as jnp, numpy as np
jnp.ones(3).block_until_ready()  # the backend and its threads start here
if setting == "after-threads":
    host_memory.keep_freed_memory(2**40)
from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
from scaling.schedule import schedule_values
from scaling.train import Trainer

model = ModelConfig(d_model=d_model, n_layers=4, n_heads=max(1, d_model // 32), max_seq_len=256)
config = TrainConfig(model=model, optimizer=OptimizerConfig(warmup_steps=2),
                     data=DataConfig(path="unused", seq_len=256, batch_size=8), tokens=10**9, wandb_mode="disabled")
trainer = Trainer(config)
state = trainer.init_state(0)
schedule = {k: jnp.asarray(v, jnp.float32) for k, v in schedule_values(config.optimizer, 10**6).items()}
batches = np.random.default_rng(0).integers(0, 256, size=(8, 8, 257)).astype(np.int32)
for step in range(3):  # compile, and reach the steady state
    state, metrics = trainer.step_fn(state, batches[step], schedule)
jax.block_until_ready(metrics)
best, faults = 0.0, []
for _ in range(3):
    time.sleep(0.5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for step in range(steps):
        state, metrics = trainer.step_fn(state, batches[step % 8], schedule)
    jax.block_until_ready(metrics)
    best = max(best, steps * 8 * 256 / (time.perf_counter() - start))
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
print(json.dumps({"tokens_per_s": round(best), "faults_per_step": round(min(faults)),
                  "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,512", help="comma-separated d_model values (default 64,128,512)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: about 2 s worth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        sizes = parse_widths(args.sizes)
    except ValueError as error:
        parser.error(str(error))
    if args.steps < 0:
        parser.error(f"--steps {args.steps} must be at least 0 (0: about 2 s worth)")

    rows = []
    for d_model in sizes:
        steps = args.steps or max(4, round(40 * (64 / d_model) ** 2))
        row = {"d_model": d_model, "steps_timed": steps}
        for setting in SETTINGS:  # one process each, in turn, so the machine's load drifts across all of them
            done = subprocess.run([sys.executable, "-c", CHILD, setting, str(d_model), str(steps)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "SCALING_KEEP_FREED_MEMORY": "auto"})
            if done.returncode != 0:
                print(f"error: the {setting} child for d_model {d_model} failed:\n{done.stderr[-2000:]}",
                      file=sys.stderr)
                return 1
            row[setting] = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        if not args.json:
            print(f"d_model {d_model}: " + ", ".join(
                f"{setting} {row[setting]['tokens_per_s']} tokens/s ({row[setting]['faults_per_step']} faults/step)"
                for setting in SETTINGS))
    if args.json:
        print(json.dumps({"date": datetime.date.today().isoformat(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
