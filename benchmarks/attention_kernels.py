"""Training attention alone on the CPU: the fused kernel against XLA's query-block path, forward and
forward plus backward, in one process, interleaved.

Each shape is [batch, length, heads, kv_heads, head_dim]. The defaults are one layer of the throughput
benchmark at d_model 64 and 512 (heads of 32, batch 8 x 256 tokens) and a longer sequence with grouped
keys. Times are the fastest of `--repeats` rounds of 10 calls each, since other processes can only slow
a call down.

    python benchmarks/attention_kernels.py --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from models import fused_attention  # noqa: E402
from models.attention import causal_attention_xla  # noqa: E402
from scaling.errors import UserError  # noqa: E402

DEFAULT_SHAPES = "8x256x2x2x32,8x256x16x16x32,4x1024x8x2x64"
CALLS_PER_ROUND = 10
SETTLE_S = 0.5  # pause before each timed round, so the previous engine's threads stop spinning


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = []
    for item in text.split(","):
        try:
            shape = tuple(int(part) for part in item.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 5 or min(shape) < 1 or shape[2] % shape[3]:
            raise UserError(f"--shapes item {item!r} is not BxLxHxKxE of positive sizes with K dividing H, "
                            "e.g. 8x256x4x2x32")
        shapes.append(shape)
    return shapes


def best_round_s(fn, args, repeats: int) -> float:
    """Return the fastest mean seconds per call over `repeats` rounds of CALLS_PER_ROUND calls."""
    best = math.inf
    for _ in range(repeats):
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        for _ in range(CALLS_PER_ROUND):
            result = fn(*args)
        jax.block_until_ready(result)
        best = min(best, (time.perf_counter() - start) / CALLS_PER_ROUND)
    return best


def measure(shape: tuple[int, ...], repeats: int) -> dict:
    batch, length, heads, kv_heads, head_dim = shape
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((batch, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((batch, length, kv_heads, head_dim)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    engines = {"xla": causal_attention_xla, "fused": fused_attention.causal_attention_fused}
    programs = {}
    for name, attend in engines.items():
        forward = jax.jit(attend)
        both = jax.jit(lambda q, k, v, attend=attend: jax.vjp(attend, q, k, v)[1](cotangent))
        jax.block_until_ready((forward(q, k, v), both(q, k, v)))  # compile
        programs[name] = (forward, both)

    times = {name: {"forward_s": math.inf, "forward_backward_s": math.inf} for name in engines}
    for _ in range(repeats):  # interleaved, so a burst of load slows both engines alike
        for name, (forward, both) in programs.items():
            times[name]["forward_s"] = min(times[name]["forward_s"], best_round_s(forward, (q, k, v), 1))
            times[name]["forward_backward_s"] = min(times[name]["forward_backward_s"],
                                                    best_round_s(both, (q, k, v), 1))
    row = {"batch": batch, "length": length, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}
    for name in engines:
        row[f"{name}_forward_ms"] = round(1e3 * times[name]["forward_s"], 3)
        row[f"{name}_forward_backward_ms"] = round(1e3 * times[name]["forward_backward_s"], 3)
    row["forward_speedup"] = round(times["xla"]["forward_s"] / times["fused"]["forward_s"], 2)
    row["forward_backward_speedup"] = round(
        times["xla"]["forward_backward_s"] / times["fused"]["forward_backward_s"], 2)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help=f"BxLxHxKxE, comma-separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per engine (the fastest counts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of one line per shape")
    args = parser.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    reason = fused_attention.unavailable_reason()
    if reason is not None:
        raise UserError(f"the fused attention kernel cannot run here: {reason}")

    rows = []
    for shape in shapes:
        rows.append(measure(shape, args.repeats))
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "load_average": os.getloadavg()[0],
        "shapes": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # a bad option or no kernel, found before any timing
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
