"""The Ray backend (reviewed version, rebuilt for a check)."""

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
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def run_sweep_ray(spec, runs_root=None, *, address=None, resources=None, local_cpus=None):
    if address is None:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    import ray
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
        pending = list(submitted)
        try:
            _collect(ray, pending, submitted, root, outcomes)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[run.run_id] for run in runs]


CANCEL_WAIT_S = 90.0


def _collect(ray, pending, submitted, root, outcomes):
    while pending:
        done, remaining = ray.wait(pending, num_returns=1)
        pending[:] = remaining
        run = submitted[done[0]]
        try:
            returncode, cpu_s, wall_s, host = ray.get(done[0])
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            outcome = failed_outcome(run, root, f"Ray task failed: {type(error).__name__}: {first_line}")
        else:
            outcome = outcome_from_exit(run, root, returncode, cpu_s, wall_s, host)
        outcomes[run.run_id] = outcome


CONNECT_TIMEOUT_S = 5.0


def _check_listening(address):
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(f"nothing accepts connections at --address {address} ({error.strerror or error}); start the "
                        "cluster with `ray start --head`, or leave --address out for a local instance") from None


def _check_fits_a_node(ray, resources, address):
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive", True)]
    if any(node.get("CPU", 0) >= resources.cpus and node.get("GPU", 0) >= resources.gpus for node in nodes):
        return
    where = "this machine" if address is None else f"any node of the cluster at {address}"
    largest = max(nodes, key=lambda node: (node.get("CPU", 0), node.get("GPU", 0)), default={})
    raise UserError(f"resources: {{cpus: {resources.cpus:g}, gpus: {resources.gpus:g}}} is more than {where} "
                    f"offers (at most {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs on one node); "
                    "lower the spec's resources")


def _loopback_only():
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def _connect(ray, address, local_cpus):
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    runtime_env = {"env_vars": env_vars}
    if address:
        _check_listening(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UserError(f"cannot reach the Ray cluster at --address {address} ({error}); start it with "
                            "`ray start --head` or leave --address out for a local instance") from None
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False,
             _node_ip_address=LOCAL_ADDRESS, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
