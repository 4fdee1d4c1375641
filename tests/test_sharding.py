"""Sharded training: data parallelism and FSDP on a mesh of 4 CPU devices equal training on one device.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, so the multi-device
checks run in child processes (`CHILD`, `train_in_child`), and the assertions run here. The layout comes
from the config's `mesh` field, except in the tests of the SCALING_MESH environment variable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from scaling.errors import UserError
from scaling.sharding import MeshPlan, cluster_from_env, fsdp_spec, parse_mesh
from tests.faults import finished_steps, shared_jax_cache, train_until_fault  # noqa: F401  (autouse fixture)

PROJECT = Path(__file__).resolve().parents[1]
STEPS = 12

CHILD = r"""
import json, os, re, sys
import jax, jax.numpy as jnp, numpy as np
from models import fused_attention
from scaling.checkpoint import Checkpointer, abstract_like
from scaling.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig
from scaling.batches import batch_at
from scaling.schedule import schedule_values
from scaling.train import Trainer

steps, folder = int(sys.argv[1]), sys.argv[2]
config = TrainConfig(
    model=ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=32),
    optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=3),
    data=DataConfig(path="unused", seq_len=32, batch_size=8, eval_tokens=2048),
    tokens=steps * 32 * 8, wandb_mode="disabled",
)
# 16 of the 256 tokens, so a few steps visibly learn their frequencies (uniform bytes cannot be learned)
tokens = np.random.default_rng(0).integers(0, 16, size=50_000).astype(np.uint16)
schedule = {k: jnp.asarray(v, jnp.float32) for k, v in schedule_values(config.optimizer, steps).items()}
windows = np.stack([tokens[i * 33:(i + 1) * 33] for i in range(12)]).astype(np.int32)  # 1.5 batches

out = {"devices": jax.device_count(), "kernel_builds": fused_attention.unavailable_reason() is None}
for name, devices, mesh in [("one", jax.devices()[:1], ""), ("data", None, "data=4"), ("fsdp", None, "fsdp=4")]:
    trainer = Trainer(config.replace(mesh=mesh), devices=devices)
    state = trainer.init_state(0)
    # Summed on the host in float64: a sum on the devices would follow each layout's reduction order.
    initial = float(np.sum(np.asarray(state["params"]["block_0"]["mlp"]["up"]["kernel"]), dtype=np.float64))
    # The batch rows of each fused-attention call, from the log-sum-exp output [rows, heads, positions].
    text = trainer.step_fn.lower(state, batch_at(tokens, 0, batch_size=8, seq_len=32, seed=0), schedule).compile().as_text()
    kernel_rows = sorted({int(rows) for rows in re.findall(
        r"f32\[(\d+),\d+,\d+\]\{2,1,0\}\) custom-call\([^\n]*scaling_causal_attention_forward", text)})
    losses = []
    for step in range(steps):
        batch = batch_at(tokens, step, batch_size=8, seq_len=32, seed=0)
        state, metrics = trainer.step_fn(state, batch, schedule)
        losses.append(float(metrics["train_loss"]))
    leaves = {
        "params/block_0/mlp/up/kernel": state["params"]["block_0"]["mlp"]["up"]["kernel"],
        "params/embed/embedding": state["params"]["embed"]["embedding"],
        "params/final_norm/scale": state["params"]["final_norm"]["scale"],
        "opt_state/mu/block_0/attention/query/kernel": state["opt_state"][1].mu["block_0"]["attention"]["query"]["kernel"],
        "opt_state/nu/embed/embedding": state["opt_state"][1].nu["embed"]["embedding"],
        "step": state["step"],
    }
    result = {
        "losses": losses,
        "initial_sum": initial,
        "eval_nats": trainer.evaluate(state["params"], windows),
        "mesh_devices": trainer.mesh.size,
        "kernel_rows": kernel_rows,
        "leaves": {path: {"spec": [None if a is None else str(a) for a in leaf.sharding.spec],
                          "shape": list(leaf.shape),
                          "shard_shapes": [list(s.data.shape) for s in leaf.addressable_shards],
                          "shard_devices": sorted(s.device.id for s in leaf.addressable_shards)}
                   for path, leaf in leaves.items()},
    }
    if name == "fsdp":  # a sharded state saves and restores into the same layout
        checkpointer = Checkpointer(f"{folder}/checkpoints")
        checkpointer.save(steps, state)
        checkpointer.wait()
        restored_step, restored = checkpointer.restore_latest(abstract_like(state))
        checkpointer.close()
        kernel = restored["params"]["block_0"]["mlp"]["up"]["kernel"]
        result["restored"] = {
            "step": restored_step,
            "spec": [None if a is None else str(a) for a in kernel.sharding.spec],
            "equal": bool(jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored, state))),
        }
    out[name] = result
