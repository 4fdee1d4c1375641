"""The Ray backend: run a sweep's runs as Ray tasks, on a local Ray instance or an existing cluster.

`run_sweep_ray(spec, runs_root, address=...)` expands the spec (sweeps.spec), skips runs whose summary
status is completed, and submits one Ray task per remaining run, each asking Ray for the run's CPUs and
GPUs (`resources` of the spec, sweeps.resources.RunResources). A task starts `python -m sweeps.worker` as a
child process on whichever node Ray placed it, so every run gets a fresh JAX (the local launcher instead
keeps one worker per slot, which trains its runs one after another), and writes RUNS/<sweep>/<run_id>/ and its log RUNS/<sweep>/_logs/<run_id>.log there. The run store must
therefore be a folder every node mounts at the same path (a shared file system) when the cluster has more
than one machine. A run that stopped part-way resumes from its newest checkpoint, as it does locally.

`address=None` starts a private Ray instance on this machine, bound to 127.0.0.1 and without the
dashboard, and stops it at the end. `address="auto"` or "host:port" joins a running cluster (`ray start
--head` on its head node) and leaves it running.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scaling.errors import UserError
from scaling.paths import runs_root as resolve_runs_root
from sweeps.backends import (RunResources, failed_outcome, outcome_from_exit, project_root, run_worker_process,
                             split_completed)
from sweeps.launcher import RunOutcome, check_existing_configs
from sweeps.spec import SweepSpec, expand

log = logging.getLogger(__name__)

LOCAL_ADDRESS = "127.0.0.1"


def run_sweep_ray(spec: SweepSpec, runs_root: str | Path | None = None, *, address: str | None = None,
                  resources: RunResources | None = None, local_cpus: int | None = None) -> list[RunOutcome]:
    """Run every run of the sweep that is not completed yet as a Ray task; return outcomes in plan order.

    `resources` (default: the spec's) is what each task requests from Ray. `local_cpus` caps the CPUs of the
    private instance started when `address` is None (default: all of this machine's).
    """
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray; install it with pip install 'ray[default]'") from None

    root = Path(resolve_runs_root(runs_root)).absolute()
    runs = expand(spec, root)
    check_existing_configs(runs, root)
    resources = resources or RunResources.from_spec(spec)
    outcomes, todo = split_completed(runs, root)

    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address, local_cpus)
    try:
        remote = ray.remote(run_worker_process).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                    max_retries=0)
        submitted = {}
        for run in todo:
            submitted[remote.remote(run.config.to_dict(), str(root), resources.threads_env())] = run
        log.info("sweep %s: %d runs, %d submitted to Ray (%s per run)", spec.name, len(runs), len(todo),
                 resources.describe())
        pending = list(submitted)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            run = submitted[done[0]]
            try:
                returncode, cpu_s, wall_s, host = ray.get(done[0])
            except Exception as error:  # the task itself failed: its node died, or Ray could not start it
                first_line = (str(error).strip().splitlines() or [""])[0]
                outcome = failed_outcome(run, root, f"Ray task failed: {type(error).__name__}: {first_line}")
            else:
                outcome = outcome_from_exit(run, root, returncode, cpu_s, wall_s, host)
            outcomes[run.run_id] = outcome
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[run.run_id] for run in runs]


def _connect(ray, address: str | None, local_cpus: int | None) -> None:
    """Join the cluster at `address`, or start a private instance bound to 127.0.0.1."""
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    runtime_env = {"env_vars": env_vars}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UserError(f"cannot reach the Ray cluster at --address {address} ({error}); start it with "
                            "`ray start --head` or leave --address out for a local instance") from None
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing anywhere
    ray.init(num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False, _node_ip_address=LOCAL_ADDRESS,
             runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)


