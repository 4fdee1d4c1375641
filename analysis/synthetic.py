"""Points and run folders generated from a known law, to check that the fits recover it.

`write_synthetic_run` writes the files of docs/run_format.md through `scaling.run_store`, with the keys the
analysis reads; the values of keys it does not read are placeholders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scaling.run_store import RunDir

from analysis.laws import ParametricLaw


def law_losses(law: ParametricLaw, params: np.ndarray, tokens: np.ndarray, noise: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """Return L(N, D) of `law`, times exp(noise * standard normal) per point when `noise` > 0."""
    losses = np.asarray(law.loss(np.asarray(params, float), np.asarray(tokens, float)), dtype=float)
    if noise > 0:
        losses = losses * np.exp(noise * np.random.default_rng(seed).standard_normal(losses.shape))
    return losses


def isoflop_grid(law: ParametricLaw, budgets: list[float], sizes_per_budget: int, span: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (N, D, budget) for sizes log-spaced from N_opt/span to N_opt*span at each budget (FLOPs)."""
    params, tokens, labels = [], [], []
    for flops in budgets:
        optimum, _ = law.compute_optimal(flops)
        sizes = np.geomspace(optimum / span, optimum * span, sizes_per_budget)
        params.extend(sizes)
        tokens.extend(flops / (6 * sizes))
        labels.extend([flops] * sizes_per_budget)
    return np.array(params), np.array(tokens), np.array(labels)


def write_synthetic_run(runs_root: Path, sweep: str, run_id: str, *, params_total: int, tokens: int,
                        final_loss: float | None, status: str = "completed", fingerprint: str = "synthetic",
                        params_non_embedding: int | None = None, flop_budget: float | None = None,
                        curve_points: int = 4, train_tokens: int | None = None) -> RunDir:
    """Write one run folder; the learning curve falls to `final_loss` at `tokens`. `train_tokens` is the
    size of the corpus's training split, when the record should give it."""
    run = RunDir.at(runs_root, sweep, run_id)
    non_embedding = params_non_embedding if params_non_embedding is not None else int(params_total * 0.8)
    config = {"tokens": tokens}
    if flop_budget is not None:
        config["flop_budget"] = flop_budget
    run.write_config({
        "run_id": run_id,
        "sweep": sweep,
        "config": config,
        "corpus": {"source": "synthetic", "tokenizer": "bytes", "fingerprint": fingerprint,
                   **({"tokens": {"train": train_tokens}} if train_tokens is not None else {})},
        "params": {"total": params_total, "non_embedding": non_embedding,
                   "embedding": params_total - non_embedding},
        "flops_per_token": {"6N_total": 6 * params_total, "6N_non_embedding": 6 * non_embedding},
        "tokens_planned": tokens,
        "tokens": tokens,
        "flops": {"6ND_total": 6.0 * params_total * tokens, "6ND_non_embedding": 6.0 * non_embedding * tokens},
    })
    if final_loss is not None:
        steps = np.linspace(tokens / curve_points, tokens, curve_points)
        run.append_metrics([
            {"step": i + 1, "tokens": int(seen), "train_loss": final_loss * (1 + 0.5 * (1 - seen / tokens)),
             "val_loss": final_loss * (1 + 0.5 * (1 - seen / tokens))}
            for i, seen in enumerate(steps)
        ])
    run.write_summary({
        "status": status,
        "final_val_loss": final_loss if status == "completed" else None,
        "tokens_seen": tokens,
        "flops_spent": 6.0 * params_total * tokens,
        "diverged_step": 3 if status == "diverged" else None,
        "error": None,
    })
    return run
