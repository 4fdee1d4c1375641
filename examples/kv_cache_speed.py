"""Why decoding keeps a key/value cache: the same greedy text, with and without it.

Without a cache, producing token t means running the model over all t tokens before it again, so n new
tokens cost about n^2 / 2 token-forwards. With a cache, each layer keeps the keys and values of the tokens
already read, and every new token costs one token-forward plus attention over the cache.

The script generates the same greedy tokens both ways with a small random model and prints the time of
each, then the memory the cache takes for a 7B-parameter shape with multi-head, grouped-query and
multi-query attention. For the full measurement see benchmarks/generation.py.

Run: python examples/kv_cache_speed.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from models.generate import Generator, Sampling, UncachedGreedy  # noqa: E402
from models.kv_cache import kv_cache_comparison  # noqa: E402
from models.transformer import Transformer  # noqa: E402
from scaling.accounting import parameter_counts  # noqa: E402
from scaling.config import ModelConfig  # noqa: E402

NEW_TOKENS = 300
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


def main() -> None:
    model = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=320)
    params = Transformer(model).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]

    cached = Generator(model, params)
    cached.generate([PROMPT], NEW_TOKENS, Sampling(temperature=0.0))  # the first call compiles
    started = time.perf_counter()
    with_cache = cached.generate([PROMPT], NEW_TOKENS, Sampling(temperature=0.0))
    cached_s = time.perf_counter() - started

    uncached = UncachedGreedy(model, params, bucket=32)
    uncached.compile(1, len(PROMPT) + NEW_TOKENS)
    without_cache, uncached_s = uncached.generate([PROMPT], NEW_TOKENS)

    print(f"{NEW_TOKENS} greedy tokens from a {parameter_counts(model)['total']:,}-parameter model:")
    print(f"  with the KV cache:    {cached_s:7.3f} s")
    print(f"  recomputing prefixes: {uncached_s:7.3f} s  ({uncached_s / cached_s:.0f}x slower)")
    print(f"  same tokens: {with_cache.tokens[0] == without_cache[0]}")

    # A 7B shape: 32 layers, d_model 4096 as 32 heads of 128, SwiGLU width 11008, vocabulary 32000.
    seven_b = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                          tie_embeddings=False, max_seq_len=4096)
    print(f"\nKV cache of a {parameter_counts(seven_b)['total'] / 1e9:.2f}B-parameter model, "
          "4096 tokens of context, batch 1, bfloat16:")
    for row in kv_cache_comparison(seven_b.n_layers, seven_b.n_heads, seven_b.dim_per_head, context=4096,
                                   batch_size=1, bytes_per_value=2):
        print(f"  {row['attention']} ({row['kv_heads']:2d} KV heads): {row['gib']:6.3f} GiB")


if __name__ == "__main__":
    main()
