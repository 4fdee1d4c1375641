"""Freed host memory is kept: a compiled step's large temporary buffer no longer page-faults at every call.

Each case runs in a fresh interpreter, because the allocator settings only take effect before JAX starts
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
import scaling
import jax
import jax.numpy as jnp
from scaling.host_memory import keep_freed_memory

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