try:  # "fsdp" spans every device, so only the Trainer, given the 4 devices, can check the batch
    Trainer(config.replace(data=DataConfig(path="unused", seq_len=32, batch_size=6), mesh="fsdp"))
except Exception as error:
    out["indivisible"] = f"{type(error).__name__}: {error}"

# SCALING_MESH fills in for a config without a mesh, and a config's mesh wins over it.
os.environ["SCALING_MESH"] = "fsdp=2"
layouts = {"unset": Trainer(config), "config": Trainer(config.replace(mesh="data=4"))}
out["environment"] = {name: {"layout": str(trainer.plan), "mesh_devices": trainer.mesh.size, "fsdp": trainer.fsdp}
                      for name, trainer in layouts.items()}
print("RESULT " + json.dumps(out))
"""


def run_child(tmp_path: Path, steps: int = STEPS) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env.pop("SCALING_MESH", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    return run_child(tmp_path_factory.mktemp("sharding"))


def test_same_losses_on_one_and_four_devices(four_devices):
    assert four_devices["devices"] == 4
    one = four_devices["one"]
    assert one["mesh_devices"] == 1
    assert len(one["losses"]) == STEPS
    assert one["losses"][-1] < one["losses"][0]  # it trained
    for layout in ("data", "fsdp"):
        run = four_devices[layout]
        assert run["mesh_devices"] == 4
        assert run["initial_sum"] == one["initial_sum"]  # the same initial parameters, bit for bit
        np.testing.assert_allclose(run["losses"], one["losses"], rtol=0, atol=1e-5)
        assert run["eval_nats"] == pytest.approx(one["eval_nats"], rel=1e-5)


def test_fused_attention_runs_on_each_devices_rows(four_devices):
    """Attention "auto" on 4 CPU devices calls the fused kernel on each device's 2 of the 8 rows."""
    if not four_devices["kernel_builds"]:
        pytest.skip("the fused CPU attention kernel does not build here (no C++ compiler)")
    assert four_devices["one"]["kernel_rows"] == [8]
    assert four_devices["data"]["kernel_rows"] == [2]
    assert four_devices["fsdp"]["kernel_rows"] == [2]


def test_data_parallel_replicates_the_state(four_devices):
    for path, leaf in four_devices["data"]["leaves"].items():
        assert all(axis is None for axis in leaf["spec"]), path
        assert leaf["shard_devices"] == [0, 1, 2, 3]
        assert all(shape == leaf["shape"] for shape in leaf["shard_shapes"]), path


def test_fsdp_shards_parameters_and_moments(four_devices):
    leaves = four_devices["fsdp"]["leaves"]
    expected = {  # (spec, shape of each device's shard); the largest dimension divisible by 4 is split
        "params/block_0/mlp/up/kernel": ([None, "data"], [32, 24]),  # [32, 96]
        "params/embed/embedding": (["data"], [64, 32]),  # [256, 32]
        "params/final_norm/scale": (["data"], [8]),  # [32]
        "opt_state/mu/block_0/attention/query/kernel": (["data"], [8, 2, 16]),  # [32, 2, 16]
        "opt_state/nu/embed/embedding": (["data"], [64, 32]),
        "step": ([], []),  # scalars stay replicated
    }
    for path, (spec, shard_shape) in expected.items():
        leaf = leaves[path]
        assert leaf["spec"] == spec, path
        assert leaf["shard_devices"] == [0, 1, 2, 3], path
        assert leaf["shard_shapes"] == [shard_shape] * 4, path
    restored = four_devices["fsdp"]["restored"]
    assert restored == {"step": STEPS, "spec": [None, "data"], "equal": True}


def test_mesh_environment_variable(four_devices):
    assert four_devices["environment"]["unset"] == {"layout": "fsdp=2", "mesh_devices": 2, "fsdp": True}
    assert four_devices["environment"]["config"] == {"layout": "data=4", "mesh_devices": 4, "fsdp": False}


