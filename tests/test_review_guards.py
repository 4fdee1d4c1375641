"""Checks of input that a machine cannot run, made before any work starts.

- `scaling sweep plan`: model sizes too large for this machine's memory are not probed.
- `scaling generate`: a KV cache larger than memory, and a prompt too long for learned positions.
- Sweep specs: grid token counts below one batch.
- `scaling train --mesh`: the CPU hint when the mesh has more devices than the machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import jax
import pytest

import sweeps.probe
from models.generate import Generator
from models.kv_cache import DECODE_CACHE_COPIES, check_cache_fits, decode_memory_bytes, kv_cache_bytes_for
from scaling import machine_memory
from scaling.cli import main
from scaling.config import DataConfig, MeshPlan, ModelConfig, OptimizerConfig, TrainConfig
from scaling.errors import UserError
from scaling.restore import load_trained_run
from scaling.sharding import make_mesh
from scaling.train import train
from sweeps.plan import assumed_cost_model, make_plan
from sweeps.probe import ProbeResult, device_memory_shortfall, measure
from sweeps.resources import split_cores
from sweeps.spec import expand, parse_spec

HUGE = "1e15"  # parameters: 16 PB of float32 state, more than any machine that runs these tests


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, f"expected one line, got: {err!r}"
    return err


@pytest.fixture(scope="module")
def text_source(tmp_path_factory) -> Path:
    """A folder of plain text, about 40 KB, for sweep specs to prepare."""
    folder = tmp_path_factory.mktemp("text")
    for doc in range(20):
        (folder / f"doc{doc:02d}.txt").write_text("".join(f"line {doc} {i} of some words.\n" for i in range(60)))
    return folder


def sweep_raw(source: Path, params: list[str], tokens: list[str]) -> dict:
    return {
        "name": "guards",
        "data": {"source": str(source), "tokenizer": "bytes"},
        "model": {"head_dim": 8, "aspect_ratio": 32},
        "optimizer": {"peak_lr": "3e-3", "warmup_steps": 2},
        "train": {"seq_len": 32, "batch_size": 4, "eval_tokens": 256, "wandb_mode": "disabled"},
        "grid": {"params": params, "tokens": tokens},
    }


@pytest.fixture
def no_probe_child(monkeypatch):
    """Fail the test if the probe starts its child process."""
    def reject_child(*args, **kwargs):
        raise AssertionError("the probe started a child process")

    monkeypatch.setattr(sweeps.probe.subprocess, "run", reject_child)


# ---------------------------------------------------------------- 1. sweep plan with a size too large to probe

def test_plan_skips_probe_huge_size(text_source, tmp_path, caplog, no_probe_child):
    spec = parse_spec(sweep_raw(text_source, [HUGE], ["1K"]))
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        plan = make_plan(spec, tmp_path / "runs", probe=True, workers=1)
    assert time.perf_counter() - started < 30  # the probe child took minutes and grew past 6 GB before

    (row,) = plan.rows
    assert row.run.run_id == "N1e15-D1e3"
    # With no shape measured, the estimate is the no-probe one.
    assert row.seconds == pytest.approx(assumed_cost_model().run_seconds(row.run), rel=1e-6)
    skipped = [r.getMessage() for r in caplog.records if "throughput probe skipped" in r.getMessage()]
    assert len(skipped) == 1
    assert "run N1e15-D1e3 (1e15 parameters)" in skipped[0]
    assert "no-probe estimate" in skipped[0]
    cannot = [r.getMessage() for r in caplog.records if "cannot train here" in r.getMessage()]
    assert len(cannot) == 1
    assert "model size 1e15" in cannot[0]
    assert "N1e15-D1e3" in cannot[0]


def test_plan_command_huge_size(text_source, tmp_path, capsys, caplog, no_probe_child):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(sweep_raw(text_source, [HUGE], ["1K"])))
    with caplog.at_level(logging.WARNING):
        assert main(["sweep", "plan", str(spec), "--runs", str(tmp_path / "runs")]) == 0
    assert "N1e15-D1e3" in capsys.readouterr().out
    assert "throughput probe skipped for run N1e15-D1e3" in caplog.text
    assert "cannot train here" in caplog.text


def test_probe_times_fitting_sizes_only(text_source, tmp_path, monkeypatch):
    """The child gets the small config alone; the results keep the order of the configs asked for."""
    small, huge = expand(parse_spec(sweep_raw(text_source, ["3e3", HUGE], ["1K"])), tmp_path / "runs")
    requests = []

    def fake_child(command, input, **kwargs):
        requests.append(json.loads(input))
        reply = {"results": [{"compile_s": 1.5, "step_s": 0.01, "timed_steps": 100}]}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(reply) + "\n", stderr="")

    monkeypatch.setattr(sweeps.probe.subprocess, "run", fake_child)
    report = measure([huge.config, small.config], split_cores(1)[0], tmp_path / "runs")

    assert [raw["run_id"] for raw in requests[0]["configs"]] == [small.run_id]
    estimate, timed = report.results
    assert estimate.config.run_id == huge.run_id
    assert not estimate.measured
    assert estimate.timed_steps == 0
    assert estimate.step_s == pytest.approx(assumed_cost_model().step_seconds(_exact_flops_per_step(huge)))
    assert timed == ProbeResult(config=small.config, compile_s=1.5, step_s=0.01, timed_steps=100)


def _exact_flops_per_step(run) -> int:
    from scaling.accounting import training_flops_per_token

    per_token = training_flops_per_token(run.config.model, run.config.data.seq_len)["exact"]
    return per_token * run.config.data.tokens_per_step


def test_probe_child_accelerator_skip(text_source, tmp_path, monkeypatch, caplog):
    (small,) = expand(parse_spec(sweep_raw(text_source, ["3e3"], ["1K"])), tmp_path / "runs")

    def fake_child(command, input, **kwargs):
        reply = {"results": [{"skipped": {"needed": 5_000_000, "free": 1_000_000, "device": "cuda:0"}}]}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(reply) + "\n", stderr="")

    monkeypatch.setattr(sweeps.probe.subprocess, "run", fake_child)
    with caplog.at_level(logging.WARNING):
        (result,) = measure([small.config], split_cores(1)[0], tmp_path / "runs").results
    assert not result.measured
    assert "needs at least 5 MB, more than the 1 MB of memory of cuda:0 available" in caplog.text


class FakeDevice:
    """A device with `memory_stats()` as JAX reports it for a GPU, or None as for the CPU."""

    def __init__(self, bytes_limit: int | None, bytes_in_use: int = 0):
        self.bytes_limit, self.bytes_in_use = bytes_limit, bytes_in_use

    def memory_stats(self):
        if self.bytes_limit is None:
            return None
        return {"bytes_limit": self.bytes_limit, "bytes_in_use": self.bytes_in_use}

    def __str__(self) -> str:
        return "cuda:0"


def test_device_shortfall_over_mesh():
    config = TrainConfig(model=ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=2, max_seq_len=32),
                         data=DataConfig(seq_len=32, batch_size=4))
    needed = machine_memory.train_step_bytes(config)
    assert device_memory_shortfall(config, [FakeDevice(None)]) is None  # the CPU: the parent checks RAM
    assert device_memory_shortfall(config, [FakeDevice(needed)]) is None
    short = device_memory_shortfall(config, [FakeDevice(needed, bytes_in_use=1)])
    assert short == {"needed": needed, "free": needed - 1, "device": "cuda:0"}
    # Over two devices each needs at least half.
    two = [FakeDevice(needed // 2 + 1), FakeDevice(needed // 2 + 1)]
    assert device_memory_shortfall(config.replace(mesh="fsdp=2"), two) is None
    assert device_memory_shortfall(config.replace(mesh="fsdp=1"), two)["needed"] == needed


def test_train_step_bytes_components():
    from scaling.host_memory import estimated_step_temp_bytes

    config = TrainConfig(model=ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=2, max_seq_len=32),
                         data=DataConfig(seq_len=32, batch_size=4))
    params = 256 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 192 + 2 * 64) + 64  # tied embedding, SwiGLU of 192, RMSNorm
    assert machine_memory.train_step_bytes(config) == 16 * params + estimated_step_temp_bytes(config)


def test_host_memory_cgroup_limit(tmp_path, monkeypatch):
    physical = machine_memory.host_memory()
    assert physical.total >= physical.available > 0
    (tmp_path / "memory.max").write_text(f"{10**9}\n")
    (tmp_path / "memory.current").write_text(f"{3 * 10**8}\n")
    monkeypatch.setattr(machine_memory, "CGROUP_V2", tmp_path)
    capped = machine_memory.host_memory()
    if physical.total > 10**9:
        assert capped.total == 10**9
        assert capped.available == min(machine_memory._physical_memory()[1], 7 * 10**8)
    (tmp_path / "memory.max").write_text("max\n")  # no limit
    assert machine_memory.host_memory().total == machine_memory._physical_memory()[0]


def test_expand_warns_sizes_beyond_ram(text_source, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        expand(parse_spec(sweep_raw(text_source, ["3e3"], ["1K", "2K"])), tmp_path / "runs")
    assert "cannot train here" not in caplog.text
    with caplog.at_level(logging.WARNING):
        expand(parse_spec(sweep_raw(text_source, ["3e3", HUGE], ["1K", "2K"])), tmp_path / "runs")
    (message,) = [r.getMessage() for r in caplog.records if "cannot train here" in r.getMessage()]
    assert "model size 1e15" in message
    assert "runs N1e15-D1e3, N1e15-D2e3" in message
    assert "16 PB" in message


def test_local_launch_refuses_sizes_beyond_ram(text_source, tmp_path, capsys):
    """A size whose training cannot fit in this machine's RAM stops a local launch before any worker starts:
    its worker would grow until the kernel's out-of-memory killer stopped it, or another process."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(sweep_raw(text_source, ["3e3", HUGE], ["1K"])))
    runs = tmp_path / "runs"
    status = main(["sweep", "launch", str(spec), "--runs", str(runs), "--no-progress"])
    assert status == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scaling: error:")]
    assert "model size(s) 1e15 (at least 16 PB) need more memory to train than this machine has" in line
    assert "nothing was started" in line
    assert not list(runs.glob("*/N*"))  # no run folder, not even the small size's


