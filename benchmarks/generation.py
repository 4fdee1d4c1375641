"""Generation speed with and without the KV cache, same model, same process.

    python benchmarks/generation.py --json

Both paths decode greedily from the same random-initialised model and short prompt:
- cached: one prefill call, then a compiled `while_loop` that feeds one token per step through the cache
  (models.generate.Generator);
- uncached: every step runs the full forward pass over the whole prefix again (models.generate.UncachedGreedy,
  prefixes right-padded to multiples of `--bucket` tokens so that only a few shapes compile).
Compilation happens before the clocks start, and each clock covers a whole `generate` call. The
machine's 1-minute load average before and after is recorded, because other processes sharing the cores
slow both paths. The script prints tokens per second of each path, their ratio,
and the ratio of their FLOPs from the accounting of Hoffmann et al. 2022, appendix F
(scaling.accounting.forward_flops_per_token): "theoretical" counts the ideal algorithms, "executed" counts
the shapes this code really runs (the cached path attends over every cache slot, padded or not, and the
uncached path over its bucket-padded prefix). It also prints the cache bytes of MHA, GQA and MQA at the
same size.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from models.generate import Generator, Sampling, UncachedGreedy  # noqa: E402
from models.dtypes import resolve_compute_dtype  # noqa: E402
from models.kv_cache import kv_cache_comparison  # noqa: E402
from models.transformer import Transformer  # noqa: E402
from scaling.accounting import forward_flops_per_token  # noqa: E402
from scaling.config import ModelConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=1000, help="tokens to generate (default 1000)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default 16)")
    parser.add_argument("--d-model", type=int, default=128, help="residual width (default 128)")
    parser.add_argument("--layers", type=int, default=4, help="Transformer blocks (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="query heads (default 4)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads, i.e. MHA)")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size (default 256, byte-level)")
    parser.add_argument("--bucket", type=int, default=64, help="uncached prefix padding in tokens (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the cached path; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def generation_flops(model: ModelConfig, prompt: int, new: int, cache_len: int, bucket: int) -> dict[str, float]:
    """Return forward FLOPs of generating `new` tokens, ideal and as executed, with and without the cache.

    Ideal: the uncached path runs a prefix of prompt + j tokens, each attending over that prefix, for
    j = 0 .. new - 1. The cached path runs the prompt once, then one token attending over prompt + j keys for
    j = 1 .. new - 1. Executed: the uncached prefix is padded up to the bucket, and every cached call attends
    over all `cache_len` slots and feeds `new` tokens (the last one leaves the cache ready to continue).
    """
    flops = lambda context: forward_flops_per_token(model, context)  # noqa: E731
    padded = lambda length: bucket * -(-length // bucket)  # noqa: E731
    return {
        "uncached_ideal": sum((prompt + j) * flops(prompt + j) for j in range(new)),
        "cached_ideal": prompt * flops(prompt) + sum(flops(prompt + j) for j in range(1, new)),
        "uncached_executed": sum(padded(prompt + j) * flops(padded(prompt + j)) for j in range(new)),
        "cached_executed": prompt * flops(cache_len) + new * flops(cache_len),
    }


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    total = args.prompt_tokens + args.new_tokens
    cache_len = args.bucket * -(-total // args.bucket)
    model = ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        max_seq_len=cache_len,
    )
    params = jax.jit(Transformer(model).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    prompt = np.random.default_rng(0).integers(0, args.vocab, args.prompt_tokens).tolist()

    generator = Generator(model, params, cache_len)
    greedy = Sampling(temperature=0.0)
    first = generator.generate([prompt], args.new_tokens, greedy)  # compiles, then runs once
    load_before = os.getloadavg()[0]
    cached_s = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        generator.generate([prompt], args.new_tokens, greedy)
        cached_s = min(cached_s, time.perf_counter() - started)

    uncached = UncachedGreedy(model, params, bucket=args.bucket)
    uncached_compile_s = uncached.compile(1, total)
    started = time.perf_counter()
    uncached_tokens, _ = uncached.generate([prompt], args.new_tokens)
    uncached_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    flops = generation_flops(model, args.prompt_tokens, args.new_tokens, cache_len, args.bucket)
    bytes_per_value = resolve_compute_dtype(model.compute_dtype).itemsize
    cache_rows = kv_cache_comparison(model.n_layers, model.n_heads, model.dim_per_head, cache_len, 1, bytes_per_value)
    result = {
        "new_tokens": args.new_tokens,
        "cached_tokens_per_s": args.new_tokens / cached_s,
        "uncached_tokens_per_s": args.new_tokens / uncached_s,
        "speedup": uncached_s / cached_s,
        "theoretical_flop_ratio": flops["uncached_ideal"] / flops["cached_ideal"],
        "executed_flop_ratio": flops["uncached_executed"] / flops["cached_executed"],
        "cached_gflop_per_s": flops["cached_executed"] / cached_s / 1e9,
        "uncached_gflop_per_s": flops["uncached_executed"] / uncached_s / 1e9,
        "same_tokens": first.tokens[0] == uncached_tokens[0],
        "cache_bytes": {row["attention"]: row["bytes"] for row in cache_rows},
        "cache_kv_heads": {row["attention"]: row["kv_heads"] for row in cache_rows},
        "model": {"d_model": model.d_model, "n_layers": model.n_layers, "n_heads": model.n_heads,
                  "n_kv_heads": model.kv_heads, "vocab_size": model.vocab_size, "dtype": model.compute_dtype},
        "prompt_tokens": args.prompt_tokens,
        "cache_len": cache_len,
        "cached_s": cached_s,
        "uncached_s": uncached_s,
        "load_average_1min": {"before": load_before, "after": load_after},
        "compile_s": {"cached": first.compile_s, "uncached": uncached_compile_s},
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt, cache of {cache_len} slots")
        print(f"  cached:   {result['cached_tokens_per_s']:10.1f} tokens/s")
        print(f"  uncached: {result['uncached_tokens_per_s']:10.1f} tokens/s")
        print(f"  speedup {result['speedup']:.1f}x; FLOP ratio "
              f"{result['theoretical_flop_ratio']:.1f}x ideal, {result['executed_flop_ratio']:.1f}x as executed")
        for row in cache_rows:
            print(f"  {row['attention']} cache ({row['kv_heads']} KV heads): {row['bytes']:,} bytes")
    return result


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"finished in {time.perf_counter() - start:.0f} s", file=sys.stderr)