def test_parse_mesh():
    assert parse_mesh("data=4") == MeshPlan(devices=4, fsdp=False)
    assert parse_mesh("fsdp=2") == MeshPlan(devices=2, fsdp=True)
    assert parse_mesh("fsdp") == MeshPlan(devices=None, fsdp=True)
    assert parse_mesh(" data = all ") == MeshPlan(devices=None, fsdp=False)
    for bad in ("model=4", "data=0", "data=-1", "fsdp=x", ""):
        with pytest.raises(UserError, match="data=N or fsdp=N|at least 1"):
            parse_mesh(bad)


def test_fsdp_spec_picks_largest_divisible_dimension():
    assert fsdp_spec((32, 96), 4) == PartitionSpec(None, "data")
    assert fsdp_spec((96, 32), 4) == PartitionSpec("data")
    assert fsdp_spec((6, 8), 4) == PartitionSpec(None, "data")
    assert fsdp_spec((6, 3), 4) == PartitionSpec()  # nothing divisible: replicated
    assert fsdp_spec((), 4) == PartitionSpec()
    assert fsdp_spec((2,), 4) == PartitionSpec()
    assert fsdp_spec((64, 64), 1) == PartitionSpec()


def test_batch_must_split_over_devices(four_devices):
    assert four_devices["indivisible"].startswith("UserError: data.batch_size=6 does not split over 4 devices")


def test_mesh_larger_than_the_machine_is_refused():
    import jax

    from scaling.config import DataConfig, ModelConfig, TrainConfig
    from scaling.train import Trainer

    config = TrainConfig(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=16),
                         data=DataConfig(seq_len=16, batch_size=4), tokens=480, wandb_mode="disabled", mesh="data=2")
    with pytest.raises(UserError, match="mesh data=2 asks for 2 devices, but JAX sees 1"):
        Trainer(config, devices=jax.devices()[:1])
    # On a CPU the message ends with how to emulate devices there, as the sweep launcher's does.
    hint = r" \(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices\)"
    with pytest.raises(UserError, match=r"; use fsdp=1" + (hint if jax.devices()[0].platform == "cpu" else "") + "$"):
        Trainer(config.replace(mesh="fsdp=2"), devices=jax.devices()[:1])


def test_sweep_spec_mesh_reaches_every_run(tmp_path):
    """`train.mesh` in a spec sets every run's mesh, leaves the run ids alone, and may change between launches."""
    from scaling.run_store import RunDir
    from sweeps.launcher import check_existing_runs
    from sweeps.spec import PreparedData, expand, parse_spec

    raw = {"name": "meshed", "model": {"aspect_ratio": 20, "head_dim": 16},
           "train": {"seq_len": 32, "batch_size": 8, "eval_tokens": 256, "mesh": "fsdp=4"},
           "isoflop": {"budgets": [1e10], "params": [1e4, 2e4]}}
    data = PreparedData(path=tmp_path / "corpus", meta={"vocab_size": 256, "tokens": {"train": 10**8}})
    runs = expand(parse_spec(raw), tmp_path / "runs", data=data)
    assert [run.config.mesh for run in runs] == ["fsdp=4", "fsdp=4"]
    default = expand(parse_spec({**raw, "train": {**raw["train"], "mesh": ""}}), tmp_path / "runs", data=data)
    assert [run.run_id for run in default] == [run.run_id for run in runs]
    assert [run.config.mesh for run in default] == ["", ""]

    for run in default:  # the sweep first launched with the default mesh
        RunDir.at(tmp_path / "runs", "meshed", run.run_id).write_config({"config": run.config.to_dict()})
    check_existing_runs(runs, tmp_path / "runs")  # relaunched with train.mesh: accepted
    reseeded = expand(parse_spec({**raw, "train": {**raw["train"], "seed": 1}}), tmp_path / "runs", data=data)
    with pytest.raises(UserError, match=r"a run with a different config \(seed 0 -> 1\), not the run"):
        check_existing_runs(reseeded, tmp_path / "runs")


