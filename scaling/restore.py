"""Restore a trained run for inference: its config, the parameters of its newest checkpoint, its tokenizer.

A run folder `RUNS/<sweep>/<run_id>/` records its full `TrainConfig` in config.json (key "config") and its
training state in Orbax checkpoints under checkpoints/<step>/. The tokenizer lives with the prepared
corpus at `config.data.path`. Every problem a user can cause ends in a one-line UserError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jax

from scaling.checkpoint import Checkpointer
from scaling.config import TrainConfig
from scaling.errors import UserError
from scaling.tokenizer import Tokenizer, load_tokenizer
from scaling.train import Trainer

RUN_HINT = "pass a run folder such as runs/<sweep>/<run_id>, or a run id of the run store"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedRun:
    """A run restored for inference."""

    path: Path  # the run folder
    config: TrainConfig  # the config the run was trained with
    params: dict  # model parameters of the newest readable checkpoint
    step: int  # optimizer step of that checkpoint
    tokenizer: Tokenizer  # the prepared corpus's tokenizer


def load_trained_run(run_dir: str | Path) -> TrainedRun:
    """Return the config, newest checkpoint's parameters and tokenizer of the run in `run_dir`."""
    path = Path(run_dir).expanduser()
    if path.is_file():
        raise UserError(f"run folder {path} is a file, not a run folder; {RUN_HINT}")
    if not path.is_dir():
        path = _run_by_id(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} is not a run folder (config.json is missing); {RUN_HINT}")
    try:
        record = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{config_path} is not valid JSON ({error}); the run record is damaged") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UserError(f"{config_path} has no 'config' section; {RUN_HINT}")
    config = TrainConfig.from_dict(record["config"])

    tokenizer = _load_run_tokenizer(path, config)
    step, params = _restore_params(path, config)
    return TrainedRun(path=path, config=config, params=params, step=step, tokenizer=tokenizer)


def _run_by_id(path: Path) -> Path:
    """Return RUNS/<sweep>/<path> when `path` is a bare run id that names one run of the run store.

    Raises UserError when it names none, or runs of several sweeps (listed, to choose from).
    """
    from scaling.paths import runs_root

    root = runs_root(None)
    matches = [] if len(path.parts) != 1 else sorted(
        folder for folder in root.glob(f"*/{path.name}") if (folder / "config.json").is_file())
    if len(matches) == 1:
        log.info("run %s: using %s", path, matches[0])
        return matches[0]
    if matches:
        raise UserError(f"run id {path} names runs of {len(matches)} sweeps ({', '.join(map(str, matches))}); "
                        "pass one of those folders")
    raise UserError(f"run folder {path} does not exist; {RUN_HINT}")


def _load_run_tokenizer(path: Path, config: TrainConfig) -> Tokenizer:
    corpus = Path(config.data.path).expanduser()
    try:
        tokenizer = load_tokenizer(corpus)
    except UserError as error:
        raise UserError(f"tokenizer of run {path} could not be loaded from data.path={str(corpus)!r}: {error}") from None
    if tokenizer.vocab_size != config.model.vocab_size:
        raise UserError(
            f"tokenizer at {corpus} has {tokenizer.vocab_size} tokens but run {path} was trained with "
            f"vocab_size={config.model.vocab_size}; the corpus folder was prepared again with other settings"
        )
    return tokenizer


def _restore_params(path: Path, config: TrainConfig) -> tuple[int, dict]:
    """Restore the newest readable checkpoint and return (its step, its parameters)."""
    checkpoint_dir = path / "checkpoints"
    has_steps = checkpoint_dir.is_dir() and any(child.name.isdigit() for child in checkpoint_dir.iterdir())
    if not has_steps:
        raise UserError(f"run {path} has no checkpoint in {checkpoint_dir}; train it first (`scaling train`)")

    # scaling.train owns the layout of the training state, so the restore target comes from its Trainer.
    # On this process's first device: the layout a run trained on (`mesh`, e.g. fsdp=4) may need devices
    # this machine lacks, and a checkpoint restores into any layout.
    abstract_state = Trainer(config.replace(mesh=""), devices=jax.devices()[:1]).abstract_state()
    checkpointer = Checkpointer(checkpoint_dir, keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(abstract_state)
    finally:
        checkpointer.close()
    if restored is None:
        raise UserError(f"no checkpoint of run {path} could be read (see the warnings above); train the run again")
    step, state = restored
    return step, state["params"]
