"""Orbax checkpoints of the training state, for exact resume.

The state saved is a pytree of parameters, optimizer state, the step and the RNG key data. The step is
also the data position, because `scaling.data.batch_at` draws batch `step` from (seed, step) alone.
Orbax writes each step to a temporary folder and renames it when complete, so a checkpoint cut short by
a kill is never listed as a finished step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save and restore the training state of one run under `<run>/checkpoints/<step>/`."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any) -> None:
        """Start writing `state` as checkpoint `step`; Orbax finishes the write in the background."""
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
        """Restore the newest readable checkpoint into the structure of `abstract_state`.

        A checkpoint that fails to restore (truncated or missing files) is skipped with a warning naming
        its step, and the one before it is tried. Returns None when no checkpoint can be restored.
        """
        for step in reversed(self.steps()):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as error:  # Orbax raises many types for damaged files; any of them means skip.
                log.warning("checkpoint at step %d in %s is unreadable (%s); trying an older one", step,
                            self.directory, error)
                continue
            return step, state
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """Return shape/dtype/sharding stand-ins for `state`, the restore target Orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
