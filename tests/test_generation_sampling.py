"""Token sampling: greedy, temperature, top-k and top-p against the distributions they define."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.generate import sample_tokens

DRAWS = 8000  # rows drawn at once; a frequency's standard error is at most 0.5 / sqrt(8000) = 0.0056
FREQUENCY_TOLERANCE = 0.03  # more than 5 standard errors
PROBS = np.array([0.5, 0.3, 0.15, 0.05])

_sample = jax.jit(sample_tokens)


def draw(logits_V, temperature=1.0, top_k=0, top_p=1.0, seed=0) -> np.ndarray:
    """Return DRAWS independent samples from one row of logits."""
    logits_BxV = jnp.tile(jnp.asarray(logits_V, jnp.float32), (DRAWS, 1))
    tokens = _sample(logits_BxV, jax.random.key(seed), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    return np.asarray(tokens)


def frequencies(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(tokens, minlength=vocab) / len(tokens)


def test_temperature_zero_is_argmax():
    logits = np.random.default_rng(0).standard_normal((DRAWS, 4)).astype(np.float32)
    tokens = _sample(jnp.asarray(logits), jax.random.key(1), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(axis=-1))


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.random.default_rng(1).standard_normal((DRAWS, 4)).astype(np.float32)
    tokens = _sample(jnp.asarray(logits), jax.random.key(2), jnp.float32(5.0), jnp.int32(1), jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(axis=-1))


def test_temperature_one_follows_softmax():
    observed = frequencies(draw(np.log(PROBS)), 4)
    np.testing.assert_allclose(observed, PROBS, atol=FREQUENCY_TOLERANCE)


def test_temperature_two_flattens_distribution():
    expected = np.sqrt(PROBS) / np.sqrt(PROBS).sum()  # softmax(log p / 2) is proportional to p^(1/2)
    observed = frequencies(draw(np.log(PROBS), temperature=2.0), 4)
    np.testing.assert_allclose(observed, expected, atol=FREQUENCY_TOLERANCE)


def test_top_k_keeps_k_most_likely():
    observed = frequencies(draw(np.log(PROBS), top_k=2), 4)
    assert observed[2] == 0.0
    assert observed[3] == 0.0
    np.testing.assert_allclose(observed[:2], PROBS[:2] / PROBS[:2].sum(), atol=FREQUENCY_TOLERANCE)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.5, 1),  # token 0 alone reaches 0.5
        (0.7, 2),  # 0.5 < 0.7, then 0.5 + 0.3 = 0.8 reaches it
        (0.81, 3),  # 0.8 < 0.81, so token 2 is needed
        (1.0, 4),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    observed = frequencies(draw(np.log(PROBS), top_p=top_p), 4)
    assert np.all(observed[kept:] == 0.0), f"top_p={top_p} sampled a token outside the nucleus"
    np.testing.assert_allclose(observed[:kept], PROBS[:kept] / PROBS[:kept].sum(), atol=FREQUENCY_TOLERANCE)


def test_top_p_applies_after_top_k():
    # Top-2 renormalises to (0.625, 0.375); a nucleus of 0.6 then keeps token 0 only.
    observed = frequencies(draw(np.log(PROBS), top_k=2, top_p=0.6), 4)
    assert observed[0] == 1.0


def test_top_p_after_temperature():
    # At temperature 2 the probabilities are (0.38, 0.29, 0.21, 0.12), so a nucleus of 0.6 keeps two tokens.
    flattened = np.sqrt(PROBS) / np.sqrt(PROBS).sum()
    observed = frequencies(draw(np.log(PROBS), temperature=2.0, top_p=0.6), 4)
    assert np.all(observed[2:] == 0.0)
    np.testing.assert_allclose(observed[:2], flattened[:2] / flattened[:2].sum(), atol=FREQUENCY_TOLERANCE)


def test_same_seed_same_draws():
    first = draw(np.log(PROBS), seed=3)
    again = draw(np.log(PROBS), seed=3)
    other = draw(np.log(PROBS), seed=4)
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)
