"""Freed host memory is kept: a compiled step's large temporary buffer no longer page-faults at every call.

Cases that apply the settings run in a fresh interpreter, because they only take effect before JAX starts
its threads (scaling/host_memory.py).
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One call materialises a 64 MB temporary (the barrier keeps XLA from fusing it into the sum). glibc serves
# a block that large with fresh pages each time, unless the settings keep freed memory in the heap.
PROBE = """
import resource
import jax
import jax.numpy as jnp
from scaling.host_memory import keep_freed_memory

keep_freed_memory(64 * 2**20)  # what train() passes for a step with 64 MB of temporaries
step = jax.jit(lambda x: jax.lax.optimization_barrier(jnp.sin(x)).sum())
x = jnp.ones((4096, 4096), jnp.float32)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(keep_freed_memory(), *faults)
"""

PAGES_OF_64_MB = 64 * 2**20 // 4096


def fewest_faults_of_late_calls(env_value: str | None) -> tuple[bool, int]:
    """Return (settings applied, the fewest page faults of calls 6 to 10 of the probe)."""
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    if env_value is not None:
        env["SCALING_KEEP_FREED_MEMORY"] = env_value
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    applied, *faults = done.stdout.split()
    # The kept heap grows over the first few calls (by 0 to 4 temporaries in trials), because earlier
    # temporaries are still being freed. After that every call reuses the freed blocks.
    return applied == "True", min(int(count) for count in faults[5:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_kept_memory_stops_page_faults():
    applied, faults = fewest_faults_of_late_calls(None)
    assert applied
    assert faults < PAGES_OF_64_MB / 10

    applied, faults = fewest_faults_of_late_calls("0")
    assert not applied
    # glibc's defaults: the temporary is mapped and zeroed again at every call.
    assert faults > PAGES_OF_64_MB / 2


DECISION = """
import sys
from scaling.host_memory import keep_freed_memory
print(keep_freed_memory(int(sys.argv[1])))
"""


def decision(step_temp_bytes: int, env_value: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if env_value is not None:
        env["SCALING_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", DECISION, str(step_temp_bytes)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
@pytest.mark.parametrize("step_temp_bytes, env_value, applied", [
    (8 * 2**20, None, "False"),  # small steps keep glibc's defaults
    (32 * 2**20, None, "True"),
    (32 * 2**20, "auto", "True"),
    (8 * 2**20, "1", "True"),
    (512 * 2**20, "0", "False"),
])
def test_decision_by_step_size(step_temp_bytes, env_value, applied):
    done = decision(step_temp_bytes, env_value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [applied]


def test_invalid_switch_rejected():
    done = decision(0, "yes")
    assert done.returncode != 0
    assert "invalid SCALING_KEEP_FREED_MEMORY='yes': use 1, 0 or auto" in done.stderr


@pytest.mark.parametrize("d_model, n_layers, seq_len", [(48, 2, 64), (32, 2, 128)])
def test_estimate_tracks_xla_temporaries(d_model, n_layers, seq_len):
    import jax.numpy as jnp
    import numpy as np

    from scaling.config import DataConfig, ModelConfig, TrainConfig
    from scaling.host_memory import estimated_step_temp_bytes
    from scaling.schedule import schedule_values
    from scaling.train import Trainer

    model = ModelConfig(vocab_size=256, d_model=d_model, n_layers=n_layers, n_heads=d_model // 16,
                        max_seq_len=seq_len)
    config = TrainConfig(model=model, data=DataConfig(path="unused", seq_len=seq_len, batch_size=8),
                         tokens=100 * 8 * seq_len, wandb_mode="disabled")
    trainer = Trainer(config)
    state = trainer.init_state(0)
    schedule = {key: jnp.asarray(value, jnp.float32) for key, value in schedule_values(config.optimizer, 100).items()}
    batch = np.zeros((8, seq_len + 1), np.int32)
    compiled = trainer.step_fn.lower(state, batch, schedule).compile()
    counted = compiled.memory_analysis().temp_size_in_bytes
    assert 0.7 * counted <= estimated_step_temp_bytes(config) <= 1.5 * counted
