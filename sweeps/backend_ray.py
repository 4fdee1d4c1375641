"""The Ray backend: run a sweep's runs as Ray tasks, on a local Ray instance or an existing cluster.

`run_sweep_ray(spec, runs_root, address=...)` expands the spec (sweeps.spec), skips runs whose summary
status is completed, and submits one Ray task per remaining run, each asking Ray for the run's CPUs and
GPUs (`resources` of the spec, sweeps.backends.RunResources). A task starts `python -m sweeps.worker` as a
child process on whichever node Ray placed it, so every run gets a fresh JAX (the local launcher instead
keeps one worker per slot, which trains its runs one after another), and writes RUNS/<sweep>/<run_id>/
and its log RUNS/<sweep>/_logs/<run_id>.log there. The run store must therefore be a folder every node
mounts at the same path (a shared file system) when the cluster has more than one machine. A run that
stopped part-way resumes from its newest checkpoint, as it does locally.

`address=None` starts a private Ray instance on this machine, bound to 127.0.0.1 and without the
dashboard, and stops it at the end. `address="auto"` or "host:port" joins a running cluster (`ray start
--head` on its head node) and leaves it running.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from scaling.errors import UserError
from scaling.paths import runs_root as resolve_runs_root
from sweeps.backends import RunResources, outcome_from_exit, project_root, run_worker_process
from sweeps.launcher import check_existing_runs
from sweeps.outcomes import RunOutcome, failed_outcome, split_completed
from sweeps.spec import SweepSpec, expand

log = logging.getLogger(__name__)

LOCAL_ADDRESS = "127.0.0.1"
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, with loopback addresses


def run_sweep_ray(spec: SweepSpec, runs_root: str | Path | None = None, *, address: str | None = None,
                  resources: RunResources | None = None, local_cpus: int | None = None) -> list[RunOutcome]:
    """Run every run of the sweep that is not completed yet as a Ray task; return outcomes in plan order.

    `resources` (default: the spec's) is what each task requests from Ray. `local_cpus` caps the CPUs of the
    private instance started when `address` is None (default: all of this machine's).
    """
    if address is None:
        # Ray replaces 127.0.0.1 by the machine's routable address unless cluster mode is off. It reads this
        # variable when it is imported, so set it first: the private instance then listens on loopback only.
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray; install it with pip install 'ray[default]'") from None
    if address is None:
        _loopback_only()

    root = Path(resolve_runs_root(runs_root)).absolute()
    runs = expand(spec, root)
    check_existing_runs(runs, root)
    resources = resources or RunResources.from_spec(spec)
    outcomes, todo = split_completed(runs, root)

    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address, local_cpus)
    try:
        _check_fits_a_node(ray, resources, address)
        remote = ray.remote(run_worker_process).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                    max_retries=0)
        submitted = {}
        for run in todo:
            submitted[remote.remote(run.config.to_dict(), str(root), resources.threads_env())] = run
        log.info("sweep %s: %d runs, %d submitted to Ray (%s per run)", spec.name, len(runs), len(todo),
                 resources.describe())
        pending = list(submitted)
        try:
            _collect(ray, pending, submitted, root, outcomes)
        except KeyboardInterrupt:
            # Cancelling raises KeyboardInterrupt in each task, which stops its worker child cleanly
            # (sweeps.backends.run_worker_process), so the runs end "interrupted" and resume on the next launch.
            for ref in pending:
                ray.cancel(ref)
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[run.run_id] for run in runs]


CANCEL_WAIT_S = 90.0  # how long Ctrl-C waits for cancelled tasks to stop their workers


def _collect(ray, pending: list, submitted: dict, root: Path, outcomes: dict) -> None:
    """Wait for each task in `pending` and record its run's outcome; `pending` shrinks as tasks finish."""
    while pending:
        done, remaining = ray.wait(pending, num_returns=1)
        pending[:] = remaining
        run = submitted[done[0]]
        try:
            returncode, cpu_s, wall_s, host = ray.get(done[0])
        except Exception as error:  # the task itself failed: its node died, or Ray could not start it
            first_line = (str(error).strip().splitlines() or [""])[0]
            outcome = failed_outcome(run, root, f"Ray task failed: {type(error).__name__}: {first_line}")
        else:
            outcome = outcome_from_exit(run, root, returncode, cpu_s, wall_s, host)
        outcomes[run.run_id] = outcome


CONNECT_TIMEOUT_S = 5.0  # wait for a TCP connection to --address before asking Ray, which retries for minutes


def _check_listening(address: str) -> None:
    """Raise UserError unless something accepts TCP connections at a "host:port" address ("auto" passes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", or a form such as ray://host:port that Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(f"nothing accepts connections at --address {address} ({error.strerror or error}); start the "
                        "cluster with `ray start --head`, or leave --address out for a local instance") from None


def _check_fits_a_node(ray, resources: RunResources, address: str | None) -> None:
    """Raise UserError when no node offers the CPUs and GPUs one run requests: Ray would wait forever."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive", True)]
    if any(node.get("CPU", 0) >= resources.cpus and node.get("GPU", 0) >= resources.gpus for node in nodes):
        return
    where = "this machine" if address is None else f"any node of the cluster at {address}"
    largest = max(nodes, key=lambda node: (node.get("CPU", 0), node.get("GPU", 0)), default={})
    raise UserError(f"resources: {{cpus: {resources.cpus:g}, gpus: {resources.gpus:g}}} is more than {where} "
                    f"offers (at most {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs on one node); "
                    "lower the spec's resources")


def _loopback_only() -> None:
    """Keep a private instance on 127.0.0.1 when Ray was imported before LOOPBACK_ONLY_ENV was set.

    Ray reads the variable into a private constant at import; `_connect` checks the result either way.
    """
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def _connect(ray, address: str | None, local_cpus: int | None) -> None:
    """Join the cluster at `address`, or start a private instance bound to 127.0.0.1."""
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    runtime_env = {"env_vars": env_vars}
    if address:
        _check_listening(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except ConnectionError as error:
            if "auth" in str(error).lower() or "token" in str(error).lower():
                raise UserError(f"the Ray cluster at --address {address} rejected this client's token ({error}); "
                                "use --address auto on a node of the cluster, or set RAY_AUTH_MODE=token with the "
                                "cluster's token available here") from None
            raise UserError(f"cannot reach the Ray cluster at --address {address} ({error}); start it with "
                            "`ray start --head` or leave --address out for a local instance") from None
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing anywhere
    # address="local" starts a new instance even when `ray start` or RAY_ADDRESS names a running cluster,
    # which ray.init() would otherwise join (and refuse, since num_cpus is given).
    ray.init(address="local", num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False,
             _node_ip_address=LOCAL_ADDRESS, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    addresses = sorted({node["NodeManagerAddress"] for node in ray.nodes()})
    if addresses != [LOCAL_ADDRESS]:  # Ray was imported before LOOPBACK_ONLY_ENV could take effect
        ray.shutdown()
        raise UserError(f"the private Ray instance listens on {', '.join(addresses)}, not {LOCAL_ADDRESS}; set "
                        f"{LOOPBACK_ONLY_ENV}=0 before starting Python, or give --address of a cluster")


