"""Time approach 3 with bootstrap intervals on the Chinchilla points: batched Newton against a scipy loop.

Both runs do the same work in the same process: the full-data fit from the same start grid, then the same
bootstrap replicates (same resampled weights, same starts per replicate). The baseline calls scipy's
L-BFGS-B once per start, which is how the Epoch replication fitted; the fast path runs every start at once.

    python benchmarks/fit_speed.py --json [--starts 1000] [--bootstraps 200] [--csv PATH]

The CSV defaults to the Epoch digitisation of Hoffmann et al.'s figure 4 kept beside this repository
(../shared/data/chinchilla/chinchilla_approach3_epoch.csv, rows with epoch_excluded_outlier == 0).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.bootstrap import bootstrap_approach3  # noqa: E402
from analysis.fit_parametric import Approach3Options, fit_approach3  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "data" / "chinchilla" / "chinchilla_approach3_epoch.csv"


def load_points(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (N, D, L) of the rows not marked as outliers."""
    with open(path) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("epoch_excluded_outlier", "0") == "0"]
    return tuple(np.array([float(row[key]) for row in rows]) for key in ("params_N", "tokens_D", "loss"))


def timed_fit(points, options: Approach3Options, bootstraps: int) -> tuple[float, dict]:
    """Run the full-data fit and its bootstrap; return (seconds, summary)."""
    started = time.perf_counter()
    fit = fit_approach3(*points, options=options)
    result = bootstrap_approach3(*points, fit, n_bootstraps=bootstraps, seed=0, options=options)
    seconds = time.perf_counter() - started
    return seconds, {"fit": fit, "bootstrap": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=1000, help="minimum size of the start grid")
    parser.add_argument("--bootstraps", type=int, default=200, help="bootstrap replicates")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="points: params_N, tokens_D, loss columns")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    points = load_points(args.csv)
    fast_options = Approach3Options(n_starts=args.starts, solver="newton")
    seconds, fast = timed_fit(points, fast_options, args.bootstraps)
    baseline_seconds, baseline = timed_fit(points, replace(fast_options, solver="scipy"), args.bootstraps)

    fit, base_fit = fast["fit"], baseline["fit"]
    record = {
        "points": int(points[0].size),
        "starts": fit.n_starts,
        "bootstraps": args.bootstraps,
        "seconds": round(seconds, 3),
        "baseline_seconds": round(baseline_seconds, 3),
        "ratio": round(baseline_seconds / seconds, 2),
    }
    detail = {
        "objective": fit.objective,
        "baseline_objective": base_fit.objective,
        "parameters": fit.parameters(),
        "alpha_interval": fast["bootstrap"].intervals()["alpha"],
        "baseline_alpha_interval": baseline["bootstrap"].intervals()["alpha"],
        "converged": fit.converged,
        "baseline_converged": base_fit.converged,
    }
    if args.json:
        print(json.dumps(record))
        print(json.dumps(detail), file=sys.stderr)
    else:
        for key, value in {**record, **detail}.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
