"""Fault injection for the tests: train in a child process that kills itself at a chosen point.

`train_until_fault(config, runs, "checkpoint:40")` starts `scaling.train.train` in a fresh Python process
with SCALING_FAULT set (see `scaling.train.fault_from_env` for the points) and waits for it to die by
SIGKILL. What the child left on disk is then exactly what a real `kill -9` at that point leaves.
Also here: damaging a finished checkpoint the way a full disk or an interrupted copy does, and reading the
step numbers of an offline W&B run file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.config import TrainConfig
from scaling.train import FAULT_ENV

CHILD_SCRIPT = (
    "import json, sys\n"
    "from scaling.config import TrainConfig\n"
    "from scaling.train import train\n"
    "train(TrainConfig.from_dict(json.load(open(sys.argv[1]))), sys.argv[2], progress=False)\n"
)


@pytest.fixture(scope="module", autouse=True)
def shared_jax_cache(tmp_path_factory):
    """One JAX compilation cache for every run of the test session, children included (SCALING_JAX_CACHE).

    The tiny runs of these tests share their shapes, so after the first run each one loads its compiled
    programs instead of compiling them: seconds instead of tens of seconds on a 2-core machine. A module
    that imports this fixture uses it.
    """
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.getbasetemp() / "jax_cache"
        path.mkdir(exist_ok=True)
        patch.setenv("SCALING_JAX_CACHE", str(path))
        yield path


def train_in_child(config: TrainConfig, runs: Path, fault: str | None = None, timeout: float = 300,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `train(config, runs)` in a child process, with SCALING_FAULT=`fault` when given."""
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    config_path = runs / f"{config.sweep}-{config.run_id}.config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    child_env = {**os.environ, **(env or {})}
    child_env.pop(FAULT_ENV, None)
    # W&B puts its service's address in os.environ; a child that inherits it shares this process's service,
    # which would keep a killed child's run id "in use". A relaunch after a crash is a separate process tree.
    child_env.pop("WANDB_SERVICE", None)
    if fault is not None:
        child_env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", CHILD_SCRIPT, str(config_path), str(runs)], env=child_env,
                          capture_output=True, text=True, timeout=timeout)


def train_until_fault(config: TrainConfig, runs: Path, fault: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the child with `fault` and check that it died by SIGKILL, not by finishing or by an error."""
    result = train_in_child(config, runs, fault, **kwargs)
    if result.returncode != -signal.SIGKILL:
        raise AssertionError(f"child with {FAULT_ENV}={fault} exited with {result.returncode}, not SIGKILL:\n"
                             f"{result.stderr[-3000:]}")
    return result


def stop_once(command: list[str], ready, stop, cwd: Path, timeout_s: float = 180) -> subprocess.Popen:
    """Start `command`, call `stop(process)` once `ready()` is true, and return the process after it exits.

    Fails when the process ends before `ready()` or `ready()` stays false for `timeout_s`. The process's
    stdout and stderr are in `process.stdout_text` and `process.stderr_text`; it is killed if the test fails.
    """
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout_s
    try:
        while not ready():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, f"not ready within {timeout_s:.0f} s"
            time.sleep(0.05)
        stop(process)
        process.stdout_text, process.stderr_text = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process


def finished_steps(checkpoint_dir: Path) -> list[int]:
    """Step folders Orbax would list: integer names (a write cut short keeps a temporary name)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(entry.name) for entry in checkpoint_dir.iterdir() if entry.name.isdigit())


DAMAGES = ("truncate_arrays", "remove_manifest", "truncate_metadata", "empty_folder")


def damage_checkpoint(step_dir: Path, how: str) -> None:
    """Damage a finished Orbax step folder in place; `how` is one of DAMAGES."""
    item = step_dir / "default"
    if how == "truncate_arrays":  # the array chunks, cut to half: a copy or a full disk stopped midway
        chunks = [path for path in (item / "d").iterdir() if path.is_file()]
        if not chunks:
            raise AssertionError(f"no array chunks under {item / 'd'}; the Orbax layout changed")
        for path in chunks:
            os.truncate(path, path.stat().st_size // 2)
    elif how == "remove_manifest":  # the OCDBT index that maps array names to chunks
        (item / "manifest.ocdbt").unlink()
    elif how == "truncate_metadata":  # every small JSON file cut mid-way
        for name in ("_CHECKPOINT_METADATA", "default/_METADATA"):
            path = step_dir / name
            os.truncate(path, path.stat().st_size // 2)
    elif how == "empty_folder":  # the folder exists, its files were never written
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    else:
        raise ValueError(f"unknown damage {how!r}; one of {DAMAGES}")


def run_steps(trainer, state, train_tokens, start: int, stop: int):
    """Run optimizer steps [start, stop) of `trainer` from `state` as training does; return the state."""
    import jax.numpy as jnp

    from scaling.batches import batch_at
    from scaling.schedule import schedule_values

    config = trainer.config
    schedule = {key: jnp.asarray(value, jnp.float32)
                for key, value in schedule_values(config.optimizer, config.total_steps).items()}
    for step in range(start, stop):
        batch = batch_at(train_tokens, step, batch_size=config.data.batch_size, seq_len=config.data.seq_len,
                         seed=config.seed)
        state, _ = trainer.step_fn(state, batch, schedule)
    return state


WANDB_FILE_HEADER = b":W&B"
WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers


def wandb_offline_runs(run_dir: Path) -> list[Path]:
    """Return the offline W&B run files (`run-<id>.wandb`) of every attempt, oldest first: the earlier
    attempts' from `<run>/wandb/superseded/`, then the current one's from `<run>/wandb/`."""
    superseded = sorted((run_dir / "wandb" / "superseded").glob("offline-run-*/run-*.wandb"),
                        key=lambda path: path.parent.name)
    current = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda path: path.parent.name)
    return superseded + current


def wandb_history(path: Path, wait_for_exit: float = 0.0) -> list[dict]:
    """Return the history rows of an offline W&B run file, in file order, each with its `_step`.

    Reads the file's record framing (W&B's LevelDB-style log) and decodes each record with W&B's own
    protobuf. A record cut short at the end (the writer was killed) is ignored. W&B's service writes the
    file after `finish()` returns; `wait_for_exit` seconds allows it to write the closing record.
    """
    deadline = time.monotonic() + wait_for_exit
    while True:
        records = _wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({**row, "_step": record.history.step.num})
    return rows


def _wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != WANDB_FILE_HEADER:
        raise AssertionError(f"{path} does not start with {WANDB_FILE_HEADER!r}; the W&B file format changed")
    records = []
    position, pieces = 7, b""
    while position + 7 <= len(data):
        left_in_block = WANDB_BLOCK - position % WANDB_BLOCK
        if left_in_block < 7:  # block trailer padding
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if len(chunk) < length or kind == 0:
            continue
        if kind == 1:  # a whole record
            payload = chunk
        elif kind == 2:  # first piece
            pieces = chunk
            continue
        elif kind == 3:  # middle piece
            pieces += chunk
            continue
        else:  # last piece
            payload = pieces + chunk
        records.append(wandb_internal_pb2.Record.FromString(payload))
    return records
