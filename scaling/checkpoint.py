"""Orbax checkpoints of the training state, for exact resume.

The state saved is a pytree of parameters, optimizer state, the step and the RNG key data. The step is
also the data position, because `scaling.batches.batch_at` draws batch `step` from (seed, step) alone.
Orbax writes each step to a temporary folder and renames it when complete, so a checkpoint cut short by
a kill is never listed as a finished step. A finished step can still be damaged later (a full disk, a
copy cut short, a file deleted by hand). `restore_latest` then falls back to the newest readable step. It
moves the damaged ones aside, so the steps after it can be saved again.

Two failures are distinguished before any array is read. A checkpoint whose stored tree differs from the
model's (other layers or widths: the config changed under the run) raises a UserError naming the first
differing path; nothing is moved or deleted. A checkpoint whose files cannot be read is damaged.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from scaling.errors import UserError

log = logging.getLogger(__name__)

ITEM = "default"  # folder of the single item inside an Orbax step folder
UNREADABLE_PREFIX = "unreadable-"  # damaged steps move to checkpoints/unreadable-<step>, a name Orbax ignores


class Checkpointer:
    """Save and restore the training state of one run under `<run>/checkpoints/<step>/`."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options)

    def _reopen(self) -> None:
        # A manager fixes its item layout from the first step it reads, so a damaged step must not be that step.
        self.manager.close()
        self.manager = self._open()

    def save(self, step: int, state: Any) -> None:
        """Start writing `state` as checkpoint `step`; Orbax finishes the write in the background.

        `force` stops Orbax from skipping the save without a word when a step >= `step` is listed; such a
        step makes Orbax raise instead.
        """
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def saving(self) -> bool:
        """Return whether Orbax is still writing a checkpoint in the background."""
        return self.manager.is_saving_in_progress()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, *, set_aside: bool = False) -> tuple[int, Any] | None:
        """Restore the newest readable checkpoint into the structure of `abstract_state`.

        A checkpoint that fails to restore (truncated or missing files) is skipped with a warning naming
        its step, and the one before it is tried. With `set_aside` (training, which holds the run lock),
        the skipped steps are then moved aside (see `_set_aside`), so training can save those steps again.
        Readers leave the folder as it is. Returns None when no checkpoint can be restored. Raises
        UserError when a checkpoint is readable but contains a differently shaped state.
        """
        _ignore_late_read_callbacks()  # before any read: the first callbacks may fail while the error propagates
        unreadable: list[int] = []
        restored = None
        for step in reversed(self.steps()):
            try:
                stored = self._stored_leaves(step)
            except Exception as error:  # Orbax raises many types for damaged files, and each one means skip.
                self._skip(step, error, unreadable)
                continue
            check_same_tree(stored, abstract_state, f"checkpoint at step {step} in {self.directory}")
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as error:
                self._skip(step, error, unreadable)
                continue
            restored = (step, state)
            break
        if unreadable and set_aside:
            for step in unreadable:
                self._set_aside(step)
            self._reopen()
        return restored

    def _skip(self, step: int, error: Exception, unreadable: list[int]) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if len(first_line) > 200:  # Orbax's messages can run to pages; a word boundary keeps the excerpt readable
            first_line = first_line[:200].rsplit(" ", 1)[0] + " ..."
        log.warning("checkpoint at step %d in %s is unreadable (%s); trying an older one", step, self.directory,
                    first_line)
        unreadable.append(step)
        self._reopen()

    def _stored_leaves(self, step: int) -> dict[str, tuple[int, ...]]:
        """Return {path: shape} of every array stored in checkpoint `step`, from its metadata."""
        handler = ocp.PyTreeCheckpointHandler()
        try:
            metadata = handler.metadata(epath.Path(self.directory / str(step) / ITEM))
        finally:
            handler.close()
        leaves = _leaves_by_path(getattr(metadata, "tree", metadata))
        if not leaves:
            raise ValueError("its metadata lists no arrays: files are missing or truncated")
        return leaves

    def _set_aside(self, step: int) -> None:
        """Move the damaged step folder to checkpoints/unreadable-<step>[-n], out of Orbax's listing."""
        source = self.directory / str(step)
        if not source.exists():
            return
        target = self.directory / f"{UNREADABLE_PREFIX}{step}"
        number = 1
        while target.exists():
            number += 1
            target = self.directory / f"{UNREADABLE_PREFIX}{step}-{number}"
        try:
            source.rename(target)
        except OSError as error:
            log.warning("could not move unreadable checkpoint %s aside (%s); deleting it", source, error)
            shutil.rmtree(source, ignore_errors=True)
            return
        log.warning("moved unreadable checkpoint of step %d to %s; step %d will be saved again", step, target,
                    step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _ignore_late_read_callbacks() -> None:
    """Drop the "Event loop is closed" errors that the reads of a failed restore raise after it ends.

    When one array of a step fails to read, Orbax closes its event loop while TensorStore still has the
    step's other reads in flight. Each of those then fails to schedule its callback, and Python would print
    one traceback per array (dozens). They carry nothing beyond the warning `_skip` logs, so from the first
    restore on, this process's unraisable-exception hook ignores exactly that error and passes on every other.
    """
    previous = sys.unraisablehook
    if getattr(previous, "ignores_closed_event_loop", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.ignores_closed_event_loop = True
    sys.unraisablehook = hook


def abstract_like(state: Any) -> Any:
    """Return shape/dtype/sharding stand-ins for `state`, the restore target Orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def check_same_tree(stored: dict[str, tuple[int, ...]], target: Any, what: str) -> None:
    """Raise UserError naming the first path where the stored arrays and `target`'s differ.

    Paths are compared as `params/block_0/mlp/up/kernel`, whatever the container of each level (dict,
    tuple, optax named tuple). Parameters are compared before optimizer moments, so the message names the
    parameter the config changed.
    """
    wanted = _leaves_by_path(target)
    fix = "restore with the config the run was saved with, or start a new run_id"
    for path in sorted(wanted, key=_params_first):
        if path not in stored:
            raise UserError(f"{what} does not fit this model: {path} {wanted[path]} is in the model but not in "
                            f"the checkpoint; {fix}")
        if stored[path] != wanted[path]:
            raise UserError(f"{what} does not fit this model: {path} has shape {stored[path]} in the checkpoint "
                            f"and {wanted[path]} in the model; {fix}")
    extra = sorted((path for path in stored if path not in wanted), key=_params_first)
    if extra:
        raise UserError(f"{what} does not fit this model: {extra[0]} {stored[extra[0]]} is in the checkpoint "
                        f"but not in the model; {fix}")


def _params_first(path: str) -> bool:
    return not path.startswith("params/")


def _leaves_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def _path_name(path: tuple) -> str:
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)
