"""The speed of XLA's float32 matrix products in the layouts a dense layer's training step uses.

A dense layer y = x W with x [T, D] and W [D, F] runs three products per step: the forward x W, the input
gradient dy W^T and the weight gradient x^T dy, which contracts over the T tokens. This script times each
alone, compiled, on all of the machine's cores (XLA's default), in the layouts XLA receives them: the
transposes are part of each product, not copies. It also times the weight gradient computed transposed
(dy^T x, [F, D]), which a kernel stored as [out, in] would need. The shapes default to the MLP of the
d_model 512 benchmark model (docs/benchmarks.md, finding 12).

    python benchmarks/matmul_layouts.py --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="T, tokens per step (default 2048 = 8 x 256)")
    parser.add_argument("--d-model", type=int, default=512, help="D (default 512)")
    parser.add_argument("--hidden", type=int, default=1376, help="F, the MLP width (default 1376 for D 512)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per product; the fastest counts")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all products, interleaved")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402


def products(tokens: int, d_model: int, hidden: int) -> dict[str, tuple]:
    """Return {name: (function, arguments)} of the products of one dense layer's step."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (tokens, d_model), jnp.float32)
    w = jax.random.normal(keys[1], (d_model, hidden), jnp.float32)
    dy = jax.random.normal(keys[2], (tokens, hidden), jnp.float32)
    return {
        "forward x W [T,D]x[D,F]": (lambda x, w: x @ w, (x, w)),
        "input gradient dy W^T": (lambda dy, w: dy @ w.T, (dy, w)),
        "weight gradient x^T dy, [D,F]": (lambda x, dy: x.T @ dy, (x, dy)),
        "weight gradient transposed dy^T x, [F,D]": (lambda dy, x: dy.T @ x, (dy, x)),
    }


def best_seconds(function, arguments, repeats: int) -> float:
    """Return the fastest of `repeats` timed calls of the compiled `function`, in seconds."""
    compiled = jax.jit(function)
    compiled(*arguments).block_until_ready()
    time.sleep(0.3)  # let the thread pool settle (docs/benchmarks.md, finding 8)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        compiled(*arguments).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    args = parse_args()
    flops = 2 * args.tokens * args.d_model * args.hidden
    cases = products(args.tokens, args.d_model, args.hidden)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (function, arguments) in cases.items():
            seconds[name].append(best_seconds(function, arguments, args.repeats))
    rows = [{"product": name, "ms": [round(1e3 * value, 2) for value in values],
             "gflops_per_s": [round(flops / value / 1e9) for value in values]} for name, values in seconds.items()]
    result = {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "jax": jax.__version__,
              "date": datetime.date.today().isoformat(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "shape": {"tokens": args.tokens, "d_model": args.d_model, "hidden": args.hidden}, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for row in rows:
            print(f"{row['product']:45s} GFLOP/s per round: {row['gflops_per_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
