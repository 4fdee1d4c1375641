"""How training spreads over devices: data parallelism or FSDP on a one-axis `jax.sharding` mesh.

The mesh has one axis, `data`, of n devices. Each optimizer step's batch is split along it, so every
device runs batch_size / n sequences, and the gradients are summed across devices inside the compiled step.
- `data=n` (data parallelism): every device stores all parameters and optimizer moments.
- `fsdp=n` (fully sharded data parallelism, ZeRO stage 3 of Rajbhandari et al. 2020, arXiv:1910.02054):
  each parameter and its Adam moments are split along one of their dimensions, so every device stores 1/n
  of them. The step gathers the whole parameters for the forward and backward pass, and constrains the
  gradients back to the parameters' layout (XLA turns the sum plus slice into a reduce-scatter where it can).
One device is a mesh of one, the same program as before meshes existed.

`resolve_plan` chooses the layout: the config's `mesh` field (`scaling train --mesh`, `train.mesh` in a
sweep spec), else the environment variable SCALING_MESH, else data parallelism over all devices. The
layout changes only how the work is spread: the same config trains the same model, with losses equal up
to float32 summation order. So `mesh` is not part of a run's identity (scaling.config.LAYOUT_FIELDS), and
a run may resume from its checkpoint under another layout or device count.

Several hosts: `initialize_distributed()` calls `jax.distributed.initialize` when the environment names a
cluster of more than one process (see its docstring for the variables). Each process then sees every
host's devices in `jax.devices()`, builds the same batch from (seed, step), and hands the devices it owns
their slices of it (`put_batch`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling.config import MeshPlan, parse_mesh
from scaling.errors import UserError

log = logging.getLogger(__name__)

MESH_ENV = "SCALING_MESH"
DATA_AXIS = "data"


def resolve_plan(configured: str = "") -> MeshPlan:
    """Return a run's layout from the first of these sources that is set:
    1. the config's `mesh` field (`configured`);
    2. the environment variable SCALING_MESH;
    3. else data parallelism over all devices.
    So the config wins over the environment variable, which fills in for configs that leave `mesh` empty.
    """
    for text, name in ((configured, "mesh"), (os.environ.get(MESH_ENV), MESH_ENV)):
        if text and text.strip():
            plan = parse_mesh(text, name)
            log.debug("device layout %s from %s=%r", plan, name, text)
            return plan
    return MeshPlan()


def _at_most(plan: MeshPlan, available: int) -> str:
    """Return the layouts that fit on `available` devices, as a fix to suggest: "data=1" or "fsdp=4 or fewer"."""
    layout = "fsdp" if plan.fsdp else "data"
    return f"{layout}={available}" if available == 1 else f"{layout}={available} or fewer"


def make_mesh(plan: MeshPlan, devices: list | None = None) -> Mesh:
    """Return the one-axis mesh of `plan` over the first `plan.devices` of `devices` (default: all)."""
    available = list(devices) if devices is not None else jax.devices()
    count = plan.devices if plan.devices is not None else len(available)
    if count > len(available):
        platform = available[0].platform
        # The same hint as the sweep launcher's check (sweeps.launcher.check_meshes_fit).
        hint = (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices)"
                if platform == "cpu" else "")
        raise UserError(f"{plan.source} {plan} asks for {count} devices, but JAX sees {len(available)} "
                        f"({platform}); use {_at_most(plan, len(available))}{hint}")
    return Mesh(np.array(available[:count]), (DATA_AXIS,))


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    """Raise UserError unless the batch splits evenly over the data axis."""
    size = mesh.shape[DATA_AXIS]
    if batch_size % size:
        raise UserError(f"data.batch_size={batch_size} does not split over {size} devices; "
                        f"use a batch size that is a multiple of {size}, or fewer devices (--mesh data=1 "
                        "trains on one)")


def fsdp_spec(shape: tuple[int, ...], size: int) -> PartitionSpec:
    """Return the PartitionSpec that splits an array of `shape` over `size` devices along its largest
    dimension divisible by `size`. Arrays with no such dimension (scalars, odd widths) stay replicated."""
    candidates = [axis for axis, extent in enumerate(shape) if extent % size == 0 and extent >= size]
    if size == 1 or not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: (shape[a], -a))  # largest first, the earlier axis on ties
    return PartitionSpec(*([None] * axis), DATA_AXIS)


def state_shardings(abstract_state: dict[str, Any], mesh: Mesh, fsdp: bool) -> Any:
    """Return the sharding tree of the training state: parameters and optimizer state split per
    `fsdp_spec` under FSDP, everything else (the step, the RNG key data) replicated.

    Without FSDP this is one replicated NamedSharding, which jit reads as a prefix for the whole state.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    if not fsdp:
        return replicated
    size = mesh.shape[DATA_AXIS]
    _warn_if_kept_whole(abstract_state["params"], size)

    def shard(leaf):
        return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), size))

    return {
        key: jax.tree.map(shard, value) if key in ("params", "opt_state") else jax.tree.map(lambda _: replicated, value)
        for key, value in abstract_state.items()
    }


KEPT_WHOLE_WARNING = 0.1  # FSDP that leaves this share of the parameters whole on every device gets a warning


