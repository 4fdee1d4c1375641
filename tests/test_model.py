"""Decoder properties: causality through gradients, grouped-query sharing, variants run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.transformer import Transformer, next_token_loss
from scaling.config import ModelConfig

SMALL = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)


def _init(model: ModelConfig, seq: int = 8, seed: int = 0):
    transformer = Transformer(model)
    tokens = jax.random.randint(jax.random.key(seed + 1), (2, seq), 0, model.vocab_size)
    params = transformer.init(jax.random.key(seed), tokens)["params"]
    return transformer, params, tokens


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_gradient_of_logits_ignores_later_tokens(positions):
    model = ModelConfig(**{**SMALL.__dict__, "positions": positions})
    transformer, params, tokens = _init(model)
    embeddings = params["embed"]["embedding"][tokens]  # [B, L, D]

    def logit_sums_per_position(embedded):
        logits = transformer.apply({"params": params}, tokens, input_embeddings_BxLxD=embedded)
        return logits.sum(axis=(0, 2))  # [L]

    jacobian_LxBxLxD = jax.jit(jax.jacrev(logit_sums_per_position))(embeddings)
    for i in range(tokens.shape[1]):
        later = np.asarray(jacobian_LxBxLxD[i, :, i + 1 :])
        earlier = np.asarray(jacobian_LxBxLxD[i, :, : i + 1])
        assert np.all(later == 0.0), f"position {i} depends on later positions"
        assert np.any(earlier != 0.0), f"position {i} depends on nothing"

def _jacobian_of_logits_by_embeddings(transformer, params, tokens, **kwargs):
    """Return d(sum of logits at position i) / d(embedding at position j) as [L, B, L, D]."""
    embeddings = params["embed"]["embedding"][tokens]

    def logit_sums_per_position(embedded):
        logits = transformer.apply({"params": params}, tokens, input_embeddings_BxLxD=embedded, **kwargs)
        return logits.sum(axis=(0, 2))

    return np.asarray(jax.jit(jax.jacrev(logit_sums_per_position))(embeddings))


def test_mask_off_leaks_later_tokens():
    # The same weights without the causal mask: earlier positions now depend on later ones.
    _, params, tokens = _init(SMALL)
    jacobian_LxBxLxD = _jacobian_of_logits_by_embeddings(Transformer(SMALL, causal=False), params, tokens)
    for i in range(tokens.shape[1] - 1):
        assert np.any(jacobian_LxBxLxD[i, :, i + 1 :] != 0.0), f"position {i} does not see later tokens"


def test_all_ones_padding_mask_keeps_causal_mask():
    transformer, params, tokens = _init(SMALL)
    all_real = jnp.ones(tokens.shape, bool)
    plain = transformer.apply({"params": params}, tokens)
    masked = transformer.apply({"params": params}, tokens, token_mask_BxL=all_real)
    np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), atol=1e-6, rtol=0)

    jacobian_LxBxLxD = _jacobian_of_logits_by_embeddings(transformer, params, tokens, token_mask_BxL=all_real)
    for i in range(tokens.shape[1]):
        assert np.all(jacobian_LxBxLxD[i, :, i + 1 :] == 0.0), f"position {i} depends on later positions"


def test_changing_token_j_changes_only_positions_j_and_later():
    transformer, params, tokens = _init(SMALL)
    base = transformer.apply({"params": params}, tokens)
    for j in range(tokens.shape[1]):
        changed = tokens.at[:, j].set((tokens[:, j] + 1) % SMALL.vocab_size)
        logits = transformer.apply({"params": params}, changed)
        np.testing.assert_allclose(logits[:, :j], base[:, :j], atol=1e-6)
        assert not np.allclose(logits[:, j:], base[:, j:], atol=1e-6)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_variants_train_one_step(kv_heads):
    model = ModelConfig(**{**SMALL.__dict__, "n_kv_heads": kv_heads})
    transformer, params, tokens = _init(model)

    def loss(p):
        return next_token_loss(transformer.apply({"params": p}, tokens[:, :-1]), tokens[:, 1:])[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    # A random model predicts about uniformly: loss near log(vocab).
    assert abs(float(value) - np.log(model.vocab_size)) < 0.5
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_z_loss_adds_log_normaliser_penalty():
    logits = jnp.array([[[2.0, 0.0, -1.0]]])
    targets = jnp.array([[0]])
    loss, objective = next_token_loss(logits, targets, z_loss=1e-2)
    log_z = jax.nn.logsumexp(logits[0, 0])
    assert float(loss) == pytest.approx(float(log_z - 2.0), rel=1e-6)
    assert float(objective - loss) == pytest.approx(1e-2 * float(log_z) ** 2, rel=1e-5)
