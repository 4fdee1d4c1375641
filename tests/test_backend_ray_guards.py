"""The Ray backend's guards: --address checks, joining a loopback-only cluster, token authentication, and
Ctrl-C, which stops the runs cleanly (summary "interrupted") so that a relaunch resumes them.

The clusters and private instances started here listen on 127.0.0.1 only. A cluster started by
`loopback_cluster` keeps its address file in a temporary RAY_TMPDIR, never in /tmp/ray, and is stopped,
with every process it started, at the end of the module.
"""

from __future__ import annotations

import _thread
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from scaling.errors import UserError
from scaling.run_store import RunDir, initial_summary
from sweeps.backends import run_with_backend
from sweeps.outcomes import LOGS_FOLDER
from sweeps.spec import expand, parse_spec
from tests.faults import shared_jax_cache, stop_once  # noqa: F401  (autouse: one compilation cache for the session)
from tests.test_backends import tiny_sweep
from tests.test_sweeps import corpus_dir, tiny_raw  # noqa: F401  (the tiny prepared corpus of the sweep tests)
from tests.test_worker_serve import LAUNCH, worker_pids

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")  # the `ray` command of the environment running the tests


def launch_command(spec_path: Path, runs: Path, *options: str) -> list[str]:
    """Return `scaling sweep launch SPEC --backend ray` with Python's SIGINT handler, as a terminal starts it."""
    return [sys.executable, "-c", LAUNCH, "sweep", "launch", str(spec_path), "--runs", str(runs), "--no-progress",
            "--backend", "ray", *options]


