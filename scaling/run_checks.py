"""Checks of a run against its corpus and its run folder, made before anything of the run is trained.

`scaling train` makes them in its own process. The sweep launchers make them for every run of a spec before
the first one starts, so that a sweep stops with one message instead of failing run after run. `scaling
sweep plan` makes them too, to show what a launch would refuse. This module imports no JAX.

- `corpus_size_problem`: the corpus has less than one training batch or one validation sequence.
- `folder_conflict`: the run folder already contains another run, trained with a different config or on a
  different corpus. Such a run is never skipped as completed nor resumed, because its losses would be
  reported as those of the run the config now describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling.config import DataConfig, TrainConfig, config_differences, same_run
from scaling.data import META_FILE
from scaling.run_store import RunDir


def corpus_size_problem(data: DataConfig, train_tokens: int, val_tokens: int, *, in_spec: bool = False) -> str | None:
    """Return why a corpus of `train_tokens` + `val_tokens` tokens cannot train `data`'s batches, or None.

    `in_spec` words the fix for a sweep spec, whose corpus the sweep prepares with the spec's settings.
    """
    batch = data.batch_size * data.seq_len + 1  # one batch of windows laid end to end, sharing boundary tokens
    if train_tokens < batch:
        fix = ("use a larger data.source, or lower train.batch_size or train.seq_len in the spec" if in_spec
               else "prepare a larger corpus, or lower batch_size or seq_len")
        return (f"corpus at {data.path} has {train_tokens} training tokens, fewer than one batch of "
                f"batch_size * seq_len + 1 = {batch}; {fix}")
    if val_tokens < data.seq_len + 1:
        fix = ("raise data.val_fraction in the spec, or lower train.seq_len" if in_spec
               else "prepare it again with a larger --val-fraction, or lower seq_len")
        return (f"corpus at {data.path} has {val_tokens} validation tokens, fewer than one sequence of "
                f"seq_len + 1 = {data.seq_len + 1}; {fix}")
    return None


def prepared_meta(path: str | Path) -> dict[str, Any]:
    """Return the meta.json of the prepared corpus folder `path` (fingerprint, token counts per split), or {}
    when it has none."""
    try:
        meta = json.loads((Path(path).expanduser() / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def folder_conflict(run_dir: RunDir, config: TrainConfig, corpus_meta: dict[str, Any] | None) -> str | None:
    """Return how the run already in `run_dir` differs from the run `config` describes on the corpus whose
    meta.json is `corpus_meta` ("a run with a different config (seed 0 -> 1)"), or None when the folder is new
    or contains that run.

    The device layout may differ (a run may resume on another mesh); so may the corpus's path, since the
    corpus is identified by its fingerprint. A corpus without a fingerprint (or None) is not compared.
    """
    if not run_dir.config_path.is_file():
        return None
    recorded: dict[str, Any] = run_dir.config()
    if not same_run(recorded.get("config"), config):
        return f"a run with a different config ({config_differences(recorded.get('config'), config)})"
    trained_on = recorded.get("corpus") or {}
    fingerprint = (corpus_meta or {}).get("fingerprint")
    if fingerprint is not None and trained_on.get("fingerprint") not in (None, fingerprint):
        return (f"a run trained on another corpus ({corpus_difference(trained_on, corpus_meta)}; fingerprint "
                f"{trained_on['fingerprint']} -> {fingerprint} at {config.data.path})")
    return None


def corpus_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """Return what differs between two prepared corpora's metas, as "source a.txt -> b.txt; val_fraction 0.05 ->
    0.1", or that only their text did."""
    changes = []
    if recorded.get("source") != current.get("source"):
        changes.append(f"source {recorded.get('source')} -> {current.get('source')}")
    old, new = recorded.get("settings") or {}, current.get("settings") or {}
    changes += [f"{key} {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}"
                for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(changes) or "same source and settings, other text"
