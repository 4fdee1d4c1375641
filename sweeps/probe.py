"""The throughput probe behind `scaling sweep plan`: time the training step of a few model shapes.

`measure(configs, slot, runs_root)` starts `python -m sweeps.probe` with the environment of a sweep worker
(the same cores, thread count and XLA flags), so the step times it reports are the ones a worker will see.
For each config the child builds scaling.train.Trainer, compiles and runs the step once, runs WARMUP_STEPS
more, then times steps until MIN_TIMED_SECONDS have passed (at least MIN_TIMED_STEPS) on a random batch.
The child uses the run store's persistent compilation cache, so the runs of a probed shape later load
their compiled step instead of compiling it again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config import TrainConfig
from scaling.errors import UserError
from sweeps.resources import WorkerSlot, pin_to_assigned_cores

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


@dataclass(frozen=True)
class ProbeReport:
    """All shapes measured in one probe process, and the cost of starting that process."""

    results: tuple[ProbeResult, ...]
    startup_s: float  # the probe process's time outside the timed work: interpreter, imports, JAX start
    threads: int  # cores the probing worker had


def measure(configs: list[TrainConfig], slot: WorkerSlot, runs_root: str | Path) -> ProbeReport:
    """Time the step of each config in a child process set up like a worker on `slot`."""
    request = {"configs": [config.to_dict() for config in configs], "runs_root": str(runs_root)}
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
    results = tuple(
        ProbeResult(config=config, compile_s=item["compile_s"], step_s=item["step_s"], timed_steps=item["timed_steps"])
        for config, item in zip(configs, reply["results"])
    )
    measured = sum(result.compile_s + result.step_s * (result.timed_steps + WARMUP_STEPS) for result in results)
    # What the child spent outside the timed work is the cost of starting a worker process.
    return ProbeReport(results=results, startup_s=max(0.0, wall - measured), threads=slot.threads)


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
        results = [_time_config(TrainConfig.from_dict(raw)) for raw in request["configs"]]
    except UserError as error:
        print(error)
        return EXIT_USER_ERROR
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
