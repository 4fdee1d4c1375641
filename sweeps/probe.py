"""The throughput probe behind `scaling sweep plan`: time the training step of a few model shapes.

`measure(configs, slot, runs_root)` starts `python -m sweeps.probe` with the environment of a sweep worker
(the same cores, thread count and XLA flags), so the step times it reports are the ones a worker will see.
For each config the child builds scaling.train.Trainer, compiles and runs the step once, runs WARMUP_STEPS
more, then times steps until MIN_TIMED_SECONDS have passed (at least MIN_TIMED_STEPS) on a random batch.
The child uses the run store's persistent compilation cache, so the runs of a probed shape later load
their compiled step instead of compiling it again.

A shape whose training step cannot fit in the memory available is not timed: building it would only grow
the child until the machine swaps or the timeout ends it. Its result is then the no-probe estimate of
sweeps.plan (assumed speeds), marked `measured=False`, with a warning naming the run and its size. The
parent checks host RAM before starting the child (scaling.machine_memory.train_step_bytes, a lower
estimate), and the child checks an accelerator's own memory where JAX reports it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.accounting import parameter_counts, training_flops_per_token
from scaling.config import TrainConfig
from scaling.errors import UserError
from scaling.machine_memory import device_free_bytes, format_bytes, host_memory, train_step_bytes
from scaling.numbers import format_count
from sweeps.resources import WorkerSlot, pin_to_assigned_cores

log = logging.getLogger(__name__)

WARMUP_STEPS = 2
MIN_TIMED_STEPS = 3
MIN_TIMED_SECONDS = 1.0
PROBE_TIMEOUT_S = 600
EXIT_USER_ERROR = 2  # child exit status when a config cannot run here, with the message as the last line of stdout


@dataclass(frozen=True)
class ProbeResult:
    """Measured cost of one model shape on one worker."""

    config: TrainConfig
    compile_s: float  # building the Trainer, initialising, compiling and running the first step
    step_s: float  # mean seconds per optimizer step after warm-up
    timed_steps: int
    measured: bool = True  # False: too large for the memory here, so compile_s and step_s are the no-probe estimate


@dataclass(frozen=True)
class ProbeReport:
    """All shapes measured in one probe process, and the cost of starting that process."""

    results: tuple[ProbeResult, ...]
    startup_s: float  # the probe process's time outside the timed work: interpreter, imports, JAX start
    threads: int  # cores the probing worker had


def measure(configs: list[TrainConfig], slot: WorkerSlot, runs_root: str | Path) -> ProbeReport:
    """Time the step of each config in a child process set up like a worker on `slot`.

    Configs whose training step needs more than the host RAM available now are not timed (see the module
    docstring). When no config is left to time, the child is not started.
    """
    available = host_memory().available
    estimates: dict[int, ProbeResult] = {}
    for index, config in enumerate(configs):
        needed = train_step_bytes(config)
        if needed > available:
            estimates[index] = _not_measured(config, needed, available, "host RAM")
    to_time = [index for index in range(len(configs)) if index not in estimates]
    if not to_time:
        return ProbeReport(results=tuple(estimates[index] for index in range(len(configs))),
                           startup_s=_assumed_cost().startup_s, threads=slot.threads)

    request = {"configs": [configs[index].to_dict() for index in to_time], "runs_root": str(runs_root)}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "sweeps.probe"], input=json.dumps(request), capture_output=True, text=True,
        env=slot.environment(), timeout=PROBE_TIMEOUT_S, check=False,
    )
    if completed.returncode == EXIT_USER_ERROR:  # e.g. a train.mesh of more devices than this machine has
        message = completed.stdout.strip().splitlines()[-1]
        raise UserError(f"throughput probe: {message}; plan on a machine with the runs' devices, or pass --no-probe")
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"throughput probe exited with status {completed.returncode}:\n{tail}")
    reply = json.loads(completed.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - started

    timed: dict[int, ProbeResult] = {}
    for index, item in zip(to_time, reply["results"]):
        config = configs[index]
        if "skipped" in item:  # the child found the accelerator's memory too small
            skipped = item["skipped"]
            estimates[index] = _not_measured(config, skipped["needed"], skipped["free"],
                                             f"memory of {skipped['device']}")
        else:
            timed[index] = ProbeResult(config=config, compile_s=item["compile_s"], step_s=item["step_s"],
                                       timed_steps=item["timed_steps"])
    measured = sum(result.compile_s + result.step_s * (result.timed_steps + WARMUP_STEPS)
                   for result in timed.values())
    results = tuple(timed[index] if index in timed else estimates[index] for index in range(len(configs)))
    # What the child spent outside the timed work is the cost of starting a worker process.
    return ProbeReport(results=results, startup_s=max(0.0, wall - measured), threads=slot.threads)


def _assumed_cost():
    from sweeps.plan import assumed_cost_model  # here, so the child process does not import the plan's modules

    return assumed_cost_model()


def _not_measured(config: TrainConfig, needed: int, available: int, where: str) -> ProbeResult:
    """Return the no-probe estimate for a config too large to time here, and log a warning naming it."""
    log.warning(
        "throughput probe skipped for run %s (%s parameters): its training step needs at least %s, more than "
        "the %s of %s available; its time is the no-probe estimate (assumed speeds)",
        config.run_id, format_count(parameter_counts(config.model)["total"]), format_bytes(needed),
        format_bytes(available), where,
    )
    cost = _assumed_cost()
    flops_per_step = training_flops_per_token(config.model, config.data.seq_len)["exact"] * config.data.tokens_per_step
    return ProbeResult(config=config, compile_s=cost.compile_s, step_s=cost.step_seconds(flops_per_step),
                       timed_steps=0, measured=False)


def device_memory_shortfall(config: TrainConfig, devices: list) -> dict[str, Any] | None:
    """Return {"needed", "free", "device"} when training `config` cannot fit on accelerators, else None.

    The need is spread evenly over the devices of the config's mesh, a lower estimate for every layout.
    Devices whose memory JAX does not report (the CPU) give None: the parent checked host RAM.
    """
    from scaling.sharding import resolve_plan

    free = device_free_bytes(devices[0])
    if free is None:
        return None
    plan = resolve_plan(config.mesh)
    spread = min(plan.devices or len(devices), len(devices))
    needed = -(-train_step_bytes(config) // spread)
    if needed <= free:
        return None
    return {"needed": needed, "free": free, "device": str(devices[0])}


def _time_config(config: TrainConfig) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.schedule import schedule_values
    from scaling.train import Trainer

    started = time.perf_counter()
    trainer = Trainer(config)
    state = trainer.init_state(config.seed)
    schedule = {key: jnp.asarray(value, jnp.float32)
                for key, value in schedule_values(config.optimizer, config.total_steps).items()}
    rng = np.random.default_rng(0)
    shape = (config.data.batch_size, config.data.seq_len + 1)
    batch = rng.integers(0, config.model.vocab_size, size=shape, dtype=np.int32)
    state, metrics = trainer.step_fn(state, batch, schedule)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started

    for _ in range(WARMUP_STEPS):
        state, metrics = trainer.step_fn(state, batch, schedule)
    jax.block_until_ready(metrics)
    timed, started = 0, time.perf_counter()
    while timed < MIN_TIMED_STEPS or time.perf_counter() - started < MIN_TIMED_SECONDS:
        state, metrics = trainer.step_fn(state, batch, schedule)
        # Waiting on every step lets the clock see finished work; it slightly overstates the pipelined step.
        jax.block_until_ready(metrics)
        timed += 1
    return {"compile_s": compile_s, "step_s": (time.perf_counter() - started) / timed, "timed_steps": timed}


def main() -> int:
    pin_to_assigned_cores()  # before JAX is imported, as in a worker
    request = json.loads(sys.stdin.read())
    import jax

    from scaling.train import enable_compilation_cache

    jax.devices()
    enable_compilation_cache(Path(request["runs_root"]))
    try:
        results = []
        for raw in request["configs"]:
            config = TrainConfig.from_dict(raw)
            shortfall = device_memory_shortfall(config, jax.devices())
            results.append({"skipped": shortfall} if shortfall else _time_config(config))
    except UserError as error:
        print(error)
        return EXIT_USER_ERROR
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
