"""The training-throughput benchmark: its output keys and its bad options.

Speed itself belongs in docs/benchmarks.md, so these tests do not check the numbers. They check that a tiny
run on this CPU reports every key in the requested dtype. They also check that an option that cannot work
stops the script before any timing, with exit status 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models import fused_attention

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
TINY = ["--sizes", "32", "--layers", "1", "--seq-len", "16", "--batch", "2", "--repeats", "1", "--steps", "2",
        "--no-compile", "--json"]


def run_benchmark(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *options], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_run_reports_every_key(dtype):
    done = run_benchmark(*TINY, "--no-torch", "--compute-dtype", dtype)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)

    assert report["backend"] == "cpu"
    assert report["compute_dtype"] == dtype
    # "auto" runs the fused CPU kernel in float32 where it builds (models.fused_attention), else XLA's path.
    fused_here = dtype == "float32" and fused_attention.unavailable_reason() is None
    assert report["attention_impl"] == ("fused" if fused_here else "xla")
    assert report["mfu_peak_source"] == "measured"
    assert report["mfu_peak_flops"] == report["matmul_peak_flops"] > 0
    assert report["matmul_peak_flops"] == pytest.approx(max(report["matmul_rates"].values()))  # rates are rounded
    assert report["torch_device"] is None
    assert report["torch_skipped"] == "--no-torch"
    (row,) = report["sizes"]
    for key in ("d_model", "n_layers", "params", "tokens_per_s", "mfu"):
        assert row[key] is not None, key
    assert row["d_model"] == 32
    assert row["n_layers"] == 1
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * row["exact_flops_per_token"]
                                       / report["matmul_peak_flops"], abs=5.1e-5)  # mfu has 4 decimals


def test_tiny_run_beside_torch_eager():
    pytest.importorskip("torch")
    done = run_benchmark(*TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["torch_device"] == "cpu"
    (row,) = report["sizes"]
    assert row["torch_eager_tokens_per_s"] > 0
    assert row["ratio_vs_torch_eager"] == pytest.approx(row["tokens_per_s"] / row["torch_eager_tokens_per_s"],
                                                        rel=1e-2)


def test_compare_attention_times_both_paths():
    if fused_attention.unavailable_reason() is not None:
        pytest.skip(f"fused kernel unavailable: {fused_attention.unavailable_reason()}")
    done = run_benchmark(*TINY, "--no-torch", "--attention", "fused", "--compare-attention", "xla")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)["sizes"]
    assert row["jax_xla_attention_tokens_per_s"] > 0
    assert row["ratio_vs_jax_xla_attention"] == pytest.approx(
        row["tokens_per_s"] / row["jax_xla_attention_tokens_per_s"], rel=1e-2)


def test_cpu_devices_trains_on_a_mesh():
    done = run_benchmark(*TINY, "--no-torch", "--cpu-devices", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["cpu_devices"] == 2
    assert "--xla_force_host_platform_device_count=2" in report["xla_flags"]
    (row,) = report["sizes"]
    assert row["tokens_per_s"] > 0


@pytest.mark.parametrize("options, message", [
    (["--attention", "cudnn"], "--attention cudnn cannot run"),
    (["--cpu-devices", "3"], "--cpu-devices 3 must be at least 1 and divide --batch 2"),
    (["--attention", "fused", "--compute-dtype", "bfloat16"],
     "attention fused cannot run: it computes in float32 only, not bfloat16"),
    (["--peak-flops", "-1"], "--peak-flops -1.0 must be positive"),
])
def test_impossible_option_exits_2(options, message):
    done = run_benchmark(*TINY, "--no-torch", *options)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
