"""The Ray backend: run a sweep's runs as Ray tasks, on a private Ray instance or a running cluster.

`run_sweep_ray(spec, runs_root, address=...)` expands the spec (sweeps.spec), skips runs whose summary
status is completed, and submits one Ray task per remaining run, each asking Ray for the run's CPUs and
GPUs (`resources` of the spec, sweeps.backends.RunResources). A task (`train_run_in_task`) starts
`python -m sweeps.worker` as a child process on whichever node Ray placed it, so every run gets a fresh JAX
(the local launcher instead keeps one worker per slot, which trains its runs one after another), and writes
RUNS/<sweep>/<run_id>/ and its log RUNS/<sweep>/_logs/<run_id>.log there. The run store must therefore be a
folder every node mounts at the same path (a shared file system) when the cluster has more than one machine.
A run that stopped part-way resumes from its newest checkpoint, as it does locally.

`address=None` starts a private Ray instance on this machine, bound to 127.0.0.1 and without the
dashboard, and stops it at the end. `address="host:port"` joins the running cluster whose head
(`ray start --head`) listens there, and `address="auto"` the cluster that RAY_ADDRESS names, or else the
one that `ray start --head` last recorded on this machine. A joined cluster keeps running after the launch.
An empty, malformed or Ray Client (ray://) address, or one where nothing listens, raises UserError before
anything runs.

Ctrl-C or SIGTERM cancels the tasks. Each task then stops its worker child, whose run records "interrupted"
at its newest checkpoint, and the launch raises SweepInterrupted, a KeyboardInterrupt (exit status 130),
unless every run had ended anyway.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.interrupts import interrupts_on_stop_signals, stop_requested, stop_signals_deferred
from scaling.paths import runs_root as resolve_runs_root
from sweeps.backends import RunResources, outcome_from_exit, project_root, stop_worker_child
from sweeps.launcher import check_existing_runs
from sweeps.outcomes import (RunOutcome, SweepInterrupted, failed_outcome, outcomes_after_interrupt, run_log_path,
                             split_completed)
from sweeps.spec import SweepSpec, expand

log = logging.getLogger(__name__)

LOCAL_ADDRESS = "127.0.0.1"
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, with loopback addresses
ADDRESS_FIX = ("give HOST:PORT of the cluster's head as `ray start --head` prints it (port 6379 unless it was given "
               "--port), or auto, or leave --address out for a private Ray instance")


def run_sweep_ray(spec: SweepSpec, runs_root: str | Path | None = None, *, address: str | None = None,
                  resources: RunResources | None = None, local_cpus: int | None = None) -> list[RunOutcome]:
    """Run every run of the sweep that is not completed yet as a Ray task; return outcomes in plan order.

    `resources` (default: the spec's) is what each task requests from Ray. `local_cpus` caps the CPUs of the
    private instance started when `address` is None (default: all of this machine's).
    """
    cluster = None if address is None else resolve_address(address)
    loopback_only = cluster is None or cluster.is_loopback
    if loopback_only:
        # Ray replaces 127.0.0.1 by the machine's routable address unless cluster mode is off. It reads this
        # variable when it is imported, so set it first. A private instance then listens on loopback only, and
        # a client of a cluster bound to 127.0.0.1 connects to 127.0.0.1.
        # NOTE: not tried against a cluster on this machine started without the variable (so on its network
        # address) and given as 127.0.0.1:PORT. README's "Scaling out" advises the address `ray start` printed.
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray; install it with pip install 'ray[default]'") from None
    if loopback_only:
        _loopback_only()

    started_here = not ray.is_initialized()
    if started_here and cluster is not None:
        # Before the run store is touched: a cluster can still reject this client (a missing token).
        _connect(ray, cluster, local_cpus)
    try:
        root = Path(resolve_runs_root(runs_root)).absolute()
        runs = expand(spec, root)
        check_existing_runs(runs, root)
        resources = resources or RunResources.from_spec(spec)
        outcomes, todo = split_completed(runs, root)
        if not todo:  # no Ray instance to start for a sweep that is done
            log.info("sweep %s: all %d runs completed already; nothing to submit", spec.name, len(runs))
            return [outcomes[run.run_id] for run in runs]
        if started_here and cluster is None:  # after the checks above, which a private instance would only delay
            _connect(ray, None, local_cpus)
        _check_fits_a_node(ray, resources, cluster)
        remote = ray.remote(train_run_in_task).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                       max_retries=0)
        submitted: dict[Any, Any] = {}  # Ray object ref -> the run its task trains
        pending: list = []  # the refs of tasks whose outcome is not recorded yet
        try:
            # ray.init replaced the SIGTERM handler, so this block starts after it.
            with interrupts_on_stop_signals():
                task_env = {**forwarded_environment(), **resources.threads_env()}
                for run in todo:
                    ref = remote.remote(run.config.to_dict(), str(root), task_env)
                    submitted[ref] = run
                    pending.append(ref)
                log.info("sweep %s: %d runs, %d submitted to Ray (%s per run)", spec.name, len(runs), len(todo),
                         resources.describe())
                _collect(ray, pending, submitted, root, outcomes)
        except KeyboardInterrupt:
            unfinished = _stop_tasks(ray, pending, submitted, root, outcomes)
            if unfinished:
                raise SweepInterrupted(outcomes_after_interrupt(runs, root, outcomes)) from None
            log.warning("interrupt received, but every run had already ended")
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[run.run_id] for run in runs]


# Variables of the launcher's shell that change how a run trains or logs. A private Ray instance inherits them;
# the processes of a cluster started elsewhere (`ray start`) have their own environment, so each task gets them.
FORWARDED_PREFIXES = ("SCALING_",)
FORWARDED_NAMES = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "XLA_FLAGS", "JAX_PLATFORMS")


def forwarded_environment() -> dict[str, str]:
    """Return the launcher's variables that every run's worker gets (FORWARDED_PREFIXES and FORWARDED_NAMES).

    W&B's API key is not among them: a cluster logs in with its own (`wandb login` on its nodes).
    """
    return {name: value for name, value in os.environ.items()
            if name.startswith(FORWARDED_PREFIXES) or name in FORWARDED_NAMES}


# ---------------------------------------------------------------------------------------------- the task on a node

TASK_POLL_S = 0.2  # seconds between looks at the worker child, and so the longest a cancel waits to be seen
TASK_STOP_GRACE_S = 20.0  # seconds a stopped worker child gets to record "interrupted" before it is killed


def train_run_in_task(config: dict[str, Any], runs_root: str,
                      env_overrides: dict[str, str]) -> tuple[int, float, float, str]:
    """Train one run in a `python -m sweeps.worker` child of this Ray task; return (exit status, CPU seconds of
    the child, wall seconds, host name).

    The child's output goes to RUNS/<sweep>/_logs/<run_id>.log, as with the other backends. `ray.cancel`, or
    SIGINT or SIGTERM to the Ray worker process, makes the task stop the child (sweeps.backends.stop_worker_child). The run
    then records "interrupted" at its newest checkpoint, and the task returns the child's exit status, 130.
    """
    log_path = run_log_path(runs_root, config["sweep"], config["run_id"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env_overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH")]))
    request = json.dumps({"config": config, "runs_root": runs_root})
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with interrupts_on_stop_signals(), open(log_path, "a") as log_file:
        log_file.write(f"--- worker start {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} "
                       "(Ray task)\n")
        log_file.flush()
        process = None
        try:
            with stop_signals_deferred():  # a cancel that lands here is only recorded, so no child goes unstopped
                process = subprocess.Popen([sys.executable, "-m", "sweeps.worker"], stdin=subprocess.PIPE,
                                           stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
                try:
                    process.stdin.write(request)
                    process.stdin.close()
                except BrokenPipeError:  # the child died at start-up, and its exit status and log show why
                    pass
            _wait_for_child(process)
        except KeyboardInterrupt:
            if process is None:  # cancelled before the child started: Ray reports the task as cancelled
                raise
            with stop_signals_deferred():
                # SIGTERM, not SIGINT: Ray 2.60 starts its processes with SIGINT blocked
                # (ray/_private/services.py), and a child inherits that mask.
                stop_worker_child(process, config["run_id"], signal.SIGTERM, TASK_STOP_GRACE_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return process.returncode, cpu_s, time.time() - started, socket.gethostname()


def _wait_for_child(process: subprocess.Popen) -> None:
    """Wait for the worker child to exit; raise KeyboardInterrupt when the task is cancelled first.

    Ray cancels a running task by raising KeyboardInterrupt in it, which Python can only do between bytecodes.
    One blocking wait (Popen.communicate, as in sweeps.backends.run_worker_process) would see the cancel
    only after the run ended, so the wait goes in steps of TASK_POLL_S.
    """
    while True:
        if stop_requested():  # a signal whose KeyboardInterrupt Python dropped (scaling/interrupts.py)
            raise KeyboardInterrupt
        try:
            process.wait(timeout=TASK_POLL_S)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------------------------- the launcher's side

COLLECT_POLL_S = 1.0  # seconds between looks for a stop signal while the launcher waits for tasks
CANCEL_WAIT_S = TASK_STOP_GRACE_S + 15.0  # how long Ctrl-C waits for cancelled tasks, beyond their own grace


def _collect(ray, pending: list, submitted: dict, root: Path, outcomes: dict) -> None:
    """Wait for each task in `pending` and record its run's outcome; `pending` shrinks as tasks finish."""
    while pending:
        if stop_requested():  # a signal whose KeyboardInterrupt Python dropped (scaling/interrupts.py)
            raise KeyboardInterrupt
        done, _ = ray.wait(pending, num_returns=1, timeout=COLLECT_POLL_S)
        for ref in done:
            run = submitted[ref]
            outcome = _task_outcome(ray, ref, run, root)
            if outcome is None:  # cancelled by someone else (this launch cancels only in _stop_tasks)
                # The run did not start, so its summary.json keeps how its last attempt ended.
                outcome = failed_outcome(run, root, "Ray task cancelled before its worker started", write=False)
            outcomes[run.run_id] = outcome
            pending.remove(ref)  # after the outcome is recorded, so that an interrupt here loses neither


def _task_outcome(ray, ref, run, root: Path) -> RunOutcome | None:
    """Return the outcome of a finished task's run, or None when the task was cancelled before it started a worker.

    The outcome comes from the worker's exit status and the run's summary.json, or from the task's failure.
    """
    from ray.exceptions import TaskCancelledError

    try:
        returncode, cpu_s, wall_s, host = ray.get(ref)
    except TaskCancelledError:
        return None
    except Exception as error:  # the task itself failed: its node died, or Ray could not start it
        first_line = (str(error).strip().splitlines() or [""])[0]
        return failed_outcome(run, root, f"Ray task failed: {type(error).__name__}: {first_line}")
    return outcome_from_exit(run, root, returncode, cpu_s, wall_s, host)


def _stop_tasks(ray, pending: list, submitted: dict, root: Path, outcomes: dict) -> list[str]:
    """Cancel the tasks in `pending` after Ctrl-C or SIGTERM, wait for them, and record the outcomes of their runs.

    Return the ids of the runs that the cancel stopped: interrupted, cancelled before they started, or still
    stopping after CANCEL_WAIT_S. Runs that completed or diverged meanwhile are not among them.
    """
    stopping = [ref for ref in pending if submitted[ref].run_id not in outcomes]
    if not stopping:
        return []
    log.warning("stopping %d Ray tasks; each run records \"interrupted\" at its newest checkpoint", len(stopping))
    for ref in stopping:
        ray.cancel(ref)  # a running task gets KeyboardInterrupt (train_run_in_task), a queued one never starts
    ready, late = ray.wait(stopping, num_returns=len(stopping), timeout=CANCEL_WAIT_S)

    unfinished = []
    for ref in ready:
        run = submitted[ref]
        outcome = _task_outcome(ray, ref, run, root)
        if outcome is None:  # nothing ran, so there is nothing to record
            unfinished.append(run.run_id)
            continue
        outcomes[run.run_id] = outcome
        # A run that ends in any other way after the cancel (interrupted, or killed while its worker started)
        # was stopped by it.
        if outcome.status not in ("completed", "diverged"):
            unfinished.append(run.run_id)
    for ref in late:
        run = submitted[ref]
        log.warning("run %s did not stop within %.0f s of the cancel; Ray ends its task when this launch disconnects",
                    run.run_id, CANCEL_WAIT_S)
        unfinished.append(run.run_id)
    return unfinished


def _check_fits_a_node(ray, resources: RunResources, cluster: ClusterAddress | None) -> None:
    """Raise UserError when no node offers the CPUs and GPUs one run requests: Ray would wait forever."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive", True)]
    if any(node.get("CPU", 0) >= resources.cpus and node.get("GPU", 0) >= resources.gpus for node in nodes):
        return
    where = "this machine" if cluster is None else f"any node of the cluster at {cluster.host_port}"
    largest = max(nodes, key=lambda node: (node.get("CPU", 0), node.get("GPU", 0)), default={})
    raise UserError(f"resources: {{cpus: {resources.cpus:g}, gpus: {resources.gpus:g}}} is more than {where} "
                    f"offers (at most {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs on one node); "
                    "lower the spec's resources")


# ---------------------------------------------------------------------------------------------- --address


@dataclass(frozen=True)
class ClusterAddress:
    """The host and port of a running cluster's head (its GCS server), as --address named it."""

    host: str  # a name or an IP address, IPv6 without brackets
    port: int
    origin: str  # the value as messages name it: "--address 10.0.0.5:6379", "the RAY_ADDRESS 10.0.0.5:6379 that ..."
    ray_address: str  # what ray.init receives: "auto" when Ray should find the cluster itself, else host:port
    fix_if_silent: str = "start the cluster with `ray start --head`, or leave --address out for a private Ray instance"

    @property
    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name
            return False


def resolve_address(address: str) -> ClusterAddress:
    """Return the cluster that --address names, after checking that it accepts TCP connections.

    Raises UserError for an empty or malformed address, a Ray Client address (ray://), "auto" with no
    cluster recorded on this machine, and an address where nothing listens.
    """
    text = address.strip()
    if not text:
        raise UserError("--address is empty; leave --address out for a private Ray instance on this machine, or "
                        "give HOST:PORT of a running cluster's head, or auto")
    if text == "auto":
        cluster = _auto_address()
    else:
        origin = f"--address {text}"
        host, port = parse_host_port(text, origin)
        cluster = ClusterAddress(host, port, origin, ray_address=text)
    _check_listening(cluster)
    _check_speaks_http2(cluster)
    return cluster


def parse_host_port(text: str, origin: str) -> tuple[str, int]:
    """Split "host:port" ("[::1]:6379" for IPv6) into host and port; raise UserError that names `origin`."""
    if "://" in text:
        if text.startswith("ray://"):
            # A Ray Client driver runs off the cluster, but this launcher reads each run's summary.json itself.
            raise UserError(f"{origin} is a Ray Client address, which the launcher does not support because it "
                            "reads every run's summary.json from the run store: launch on a node of the cluster "
                            "and give the head's HOST:PORT (port 6379 unless `ray start` was given --port) or auto")
        raise UserError(f"{origin} is a URL, not an address; {ADDRESS_FIX}")
    host, separator, port = text.rpartition(":")
    if not separator:
        raise UserError(f"{origin} has no port; {ADDRESS_FIX}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UserError(f"{origin} is ambiguous: put an IPv6 host in brackets, as in [::1]:6379")
    if not host:
        raise UserError(f"{origin} has no host; {ADDRESS_FIX}")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(f"{origin} has port {port!r}, which is not a number from 1 to 65535; {ADDRESS_FIX}")
    return host, int(port)


def ray_address_file() -> Path:
    """Return the file where `ray start --head` records its cluster's address, which "auto" reads.

    Ray 2.60 keeps it under RAY_TMPDIR, else TMPDIR (on Linux), else /tmp, as ray/ray_current_cluster
    (ray._common.utils.get_ray_address_file). The launcher finds it without importing Ray, because the
    address it contains decides how Ray must be imported (LOOPBACK_ONLY_ENV).
    """
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def _auto_address() -> ClusterAddress:
    """Return the cluster "--address auto" means, as Ray finds it: RAY_ADDRESS, else the address file."""
    from_environment = os.environ.get("RAY_ADDRESS", "").strip()
    if from_environment and from_environment != "auto":
        origin = f"the RAY_ADDRESS {from_environment} that --address auto reads"
        host, port = parse_host_port(from_environment, origin)
        return ClusterAddress(host, port, origin, ray_address=from_environment,
                              fix_if_silent="start that cluster, or correct or unset RAY_ADDRESS")

    path = ray_address_file()
    try:
        recorded = path.read_text().strip()
    except FileNotFoundError:
        raise UserError(f"--address auto found no running cluster: RAY_ADDRESS is not set, and {path}, where "
                        "`ray start --head` records its address, does not exist; start a cluster, give --address "
                        "HOST:PORT, or leave --address out for a private Ray instance") from None
    except OSError as error:
        raise UserError(f"--address auto cannot read {path} ({error.strerror or error}); give --address HOST:PORT "
                        "of the cluster's head instead") from None
    origin = f"the address {recorded} that --address auto reads from {path}"
    host, port = parse_host_port(recorded, origin)
    # Passing "auto" on lets Ray 2.60 turn on token authentication for a cluster found this way when this
    # machine has a token (~/.ray/auth_token). It never does so for an explicit address.
    return ClusterAddress(host, port, origin, ray_address="auto",
                          fix_if_silent="the cluster that `ray start --head` recorded there has stopped; start it "
                                        "again, or leave --address out for a private Ray instance")


LISTEN_TIMEOUT_S = 5.0  # wait for a TCP connection to --address before asking Ray, which retries for minutes


def _check_listening(cluster: ClusterAddress) -> None:
    """Raise UserError unless something accepts TCP connections at the cluster's host and port."""
    try:
        socket.create_connection((cluster.host, cluster.port), timeout=LISTEN_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise UserError(f"nothing accepts connections at {cluster.origin} ({reason}); "
                        f"{cluster.fix_if_silent}") from None


# A client's HTTP/2 connection preface (RFC 9113, section 3.4) and an empty SETTINGS frame. Ray's head serves
# gRPC, which is HTTP/2, so its first response is a SETTINGS frame (type 4, the 4th byte of the frame header).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS_FRAME = 4
PREFACE_TIMEOUT_S = 3.0


def _check_speaks_http2(cluster: ClusterAddress) -> None:
    """Raise UserError when the service at the cluster's address responds, but not as an HTTP/2 (gRPC) server.

    Ray's client would retry such a service for minutes before giving up (a web server on the port, say).
    A service that stays silent is left to Ray, which names the likely cause after its own tries.
    """
    try:
        with socket.create_connection((cluster.host, cluster.port), timeout=PREFACE_TIMEOUT_S) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = connection.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except OSError:  # silent, or closed without a word: Ray's own tries decide
        return
    if not reply or (len(reply) >= 4 and reply[3] == HTTP2_SETTINGS_FRAME):
        return
    first_line = reply.split(b"\r")[0].decode("ascii", errors="replace")
    raise UserError(f"something responds at {cluster.origin}, but not as a Ray cluster's head (its response begins "
                    f"{first_line!r}, where Ray's gRPC would send HTTP/2 settings); give the address that `ray start "
                    "--head` printed (port 6379 unless it was given --port)")


# ---------------------------------------------------------------------------------------------- ray.init

# ray.init has no connection timeout. Ray 2.60 tries to reach the GCS server once a second, 20 times unless
# this variable sets the count (ray/_private/node.py, Node._init_gcs_client). Nothing else reads it in a client.
CONNECT_TRIES_ENV = "RAY_gcs_server_port_wait_time_s"
CONNECT_TRIES = 5  # the port accepted a connection already, so more tries would not change a refusal (a missing token)


def _connect(ray, cluster: ClusterAddress | None, local_cpus: int | None) -> None:
    """Join `cluster`, or start a private instance bound to 127.0.0.1 when it is None."""
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    runtime_env = {"env_vars": env_vars}
    if cluster is not None:
        _join_cluster(ray, cluster, runtime_env)
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


def _join_cluster(ray, cluster: ClusterAddress, runtime_env: dict) -> None:
    """Connect to the running cluster; raise UserError with the likely fix when Ray cannot."""
    from ray.exceptions import AuthenticationError

    failure = None
    with _environment_default(CONNECT_TRIES_ENV, str(CONNECT_TRIES)), _native_stderr_held() as captured:
        try:
            ray.init(address=cluster.ray_address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except (ConnectionError, AuthenticationError) as error:
            # Ray's core has written a line per retry ("Failed to get cluster ID from GCS server"). The one-line
            # error below gives their cause, so they are dropped.
            captured.drop = True
            failure = error
    if failure is not None:
        raise UserError(_connect_failure(cluster, failure)) from None


TOKEN_FIX = ("with the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (`ray "
             "get-auth-token` on the head node prints it)")


def _connect_failure(cluster: ClusterAddress, error: Exception) -> str:
    """Return the one-line message for a cluster that accepted TCP connections but not this Ray client."""
    chain = _exception_chain_text(error)
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if "authentication token" in chain.lower() or "InvalidAuthToken" in chain:
        if token_mode:
            return (f"the Ray cluster at {cluster.origin} rejected this machine's token; use the cluster's own, "
                    f"{TOKEN_FIX}")
        return (f"the Ray cluster at {cluster.origin} uses token authentication; set RAY_AUTH_MODE=token here too, "
                f"{TOKEN_FIX}")
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"something listens at {cluster.origin}, but Ray could not connect to it ({first_line}); if the cluster "
            f"uses token authentication, set RAY_AUTH_MODE=token here too, {TOKEN_FIX}; otherwise check that the "
            "address is the one `ray start --head` printed")


def _exception_chain_text(error: BaseException) -> str:
    """Return the type names and messages of `error` and of the exceptions it was raised from."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


@dataclass
class _CapturedOutput:
    drop: bool = False  # set inside the block to discard what was written, instead of passing it on


@contextmanager
def _native_stderr_held():
    """Send file descriptor 2 to a temporary file inside the block. Ray's C++ core writes there directly, so
    this is the only way to drop its lines (`captured.drop = True`). Otherwise they reach stderr at the end."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    captured = _CapturedOutput()
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not captured.drop:
                buffer.seek(0)
                sys.stderr.write(buffer.read().decode("utf-8", errors="replace"))
                sys.stderr.flush()


@contextmanager
def _environment_default(name: str, value: str):
    """Set environment variable `name` to `value` inside the block unless it is set already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _loopback_only() -> None:
    """Keep Ray on 127.0.0.1 when it was imported before LOOPBACK_ONLY_ENV was set.

    Ray reads the variable into a private constant at import. A private instance checks the result in
    `_connect`.
    """
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False
