"""The example scripts run and print what their docstrings promise (slow: they train and time models)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_causal_mask_leak_example():
    output = run_example("causal_mask_leak.py")
    masked, unmasked = output.split("without it")[0], output.split("without it")[1]
    assert "logits at position 0: # . . . . . . ." in masked
    assert "logits at position 0: # # # # # # # #" in unmasked
    losses = [float(line.split(":")[1].split()[0]) for line in output.splitlines()
              if "causal mask:" in line and "nats/token" in line]
    assert losses[0] > 3.8  # ln(50) = 3.912: random tokens cannot be predicted honestly
    assert losses[1] < 1.0  # the unmasked model copies the visible next token


@pytest.mark.slow
def test_kv_cache_speed_example():
    output = run_example("kv_cache_speed.py")
    assert "same tokens: True" in output
    assert "MHA (32 KV heads):  2.000 GiB" in output


@pytest.mark.slow
def test_chinchilla_example():
    output = run_example("chinchilla_7b.py")
    assert "D = 2.955e+11 tokens" in output
    assert "4.677e+11" in output  # the rounded, printed constants
