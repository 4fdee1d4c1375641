"""Sweep backends: Ray tasks on a local Ray instance (127.0.0.1) and SLURM jobs through submitit's local
executor train the same runs as the local launcher, to the same final losses, and skip completed runs."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest
import yaml

from scaling.errors import UserError
from scaling.run_store import RunDir
from sweeps.backend_slurm import SlurmOptions
from sweeps.backends import RunResources, run_with_backend
from sweeps.outcomes import run_log_path
from sweeps.spec import expand, load_spec, parse_spec
from tests.faults import shared_jax_cache  # noqa: F401  (autouse: one compilation cache for the session)
from tests.test_sweeps import corpus_dir  # noqa: F401  (the tiny prepared corpus of the sweep tests)


def tiny_sweep(source, name: str, **sections) -> dict:
    """Two runs of a few dozen steps each on the tiny corpus."""
    return {
        "name": name,
        "data": {"source": str(source), "tokenizer": "bytes", "val_fraction": 0.2},
        "model": {"head_dim": 8, "aspect_ratio": 8},
        "optimizer": {"peak_lr": 1e-2, "warmup_steps": 2},
        "train": {"seq_len": 16, "batch_size": 4, "eval_tokens": 256, "wandb_mode": "disabled"},
        "grid": {"params": ["3K", "1.2e4"], "tokens": ["2K"]},
        **sections,
    }


@pytest.fixture(scope="module")
def local_losses(corpus_dir, tmp_path_factory):  # noqa: F811
    """Final validation losses of the tiny sweep trained by the local launcher."""
    runs = tmp_path_factory.mktemp("local_runs")
    outcomes = run_with_backend("local", parse_spec(tiny_sweep(corpus_dir, "tiny")), runs, workers=2,
                                progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    return {outcome.run.run_id: outcome.summary["final_val_loss"] for outcome in outcomes}


def test_ray_backend_matches_local(corpus_dir, tmp_path, local_losses, monkeypatch):  # noqa: F811
    pytest.importorskip("ray")
    # Without --address the launcher starts a private instance, even where RAY_ADDRESS (or `ray start`)
    # names another cluster; ray.init() alone would try to join that one.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    spec = parse_spec(tiny_sweep(corpus_dir, "tiny", resources={"cpus": 1}))
    outcomes = run_with_backend("ray", spec, tmp_path, progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    assert {outcome.run.run_id: outcome.summary["final_val_loss"] for outcome in outcomes} == local_losses
    for outcome in outcomes:  # the same run store layout: summary, metrics, the worker's log
        run = RunDir.at(tmp_path, "tiny", outcome.run.run_id)
        assert run.status() == "completed"
        assert run.metrics()
        assert outcome.log_path.is_file()

    ray = pytest.importorskip("ray")
    started = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: started.append(args))
    again = run_with_backend("ray", spec, tmp_path, progress=False)
    assert [outcome.status for outcome in again] == ["skipped", "skipped"]
    assert started == []  # nothing to submit, so no Ray instance was started for it


def test_ray_resources_beyond_machine_rejected(corpus_dir, tmp_path):  # noqa: F811
    # Ray would queue such a task forever: the launcher checks every node's CPUs and GPUs first.
    pytest.importorskip("ray")
    spec = parse_spec(tiny_sweep(corpus_dir, "big", resources={"cpus": 1, "gpus": 1}))
    with pytest.raises(UserError, match=r"gpus: 1\} is more than this machine offers"):
        run_with_backend("ray", spec, tmp_path, progress=False)
    assert not list((tmp_path / "big").glob("*/summary.json"))


def test_ray_address_without_listener_rejected(corpus_dir, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    spec = parse_spec(tiny_sweep(corpus_dir, "nobody"))
    with pytest.raises(UserError, match="nothing accepts connections at --address 127.0.0.1:1"):
        run_with_backend("ray", spec, tmp_path, address="127.0.0.1:1", progress=False)


def test_slurm_backend_with_local_executor_matches_local(corpus_dir, tmp_path, local_losses):  # noqa: F811
    pytest.importorskip("submitit")
    spec = parse_spec(tiny_sweep(corpus_dir, "tiny", slurm={"executor": "local", "time_min": 10,
                                                            "partition": "debug"}))
    outcomes = run_with_backend("slurm", spec, tmp_path, progress=False)
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    assert {outcome.run.run_id: outcome.summary["final_val_loss"] for outcome in outcomes} == local_losses
    assert (tmp_path / "tiny" / "_slurm").is_dir()  # submitit's job files

    again = run_with_backend("slurm", spec, tmp_path, progress=False)
    assert [outcome.status for outcome in again] == ["skipped", "skipped"]


def test_slurm_gpus_per_node_zero_requests_none():
    options = SlurmOptions.from_mapping({"gpus_per_node": 0})
    assert "gpus_per_node" not in options.submitit_parameters(RunResources(cpus=1, gpus=1), "sweep-demo")


def test_slurm_options_become_submitit_parameters():
    options = SlurmOptions.from_mapping({"partition": "gpu", "time_min": 90, "account": "lab", "mem_gb": 32,
                                         "setup": ["module load cuda"]})
    parameters = options.submitit_parameters(RunResources(cpus=4, gpus=1), "sweep-demo")
    assert parameters == {
        "name": "sweep-demo", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 4,
        "slurm_array_parallelism": 64, "gpus_per_node": 1, "mem_gb": 32, "slurm_partition": "gpu",
        "slurm_account": "lab", "slurm_setup": ["module load cuda"],
    }


@pytest.mark.parametrize("section, match", [
    ({"slurm": {"partitoin": "gpu"}}, "unknown key 'partitoin' in slurm"),
    ({"slurm": {"time_min": 0}}, "slurm.time_min=0 must be a positive integer"),
    ({"slurm": {"executor": "cloud"}}, "slurm.executor='cloud' is not one of"),
    ({"slurm": {"mem_gb": "32G"}}, "slurm.mem_gb='32G' must be a positive number of GB"),
    ({"slurm": {"gpus_per_node": "one"}}, "slurm.gpus_per_node='one' must be a whole number of GPUs, 0 or more"),
    ({"slurm": {"gpus_per_node": -1}}, "slurm.gpus_per_node=-1 must be a whole number of GPUs, 0 or more"),
    ({"slurm": {"cpus_per_task": 0}}, "slurm.cpus_per_task=0 must be a positive integer"),
    ({"slurm": {"partition": 5}}, "slurm.partition=5 must be a string"),
    ({"resources": {"cpus": 0}}, "resources.cpus=0 must be a positive number"),
    ({"resources": {"gpu": 1}}, "unknown key 'gpu' in resources"),
    ({"resources": {"cpus": True}}, "resources.cpus=True must be a positive number of cores"),
    ({"slurm": {"time_min": "1:00:00"}}, "slurm.time_min='1:00:00' is a time of day; time_min counts minutes, e.g. "
                                         "time_min: 60 for one hour"),
])
def test_bad_backend_options_raise_user_error(corpus_dir, section, match):  # noqa: F811
    with pytest.raises(UserError, match=match):
        parse_spec(tiny_sweep(corpus_dir, "tiny", **section))


def test_spec_numbers_read_alike_in_every_section(corpus_dir, tmp_path):  # noqa: F811
    """A reviewer's `time_min: 1:00:00` became 3600 minutes (YAML's base 60), and `time_min: 1e3`,
    `val_fraction: 5e-2` or `seed: 1e3` were refused or crashed `plan`. Read from YAML text, as users write them."""
    text = yaml.safe_dump(tiny_sweep(corpus_dir, "tiny"))
    text += "slurm: {time_min: 1e3, mem_gb: 1.6e1}\nresources: {cpus: 2e0}\n"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(path)
    options = SlurmOptions.from_mapping(spec.slurm)
    assert (options.time_min, options.mem_gb) == (1000, 16)
    assert RunResources.from_spec(spec).cpus == 2.0

    path.write_text(text.replace("slurm: {time_min: 1e3", "slurm: {time_min: 1:00:00"))
    with pytest.raises(UserError, match="time_min counts minutes"):
        load_spec(path)

    raw = tiny_sweep(corpus_dir, "tiny")
    raw["data"]["val_fraction"] = "5e-2"
    raw["train"]["seed"] = "1e3"
    parsed = parse_spec(raw)
    assert (parsed.data.val_fraction, parsed.train.seed) == (0.05, 1000)
    raw["data"]["val_fraction"] = "1.5"
    with pytest.raises(UserError, match=r"data.val_fraction='1.5' must lie between 0 and 1, e.g. 0.05"):
        parse_spec(raw)


def test_address_needs_ray_backend(corpus_dir, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="--address names a Ray cluster"):
        run_with_backend("local", parse_spec(tiny_sweep(corpus_dir, "tiny")), tmp_path, address="127.0.0.1:6379")


def test_slurm_backend_without_slurm_is_user_error(corpus_dir, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no srun or sbatch to find
    spec = parse_spec(tiny_sweep(corpus_dir, "tiny", slurm={"partition": "gpu"}))
    with pytest.raises(UserError, match="--backend slurm cannot find SLURM here"):
        run_with_backend("slurm", spec, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # checked before preparing data or writing anything


def test_failed_worker_outcome_names_logged_cause(corpus_dir, tmp_path):  # noqa: F811
    from sweeps.backends import outcome_from_exit
    from sweeps.outcomes import LOGS_FOLDER
    from sweeps.spec import expand

    run = expand(parse_spec(tiny_sweep(corpus_dir, "tiny")), tmp_path)[0]
    log_path = tmp_path / "tiny" / LOGS_FOLDER / f"{run.run_id}.log"
    log_path.parent.mkdir(parents=True)
    log_path.write_text(f"2026-12-05 07:29:43,876 ERROR sweeps.worker: run {run.run_id} stopped: mesh fsdp=4 asks "
                        "for 4 devices, but JAX sees 1 (cpu); use fsdp=1 or fewer\n")
    outcome = outcome_from_exit(run, tmp_path, 2, 0.5, 1.0, "node7")
    assert outcome.status == "failed"
    assert outcome.summary["error"].startswith("mesh fsdp=4 asks for 4 devices")
    assert "exited with status 2 on node7" in outcome.summary["error"]


def test_interrupted_task_stops_worker_cleanly(corpus_dir, tmp_path):  # noqa: F811
    """Ctrl-C in a SLURM job (KeyboardInterrupt in run_worker_process) reaches the worker child as SIGINT, so its
    run ends "interrupted" at a checkpoint rather than killed mid-write. Ray tasks stop their worker child
    themselves (tests/test_backend_ray_guards.py)."""
    import os
    import threading
    import time

    from sweeps.backends import run_worker_process

    run = expand(parse_spec(tiny_sweep(corpus_dir, "tiny", grid={"params": ["3K"], "tokens": ["2e5"]},
                                       train={"seq_len": 16, "batch_size": 4, "eval_tokens": 256,
                                              "wandb_mode": "disabled", "checkpoint_interval": 20})), tmp_path)[0]
    run_dir = RunDir.at(tmp_path, "tiny", run.run_id)

    def interrupt_after_first_checkpoint():
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir.summary() or {}).get("steps_done"):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_first_checkpoint, daemon=True).start()
    returncode, _, _, _ = run_worker_process(run.config.to_dict(), str(tmp_path), {})
    assert returncode == 130  # the job ends with the child's status, which the launcher reads as interrupted
    summary = run_dir.summary()
    assert summary["status"] == "interrupted"
    # The progress of the newest checkpoint: the step in flight at the signal ended and was saved.
    assert summary["steps_done"] == summary["interrupted_at_step"]
    assert summary["steps_done"] > 0


# A launcher started as a shell's background job (`scaling sweep launch ... &`) has SIGINT ignored.
LAUNCH_IN_BACKGROUND = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                        "from scaling.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("background", [False, True], ids=["SIGINT", "SIGTERM to a background launch"])
def test_interrupted_slurm_launch_cancels_jobs_and_resumes(background, corpus_dir, tmp_path):  # noqa: F811
    """SIGINT to a SLURM launch (submitit's local executor): it cancels the jobs, each run records
    "interrupted" at a checkpoint, the launch prints the table and exits 130, and a relaunch completes
    every run. The same for SIGTERM to a launch started with SIGINT ignored, whose job processes inherited
    that and trained to the end after the cancel (a reviewer's `&`)."""
    pytest.importorskip("submitit")
    from tests.faults import stop_once
    from tests.test_worker_serve import LAUNCH, REPO

    raw = tiny_sweep(corpus_dir, "cut", grid={"params": ["3K"], "tokens": ["2e5"]},
                     train={"seq_len": 16, "batch_size": 4, "eval_tokens": 256, "wandb_mode": "disabled",
                            "checkpoint_interval": 20},
                     slurm={"executor": "local", "time_min": 10})
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    (run,) = expand(parse_spec(raw), runs)
    run_dir = RunDir.at(runs, "cut", run.run_id)
    command = [sys.executable, "-c", LAUNCH_IN_BACKGROUND if background else LAUNCH, "sweep", "launch", str(path),
               "--runs", str(runs), "--no-progress", "--backend", "slurm"]

    launcher = stop_once(command, lambda: (run_dir.summary() or {}).get("steps_done"),
                         lambda process: process.send_signal(signal.SIGTERM if background else signal.SIGINT),
                         cwd=REPO)

    logged = " ".join(launcher.stderr_text.split())  # rich wraps long log lines
    assert launcher.returncode == 130, logged[-3000:]
    assert "stopping 1 SLURM job (" in logged, logged[-3000:]
    summary = run_dir.summary()
    assert summary["status"] == "interrupted", logged[-3000:]
    assert summary["steps_done"] > 0
    assert (f"sweep interrupted: 0 of 1 runs completed, 1 stopped at their newest checkpoint ({run.run_id} at step "
            f"{summary['steps_done']})") in logged
    assert "interrupted" in launcher.stdout_text  # the table
    job_logs = list((runs / "cut" / "_slurm").glob("*_log.err"))
    assert job_logs
    assert not any("Traceback" in path.read_text() for path in job_logs)  # the job returned the child's status

    relaunch = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"resumes from step {summary['steps_done']}" in run_log_path(runs, "cut", run.run_id).read_text()
    assert run_dir.status() == "completed"


def test_cluster_run_warnings_reach_console(corpus_dir, tmp_path, caplog):  # noqa: F811
    """The local launcher shows a run's warnings as they come; Ray and SLURM workers cannot reply, so their
    warnings of the newest attempt are repeated from the run's log when it ends (a reviewer missed them)."""
    from scaling.run_store import initial_summary
    from sweeps.backends import outcome_from_exit
    from sweeps.outcomes import run_log_path

    (run, _) = expand(parse_spec(tiny_sweep(corpus_dir, "tiny")), tmp_path)
    RunDir.at(tmp_path, "tiny", run.run_id).write_summary(
        {**initial_summary(run.run_id, "tiny", "completed"), "final_val_loss": 2.5})
    log_path = run_log_path(tmp_path, "tiny", run.run_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(
        "--- worker start 2026-12-06 01:00:00 on node1\n"
        f"2026-12-06 01:00:01,000 WARNING scaling.train: run {run.run_id} requests eval_tokens=99 (first attempt)\n"
        "--- worker start 2026-12-06 02:00:00 on node1\n"
        "2026-12-06 02:00:01,000 INFO scaling.train: run starts\n"
        f"2026-12-06 02:00:02,000 WARNING scaling.train: run {run.run_id} requests eval_tokens=8192, but ...\n"
        "2026-12-06 02:00:03,000 WARNING absl: not this project's\n"
        "2026-12-06 02:00:04,000 WARNING models.fused_attention: kernel unavailable\n")
    with caplog.at_level(logging.WARNING, logger="sweeps.backends"):
        outcome = outcome_from_exit(run, tmp_path, 0, cpu_s=1.0, wall_s=1.0, host="node1")
    assert outcome.status == "completed"
    relayed = [record.getMessage() for record in caplog.records if record.name == "sweeps.backends"]
    assert relayed == [f"run {run.run_id} requests eval_tokens=8192, but ...",
                       f"run {run.run_id}: kernel unavailable"]