def test_cluster_detection_from_environment():
    assert cluster_from_env({}) is None
    explicit = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert cluster_from_env(explicit) == "explicit"
    assert cluster_from_env({**explicit, "JAX_NUM_PROCESSES": "1"}) is None
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0"}
    assert cluster_from_env(slurm) == "slurm"
    assert cluster_from_env({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: a plain single process
    assert cluster_from_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None  # sbatch script, not an srun step
    ompi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://127.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}
    assert cluster_from_env(ompi) == "openmpi"
    with pytest.raises(UserError, match="is not a process count"):
        cluster_from_env({**explicit, "JAX_NUM_PROCESSES": "two"})


EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}


@pytest.mark.parametrize("changes, match", [
    ({"JAX_PROCESS_ID": "abc"}, "JAX_PROCESS_ID='abc' must be a whole number from 0 to JAX_NUM_PROCESSES-1 = 1"),
    ({"JAX_PROCESS_ID": "5"}, "JAX_PROCESS_ID='5' must be a whole number"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1"}, "JAX_COORDINATOR_ADDRESS='127.0.0.1' must be host:port"),
], ids=["rank_text", "rank_too_large", "address_without_port"])
def test_bad_cluster_variables_raise_user_error(changes, match):
    with pytest.raises(UserError, match=match):
        cluster_from_env({**EXPLICIT, **changes})


def test_partial_cluster_variables_warn(caplog):
    caplog.set_level(logging.WARNING)
    partial = {key: value for key, value in EXPLICIT.items() if key != "JAX_PROCESS_ID"}
    assert cluster_from_env(partial) is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "without JAX_PROCESS_ID" in warnings[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TRAIN_CHILD = (
    "import json, logging, sys\n"
    "from scaling.config import TrainConfig\n"
    "from scaling.train import train\n"
    "logging.basicConfig(level=logging.WARNING)\n"
    "logging.getLogger('scaling').setLevel(logging.DEBUG)  # the layout and the resume step go to stderr\n"
    "summary = train(TrainConfig.from_dict(json.load(open(sys.argv[1]))), sys.argv[2], progress=False)\n"
    "print('STATUS', summary['status'])\n"
)


def test_resume_on_another_mesh(small_corpus, tmp_path, monkeypatch):
    """A run killed on one device resumes from its checkpoint as FSDP over 4 devices, with a config that
    differs only in `mesh`, and ends with the losses of an uninterrupted one-device run."""
    from scaling.run_store import RunDir
    from scaling.train import train
    from tests.test_train import tiny_config

    monkeypatch.delenv("SCALING_MESH", raising=False)
    config = tiny_config(small_corpus, run_id="moved", sweep="mesh")
    alone = train(config.replace(run_id="alone"), tmp_path / "alone", progress=False)
    reference_rows = RunDir.at(tmp_path / "alone", "mesh", "alone").metrics()

    runs = tmp_path / "runs"
    train_until_fault(config, runs, "step:30")  # checkpoints at step 20; killed before step 30 is logged
    run = RunDir.at(runs, "mesh", "moved")
    assert finished_steps(run.checkpoint_dir) == [20]
    rows_before = [row for row in run.metrics() if row["step"] <= 20]

    moved = config.replace(mesh="fsdp=4")
    config_path = tmp_path / "moved.json"
    config_path.write_text(json.dumps(moved.to_dict()))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env.pop("WANDB_SERVICE", None)
    done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(config_path), str(runs)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "STATUS completed" in done.stdout
    assert "device layout fsdp=4 from mesh='fsdp=4'" in done.stderr
    assert "run moved resumes from step 20" in done.stderr
    assert "on fsdp over 4 cpu devices" in " ".join(done.stderr.split())  # the log names the new layout

    rows = run.metrics()
    assert rows[:len(rows_before)] == rows_before  # the rows up to the checkpoint are the first process's
    assert [row["step"] for row in rows] == [row["step"] for row in reference_rows]
    np.testing.assert_allclose([row["train_loss"] for row in rows], [row["train_loss"] for row in reference_rows],
                               rtol=0, atol=1e-5)
    summary = run.summary()
    assert summary["status"] == "completed"
    assert summary["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-5)
    assert run.config()["config"]["mesh"] == ""  # config.json keeps the record of the run's first start
    assert summary["layout"] == "fsdp over 4 cpu devices"  # summary.json names the newest attempt's devices


@pytest.mark.slow
def test_two_processes_train_like_one(small_corpus, tmp_path):
    """Two processes of 2 CPU devices each, joined by jax.distributed on 127.0.0.1, train one FSDP run over
    4 devices. Process 0 alone writes the run folder, and its losses equal a one-device run's."""
    from scaling.run_store import RunDir
    from scaling.train import train
    from tests.test_train import tiny_config

    config = tiny_config(small_corpus, tokens=20 * 32 * 8, eval_interval=10, checkpoint_interval=10, sweep="mp")
    alone = train(config.replace(run_id="alone"), tmp_path / "alone", progress=False)
    shared = config.replace(run_id="shared")
    config_path = tmp_path / "shared.json"
    config_path.write_text(json.dumps(shared.to_dict()))

    for returncode, out, err in _two_processes(config_path, tmp_path / "mp"):
        assert returncode == 0, err[-3000:]
        assert "STATUS completed" in out

    run = RunDir.at(tmp_path / "mp", "mp", "shared")
    reference = RunDir.at(tmp_path / "alone", "mp", "alone")
    rows, reference_rows = run.metrics(), reference.metrics()
    assert [row["step"] for row in rows] == [row["step"] for row in reference_rows]  # written once, by process 0
    np.testing.assert_allclose([row["train_loss"] for row in rows], [row["train_loss"] for row in reference_rows],
                               rtol=0, atol=1e-5)
    summary = run.summary()
    assert summary["status"] == "completed"
    assert summary["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-5)


def _two_processes(config_path: Path, runs: Path, faults: tuple[str, str] = ("", "")) -> list[tuple[int, str, str]]:
    """Train the config in two processes of 2 CPU devices each, joined on 127.0.0.1; return (status, out, err)
    of each. `faults` sets SCALING_FAULT per process."""
    address = f"127.0.0.1:{free_port()}"
    children = []
    for process_id in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
               "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(process_id),
               "SCALING_MESH": "fsdp=4", "SCALING_FAULT": faults[process_id]}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
        env.pop("WANDB_SERVICE", None)
        children.append(subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(config_path), str(runs)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                         cwd=PROJECT))
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=240)
        finally:
            if child.poll() is None:
                child.kill()
        outputs.append((child.returncode, out, err))
    return outputs


@pytest.mark.slow
def test_signal_to_one_process_stops_both(small_corpus, tmp_path):
    """SIGINT reaches process 1 alone, after step 23. Both processes stop after step 30, where they compare
    their signals, and save the checkpoint of that step together. The relaunch resumes from it and ends with
    the losses of a one-device run. Before, process 1 stopped alone and process 0 hung."""
    from scaling.run_store import RunDir
    from scaling.sharding import STOP_CHECK_STEPS
    from scaling.train import train
    from tests.test_train import tiny_config

    config = tiny_config(small_corpus, sweep="mp")  # 60 steps, checkpoints every 20
    alone = train(config.replace(run_id="alone"), tmp_path / "alone", progress=False)
    shared = config.replace(run_id="shared")
    config_path = tmp_path / "shared.json"
    config_path.write_text(json.dumps(shared.to_dict()))

    stopped = _two_processes(config_path, tmp_path / "mp", faults=("", "signal:23"))
    for returncode, out, err in stopped:
        assert returncode != 0, out
        assert "STATUS" not in out
        assert "Traceback" in err, err[-3000:]
        assert "KeyboardInterrupt" in err, err[-3000:]
    run = RunDir.at(tmp_path / "mp", "mp", "shared")
    summary = run.summary()
    assert STOP_CHECK_STEPS == 10
    assert summary["status"] == "interrupted"
    assert (summary["steps_done"], summary["interrupted_at_step"]) == (30, 30)
    assert finished_steps(run.checkpoint_dir) == [20, 30]

    resumed = _two_processes(config_path, tmp_path / "mp")
    for returncode, out, err in resumed:
        assert returncode == 0, err[-3000:]
        assert "STATUS completed" in out
    reference = RunDir.at(tmp_path / "alone", "mp", "alone")
    rows, reference_rows = run.metrics(), reference.metrics()
    assert [row["step"] for row in rows] == [row["step"] for row in reference_rows]
    np.testing.assert_allclose([row["train_loss"] for row in rows], [row["train_loss"] for row in reference_rows],
                               rtol=0, atol=1e-5)
    assert run.summary()["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-5)



def test_fsdp_that_cannot_split_most_parameters_warns(caplog):
    """A reviewer's fsdp=3 kept every matrix whole on each device without a word."""
    from scaling.sharding import _warn_if_kept_whole

    params = {"kernel": jax.ShapeDtypeStruct((256, 32), np.float32), "bias": jax.ShapeDtypeStruct((33,), np.float32)}
    with caplog.at_level(logging.WARNING, logger="scaling.sharding"):
        _warn_if_kept_whole(params, 4)
        assert not caplog.records  # 4 divides both dimensions of the kernel
        _warn_if_kept_whole(params, 3)
    (record,) = caplog.records
    assert record.getMessage().startswith("fsdp=3: 1 of 2 parameter arrays (100% of the parameters) have no "
                                          "dimension divisible by 3, so every device keeps them")