def without_ray_settings() -> dict[str, str]:
    """Return this process's environment without RAY_* variables, as a fresh shell on a new machine has it."""
    return {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- --address checked before anything runs


@pytest.mark.parametrize("address, match", [
    ("", "--address is empty; leave --address out for a private Ray instance"),
    ("  ", "--address is empty"),
    ("nonsense", "--address nonsense has no port; give HOST:PORT"),
    ("127.0.0.1", "--address 127.0.0.1 has no port"),
    ("127.0.0.1:abc", "--address 127.0.0.1:abc has port 'abc', which is not a number from 1 to 65535"),
    ("127.0.0.1:0", "has port '0', which is not a number from 1 to 65535"),
    ("127.0.0.1:99999", "--address 127.0.0.1:99999 has port '99999'"),
    (":6379", "--address :6379 has no host"),
    ("::1:6379", r"put an IPv6 host in brackets, as in \[::1\]:6379"),
    ("ray://127.0.0.1:10001", "--address ray://127.0.0.1:10001 is a Ray Client address, which the launcher does not "
                              "support"),
    ("http://127.0.0.1:8265", "--address http://127.0.0.1:8265 is a URL"),
    ("127.0.0.1:1", "nothing accepts connections at --address 127.0.0.1:1"),
    ("[::1]:1", r"nothing accepts connections at --address \[::1\]:1"),
])
def test_bad_address_rejected_first(address, match, corpus_dir, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=match):
        run_with_backend("ray", parse_spec(tiny_sweep(corpus_dir, "tiny")), runs, address=address, progress=False)
    assert not runs.exists()  # nothing prepared or written
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized()  # and no Ray instance started


def test_bad_address_exits_2_with_one_line(corpus_dir, tmp_path):  # noqa: F811
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_sweep(corpus_dir, "tiny")))
    for address, message in [("127.0.0.1:abc", "--address 127.0.0.1:abc has port 'abc'"),
                             ("", "--address is empty")]:
        result = subprocess.run(launch_command(spec_path, tmp_path / "runs", "--address", address), cwd=REPO,
                                capture_output=True, text=True, timeout=120, env=without_ray_settings())
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.startswith(f"scaling: error: {message}"), result.stderr[-3000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
        assert not (tmp_path / "runs").exists()


def test_auto_without_cluster_rejected(corpus_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    spec = parse_spec(tiny_sweep(corpus_dir, "tiny"))
    runs = tmp_path / "runs"
    address_file = tmp_path / "ray-tmp" / "ray" / "ray_current_cluster"

    missing = (f"--address auto found no running cluster: RAY_ADDRESS is not set, and {address_file}, where "
               "`ray start --head` records its address, does not exist")
    with pytest.raises(UserError, match=missing):
        run_with_backend("ray", spec, runs, address="auto", progress=False)

    address_file.parent.mkdir(parents=True)
    address_file.write_text("127.0.0.1:1")  # a cluster that has stopped since
    with pytest.raises(UserError, match=f"nothing accepts connections at the address 127.0.0.1:1 that --address auto "
                                        f"reads from {address_file} .*has stopped"):
        run_with_backend("ray", spec, runs, address="auto", progress=False)

    address_file.write_text("somewhere")
    with pytest.raises(UserError, match="the address somewhere that --address auto reads from .* has no port"):
        run_with_backend("ray", spec, runs, address="auto", progress=False)

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # RAY_ADDRESS comes before the address file, as in Ray
    with pytest.raises(UserError, match="nothing accepts connections at the RAY_ADDRESS 127.0.0.1:1 that --address "
                                        "auto reads .*correct or unset RAY_ADDRESS"):
        run_with_backend("ray", spec, runs, address="auto", progress=False)
    assert not runs.exists()


def test_auto_resolves_to_listening_loopback(tmp_path, monkeypatch):
    from sweeps.backend_ray import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        cluster = resolve_address("auto")
    assert (cluster.host, cluster.port) == ("127.0.0.1", port)
    assert cluster.is_loopback  # so the client keeps 127.0.0.1 instead of the machine's routable address
    assert cluster.ray_address == "auto"  # Ray still finds the cluster, and its token, itself


# ---------------------------------------------------------------- a cluster on 127.0.0.1, as README starts it


def wait_for(condition, timeout_s: float, failure_message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{failure_message} within {timeout_s:.0f} s"
        time.sleep(0.2)


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def loopback_cluster():
    """A one-node Ray cluster on 127.0.0.1 with token authentication: (port, token, its RAY_TMPDIR)."""
    if not RAY.exists():
        pytest.skip("the `ray` command is not installed")
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_loopback_port()
    token = secrets.token_hex(32)
    env = {**without_ray_settings(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(temp_dir),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    log_file = open(temp_dir / "ray-start.log", "w")
    # --block keeps `ray start` in the foreground, and SIGTERM to it stops every process of the cluster.
    head = subprocess.Popen([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--include-dashboard=false", "--num-cpus=1", "--block"], env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address_file = temp_dir / "ray" / "ray_current_cluster"
        wait_for(lambda: head.poll() is None and accepts_connections(port) and address_file.exists(), 120,
                 f"`ray start` did not listen on 127.0.0.1:{port}: {(temp_dir / 'ray-start.log').read_text()[-2000:]}")
        yield port, token, temp_dir
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the session this fixture started, and nothing else
            head.wait()
        log_file.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_without_token_names_token_auth(loopback_cluster, corpus_dir, tmp_path):  # noqa: F811
    """Something listens, Ray cannot connect: the message names token authentication, within seconds."""
    port, token, _ = loopback_cluster
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_sweep(corpus_dir, "tiny")))
    runs = tmp_path / "runs"
    cases = [({}, f"the Ray cluster at --address 127.0.0.1:{port} uses token authentication; set RAY_AUTH_MODE=token "
                  "here too"),
             ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
              f"the Ray cluster at --address 127.0.0.1:{port} rejected this machine's token")]
    for settings, message in cases:
        started = time.monotonic()
        result = subprocess.run(launch_command(spec_path, runs, "--address", f"127.0.0.1:{port}"), cwd=REPO,
                                capture_output=True, text=True, timeout=120, env={**without_ray_settings(), **settings})
        elapsed = time.monotonic() - started
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"scaling: error: {message}" in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "Failed to get cluster ID" not in result.stderr  # Ray's retry lines, which the message replaces
        assert elapsed < 45, f"{elapsed:.0f} s to report a rejected client"  # Ray alone retries for 20 s
        assert not runs.exists()  # rejected before the corpus was prepared


def test_web_server_address_rejected_at_once():
    """A reviewer's --address pointed at a web server: Ray retried for 206 s in silence. The launcher sends
    HTTP/2's preface first, to which Ray's gRPC responds and a web server does not."""
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    from sweeps.backend_ray import resolve_address

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        port = server.server_address[1]
        started = time.monotonic()
        with pytest.raises(UserError, match=rf"^something responds at --address 127.0.0.1:{port}, but not as a Ray "
                                            r"cluster's head \(its response begins '"):
            resolve_address(f"127.0.0.1:{port}")
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()


def test_ray_head_passes_the_http2_check(loopback_cluster):  # noqa: F811
    from sweeps.backend_ray import resolve_address

    port, _, _ = loopback_cluster
    assert resolve_address(f"127.0.0.1:{port}").port == port


def test_auto_joins_loopback_cluster(loopback_cluster, corpus_dir, tmp_path):  # noqa: F811
    """`--address auto` from a shell without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: the launcher keeps 127.0.0.1
    instead of the machine's routable address, where nothing listens, and the run trains on the cluster.
    The launcher's SCALING_ variables reach the run, although the cluster was started without them."""
    port, token, temp_dir = loopback_cluster
    raw = tiny_sweep(corpus_dir, "joined", grid={"params": ["3K"], "tokens": ["2K"]})
    spec_path = tmp_path / "joined.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    env = {**without_ray_settings(), "RAY_TMPDIR": str(temp_dir), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "SCALING_KEEP_FREED_MEMORY": "1"}
    result = subprocess.run(launch_command(spec_path, runs, "--address", "auto"), cwd=REPO, capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = expand(parse_spec(raw), runs)
    assert RunDir.at(runs, "joined", run.run_id).status() == "completed"
    run_log = (runs / "joined" / LOGS_FOLDER / f"{run.run_id}.log").read_text()
    assert "(Ray task)" in run_log
    assert "keeping freed host memory in the heap" in run_log  # tiny steps keep it only when asked to
    assert accepts_connections(port)  # a joined cluster keeps running


# ---------------------------------------------------------------- Ctrl-C


def long_run_spec(corpus: Path, name: str) -> dict:
    """One run of about 15 s with a checkpoint every 20 steps, so that an interrupt lands mid-run."""
    return tiny_raw(corpus, name=name, grid={"params": ["4K"], "tokens": ["1.6e5"]},
                    train={"seq_len": 32, "batch_size": 4, "eval_tokens": 512, "wandb_mode": "disabled",
                           "checkpoint_interval": 20})


def test_cancelled_task_stops_worker_child(corpus_dir, tmp_path):  # noqa: F811
    """Ray cancels a task by raising KeyboardInterrupt in it, and starts it with SIGINT blocked: the task
    still stops its worker child promptly, and the run records "interrupted" at a checkpoint."""
    from sweeps.backend_ray import train_run_in_task

    (run,) = expand(parse_spec(long_run_spec(corpus_dir, "cancel")), tmp_path)
    run_dir = RunDir.at(tmp_path, "cancel", run.run_id)
    cancelled_at = []

    def cancel_after_first_checkpoint():
        wait_for(lambda: (run_dir.summary() or {}).get("steps_done"), 120, "no checkpoint")
        cancelled_at.append(time.monotonic())
        _thread.interrupt_main()  # what ray.cancel does in the task's process: no signal reaches the OS

    threading.Thread(target=cancel_after_first_checkpoint, daemon=True).start()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # as Ray's worker processes have it
    try:
        returncode, cpu_s, wall_s, host = train_run_in_task(run.config.to_dict(), str(tmp_path), {})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert cancelled_at, "the run ended before its first checkpoint"
    assert time.monotonic() - cancelled_at[0] < 20  # the whole run takes longer
    assert returncode == 130
    summary = run_dir.summary()
    assert summary["status"] == "interrupted"
    assert summary["steps_done"] > 0
    # The progress of the newest checkpoint: the step in flight at the signal ended and was saved.
    assert summary["steps_done"] == summary["interrupted_at_step"]
    assert cpu_s > 0
    assert wall_s > 0
    assert host == socket.gethostname()


class CancellingRay:
    """The part of the `ray` module that _stop_tasks uses, returning a fixed result per task."""

    def __init__(self, results: dict):
        self.results = results
        self.cancelled = []

    def cancel(self, ref):
        self.cancelled.append(ref)

    def wait(self, refs, num_returns, timeout):
        return list(refs), []

    def get(self, ref):
        if isinstance(self.results[ref], BaseException):
            raise self.results[ref]
        return self.results[ref]


def test_interrupt_after_runs_ended_is_not_130(corpus_dir, tmp_path):  # noqa: F811
    """Only runs that the cancel stopped make the launch end as interrupted; a run that completed meanwhile
    keeps its outcome."""
    ray_exceptions = pytest.importorskip("ray.exceptions")
    from sweeps.backend_ray import _stop_tasks

    done, cut, queued = expand(parse_spec(tiny_sweep(corpus_dir, "race", grid={"params": ["3K"],
                                                                               "tokens": ["2K", "4K", "8K"]})),
                               tmp_path)
    RunDir.at(tmp_path, "race", done.run_id).write_summary(
        {**initial_summary(done.run_id, "race", "completed"), "final_val_loss": 2.5, "steps_done": 10})
    RunDir.at(tmp_path, "race", cut.run_id).write_summary(
        {**initial_summary(cut.run_id, "race", "interrupted"), "steps_done": 20})
    submitted = {"ref-done": done, "ref-cut": cut, "ref-queued": queued}

    ray = CancellingRay({"ref-done": (0, 1.0, 2.0, "node"), "ref-cut": (130, 1.0, 2.0, "node"),
                         "ref-queued": ray_exceptions.TaskCancelledError()})
    outcomes = {}
    unfinished = _stop_tasks(ray, list(submitted), submitted, tmp_path, outcomes)
    assert sorted(unfinished) == sorted([cut.run_id, queued.run_id])
    assert outcomes[done.run_id].status == "completed"
    assert outcomes[cut.run_id].status == "interrupted"
    assert queued.run_id not in outcomes
    assert RunDir.at(tmp_path, "race", queued.run_id).summary() is None  # nothing recorded for a run never started
    assert sorted(ray.cancelled) == sorted(submitted)

    ray = CancellingRay({"ref-done": (0, 1.0, 2.0, "node")})
    outcomes = {}
    assert _stop_tasks(ray, ["ref-done"], submitted, tmp_path, outcomes) == []
    assert outcomes[done.run_id].status == "completed"


def test_private_ray_interrupt_then_resume(corpus_dir, tmp_path, monkeypatch):  # noqa: F811
    """SIGINT to the launcher on a private Ray instance: the run stops within seconds as "interrupted" at
    its newest checkpoint, the launcher exits 130, no worker outlives it, and a relaunch resumes the run."""
    raw = long_run_spec(corpus_dir, "rayint")
    spec_path = tmp_path / "rayint.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    (run,) = expand(parse_spec(raw), runs)
    run_dir = RunDir.at(runs, "rayint", run.run_id)
    log_path = runs / "rayint" / LOGS_FOLDER / f"{run.run_id}.log"
    command = launch_command(spec_path, runs)
    for name in [name for name in os.environ if name.startswith("RAY_")]:
        monkeypatch.delenv(name)  # stop_once starts the launcher with this environment
    signalled_at = []

    def interrupt(process):
        signalled_at.append(time.monotonic())
        process.send_signal(signal.SIGINT)

    launcher = stop_once(command, lambda: (run_dir.summary() or {}).get("steps_done"), interrupt, cwd=REPO)
    stopped_s = time.monotonic() - signalled_at[0]
    stderr = launcher.stderr_text

    assert launcher.returncode == 130, stderr[-3000:]
    # A stopped run may take up to TASK_STOP_GRACE_S (20 s) to close its checkpoints; this one needs about 1 s.
    assert stopped_s < 30, f"the launcher took {stopped_s:.0f} s to stop"
    summary = run_dir.summary()
    assert summary["status"] == "interrupted", stderr[-3000:]
    assert summary["steps_done"] > 0
    assert summary["steps_done"] == summary["interrupted_at_step"]  # the step in flight ended, with a checkpoint
    logged = " ".join(stderr.split())  # rich wraps long log lines
    assert (f"sweep interrupted: 0 of 1 runs completed, 1 stopped at their newest checkpoint ({run.run_id} at step "
            f"{summary['steps_done']})") in logged
    assert "interrupted" in launcher.stdout_text  # the table of runs, as at the end of a launch
    log_text = log_path.read_text()
    assert f"run {run.run_id} interrupted" in log_text
    for pid in worker_pids(log_text).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no worker outlives the launcher

    relaunch = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"resumes from step {summary['steps_done']}" in log_path.read_text()
    assert run_dir.status() == "completed"