# ---------------------------------------------------------------- 2. and 3. scaling generate

def _train_tiny(small_corpus: Path, runs: Path, run_id: str, positions: str) -> Path:
    config = TrainConfig(
        model=ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, positions=positions),
        optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=2),
        data=DataConfig(path=str(small_corpus), seq_len=32, batch_size=8, eval_tokens=1024),
        tokens=4 * 32 * 8, eval_interval=4, log_interval=4, checkpoint_interval=4,
        run_id=run_id, sweep="guards", wandb_mode="disabled",
    )
    assert train(config, runs, progress=False)["status"] == "completed"
    return runs / "guards" / run_id


@pytest.fixture(scope="module")
def rope_run(small_corpus, tmp_path_factory) -> Path:
    return _train_tiny(small_corpus, tmp_path_factory.mktemp("runs"), "rope", "rope")


@pytest.fixture(scope="module")
def learned_run(small_corpus, tmp_path_factory) -> Path:
    return _train_tiny(small_corpus, tmp_path_factory.mktemp("runs"), "learned", "learned")


def test_generate_cache_beyond_memory(rope_run, capsys):
    model = load_trained_run(rope_run).config.model
    status = main(["generate", str(rope_run), "--prompt", "a", "--max-new-tokens", "5", "--cache-len", str(10**12)])
    message = _error_line(capsys)
    assert status == 2
    assert f"--cache-len={10**12} needs a KV cache of {kv_cache_bytes_for(model, 10**12)} bytes" in message
    assert "host RAM" in message or "memory of" in message
    assert "or less" in message


