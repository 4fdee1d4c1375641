"""How local worker processes share the CPU: each gets its own cores and a matching XLA thread count.

XLA sizes its CPU thread pools from the cores the process may run on, when the backend starts. So a worker
pins itself (os.sched_setaffinity) to its cores before it imports JAX, with XLA_FLAGS already in its
environment. The launcher only chooses the split and passes it through the environment. With one core per worker, XLA's Eigen thread
pool is switched off too, so a worker never runs more threads than it has cores.

This module imports no JAX: the launcher process never starts a JAX backend of its own.

NOTE: the split covers CPU cores only. On a machine with one GPU use one worker: by default each worker's
JAX reserves most of the GPU's memory when it starts, so a second worker on the same GPU would fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CORES_ENV = "SCALING_WORKER_CORES"  # comma-separated core ids a worker pins itself to
# Every token must be a --flag: XLA stops reading XLA_FLAGS at the first one that is not, silently.
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"
# Native libraries outside XLA (NumPy's BLAS, OpenMP) read these; one value for all keeps them in their lane.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's share of the machine: the cores it is pinned to."""

    index: int
    cores: tuple[int, ...]

    @property
    def threads(self) -> int:
        return len(self.cores)

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment of a worker process on this slot: `base` plus cores and thread limits."""
        env = dict(os.environ if base is None else base)
        # A worker inherits no W&B service from its parent: a killed worker would leave its run id marked
        # in use there, and the relaunched run would then train without W&B.
        env.pop("WANDB_SERVICE", None)
        env[CORES_ENV] = ",".join(str(core) for core in self.cores)
        for name in THREAD_COUNT_VARIABLES:
            env[name] = str(self.threads)
        if self.threads == 1:
            # The user's own XLA flags come last, so they win where both name the same flag.
            env["XLA_FLAGS"] = f"{SINGLE_THREAD_XLA_FLAGS} {env.get('XLA_FLAGS', '')}".strip()
        return env


def available_cores() -> tuple[int, ...]:
    """Return the cores this process may run on."""
    return tuple(sorted(os.sched_getaffinity(0)))


def split_cores(workers: int, cores: Sequence[int] | None = None, warn: bool = True) -> list[WorkerSlot]:
    """Split `cores` (default: all this process may use) into `workers` disjoint slots of equal size.

    Cores that do not divide evenly are left idle rather than given to one worker, so every worker runs at
    the same speed and the plan's per-worker estimate holds for all of them. With more workers than cores,
    workers share cores round-robin (one core each), with a warning unless `warn` is False.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    cores = tuple(cores) if cores is not None else available_cores()
    if workers > len(cores):
        if warn:
            log.warning("%d workers on %d cores: workers share cores and each runs slower", workers, len(cores))
        return [WorkerSlot(index=i, cores=(cores[i % len(cores)],)) for i in range(workers)]
    per_worker = len(cores) // workers
    return [WorkerSlot(index=i, cores=tuple(cores[i * per_worker:(i + 1) * per_worker])) for i in range(workers)]


def pin_to_assigned_cores() -> tuple[int, ...] | None:
    """Pin this process to the cores named by $SCALING_WORKER_CORES; call it before JAX is imported.

    Returns the cores, or None when the variable is unset (a process not started by the launcher).
    """
    named = os.environ.get(CORES_ENV)
    if not named:
        return None
    cores = tuple(int(core) for core in named.split(","))
    os.sched_setaffinity(0, cores)
    return cores
