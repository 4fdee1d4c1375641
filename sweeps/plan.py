"""The plan of a sweep: every run with its N, D, C and steps, and what the sweep will cost in time.

Time per run on one worker comes from a cost model,
    seconds = compile + tracking + steps * t(F) + evaluations * chunks * t(F / 3),
where F is the exact training FLOPs of one optimizer step (scaling.accounting, Hoffmann et al. 2022 appendix
F), t(F) = a + b F is the step time, and an evaluation chunk (one batch, forward only) costs a third of a
training step's FLOPs. With the probe (the default), a, b, startup and compile come from timing the step of
up to PROBE_SHAPES model shapes in a worker-like process (sweeps.probe): a and b by least squares over the
measured shapes. Without it (`--no-probe`) they are assumed constants, named as such in the output.
`tracking` is the cost of starting and finishing W&B in a run (offline or online); the probe does not measure it.
Each local worker process trains its runs one after another (sweeps.worker), so its start-up (interpreter,
imports, JAX, and the W&B service when tracking is on) is paid once per worker, not once per run. The wall
time of the sweep is the longest-first schedule of the runs' times over the workers, each worker's load
starting at its start-up. Backends that start a process per run (Ray, SLURM) pay the start-up per run, which
this estimate leaves out.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scaling.accounting import training_flops_per_token
from scaling.config import clipped_warmup
from scaling.errors import UserError
from scaling.paths import runs_root as resolve_runs_root
from scaling.run_checks import corpus_size_problem, folder_conflict
from scaling.run_lock import lock_holder
from scaling.run_store import RunDir
from scaling.numbers import counted, format_count, human_count
from sweeps.resources import split_cores
from sweeps.spec import PlannedRun, PreparedData, SweepSpec, expand, prepare_data

log = logging.getLogger(__name__)

PROBE_SHAPES = 3  # model shapes timed by the probe: the cheapest, the dearest and one between (by FLOPs/step)
# Assumed costs for `--no-probe`: a least-squares fit of the CPU seconds of 22 runs of 8K to 357K parameters
# (seq_len 64, batch 8) on a 2-core x86 VM with one core per worker, rounded to be a little pessimistic.
ASSUMED_FLOPS_PER_S = 3.5e10  # exact training FLOPs per second of one worker (the fit gave 39 GFLOP/s)
ASSUMED_STEP_OVERHEAD_S = 0.0005  # fixed seconds per step: dispatch and small kernels (the fit gave about 0)
ASSUMED_COMPILE_S = 2.0  # a shape in the persistent compilation cache loads in about 1 s; a new one takes ~5 s
ASSUMED_STARTUP_S = 2.0  # interpreter and imports of a worker (the fit gave 3.5 s for startup plus compile)
# W&B in offline mode: its service starts once per worker (0.85 to 1.17 s measured), and each run's start and
# finish in a running worker then costs little. The demo sweep spent 0.4 s per run on all of its setup, W&B
# included, with a warm compilation cache (benchmarks/sweep_overhead.py, docs/benchmarks.md).
TRACKING_SERVICE_S = 1.2
TRACKING_S = 0.5
WIDE_OUTPUT = 160  # columns of the plan table when stdout is not a terminal


@dataclass(frozen=True)
class CostModel:
    """Seconds for one run on one worker; see the module docstring for the formula."""

    startup_s: float  # starting a worker process, once per worker: interpreter, imports, JAX
    compile_s: float  # building and compiling the step of a new shape
    tracking_s: float  # starting and finishing W&B in a run whose wandb_mode is not "disabled"
    tracking_service_s: float  # starting W&B's service, once per worker that tracks
    step_overhead_s: float  # a: fixed seconds per optimizer step
    seconds_per_flop: float  # b: seconds per exact training FLOP
    method: str  # how the numbers were obtained, printed with the plan

    def step_seconds(self, flops_per_step: float) -> float:
        return self.step_overhead_s + self.seconds_per_flop * flops_per_step

    def run_seconds(self, run: PlannedRun) -> float:
        config = run.config
        flops_per_step = exact_flops_per_token(run) * config.data.tokens_per_step
        chunks = math.ceil(evaluation_windows(config) / config.data.batch_size)
        evaluations = evaluation_count(config)
        tracking = 0.0 if config.wandb_mode == "disabled" else self.tracking_s
        return (self.compile_s + tracking + config.total_steps * self.step_seconds(flops_per_step)
                + evaluations * chunks * self.step_seconds(flops_per_step / 3))

    def worker_seconds(self, tracking: bool) -> float:
        """Return the start-up of one worker process, paid once before its first run."""
        return self.startup_s + (self.tracking_service_s if tracking else 0.0)


def exact_flops_per_token(run: PlannedRun) -> int:
    return training_flops_per_token(run.config.model, run.config.data.seq_len)["exact"]


def evaluation_count(config) -> int:
    """Return how many validation passes a run makes: every eval_interval steps, and at the last step."""
    steps = config.total_steps
    return steps // config.eval_interval + (1 if steps % config.eval_interval else 0)


def evaluation_windows(config) -> int:
    """Return the validation windows of one evaluation, before the cap by the validation split's length."""
    return max(1, config.data.eval_tokens // config.data.seq_len)


def assumed_cost_model() -> CostModel:
    return CostModel(
        startup_s=ASSUMED_STARTUP_S,
        compile_s=ASSUMED_COMPILE_S,
        tracking_s=TRACKING_S,
        tracking_service_s=TRACKING_SERVICE_S,
        step_overhead_s=ASSUMED_STEP_OVERHEAD_S,
        seconds_per_flop=1 / ASSUMED_FLOPS_PER_S,
        method=(f"assumed, not measured: {ASSUMED_FLOPS_PER_S / 1e9:.0f} GFLOP/s per worker (exact FLOPs), "
                f"{ASSUMED_STEP_OVERHEAD_S * 1e3:.1f} ms per step, {ASSUMED_COMPILE_S:.0f} s compile, "
                f"{ASSUMED_STARTUP_S:.0f} s worker start, W&B {TRACKING_SERVICE_S:.1f} s per worker and "
                f"{TRACKING_S:.1f} s per run unless disabled"),
    )


def probe_cost_model(runs: list[PlannedRun], runs_root: Path, workers: int) -> CostModel:
    """Time the step of up to PROBE_SHAPES distinct shapes in a worker-like process and fit the cost model."""
    from sweeps.probe import measure

    by_shape: dict[str, PlannedRun] = {}
    for run in runs:
        by_shape.setdefault(run.shape, run)
    ordered = sorted(by_shape.values(), key=exact_flops_per_token)
    picks = sorted({0, len(ordered) // 2, len(ordered) - 1})[:PROBE_SHAPES]
    chosen = [ordered[i] for i in picks]
    slot = split_cores(workers)[0]
    log.info("probing step time of %d of %d shapes on %s", len(chosen), len(ordered), _cores(slot.threads))
    report = measure([run.config for run in chosen], slot, runs_root)
    timed = [(run, result) for run, result in zip(chosen, report.results) if result.measured]
    if not timed:  # every chosen shape is too large for this machine's memory (sweeps.probe warned)
        return assumed_cost_model()

    points = [(exact_flops_per_token(run) * run.config.data.tokens_per_step, result.step_s) for run, result in timed]
    overhead, per_flop = _fit_line(points)
    compile_s = sum(result.compile_s for _, result in timed) / len(timed)
    # Startup of the probe process is shared by all its shapes, as a worker's is shared by its runs.
    measured = ", ".join(f"{run.shape.split(' (')[0]}: {result.step_s * 1e3:.1f} ms/step" for run, result in timed)
    return CostModel(
        startup_s=report.startup_s,
        compile_s=compile_s,
        tracking_s=TRACKING_S,
        tracking_service_s=TRACKING_SERVICE_S,
        step_overhead_s=overhead,
        seconds_per_flop=per_flop,
        method=(f"measured on {_cores(report.threads)} per worker for {len(timed)} of {len(ordered)} shapes "
                f"({measured}); fitted t = {overhead * 1e3:.2f} ms + FLOPs / {1e-9 / per_flop:.1f} GFLOP/s; "
                f"compile {compile_s:.1f} s, worker start {report.startup_s:.1f} s; "
                f"assumed W&B {TRACKING_SERVICE_S:.1f} s per worker and {TRACKING_S:.1f} s per run unless disabled"),
    )


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Return (a, b) of the least-squares line t = a + b F, with a >= 0 and b > 0.

    One point, or a fit whose intercept would be negative, gives the line through the origin instead.
    """
    if len(points) >= 2:
        mean_f = sum(f for f, _ in points) / len(points)
        mean_t = sum(t for _, t in points) / len(points)
        spread = sum((f - mean_f) ** 2 for f, _ in points)
        if spread > 0:
            slope = sum((f - mean_f) * (t - mean_t) for f, t in points) / spread
            intercept = mean_t - slope * mean_f
            if slope > 0 and intercept >= 0:
                return intercept, slope
    through_origin = sum(f * t for f, t in points) / sum(f * f for f, _ in points)
    return 0.0, through_origin


MIN_SIZES_PER_BUDGET = 3  # approach 2 fits a parabola per budget, which needs 3 sizes (analysis.fit)
ROUNDED_TOKENS_NOTED = 0.01  # a run whose whole batches miss its D by more than this share gets a warning


@dataclass(frozen=True)
class PlanRow:
    """One run of the plan and its state in the run store."""

    run: PlannedRun
    seconds: float  # estimated seconds on one worker for the whole run
    state: str  # "new", "completed", "<status> <steps of the newest checkpoint>/<steps>", or "conflict"
    remaining_s: float  # estimated seconds still to run (0 when completed or in conflict)
    epochs: float  # passes over the corpus's training tokens
    conflict: str | None = None  # the other run in the run folder, described; a launch refuses the sweep


@dataclass(frozen=True)
class Plan:
    """The output of `scaling sweep plan`: the runs, their cost, and the totals."""

    spec: SweepSpec
    rows: tuple[PlanRow, ...]
    cost: CostModel
    workers: int
    data: PreparedData
    other_runs: tuple[str, ...] = ()  # run folders of this sweep that the spec no longer gives (fit still reads them)

    @property
    def runs(self) -> list[PlannedRun]:
        return [row.run for row in self.rows]

    def wall_seconds(self) -> float:
        """Return the estimated wall time of the remaining runs over `workers` workers (longest first)."""
        remaining = sorted((row.remaining_s for row in self.rows if row.remaining_s > 0), reverse=True)
        if not remaining:
            return 0.0
        loads = [self._worker_seconds()] * min(self.workers, len(remaining))
        for seconds in remaining:
            heapq.heapreplace(loads, loads[0] + seconds)
        return max(loads)

    def one_worker_seconds(self, remaining: bool = False) -> float:
        """Return the estimated seconds of all runs (or the remaining ones) on a single worker."""
        times = [row.remaining_s if remaining else row.seconds for row in self.rows]
        return sum(times) + (self._worker_seconds() if any(times) else 0.0)

    def _worker_seconds(self) -> float:
        tracking = any(row.run.config.wandb_mode != "disabled" for row in self.rows)
        return self.cost.worker_seconds(tracking)

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "sweep": spec.name,
            "spec": spec.origin,
            "kind": spec.kind,
            "param_convention": spec.model.convention,
            "flops_per_token": spec.flops_per_token,
            "corpus": {"path": str(self.data.path), "fingerprint": self.data.meta.get("fingerprint"),
                       "tokenizer": self.data.meta.get("tokenizer"), "vocab_size": self.data.meta.get("vocab_size"),
                       "train_tokens": self.data.meta["tokens"]["train"]},
            "estimate": {"method": self.cost.method, "workers": self.workers},
            "runs": [_row_dict(row) for row in self.rows],
            "other_runs": list(self.other_runs),
            "totals": {
                "runs": len(self.rows),
                "runs_to_do": sum(1 for row in self.rows if row.state not in ("completed", "conflict")),
                "runs_in_conflict": sum(1 for row in self.rows if row.conflict),
                "tokens": sum(row.run.tokens for row in self.rows),
                "flops": sum(row.run.flops for row in self.rows),
                "seconds_one_worker": self.one_worker_seconds(),
                "remaining_seconds_one_worker": self.one_worker_seconds(remaining=True),
                "wall_seconds": self.wall_seconds(),
            },
        }

    def table(self) -> Table:
        spec = self.spec
        title = f"sweep {spec.name} ({spec.kind}, {len(self.rows)} runs) from {spec.origin}"
        if spec.description:
            title += f": {spec.description}"
        table = Table(title=title, title_justify="left")
        for header in ("run", "shape", "N total", "N non-emb", "D tokens", "steps", f"C ({spec.flops_per_token})",
                       "D/N", "epochs", "est. time", "state"):
            table.add_column(header, justify="left" if header in ("run", "shape", "state") else "right")
        for row in self.rows:
            run = row.run
            table.add_row(
                run.run_id, run.shape.split(" (")[0], human_count(run.params_total),
                human_count(run.params_non_embedding), human_count(run.tokens), str(run.steps),
                format_count(run.flops), f"{run.tokens / run.params_total:.1f}", f"{row.epochs:.2f}",
                _duration(row.seconds), row.state,
            )
        totals = self.to_dict()["totals"]
        table.add_section()
        table.add_row("total", "", "", "", human_count(totals["tokens"]), str(sum(r.run.steps for r in self.rows)),
                      format_count(totals["flops"]), "", "", _duration(totals["seconds_one_worker"]),
                      f"{totals['runs_to_do']} to run")
        return table

    def print(self, console: Console | None = None) -> None:
        if console is None:
            from scaling.terminal import stdout_console

            console = stdout_console(WIDE_OUTPUT)
        console.print(self.table())
        totals = self.to_dict()["totals"]
        console.print(
            f"D: whole batches of {self.spec.train.tokens_per_step} tokens. C = D x training FLOPs per token "
            f"({self.spec.flops_per_token}). The spec's sizes count {self.spec.model.convention.replace('_', '-')} "
            "parameters; D/N uses N total."
        )
        console.print(f"time estimate: {self.cost.method}")
        in_conflict = sum(1 for row in self.rows if row.conflict)
        conflict_note = (f"; and {counted(in_conflict, 'run')} in conflict (below), so `launch` refuses the whole sweep "
                   "until they are resolved") if in_conflict else ""
        console.print(f"remaining: {totals['runs_to_do']} runs, {_duration(totals['remaining_seconds_one_worker'])} "
                      f"on one worker, about {_duration(totals['wall_seconds'])} wall with "
                      f"{counted(max(1, min(self.workers, totals['runs_to_do'])), 'worker')}{conflict_note}")
        clipped = [row for row in self.rows
                   if clipped_warmup(row.run.config.optimizer.warmup_steps, row.run.steps)
                   < row.run.config.optimizer.warmup_steps]
        if clipped:
            console.print(f"warning: optimizer.warmup_steps={self.spec.optimizer.warmup_steps} is more than a fifth of "
                          f"{counted(len(clipped), 'run')} ({_listed(clipped)}); each warms up for a fifth of its "
                          "steps instead",
                          markup=False)
        rounded = [row for row in self.rows if row.run.tokens_target and
                   abs(row.run.tokens / row.run.tokens_target - 1) > ROUNDED_TOKENS_NOTED]
        if rounded:
            worst = max(rounded, key=lambda row: abs(row.run.tokens / row.run.tokens_target - 1))
            verb = "trains" if len(rounded) == 1 else "train"
            console.print(f"warning: {counted(len(rounded), 'run')} {verb} on more than {ROUNDED_TOKENS_NOTED:.0%} "
                          f"more or fewer tokens than the spec gives, since D is rounded to whole batches of "
                          f"{self.spec.train.tokens_per_step} tokens ({_listed(rounded)}; {worst.run.run_id}: "
                          f"{worst.run.tokens_target:,.0f} to {worst.run.tokens:,}); C and the fits use the tokens "
                          "trained, and budgets or token counts of many batches keep the grid as designed",
                          markup=False)
        if self.spec.isoflop is not None:
            few = [budget for budget, sizes in self.spec.isoflop.params_by_budget.items()
                   if len(set(sizes)) < MIN_SIZES_PER_BUDGET]
            if few:
                listed = ", ".join(format_count(budget) for budget in sorted(few))
                console.print(f"warning: {counted(len(few), 'budget')} ({listed}) "
                              f"{'has' if len(few) == 1 else 'have'} fewer than {MIN_SIZES_PER_BUDGET} sizes, so "
                              f"approach 2 (a parabola per budget) leaves {'it' if len(few) == 1 else 'them'} out; "
                              "list at least 3 sizes around each budget's optimum", markup=False)
        repeated = [row for row in self.rows if row.epochs > 1]
        if repeated:
            console.print(f"warning: {counted(len(repeated), 'run')} will see training data more than once (up to "
                          f"{max(row.epochs for row in repeated):.2f} epochs: {_listed(repeated)}); use a larger "
                          "corpus for budgets of that size", markup=False)
        if self.other_runs:
            more = len(self.other_runs) - 3
            dropped_ids = ", ".join(self.other_runs[:3]) + (f" and {more} more" if more > 0 else "")
            console.print(f"note: sweep {self.spec.name} has {counted(len(self.other_runs), 'run folder')} that this "
                          f"spec no longer gives ({dropped_ids}); `scaling fit` on the sweep's folder still fits them, "
                          "so move them elsewhere to leave them out", markup=False)
        conflicts = [row for row in self.rows if row.conflict]
        if conflicts:
            console.print(f"conflict: {len(conflicts)} run folders hold other runs than this spec gives, so "
                          "`scaling sweep launch` refuses the sweep; rename the sweep (name:) or delete those folders:")
            for row in conflicts:
                console.print(f"  {row.run.run_id}: {row.conflict}", markup=False)


def _listed(rows: list[PlanRow], limit: int = 3) -> str:
    """Return the run ids of `rows` for a message: up to `limit` of them, and how many more."""
    ids = ", ".join(row.run.run_id for row in rows[:limit])
    return ids if len(rows) <= limit else f"{ids} and {len(rows) - limit} more"


def _row_dict(row: PlanRow) -> dict[str, Any]:
    run, config = row.run, row.run.config
    return {
        "run_id": run.run_id,
        "budget": run.budget,
        "target_params": run.target_params,
        "params_total": run.params_total,
        "params_non_embedding": run.params_non_embedding,
        "shape": run.shape,
        "tokens": run.tokens,
        "steps": run.steps,
        "flops": run.flops,
        "flops_per_token": run.flops_per_token,
        "tokens_per_param": run.tokens / run.params_total,
        "epochs": row.epochs,
        "log_interval": config.log_interval,
        "eval_interval": config.eval_interval,
        "checkpoint_interval": config.checkpoint_interval,
        "estimated_seconds": row.seconds,
        "remaining_seconds": row.remaining_s,
        "state": row.state,
        "conflict": row.conflict,
    }


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_state(runs_root: Path, run: PlannedRun) -> tuple[str, float]:
    """Return the run's state in the store and the fraction of its steps already done.

    A folder that contains another run ("conflict", see `folder_conflict`) is reported by `make_plan`.
    """
    run_dir = RunDir.at(runs_root, run.config.sweep, run.run_id)
    summary = run_dir.summary() if run_dir.summary_path.exists() else None
    if summary is None:
        return "new", 0.0
    if summary.get("status") == "completed":
        return "completed", 1.0
    # A run that stopped early resumes from its newest checkpoint, whose step summary.json records. Its
    # metric rows may go further, up to where it stopped, but those steps are trained again.
    done = int(summary.get("steps_done") or 0)
    status = summary.get("status")
    if status == "running" and lock_holder(run_dir.path) is None:
        # A killed process (SIGKILL, a lost node) cannot write "interrupted"; its lock went with it, though.
        status = "interrupted"
    return f"{status} {done}/{run.steps}", min(done / run.steps, 1.0)


def make_plan(spec: SweepSpec, runs_root: str | Path | None = None, probe: bool = True, workers: int = 2,
              progress: bool = False) -> Plan:
    """Expand the spec (preparing its corpus if needed), estimate each run's time, and return the plan."""
    root = resolve_runs_root(runs_root)
    data = prepare_data(spec, root, progress=progress)
    runs = expand(spec, root, data=data)
    cost = probe_cost_model(runs, root, workers) if probe else assumed_cost_model()
    train_tokens = int(data.meta["tokens"]["train"])
    for run in runs:  # `scaling sweep launch` refuses such a sweep too (sweeps.launcher.check_existing_runs)
        problem = corpus_size_problem(run.config.data, train_tokens, int(data.meta["tokens"]["val"]),
                                      in_spec=True)
        if problem:
            raise UserError(f"run {run.run_id}: {problem}")
    rows = []
    for run in runs:
        seconds = cost.run_seconds(run)
        state, done = run_state(root, run)
        conflict = folder_conflict(RunDir.at(root, run.config.sweep, run.run_id), run.config, data.meta)
        if conflict:
            state, done = "conflict", 1.0
        remaining = 0.0 if state == "completed" else seconds * (1 - done)
        rows.append(PlanRow(run=run, seconds=seconds, state=state, remaining_s=remaining,
                            epochs=run.tokens / train_tokens, conflict=conflict))
    return Plan(spec=spec, rows=tuple(rows), cost=cost, workers=workers, data=data,
                other_runs=_other_runs(root, spec.name, {run.run_id for run in runs}))


def _other_runs(root: Path, sweep: str, planned: set[str]) -> tuple[str, ...]:
    """Return the ids of the run folders of `sweep` that are not among `planned` (the spec dropped them)."""
    folder = root / sweep
    if not folder.is_dir():
        return ()
    return tuple(sorted(path.name for path in folder.iterdir()
                        if path.name not in planned and RunDir.at(root, sweep, path.name).config_path.is_file()))
