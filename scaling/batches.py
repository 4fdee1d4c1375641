"""Batches cut from a prepared corpus's tokens: random training windows and fixed validation windows.

Training batches are random windows whose starts depend only on (seed, step), so a run resumed at step k
gets the same batches as one that never stopped, and the data position needs no checkpoint of its own.
Validation uses a fixed set of windows from the start of the validation split. Bits per byte of a window
come from the tokenizer's `token_byte_lengths`.
"""

from __future__ import annotations

import numpy as np

from scaling.errors import UserError
from scaling.tokenizer import Tokenizer


def batch_at(tokens: np.ndarray, step: int, *, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    """Return the training batch of optimizer step `step`: [batch_size, seq_len + 1] int32 token windows.

    Window starts are uniform over the split and drawn from `np.random.default_rng([seed, step])`, so the
    batch is a pure function of (tokens, seed, step): resuming at step k reproduces an uninterrupted run.
    Inputs are `batch[:, :-1]` and targets `batch[:, 1:]`.
    """
    if seed < 0:
        raise UserError(f"seed={seed} must be >= 0")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    window = seq_len + 1
    if len(tokens) < window:
        raise UserError(
            f"corpus smaller than one sequence: the split has {len(tokens)} tokens but seq_len={seq_len} "
            f"needs {window}; lower seq_len or prepare a larger corpus"
        )
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - window + 1, size=batch_size)
    return np.asarray(tokens[starts[:, None] + np.arange(window)], dtype=np.int32)


def validation_windows(val: np.ndarray, *, eval_tokens: int, seq_len: int) -> np.ndarray:
    """Return fixed evaluation windows [n, seq_len + 1] int32 cut from the start of the validation split.

    Window i starts at token i * seq_len, so consecutive windows share one token (the last input of one is the
    first of the next) and their predicted tokens `windows[:, 1:]` never overlap. n is eval_tokens // seq_len,
    at least 1, and at most as many windows as fit in the split.
    """
    window = seq_len + 1
    if len(val) < window:
        raise UserError(
            f"validation split has {len(val)} tokens, fewer than one sequence of seq_len + 1 = {window}; "
            "lower seq_len, raise val_fraction or prepare a larger corpus"
        )
    n_windows = min(max(1, eval_tokens // seq_len), (len(val) - 1) // seq_len)
    starts = np.arange(n_windows) * seq_len
    return np.asarray(val[starts[:, None] + np.arange(window)], dtype=np.int32)


def predicted_bytes(windows: np.ndarray, tokenizer: Tokenizer) -> int:
    """Return the UTF-8 bytes of text that the predicted tokens `windows[:, 1:]` stand for.

    Bits per byte of an evaluation is then `total_nats / (ln 2 * predicted_bytes)`, where total_nats is the
    summed cross-entropy over the same tokens. End-of-document tokens count 0 bytes.
    """
    return int(tokenizer.token_byte_lengths[np.asarray(windows)[:, 1:]].sum())
