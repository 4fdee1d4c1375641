"""KV-cache decoding against the full forward pass: prefill, chunks, left padding, overflow, generation loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.generate import Generator, Sampling, UncachedGreedy
from models.kv_cache import CacheFullError, init_cache, kv_cache_bytes, kv_cache_bytes_for, kv_cache_comparison
from models.transformer import Transformer, next_token_loss
from scaling.config import ModelConfig

# Two layers, d_model 32, 4 heads, vocabulary 50; a cache of 16 slots.
BASE = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
VARIANTS = {
    "mha-rope": BASE,
    "gqa-rope": dataclasses.replace(BASE, n_kv_heads=2),
    "mqa-rope": dataclasses.replace(BASE, n_kv_heads=1),
    "mha-learned": dataclasses.replace(BASE, positions="learned"),
    "gqa-learned-layernorm-gelu-untied": dataclasses.replace(
        BASE, n_kv_heads=2, positions="learned", norm="layernorm", mlp="gelu", tie_embeddings=False
    ),
}
# Variants whose full check runs only with `pytest -m slow`: the others already cover each part.
SLOW_VARIANTS = {"gqa-learned-layernorm-gelu-untied"}
SLOW_LEARNED = pytest.param("mha-learned", marks=pytest.mark.slow)  # learned positions decode in fast tests too


def variant_params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in names]
TOLERANCE = 1e-5  # float32 logits, cache against no cache


def random_params(model: ModelConfig, seed: int = 0) -> dict:
    """Return parameters with unit-scale weights, so attention is far from uniform and greedy tokens vary.

    The training initialisation (std 0.02) makes a 2-layer model nearly ignore its context, which would let
    a wrong cache pass unnoticed. Shapes come from jax.eval_shape and values from NumPy, so nothing compiles.
    """
    shapes = jax.eval_shape(lambda: Transformer(model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 1:  # norm scales and biases
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0]), jnp.float32)

    return jax.tree.map(draw, shapes["params"])


@pytest.mark.parametrize("name", variant_params(VARIANTS))
def test_prefill_then_greedy_steps_match_full_forward(name):
    model = VARIANTS[name]
    params = random_params(model)
    transformer = Transformer(model)
    prompt = jnp.asarray(np.random.default_rng(7).integers(0, model.vocab_size, (2, 5)), jnp.int32)

    @jax.jit
    def run(params, prompt):
        logits, cache = transformer.apply({"params": params}, prompt, cache=init_cache(model, 2, 16))

        def greedy_step(carry, _):
            cache, last_logits = carry
            token = jnp.argmax(last_logits, axis=-1)[:, None]
            logits, cache = transformer.apply({"params": params}, token, cache=cache)
            return (cache, logits[:, 0]), (token[:, 0], logits[:, 0])

        (cache, _), (tokens_6xB, logits_6xBxV) = jax.lax.scan(greedy_step, (cache, logits[:, -1]), None, length=6)
        sequence = jnp.concatenate([prompt, tokens_6xB.T], axis=1)
        full = transformer.apply({"params": params}, sequence)  # position t depends on tokens 0..t only
        return logits[:, -1], logits_6xBxV, sequence, cache.length, full

    prefill_last, step_logits, sequence, length, full = run(params, prompt)
    np.testing.assert_allclose(np.asarray(prefill_last), full[:, 4], atol=TOLERANCE, rtol=0)
    for step in range(6):
        np.testing.assert_allclose(np.asarray(step_logits[step]), full[:, 5 + step], atol=TOLERANCE, rtol=0)
    assert int(length) == 11
    # Greedy tokens from the cache are the argmax of the full forward at every step.
    np.testing.assert_array_equal(np.asarray(sequence[:, 5:]), np.argmax(np.asarray(full[:, 4:10]), axis=-1))


@pytest.mark.parametrize("name", ["gqa-rope", SLOW_LEARNED])
def test_prefill_schedules_match_full_forward(name):
    # Three ways to fill the cache with 8 tokens: at once, one token at a time, and 5 then a 3-token chunk.
    model = VARIANTS[name]
    params = random_params(model, seed=1)
    transformer = Transformer(model)
    tokens = jnp.asarray(np.random.default_rng(8).integers(0, model.vocab_size, (2, 8)), jnp.int32)

    @jax.jit
    def run(params, tokens):
        apply = lambda t, c: transformer.apply({"params": params}, t, cache=c)  # noqa: E731
        full = transformer.apply({"params": params}, tokens)
        at_once, _ = apply(tokens, init_cache(model, 2, 16))

        def one_token(cache, token_B):
            logits, cache = apply(token_B[:, None], cache)
            return cache, logits[:, 0]

        one_by_one_cache, one_by_one_8xBxV = jax.lax.scan(one_token, init_cache(model, 2, 16), tokens.T)
        _, cache = apply(tokens[:, :5], init_cache(model, 2, 16))
        chunk, chunk_cache = apply(tokens[:, 5:8], cache)
        return full, at_once, one_by_one_8xBxV, one_by_one_cache.length, chunk, chunk_cache.length

    full, at_once, one_by_one, one_by_one_length, chunk, chunk_length = run(params, tokens)
    np.testing.assert_allclose(np.asarray(at_once), full, atol=TOLERANCE, rtol=0)
    for position in range(8):
        np.testing.assert_allclose(np.asarray(one_by_one[position]), full[:, position], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.asarray(chunk), full[:, 5:8], atol=TOLERANCE, rtol=0)
    assert int(one_by_one_length) == 8
    assert int(chunk_length) == 8


def test_chunk_row_sees_prefix_and_earlier_chunk_rows():
    # Row i of a 3-token chunk after a 5-token prefill attends to slots 0..5+i: its logits depend on the
    # cached slots 0..4 and on chunk rows 0..i, and on no later chunk row and no unwritten slot.
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=3)
    transformer = Transformer(model)
    tokens = jnp.asarray(np.random.default_rng(10).integers(0, model.vocab_size, (1, 8)), jnp.int32)

    @jax.jit
    def jacobians(params, tokens):
        _, prefilled = transformer.apply({"params": params}, tokens[:, :5], cache=init_cache(model, 1, 16))

        def chunk_logit_sums(embeddings, layer0_keys):
            cache = prefilled.replace(keys_BxSxKxE=(layer0_keys, *prefilled.keys_BxSxKxE[1:]))
            logits, _ = transformer.apply(
                {"params": params}, tokens[:, 5:8], input_embeddings_BxLxD=embeddings, cache=cache
            )
            return logits.sum(axis=(0, 2))  # [3]: one sum per chunk row

        chunk_embeddings = params["embed"]["embedding"][tokens[:, 5:8]]
        return jax.jacrev(chunk_logit_sums, argnums=(0, 1))(chunk_embeddings, prefilled.keys_BxSxKxE[0])

    by_embedding, by_cached_key = jax.device_get(jacobians(params, tokens))
    for row in range(3):
        assert np.all(by_embedding[row, :, row + 1 :] == 0.0), f"chunk row {row} reads a later row"
        assert np.all(np.any(by_embedding[row, :, : row + 1] != 0.0, axis=-1)), f"row {row} ignores an earlier row"
        prefix_gradient = by_cached_key[row, 0, :5].reshape(5, -1)
        assert np.all(np.any(prefix_gradient != 0.0, axis=-1)), f"row {row} ignores a cached slot"
        assert np.all(by_cached_key[row, :, 8:] == 0.0), f"row {row} reads an unwritten slot"


def test_rope_positions_advance_with_cache_index():
    model = VARIANTS["mha-rope"]
    params = random_params(model, seed=4)
    transformer = Transformer(model)
    prompt = jnp.asarray(np.random.default_rng(11).integers(0, model.vocab_size, (2, 5)), jnp.int32)

    @jax.jit
    def run(params, prompt):
        _, cache = transformer.apply({"params": params}, prompt, cache=init_cache(model, 2, 16))
        next_token = jnp.array([[3], [4]])
        step = lambda positions: transformer.apply({"params": params}, next_token, positions, cache=cache)[0]  # noqa: E731
        return step(None), step(jnp.full((2, 1), 5)), step(jnp.zeros((2, 1), jnp.int32))

    default, at_index, at_zero = jax.device_get(run(params, prompt))
    np.testing.assert_array_equal(default, at_index)
    assert np.abs(default - at_zero).max() > 1e-3, "RoPE position has no effect"


def _left_padded_batch():
    """Return prompts of 3 and 6 tokens and a padding-only row, left-padded to 6, with their mask."""
    short = np.array([5, 17, 2])
    long = np.array([9, 33, 1, 40, 21, 8])
    tokens = np.zeros((3, 6), np.int32)
    tokens[0, 3:] = short
    tokens[1] = long
    mask = np.zeros((3, 6), bool)
    mask[0, 3:] = True
    mask[1] = True
    return short, long, jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("name", ["gqa-rope", "mha-learned"])
def test_left_padding_matches_prompts_alone(name):
    model = VARIANTS[name]
    params = random_params(model, seed=5)
    transformer = Transformer(model)
    short, long, tokens, mask = _left_padded_batch()
    fed = jnp.array([[11, 12, 13, 14], [21, 22, 23, 24], [31, 32, 33, 34]])  # four decode steps per row

    @jax.jit
    def run(params, tokens, mask, short, long):
        apply = lambda *args, **kwargs: transformer.apply({"params": params}, *args, **kwargs)  # noqa: E731
        padded = apply(tokens, token_mask_BxL=mask)
        logits, cache = apply(tokens, token_mask_BxL=mask, cache=init_cache(model, 3, 16))

        def decode(cache, token_B):
            logits, cache = apply(token_B[:, None], cache=cache)
            return cache, logits[:, 0]

        _, steps_4xBxV = jax.lax.scan(decode, cache, fed.T)
        alone_short = apply(jnp.concatenate([short, fed[0]])[None])[0]
        alone_long = apply(jnp.concatenate([long, fed[1]])[None])[0]
        return padded, logits, steps_4xBxV, alone_short, alone_long

    padded, prefill, steps, alone_short, alone_long = jax.device_get(run(params, tokens, mask, short, long))
    # Forward pass: each real row equals its prompt run alone; the padding-only row is finite.
    np.testing.assert_allclose(padded[0, 3:], alone_short[:3], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(padded[1], alone_long[:6], atol=TOLERANCE, rtol=0)
    assert np.all(np.isfinite(padded[2])), "padding-only row is not finite"
    np.testing.assert_allclose(prefill[0, 3:], alone_short[:3], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(prefill[1], alone_long[:6], atol=TOLERANCE, rtol=0)
    # Four cached steps after the padded prefill.
    for step in range(4):
        np.testing.assert_allclose(steps[step][0], alone_short[3 + step], atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(steps[step][1], alone_long[6 + step], atol=TOLERANCE, rtol=0)
        assert np.all(np.isfinite(steps[step][2])), f"padding-only row is not finite at step {step}"


def test_padding_adds_nothing_to_loss_or_gradients():
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=6)
    transformer = Transformer(model)
    _, _, tokens, mask = _left_padded_batch()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    input_mask = mask[:, :-1]
    target_weights = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)

    def loss(params, inputs, input_mask, targets, weights):
        logits = transformer.apply({"params": params}, inputs, token_mask_BxL=input_mask)
        return next_token_loss(logits, targets, weights)[0]

    @jax.jit
    def run(params):
        with_padding_row, grads = jax.value_and_grad(loss)(params, inputs, input_mask, targets, target_weights)
        without_padding_row = loss(params, inputs[:2], input_mask[:2], targets[:2], target_weights[:2])
        only_padding_weights = target_weights.at[:2].set(0.0)
        only_padding, padding_grads = jax.value_and_grad(loss)(params, inputs, input_mask, targets, only_padding_weights)
        return with_padding_row, grads, without_padding_row, only_padding, padding_grads

    with_padding_row, grads, without_padding_row, only_padding, padding_grads = jax.device_get(run(params))
    assert float(with_padding_row) == pytest.approx(float(without_padding_row), rel=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), "NaN or inf in gradients"
    assert float(only_padding) == 0.0  # no weighted token: the loss is 0, not NaN
    assert all(np.all(g == 0.0) for g in jax.tree.leaves(padding_grads))


def _write_after_filling(model, params, filled: int, writing: int):
    """Fill a cache of 8 slots with `filled` tokens, then write `writing` more under jit."""
    transformer = Transformer(model)
    tokens = jnp.asarray(np.random.default_rng(12).integers(0, model.vocab_size, (1, filled)), jnp.int32)

    @jax.jit
    def run(params, tokens):
        _, cache = transformer.apply({"params": params}, tokens, cache=init_cache(model, 1, 8))
        logits, after = transformer.apply({"params": params}, jnp.full((1, writing), 3), cache=cache)
        return cache, logits, after

    return transformer, *run(params, tokens)


@pytest.mark.parametrize("filled, writing", [(8, 1), (7, 2)])
def test_write_past_cache_end_leaves_cache_unchanged(filled, writing):
    # JAX clamps an out-of-range dynamic_update_slice, which would overwrite the last slots. The model
    # rejects the write instead, so every slot keeps its contents and the logits are NaN.
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=7)
    transformer, cache, logits, after = _write_after_filling(model, params, filled, writing)

    assert bool(after.overflowed)
    assert not bool(cache.overflowed)
    assert int(after.length) == filled
    assert np.all(np.isnan(np.asarray(logits)))
    for before_keys, after_keys in zip(cache.keys_BxSxKxE, after.keys_BxSxKxE):
        np.testing.assert_array_equal(np.asarray(after_keys), np.asarray(before_keys))
    for before_values, after_values in zip(cache.values_BxSxKxE, after.values_BxSxKxE):
        np.testing.assert_array_equal(np.asarray(after_values), np.asarray(before_values))
    np.testing.assert_array_equal(np.asarray(after.valid_BxS), np.asarray(cache.valid_BxS))
    assert np.any(np.asarray(cache.keys_BxSxKxE[0][0, filled - 1]) != 0.0), "last written slot is empty"

    # Outside jit the same write raises before anything runs.
    with pytest.raises(CacheFullError, match="cache full"):
        transformer.apply({"params": params}, jnp.full((1, writing), 3), cache=cache)


def test_chunk_longer_than_cache_raises():
    model = VARIANTS["gqa-rope"]
    with pytest.raises(CacheFullError, match="do not fit"):
        jax.eval_shape(
            lambda: Transformer(model).init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32), cache=init_cache(model, 1, 8))
        )


def test_generation_stops_when_cache_is_full():
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=9)
    generator = Generator(model, params, cache_len=8)
    result = generator.generate([[1, 2, 3, 4, 5, 6]], 4, Sampling(temperature=0.0))
    assert len(result.tokens[0]) == 2
    assert result.stop_reasons == ["cache_full"]
    no_room = generator.generate([[1, 2, 3, 4, 5, 6, 7, 8]], 1)
    assert no_room.tokens == [[]]
    assert no_room.stop_reasons == ["cache_full"]
    nothing_requested = generator.generate([[1, 2, 3, 4, 5, 6]], 0)
    assert nothing_requested.tokens == [[]]
    assert nothing_requested.stop_reasons == ["max_new_tokens"]
    with pytest.raises(CacheFullError, match="does not fit"):
        generator.generate([list(range(9))], 1)


PROMPTS = [[3, 14, 15, 9, 2], [6, 5, 35, 8, 9]]


@pytest.mark.parametrize("name", ["gqa-rope", SLOW_LEARNED])
def test_generate_equals_uncached_greedy(name):
    model = VARIANTS[name]
    params = random_params(model, seed=14)
    cached = Generator(model, params, cache_len=16).generate(PROMPTS, 11, Sampling(temperature=0.0))
    uncached, _ = UncachedGreedy(model, params, bucket=16).generate(PROMPTS, 11)
    assert cached.tokens == uncached
    assert cached.stop_reasons == ["max_new_tokens", "max_new_tokens"]
    assert len(set(cached.tokens[0])) > 1, "greedy output is constant; the comparison would prove little"


def test_generate_batch_of_different_lengths_matches_each_alone():
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=14)
    prompts = [[7, 1, 30], [2, 44, 19, 5, 23, 11]]
    together = Generator(model, params, cache_len=16).generate(prompts, 6, Sampling(temperature=0.0))
    reference = UncachedGreedy(model, params, bucket=16)
    for row, prompt in enumerate(prompts):
        alone, _ = reference.generate([prompt], 6)
        assert together.tokens[row] == alone[0]


def test_decode_loop_compiles_once_per_shape():
    model = dataclasses.replace(VARIANTS["mqa-rope"], rope_base=5000.0)  # a config no other test compiles
    params = random_params(model, seed=12)
    generator = Generator(model, params, cache_len=16)
    generator.generate([[1, 2, 3], [4, 5, 6]], 3, Sampling(temperature=0.0))
    generator.generate([[7, 8, 9], [1, 1, 1]], 9, Sampling(temperature=0.7, top_k=5, top_p=0.9, seed=3), [4])
    generator.generate([[1, 2, 3, 4, 5], [4, 5]], 5, Sampling(temperature=1.0))
    assert generator.trace_counts["decode"] == 1
    assert generator.trace_counts["prefill"] == 2  # prompt lengths 3 and 5


def test_stop_token_ends_only_its_row():
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=14)
    generator = Generator(model, params, cache_len=16)
    free = generator.generate(PROMPTS, 10, Sampling(temperature=0.0)).tokens
    stop = next(t for t in free[0][1:] if t != free[0][0])
    stopped = generator.generate(PROMPTS, 10, Sampling(temperature=0.0), stop_tokens=[stop])

    assert stopped.stop_reasons[0] == "stop_token"
    for row in range(2):
        expected = free[row][: free[row].index(stop)] if stop in free[row] else free[row]
        assert stopped.tokens[row] == expected
        assert stopped.stop_reasons[row] == ("stop_token" if stop in free[row] else "max_new_tokens")


def test_sampling_reproducible_by_seed():
    model = VARIANTS["gqa-rope"]
    params = random_params(model, seed=14)
    generator = Generator(model, params, cache_len=16)
    first = generator.generate(PROMPTS, 10, Sampling(temperature=1.0, seed=1)).tokens
    again = generator.generate(PROMPTS, 10, Sampling(temperature=1.0, seed=1)).tokens
    other = generator.generate(PROMPTS, 10, Sampling(temperature=1.0, seed=2)).tokens
    assert first == again
    assert first != other


def test_cache_holds_kv_heads_only():
    for kv_heads in (4, 2, 1):
        model = dataclasses.replace(BASE, n_kv_heads=kv_heads)
        cache = init_cache(model, batch_size=3, length=16)
        assert len(cache.keys_BxSxKxE) == model.n_layers
        for keys, values in zip(cache.keys_BxSxKxE, cache.values_BxSxKxE):
            assert keys.shape == (3, 16, kv_heads, model.dim_per_head)
            assert values.shape == (3, 16, kv_heads, model.dim_per_head)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-1), "seed"),
    ],
)
def test_sampling_rejects_invalid_settings(settings, message):
    from scaling.errors import UserError

    with pytest.raises(UserError, match=message):
        Sampling(**settings)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cache_size_calculator_matches_arrays(kv_heads, dtype):
    model = dataclasses.replace(BASE, n_kv_heads=kv_heads, compute_dtype=dtype, n_layers=3)
    cache = init_cache(model, batch_size=5, length=16)
    real_bytes = sum(x.nbytes for x in (*cache.keys_BxSxKxE, *cache.values_BxSxKxE))
    assert cache.kv_nbytes() == real_bytes
    assert kv_cache_bytes_for(model, context=16, batch_size=5) == real_bytes
    bytes_per_value = 4 if dtype == "float32" else 2
    assert kv_cache_bytes(3, kv_heads, 8, 16, 5, bytes_per_value) == real_bytes


def test_cache_comparison_mha_gqa_mqa():
    # 32 layers of 32 heads of 128, 4096 tokens, batch 1, 2-byte values: 2 * 32 * 32 * 128 * 4096 * 2 = 2 GiB.
    rows = kv_cache_comparison(n_layers=32, n_heads=32, head_dim=128, context=4096, batch_size=1, bytes_per_value=2)
    assert [row["attention"] for row in rows] == ["MHA", "GQA", "MQA"]
    assert [row["kv_heads"] for row in rows] == [32, 8, 1]
    assert rows[0]["bytes"] == 2**31
    assert rows[0]["gib"] == 2.0
    assert rows[1]["bytes"] == 2**31 // 4
    assert rows[2]["bytes"] == 2**31 // 32
    assert [row["attention"] for row in kv_cache_comparison(2, 2, 64, 128)] == ["MHA", "MQA"]  # no GQA between 1 and 2
