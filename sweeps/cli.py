"""`scaling sweep plan|launch`: see a sweep's runs and cost, then run it here, on Ray, or on SLURM.

scaling/cli.py calls `add_parsers(subparsers)` and dispatches `args.handler(args)`; each handler returns
the exit status. A UserError raised here becomes a one-line message and exit status 2 in scaling/cli.py.
"""

from __future__ import annotations

import argparse
import json
import logging

from scaling.numbers import whole_number

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
EXIT_RUN_FAILED = 1
EXIT_RUNS_ELSEWHERE = 75  # EX_TEMPFAIL of BSD's sysexits.h: a temporary condition, try again later
SPEC_HELP = "a sweep spec YAML file, or the name of a packaged spec (demo, quick, ...)"


def add_parsers(subparsers) -> None:
    """Add `sweep` with its `plan` and `launch` subcommands to the `scaling` parser."""
    sweep = subparsers.add_parser("sweep", help="plan and launch sweeps of model sizes and token budgets")
    actions = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)

    plan = actions.add_parser("plan", help="print every run of a sweep (N, D, C, steps) and its estimated time")
    plan.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    _add_common(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--no-probe", action="store_true",
                      help="estimate time from FLOPs with assumed speeds instead of timing the step (fast)")
    plan.set_defaults(handler=plan_command)

    launch = actions.add_parser("launch",
                                help="run a sweep's unfinished runs: local worker processes, Ray or SLURM (--backend)")
    launch.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    _add_common(launch)
    launch.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    launch.add_argument("--backend", choices=("local", "ray", "slurm"), default="local",
                        help="where runs execute: local worker processes (default), Ray tasks, or SLURM jobs "
                             "through submitit (options in the spec's slurm: mapping)")
    launch.add_argument("--address", metavar="HOST:PORT",
                        help="with --backend ray: the Ray cluster to join ('auto': $RAY_ADDRESS, else the cluster "
                             "`ray start --head` last started on this machine); default: a private Ray instance "
                             "on 127.0.0.1")
    launch.set_defaults(handler=launch_command)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", metavar="DIR", help="run store root (default: $SCALING_RUNS or ./runs)")
    parser.add_argument("--workers", metavar="K", type=whole_number, default=None,
                        help=f"local worker processes, each on its own share of the CPU cores (default "
                             f"{DEFAULT_WORKERS}); Ray and SLURM take each run's cores from the spec's resources:")


def plan_command(args: argparse.Namespace) -> int:
    from sweeps.plan import make_plan
    from sweeps.spec import load_spec

    workers = _check_workers(args.workers, "local")
    plan = make_plan(load_spec(args.spec), args.runs, probe=not args.no_probe, workers=workers,
                     progress=not args.json)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        plan.print()
    return 0


def launch_command(args: argparse.Namespace) -> int:
    from sweeps.backends import run_with_backend
    from sweeps.spec import load_spec

    backend = getattr(args, "backend", "local")
    workers = _check_workers(args.workers, backend)
    outcomes = run_with_backend(backend, load_spec(args.spec), args.runs,
                                workers=workers, address=getattr(args, "address", None),
                                progress=not args.no_progress, show_table=True)
    unfinished = [outcome.run.run_id for outcome in outcomes if not outcome.ok and outcome.status != "elsewhere"]
    elsewhere = [outcome.run.run_id for outcome in outcomes if outcome.status == "elsewhere"]
    if elsewhere:
        log.warning("%d of %d runs are being trained by another process: %s; rerun this command once it has "
                    "finished, to pick up any it left unfinished", len(elsewhere), len(outcomes), ", ".join(elsewhere))
    if unfinished:
        log.error("%d of %d runs did not complete: %s", len(unfinished), len(outcomes), ", ".join(unfinished))
        return EXIT_RUN_FAILED
    # Nothing failed, but a run trained elsewhere is not known to be complete yet: a script should wait and retry.
    return EXIT_RUNS_ELSEWHERE if elsewhere else 0


def _check_workers(workers: int | None, backend: str) -> int:
    """Return the local worker count (DEFAULT_WORKERS when not given); raise UserError when it cannot apply."""
    from scaling.errors import UserError

    if workers is None:
        return DEFAULT_WORKERS
    if backend != "local":
        raise UserError(f"--workers {workers} applies to --backend local only; {backend} gives each run the cores "
                        "and GPUs of the spec's resources: mapping, so drop --workers")
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    return workers
