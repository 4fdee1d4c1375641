"""The SLURM backend: run a sweep's runs as SLURM jobs through submitit.

`run_sweep_slurm(spec, runs_root)` expands the spec, skips completed runs, and submits the rest as one
job array (one task per run) with the options of the spec's `slurm:` mapping (`SlurmOptions`). Each job
starts `python -m sweeps.worker` as a child, so it trains exactly as a local worker does and writes the
same run store. The store must be on a file system the compute nodes share with the submitting machine.
submitit's own files (the pickled job, its stdout and stderr) go to RUNS/<sweep>/_slurm/. The call waits
for every job to end and returns one outcome per run; a job that SLURM cancels or times out is marked
failed, and the next launch resumes it from its newest checkpoint. Ctrl-C or SIGTERM cancels the jobs not
yet ended, waits for them, and raises SweepInterrupted, so the runs stop as they do on the other backends.

`executor: local` in the spec runs the same jobs as local processes through submitit's LocalExecutor,
which is how the tests exercise this backend without a cluster.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.interrupts import interrupts_on_stop_signals
from scaling.numbers import counted
from scaling.paths import runs_root as resolve_runs_root
from sweeps.backends import RunResources, outcome_from_exit, run_worker_process
from sweeps.launcher import check_existing_runs
from sweeps.outcomes import RunOutcome, SweepInterrupted, failed_outcome, outcomes_after_interrupt, split_completed
from sweeps.spec import SweepSpec, expand

log = logging.getLogger(__name__)

SUBMITIT_FOLDER = "_slurm"  # RUNS/<sweep>/_slurm/: submitit's pickles and job logs
EXECUTORS = ("slurm", "local")
CANCEL_WAIT_S = 90.0  # how long Ctrl-C waits for cancelled jobs to end (SLURM's KillWait is 30 s by default)


@dataclass(frozen=True)
class SlurmOptions:
    """The `slurm:` mapping of a sweep spec: where and how long each run's job may run."""

    partition: str | None = None  # SLURM partition (sbatch --partition); None uses the cluster's default
    time_min: int = 60  # wall-clock limit of one run's job in minutes (sbatch --time)
    gpus_per_node: int | None = None  # GPUs per job; None takes resources.gpus of the spec
    cpus_per_task: int | None = None  # CPU cores per job; None takes resources.cpus of the spec, rounded up
    mem_gb: float | None = None  # memory per job in GB (sbatch --mem); None uses the partition's default
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint, e.g. a GPU model
    array_parallelism: int = 64  # most runs of the sweep running at once
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load ..., source venv/bin/activate)
    executor: str = "slurm"  # "slurm", or "local" to run the jobs as local processes (tests, a laptop)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UserError(f"slurm.executor={self.executor!r} is not one of: {', '.join(EXECUTORS)}")
        for name in ("time_min", "array_parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"slurm.{name}={value!r} must be a positive integer")
        if not isinstance(self.setup, tuple) or not all(isinstance(line, str) for line in self.setup):
            raise UserError(f"slurm.setup={self.setup!r} must be a list of shell lines")
        for name, least in (("gpus_per_node", 0), ("cpus_per_task", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                kind = "a whole number of GPUs, 0 or more" if least == 0 else "a positive integer"
                raise UserError(f"slurm.{name}={value!r} must be {kind}, or left out")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or not self.mem_gb > 0):
            raise UserError(f"slurm.mem_gb={self.mem_gb!r} must be a positive number of GB, e.g. mem_gb: 32")
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"slurm.{name}={value!r} must be a string")

    @classmethod
    def from_mapping(cls, raw: dict[str, Any] | None) -> SlurmOptions:
        raw = dict(raw or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UserError(f"unknown slurm key {unknown[0]!r}; known keys are: {', '.join(known)}")
        if "setup" in raw:
            setup = raw["setup"]
            raw["setup"] = tuple(setup) if isinstance(setup, list) else setup
        for name in ("time_min", "array_parallelism", "gpus_per_node", "cpus_per_task", "mem_gb"):
            raw[name] = _spec_number(raw[name], f"slurm.{name}") if name in raw else None
            if raw[name] is None:
                raw.pop(name)
        return cls(**raw)

    def submitit_parameters(self, resources: RunResources, name: str) -> dict[str, Any]:
        """Return the parameters of submitit.AutoExecutor.update_parameters for one run's job."""
        gpus = self.gpus_per_node if self.gpus_per_node is not None else math.ceil(resources.gpus)
        cpus = self.cpus_per_task if self.cpus_per_task is not None else resources.threads
        parameters: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "nodes": 1, "tasks_per_node": 1,
                                      "cpus_per_task": cpus, "slurm_array_parallelism": self.array_parallelism}
        if gpus:
            parameters["gpus_per_node"] = gpus
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        for option in ("partition", "account", "qos", "constraint"):
            value = getattr(self, option)
            if value is not None:
                parameters[f"slurm_{option}"] = value
        if self.setup:
            parameters["slurm_setup"] = list(self.setup)
        return parameters


def run_sweep_slurm(spec: SweepSpec, runs_root: str | Path | None = None, *,
                    options: SlurmOptions | None = None, resources: RunResources | None = None) -> list[RunOutcome]:
    """Submit every run of the sweep that is not completed yet as a SLURM job; wait, and return outcomes."""
    try:
        import submitit
    except ImportError:
        raise UserError("--backend slurm needs submitit; install it with pip install submitit") from None

    root = Path(resolve_runs_root(runs_root)).absolute()
    options = options or SlurmOptions.from_mapping(getattr(spec, "slurm", None))
    resources = resources or RunResources.from_spec(spec)
    folder = root / spec.name / SUBMITIT_FOLDER
    try:  # before preparing any data: without SLURM nothing can run
        executor = submitit.AutoExecutor(folder=folder, cluster="local" if options.executor == "local" else "slurm")
    except RuntimeError as error:  # submitit looks for srun and raises when this machine is no SLURM node
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--backend slurm cannot find SLURM here ({first_line}); launch from a login node of the "
                        "cluster, use --backend local or ray, or try the SLURM path on this machine with "
                        "`slurm: {executor: local}` in the spec") from None
    executor.update_parameters(**_for_executor(options.submitit_parameters(resources, f"sweep-{spec.name}"),
                                               options.executor))
    runs = expand(spec, root)
    check_existing_runs(runs, root)
    outcomes, todo = split_completed(runs, root)

    env = resources.threads_env()
    jobs = []
    if todo:
        try:
            with _local_jobs_hear_sigint(options.executor):
                jobs = executor.map_array(run_worker_process, [run.config.to_dict() for run in todo],
                                          [str(root)] * len(todo), [env] * len(todo))
        except FileNotFoundError as error:  # sbatch is not on PATH
            raise UserError(f"--backend slurm cannot run {error.filename or 'sbatch'}: it is not on PATH; launch from a "
                            "login node of the cluster") from None
        except Exception as error:  # refused by the cluster, a bad partition
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"SLURM rejected the sweep's jobs: {first_line}; check the slurm: options of the spec") \
                from None
        job_ids = [job.job_id for job in jobs]
        job_list = ", ".join(job_ids[:5]) + (f" and {len(job_ids) - 5} more" if len(job_ids) > 5 else "")
        log.info("sweep %s: %d runs, %d submitted as SLURM jobs %s (%s per run)", spec.name, len(runs), len(todo),
                 job_list, resources.describe())
    try:
        with interrupts_on_stop_signals():
            for run, job in zip(todo, jobs):
                try:
                    returncode, cpu_s, wall_s, host = job.result()
                except Exception as error:  # the job was cancelled, timed out, or its node failed
                    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    outcomes[run.run_id] = failed_outcome(run, root,
                                                          f"SLURM job {job.job_id} failed: {first_line[:300]}")
                    continue
                outcomes[run.run_id] = outcome_from_exit(run, root, returncode, cpu_s, wall_s, host)
    except KeyboardInterrupt:
        _cancel_jobs([(run, job) for run, job in zip(todo, jobs) if run.run_id not in outcomes])
        raise SweepInterrupted(outcomes_after_interrupt(runs, root, outcomes)) from None
    return [outcomes[run.run_id] for run in runs]


