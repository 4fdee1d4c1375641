"""Parameter and FLOP accounting for the decoder in `models/transformer.py`.

Two parameter conventions are reported everywhere, because published laws use different ones:
- `total`: every parameter, embeddings and output head included (Hoffmann et al. 2022 count this way).
- `non_embedding`: the attention and MLP matrices only (Kaplan et al. 2020, section 2.1: N = 12 n_layer d^2,
  "excluding embedding and bias parameters"; norms are O(n_layer d) and left out as well).

FLOPs per token follow Hoffmann et al. 2022, appendix F: every matrix multiply counts 2 FLOPs per
multiply-add, attention logits and the attention-weighted sum count over the full context (no causal
halving), softmax counts 3 FLOPs per logit, and the backward pass costs twice the forward pass. The
embedding lookup counts as a matrix multiply in that convention; XLA compiles it as a gather.
"""

from __future__ import annotations

from scaling.config import ModelConfig


def parameter_counts(model: ModelConfig) -> dict[str, int]:
    """Count parameters by group; `total` is the sum of the groups and `non_embedding` is Kaplan's N.

    Linear layers have no biases. RMSNorm has one scale vector, LayerNorm a scale and a bias.
    """
    d, n_layers, vocab = model.d_model, model.n_layers, model.vocab_size
    q_width = model.n_heads * model.dim_per_head
    kv_width = model.kv_heads * model.dim_per_head

    embedding = vocab * d
    if model.positions == "learned":
        embedding += model.max_seq_len * d

    attention_per_layer = d * q_width + 2 * d * kv_width + q_width * d
    mlp_matrices = 3 if model.mlp == "swiglu" else 2
    mlp_per_layer = mlp_matrices * d * model.hidden_size
    params_per_norm = d if model.norm == "rmsnorm" else 2 * d

    groups = {
        "embedding": embedding,
        "attention": n_layers * attention_per_layer,
        "mlp": n_layers * mlp_per_layer,
        "norms": (2 * n_layers + 1) * params_per_norm,
        "head": 0 if model.tie_embeddings else vocab * d,
    }
    groups["total"] = sum(groups.values())
    groups["non_embedding"] = groups["attention"] + groups["mlp"]
    return groups


def forward_flops_per_token(model: ModelConfig, seq_len: int, *, include_embedding_and_logits: bool = True) -> int:
    """Return forward-pass FLOPs per token at context `seq_len` (Hoffmann et al. 2022, appendix F).

    With `include_embedding_and_logits=False` the count leaves out the embedding lookup and the output
    logits, the variant that appendix reports separately.
    """
    d, vocab = model.d_model, model.vocab_size
    q_width = model.n_heads * model.dim_per_head
    kv_width = model.kv_heads * model.dim_per_head

    projections = 2 * d * q_width + 2 * 2 * d * kv_width + 2 * q_width * d
    attention_logits = 2 * seq_len * q_width
    softmax = 3 * model.n_heads * seq_len
    attention_sum = 2 * seq_len * q_width
    mlp_matrices = 3 if model.mlp == "swiglu" else 2
    mlp = 2 * mlp_matrices * d * model.hidden_size
    per_layer = projections + attention_logits + softmax + attention_sum + mlp

    flops = model.n_layers * per_layer
    if include_embedding_and_logits:
        flops += 2 * vocab * d  # embedding, counted as a one-hot matrix multiply
        flops += 2 * d * vocab  # output logits
    return flops


def training_flops_per_token(model: ModelConfig, seq_len: int) -> dict[str, int]:
    """Return training FLOPs per token (forward + backward) under the three conventions recorded per run.

    `6N_total` and `6N_non_embedding` are the 6N approximation with each parameter convention; `exact` is
    three times the forward count of appendix F, embeddings, attention and logits included.
    """
    counts = parameter_counts(model)
    return {
        "6N_total": 6 * counts["total"],
        "6N_non_embedding": 6 * counts["non_embedding"],
        "exact": 3 * forward_flops_per_token(model, seq_len),
    }


def matmul_flops_per_token(model: ModelConfig, seq_len: int) -> int:
    """Return forward FLOPs per token of the matrix multiplies XLA actually runs.

    This is appendix F's count without the embedding lookup (a gather) and without softmax, the quantity
    to compare with XLA's cost analysis of the compiled forward pass.
    """
    softmax = model.n_layers * 3 * model.n_heads * seq_len
    embedding = 2 * model.vocab_size * model.d_model
    return forward_flops_per_token(model, seq_len) - softmax - embedding
