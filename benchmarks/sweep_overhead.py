"""Measure a sweep's overhead: the share of its runs' wall time spent outside training steps.

Launches a sweep spec (default: the demo) with the local launcher, first with an empty JAX compilation
cache ("cold") and then again from scratch with the cache the first launch filled ("warm"). Each launch
gets fresh run folders, and the corpus is prepared once beforehand and shared. For every run it reads:

- the launcher's wall time of the run (`RunOutcome.wall_s`: from handing the run to a worker, or from
  starting the worker for its first run, until the run's end is known);
- from the run's log, the line scaling.train writes at the end: the seconds in `train()`, and of those the
  seconds of setup (corpus, model, state initialisation, checkpoint manager, W&B start), of the first step
  (compilation or cache load, plus one step), of evaluations and of checkpoint writes.

"outside train()" is the launcher's wall time minus the time in `train()`: process start-up (interpreter,
imports, JAX backend) where a run starts a worker, plus handing the run over and reporting its end.
Shares are of the summed wall time of all runs. `--baseline REV` also measures the launcher of another git
revision (extracted with `git archive` into a temporary folder, run with this interpreter), interleaved
with the current tree: baseline cold, current cold, baseline warm, current warm.

    python benchmarks/sweep_overhead.py --json [--spec demo] [--workers 2] [--baseline REV] [--repeats 1]
                                           [--per-run] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from benchmarks.machine import cpu_model  # noqa: E402
PHASES = ("setup", "first_step", "evaluation", "checkpoint")
TRAIN_LINE = re.compile(r"spent ([0-9.]+) s in train\(\), of which (.*)$", re.MULTILINE)
PHASE_ITEM = re.compile(r"(\w+) ([0-9.]+) s")

# Runs inside the measured tree (cwd and PYTHONPATH), so the launcher measured is that tree's.
DRIVER = """
import json, sys, time
import sweeps.launcher
from sweeps.launcher import run_sweep
from sweeps.spec import load_spec

spec, runs_root, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.time()
outcomes = run_sweep(load_spec(spec), runs_root, workers=workers, progress=False)
print(json.dumps({
    "launcher": sweeps.launcher.__file__,
    "sweep_wall_s": time.time() - started,
    "runs": [{"run_id": o.run.run_id, "status": o.status, "wall_s": o.wall_s, "cpu_s": o.cpu_s,
              "log": str(o.log_path)} for o in outcomes],
}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="demo", help="sweep spec file or packaged name (default demo)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the launcher of this git revision")
    parser.add_argument("--repeats", type=int, default=1, help="cold-then-warm cycles per variant (default 1)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="work in DIR and keep the run folders (default: a temporary folder, removed)")
    parser.add_argument("--per-run", action="store_true", help="add each run's seconds to the results")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def extract_revision(revision: str, into: Path) -> Path:
    """Write the files of git `revision` of this repository under `into`; return that folder."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def prepare_corpus(spec: str, runs_root: Path) -> None:
    """Prepare the spec's corpus under runs_root/_data with the current tree, before anything is timed."""
    from sweeps.spec import load_spec, prepare_data

    prepare_data(load_spec(spec), runs_root)


def launch(tree: Path, spec: str, workers: int, runs_root: Path, shared_data: Path, cache: Path) -> dict[str, Any]:
    """Run the sweep with the launcher of `tree` into a fresh `runs_root`; return the driver's report."""
    runs_root.mkdir(parents=True)
    (runs_root / "_data").symlink_to(shared_data)
    env = {**os.environ, "PYTHONPATH": str(tree), "SCALING_JAX_CACHE": str(cache), "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    load_before = os.getloadavg()
    done = subprocess.run([sys.executable, "-c", DRIVER, spec, str(runs_root), str(workers)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the sweep launched from {tree} failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(report["launcher"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"measured {report['launcher']}, not the launcher of {tree}")
    report["load_average"] = [round(value, 2) for value in (*load_before, *os.getloadavg())]
    return report


def train_seconds(log_text: str) -> tuple[float, dict[str, float]]:
    """Return (seconds in train(), seconds per phase) from the last `spent ... in train()` line of a log."""
    matches = TRAIN_LINE.findall(log_text)
    if not matches:
        raise RuntimeError("a run's log has no 'spent ... in train()' line; did the run complete?")
    total, items = matches[-1]
    return float(total), {name: float(seconds) for name, seconds in PHASE_ITEM.findall(items)}


def overhead(report: dict[str, Any], per_run: bool = False) -> dict[str, Any]:
    """Return the seconds and shares of each kind of overhead, summed over the runs of one launch.

    `per_run` adds each run's seconds, and whether the run started a worker process (the header line
    `--- worker start` of its log) or was handed to a running one.
    """
    seconds = dict.fromkeys(("outside_train", *PHASES), 0.0)
    wall = 0.0
    rows = []
    for run in report["runs"]:
        if run["status"] != "completed":
            raise RuntimeError(f"run {run['run_id']} ended {run['status']}; see {run['log']}")
        log_text = Path(run["log"]).read_text()
        in_train, phases = train_seconds(log_text)
        wall += run["wall_s"]
        seconds["outside_train"] += run["wall_s"] - in_train
        for name in PHASES:
            seconds[name] += phases.get(name, 0.0)
        rows.append({"run_id": run["run_id"], "started_worker": "--- worker start" in log_text,
                     "wall_s": round(run["wall_s"], 2), "outside_train": round(run["wall_s"] - in_train, 2),
                     **{name: phases.get(name, 0.0) for name in PHASES}})
    seconds["total"] = sum(seconds.values())
    result = {
        "runs": len(report["runs"]),
        "sweep_wall_s": round(report["sweep_wall_s"], 1),
        "runs_wall_s": round(wall, 1),
        "cpu_s": round(sum(run["cpu_s"] for run in report["runs"]), 1),
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "shares": {name: round(value / wall, 4) for name, value in seconds.items()},
        "load_average": report["load_average"],
    }
    if per_run:
        result["per_run"] = rows
    return result


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    shared_data = work / "prepared"
    prepare_corpus(args.spec, shared_data)
    variants = {"current": REPO}
    if args.baseline:
        revision = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, capture_output=True,
                                  text=True, check=True).stdout.strip()
        variants = {f"baseline {revision}": extract_revision(revision, work / "baseline"), **variants}
    results = []
    for repeat in range(args.repeats):
        caches = {name: work / f"cache-{index}-{repeat}" for index, name in enumerate(variants)}
        for cache_state in ("cold", "warm"):
            for name, tree in variants.items():
                runs_root = work / f"runs-{list(variants).index(name)}-{repeat}-{cache_state}"
                report = launch(tree, args.spec, args.workers, runs_root, shared_data / "_data", caches[name])
                result = {"variant": name, "cache": cache_state, "repeat": repeat,
                          **overhead(report, per_run=args.per_run)}
                results.append(result)
                if not args.json:
                    print(json.dumps(result), flush=True)
    return {
        "spec": args.spec,
        "workers": args.workers,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"processor": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        result = measure(args, args.keep)
    else:
        work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
        try:
            result = measure(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