def _warn_if_kept_whole(params: Any, size: int) -> None:
    """Warn when FSDP over `size` devices cannot split a sizeable share of the parameters (no dimension divisible
    by `size`), so that every device keeps them and their Adam moments whole."""
    leaves = jax.tree.leaves(params)
    whole = [leaf for leaf in leaves if size > 1 and fsdp_spec(tuple(leaf.shape), size) == PartitionSpec()]
    total = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    unsplit = sum(int(np.prod(leaf.shape)) for leaf in whole)
    if total and unsplit > KEPT_WHOLE_WARNING * total:
        log.warning("fsdp=%d: %d of %d parameter arrays (%.0f%% of the parameters) have no dimension divisible by "
                    "%d, so every device keeps them and their optimizer state whole; a device count that divides "
                    "d_model (a power of 2) splits them", size, len(whole), len(leaves), 100 * unsplit / total, size)


def put_batch(batch: np.ndarray, sharding: NamedSharding) -> np.ndarray | jax.Array:
    """Return `batch` ready for a jitted function whose input has `sharding`.

    In one process the NumPy array itself goes in (jit copies it to the devices, the path every run took
    before meshes). With several processes each one builds the same global batch and gives its own devices
    their slices of it.
    """
    if jax.process_count() == 1:
        return batch
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def put_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Return the host array `array` on the devices of `sharding`; each process places only its own slices,
    so every process must pass the same values."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


CLUSTER_VARIABLES = {
    "explicit": ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
    "slurm": ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    "openmpi": ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
}


def cluster_from_env(env: dict[str, str] | None = None) -> str | None:
    """Return which multi-process cluster the environment describes ("explicit", "slurm", "openmpi"), or None.

    - explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID;
    - slurm: a job step started by `srun` with SLURM_NTASKS > 1 (SLURM_JOB_ID, SLURM_STEP_NODELIST,
      SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID);
    - openmpi: `mpirun` with OMPI_COMM_WORLD_SIZE > 1 (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE,
      OMPI_COMM_WORLD_RANK).
    A single-task SLURM job or MPI world is one process and needs no initialisation.
    """
    env = os.environ if env is None else env
    size_variable = {"explicit": "JAX_NUM_PROCESSES", "slurm": "SLURM_NTASKS", "openmpi": "OMPI_COMM_WORLD_SIZE"}
    explicit = CLUSTER_VARIABLES["explicit"]
    present = [variable for variable in explicit if env.get(variable)]
    if present and len(present) < len(explicit):
        missing = [variable for variable in explicit if variable not in present]
        log.warning("%s set without %s: training as a single process; set all three to join a multi-process job",
                    " and ".join(present), " and ".join(missing))
    for name, variables in CLUSTER_VARIABLES.items():
        if all(env.get(variable) for variable in variables):
            size = env[size_variable[name]]
            if not size.isdigit():
                raise UserError(f"{size_variable[name]}={size!r} is not a process count")
            if int(size) > 1:
                if name == "explicit":
                    _check_explicit_cluster(env)
                return name
    return None


def _check_explicit_cluster(env) -> None:
    """Raise UserError for a JAX_PROCESS_ID or JAX_COORDINATOR_ADDRESS that jax.distributed would reject."""
    count, rank = int(env["JAX_NUM_PROCESSES"]), env["JAX_PROCESS_ID"]
    if not rank.isdigit() or int(rank) >= count:
        raise UserError(f"JAX_PROCESS_ID={rank!r} must be a whole number from 0 to JAX_NUM_PROCESSES-1 = {count - 1}")
    address = env["JAX_COORDINATOR_ADDRESS"]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"JAX_COORDINATOR_ADDRESS={address!r} must be host:port of process 0, e.g. 10.0.0.1:1234")


def initialize_distributed(env: dict[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize` once when the environment names a cluster of several processes.

    Call it before anything starts a JAX backend. Returns True when this process is part of a
    multi-process job (now or from an earlier call).
    """
    if jax.distributed.is_initialized():
        return True
    cluster = cluster_from_env(env)
    if cluster is None:
        return False
    env = os.environ if env is None else env
    if cluster == "explicit":
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()  # JAX reads the SLURM or Open MPI variables itself
    log.info("JAX distributed (%s): process %d of %d, %d devices in all", cluster, jax.process_index(),
             jax.process_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """True in the process that writes the run's files: process 0, or the only process."""
    return jax.process_index() == 0


STOP_CHECK_STEPS = 10  # processes of one run agree on a stop every this many steps (one small collective)


def stop_agreed(step: int, requested: bool) -> bool:
    """Return whether the run stops before `step`; every process calls this with the same `step`.

    One process alone returns `requested` (a SIGINT or SIGTERM seen). In a multi-process run a signal may
    reach only some processes, or reach them during different steps. A process that stopped alone would
    leave the others waiting in the step's collectives. So every STOP_CHECK_STEPS steps the processes
    gather their flags, and all stop at that same step if any saw a signal.
    """
    if jax.process_count() == 1:
        return requested
    if step % STOP_CHECK_STEPS:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(requested)], dtype=np.int32))
    return bool(np.asarray(flags).any())