def _spec_number(value: Any, where: str) -> Any:
    """Return a number in exponent notation ("1e3", which YAML reads as text) as a number, and anything else
    as it is, for the checks of SlurmOptions. Suffixes stay text: "32G" of mem_gb is no count of GB. A time
    such as "1:00:00" gets its own message, since time_min counts minutes."""
    if not isinstance(value, str):
        return value
    if where == "slurm.time_min" and ":" in value:
        raise UserError(f"slurm.time_min={value!r} is a time of day; time_min counts minutes, e.g. time_min: 60 "
                        "for one hour")
    if not re.fullmatch(r"\s*[+-]?[0-9]+(\.[0-9]*)?(e[+-]?[0-9]+)?\s*", value, re.IGNORECASE):
        return value
    number = float(value)
    if not math.isfinite(number):
        return value
    return int(number) if number == int(number) else number


@contextmanager
def _local_jobs_hear_sigint(executor: str):
    """Let the job processes that submitit's local executor starts inside the block receive SIGINT.

    That executor cancels a job with SIGINT to its job process. A launch started as a shell's background job
    (`scaling sweep launch ... &`) has SIGINT ignored, the job processes inherited that, and a cancelled run
    trained on to its end. A background process group gets no Ctrl-C from the terminal, so restoring the
    handler while the jobs start changes nothing else.
    """
    ignored = (executor == "local" and threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    if not ignored:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cancel_jobs(unfinished: list[tuple[Any, Any]]) -> None:
    """Cancel the jobs of the runs not ended yet and wait for them to leave, so each run records how far it got.

    SLURM sends a cancelled job SIGTERM (submitit's local executor sends SIGINT). The worker child then saves
    its step in flight and records "interrupted", as a local worker does. A job still queued never starts.
    """
    if not unfinished:
        return
    log.warning("stopping %s (%s); each running run records \"interrupted\" at its newest checkpoint",
                counted(len(unfinished), "SLURM job"), ", ".join(job.job_id for _, job in unfinished))
    for run, job in unfinished:
        try:
            # NOTE: submitit's local executor cancels by SIGINT to its job process. That process prints a
            # KeyboardInterrupt traceback of its own on the console, but the run in it still stops cleanly.
            job.cancel(check=False)
        except Exception as error:  # scancel missing or rejected: the job runs on, so the launch logs it
            log.warning("could not cancel SLURM job %s of run %s (%s); cancel it with scancel %s", job.job_id,
                        run.run_id, error, job.job_id)
    deadline = time.time() + CANCEL_WAIT_S
    while time.time() < deadline and not all(job.done() for _, job in unfinished):
        time.sleep(0.5)
    running = [job.job_id for _, job in unfinished if not job.done()]
    if running:
        log.warning("SLURM jobs %s had not ended %.0f s after the cancel; their runs resume from their newest "
                    "checkpoint at the next launch", ", ".join(running), CANCEL_WAIT_S)


def _for_executor(parameters: dict[str, Any], executor: str) -> dict[str, Any]:
    """Drop what submitit's local executor does not take: the slurm_ options and GPU counts."""
    if executor == "slurm":
        return parameters
    return {key: value for key, value in parameters.items()
            if not key.startswith("slurm_") and key not in ("gpus_per_node", "mem_gb")}