def test_generate_names_largest_cache(rope_run, capsys, monkeypatch):
    import models.kv_cache

    model = load_trained_run(rope_run).config.model
    monkeypatch.setattr(models.kv_cache, "memory_available", lambda device=None: (10**9, "host RAM"))
    status = main(["generate", str(rope_run), "--prompt", "a", "--max-new-tokens", "5", "--cache-len", str(10**8)])
    message = _error_line(capsys)
    longest = int(message.rsplit("use --cache-len ", 1)[1].split()[0])
    assert status == 2
    assert "51200000000 bytes (51.2 GB)" in message  # 2 layers x 2 x 2 kv heads x 16 x 4 bytes x 1e8 slots
    assert decode_memory_bytes(model, longest) <= 10**9 < decode_memory_bytes(model, longest + 1)
    assert decode_memory_bytes(model, 1) == DECODE_CACHE_COPIES * kv_cache_bytes_for(model, 1) + 5


def test_generator_memory_per_batch(rope_run, monkeypatch):
    import models.kv_cache

    run = load_trained_run(rope_run)
    model = run.config.model
    one_row = decode_memory_bytes(model, 64, batch_size=1)
    monkeypatch.setattr(models.kv_cache, "memory_available", lambda device=None: (one_row + one_row // 2, "host RAM"))
    generator = Generator(model, run.params, cache_len=64)
    assert len(generator.generate([[1, 2, 3]], 2).tokens[0]) <= 2
    with pytest.raises(UserError, match="for 2 rows"):
        generator.generate([[1, 2, 3], [4, 5]], 2)
    with pytest.raises(UserError, match="cache length=1000 needs a KV cache"):
        Generator(model, run.params, cache_len=1000)
    check_cache_fits(model, 64, batch_size=1)


def test_learned_positions_long_prompt(learned_run, capsys):
    for extra in ([], ["--cache-len", "64"], ["--cache-len", "16"]):
        status = main(["generate", str(learned_run), "--prompt", "a" * 40, "--max-new-tokens", "5", *extra])
        message = _error_line(capsys)
        assert status == 2
        assert "the prompt is 40 tokens and --max-new-tokens asks for 5 more" in message
        assert "prompt plus new tokens must fit in 32" in message
        assert "shorten the prompt to at most 27 tokens" in message
        assert "--cache-len" not in message


def test_learned_positions_too_many_new_tokens(learned_run, capsys):
    status = main(["generate", str(learned_run), "--prompt", "a" * 40, "--max-new-tokens", "50"])
    message = _error_line(capsys)
    assert status == 2
    assert "lower --max-new-tokens to at most 31" in message
    assert "--cache-len" not in message


def test_learned_positions_full_warning(learned_run, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        status = main(["generate", str(learned_run), "--prompt", "a" * 30, "--max-new-tokens", "5", "--no-stop",
                       "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["stop_reason"] == "cache_full"
    assert report["new_tokens"] == 2
    (warning,) = [r.getMessage() for r in caplog.records if "generation stopped" in r.getMessage()]
    assert "reached max_seq_len=32" in warning
    assert "shorten the prompt to at most 27 tokens" in warning
    assert "--cache-len" not in warning


def test_learned_positions_short_cache(learned_run, capsys):
    status = main(["generate", str(learned_run), "--prompt", "a" * 20, "--max-new-tokens", "5", "--cache-len", "16"])
    message = _error_line(capsys)
    assert status == 2
    assert "raise --cache-len (up to max_seq_len=32" in message


def test_generator_learned_long_prompt(learned_run):
    from models.kv_cache import CacheFullError

    run = load_trained_run(learned_run)
    with pytest.raises(CacheFullError, match="a longer cache cannot help"):
        Generator(run.config.model, run.params).generate([[1] * 40], 3)


# ---------------------------------------------------------------- 4. grid token counts below one batch

def test_grid_tokens_below_batch(text_source, tmp_path):
    with pytest.raises(UserError) as error:
        parse_spec(sweep_raw(text_source, ["3e3"], ["1K", "10"]))
    message = str(error.value)
    assert "grid.tokens[1]=10 is less than one batch of 128 tokens" in message
    assert "(train.seq_len 32 x train.batch_size 4); use at least 128 tokens" in message
    (run,) = expand(parse_spec(sweep_raw(text_source, ["3e3"], ["128"])), tmp_path / "runs")  # one batch is allowed
    assert run.steps == 1


def test_grid_tokens_below_batch_cli(text_source, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(sweep_raw(text_source, ["3e3"], ["10"])))
    for command in ("plan", "launch"):
        status = main(["sweep", command, str(spec), "--runs", str(tmp_path / "runs")])
        assert status == 2
        assert "grid.tokens[0]=10 is less than one batch of 128 tokens" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()  # the corpus was not prepared


# ---------------------------------------------------------------- 5. mesh larger than the machine

def test_mesh_error_cpu_hint():
    devices = jax.devices()[:1]
    with pytest.raises(UserError) as error:
        make_mesh(MeshPlan(devices=4), devices)
    message = str(error.value)
    assert "mesh data=4 asks for 4 devices, but JAX sees 1" in message
    assert "use data=1" in message
    if devices[0].platform == "cpu":
        assert message.endswith("(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices)")
