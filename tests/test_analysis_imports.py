"""The analysis package must import without JAX, so it can run beside training without a backend."""

import subprocess
import sys


def test_analysis_imports_without_jax():
    modules = ["analysis." + name for name in (
        "allocation", "laws", "fit_parametric", "fit_isoflop", "runs", "fit", "plots", "query", "ask",
        "report", "cli", "synthetic", "batched_newton", "bootstrap", "csv_points", "extrapolation",
        "fit_envelope", "fit_kaplan", "wandb_runs", "bootstrap_methods")]
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
