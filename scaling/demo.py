"""`scaling demo`: the whole study end to end on the Python standard library's source.

1. prepare the corpus (byte-level tokens, reused when unchanged);
2. plan and launch the packaged IsoFLOP sweep (`sweeps/specs/demo.yaml`, or `quick.yaml`);
3. fit approach 3 and the IsoFLOP parabolas over the completed runs;
4. compute "tokens for 7B" from the new fit beside the published laws, and write report.md.

This module sits above `sweeps` and `analysis` like the CLI does, so it imports them inside the function.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scaling.numbers import human_count
from scaling.paths import runs_root

log = logging.getLogger(__name__)

PRESET_SPECS = {"full": "demo", "quick": "quick"}
QUESTION = "tokens for 7B"

LIMITATIONS = """\
These runs are tiny: models of {n_min} to {n_max} parameters trained for {d_min} to {d_max} tokens of
byte-level Python source, {n_runs} runs in all. The fitted exponents describe this corpus, tokenizer and
range of scales; they carry real information about how loss trades parameters against data here, and the
method is the one used at scale. They cannot tell how many tokens a 7B model needs: that answer
extrapolates more than four orders of magnitude in N beyond the largest run, the irreducible loss E is that of
bytes of Python rather than of natural-language tokens, and the learning-rate and shape choices were not
tuned per size. Read the "tokens for 7B" row from your fit as a demonstration of the pipeline and the
published rows as the reference. Larger sweeps (`sweeps/specs/`) narrow the gap."""


def run_demo(preset: str = "full", runs: str | Path | None = None, workers: int = 2) -> int:
    """Run the demo sweep, fit, ask and report; return the exit status (0 when every step worked)."""
    from analysis.ask import ask
    from analysis.cli import print_answer
    from analysis.fit import REPORT_FOLDER, fit_runs
    from analysis.report import write_report
    from sweeps.launcher import launch
    from sweeps.plan import make_plan
    from sweeps.spec import load_spec

    started = time.time()
    root = runs_root(runs)
    spec = load_spec(PRESET_SPECS[preset])
    log.info("demo (%s preset): sweep %s, runs under %s", preset, spec.name, root)

    plan = make_plan(spec, root, probe=False)
    plan.print()
    summaries = launch(spec, root, workers=workers, progress=True)
    failed = [s.get("run_id") for s in summaries if s.get("status") != "completed"]
    if failed:
        log.error("runs that did not complete: %s; rerun `scaling demo` to resume them", ", ".join(map(str, failed)))

    sweep_dir = root / spec.name
    out = sweep_dir / REPORT_FOLDER
    fit = fit_runs(sweep_dir, out, starts=256, progress=True)
    answer = ask(QUESTION, fit=fit)
    print_answer(answer)

    completed = [s for s in summaries if s.get("status") == "completed"]
    limitations = LIMITATIONS.format(
        n_min=human_count(fit["data_range"]["params"][0]),
        n_max=human_count(fit["data_range"]["params"][1]),
        d_min=human_count(fit["data_range"]["tokens"][0]),
        d_max=human_count(fit["data_range"]["tokens"][1]),
        n_runs=len(completed),
    )
    report = write_report(out, fit, [answer], limitations=limitations, title=f"Scaling-law demo: sweep {spec.name}")

    parameters = fit["approach3"]["parameters"]
    wall = time.time() - started
    print(
        f"\nFitted L(N, D) = {parameters['E']:.3f} + {parameters['A']:.4g}/N^{parameters['alpha']:.3f} "
        f"+ {parameters['B']:.4g}/D^{parameters['beta']:.3f}  ({fit['approach3']['status']}, N = {fit['convention']} params)"
    )
    print(f"Report: {report}")
    print(f"Demo wall time: {wall / 60:.1f} min")
    if parameters["alpha"] <= 0 or parameters["beta"] <= 0:
        log.warning("fitted alpha or beta is not positive: the sweep did not resolve the trade-off")
    return 1 if failed else 0
