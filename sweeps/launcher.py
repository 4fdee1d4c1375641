"""The local launcher: run a sweep's runs in worker processes on this machine.

`launch(spec, runs_root, workers=K)` expands the spec (sweeps.spec), skips runs whose summary status is
completed, and runs the rest K at a time. Each of the K worker slots has its own share of the cores
(sweeps.resources) and one long-lived `python -m sweeps.worker --serve` process pinned to them, which trains
the slot's runs one after another, so interpreter start-up, imports, the JAX backend and the W&B service
are paid once per slot rather than once per run. Processes are started, never forked, so no JAX state is
copied. Each run's output goes to RUNS/<sweep>/_logs/<run_id>.log, with one header line per attempt.

A worker that crashes or is killed loses only the run in flight: that run is marked failed and the slot's
next run starts in a fresh worker. A run that stopped part-way resumes from its newest checkpoint at the
next launch (scaling.train does that). A run that fails is logged with its run id and the sweep goes on.
The final table marks it, and `scaling sweep launch` then exits with status 1. Longest runs start first,
which shortens the sweep's wall time on a fixed number of workers. A worker keeps the compiled programs of
its last few run shapes, so a run of a shape it has trained may go before a longer one (next_run_index).
Ctrl-C interrupts the runs in flight (each closes its checkpoints; a worker still running after STOP_GRACE_S
is killed) and ends the launch with SweepInterrupted, after the table of runs. How a run ended is read in
sweeps.outcomes, and what the launch shows (progress bars, the final table) is in sweeps.display.
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import get_console
from rich.console import Console
from rich.progress import TaskID

from scaling.config import PROGRAMS_KEPT, parse_mesh, program_identity
from scaling.errors import UserError
from scaling.host_memory import switch_setting
from scaling.numbers import counted, format_count
from scaling.paths import runs_root as resolve_runs_root
from scaling.run_checks import corpus_size_problem, folder_conflict, prepared_meta
from scaling.run_store import RunDir
from scaling.interrupts import interrupts_on_stop_signals, stop_requested, stop_signals_deferred
from sweeps.display import SweepProgress, outcomes_table
from sweeps.outcomes import (RunOutcome, SweepInterrupted, ended_outcome, exit_reason, outcomes_after_interrupt,
                             run_log_path, split_completed)
from sweeps.plan import WIDE_OUTPUT, assumed_cost_model
from sweeps.resources import WorkerSlot, split_cores
from sweeps.spec import PlannedRun, SweepSpec, expand, sizes_beyond_memory
from sweeps.worker import EXIT_AFTER, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USER_ERROR

log = logging.getLogger(__name__)

POLL_S = 0.5  # maximum seconds between looks at the workers and their metrics (a reply wakes the loop at once)
STOP_GRACE_S = 20.0  # seconds a worker gets to checkpoint-close after an interrupt before it is killed
SECOND_STOP_GRACE_S = 5.0  # and after a second interrupt, which stops its run without that checkpoint
STOP_POLL_S = 0.05  # seconds between looks at a stopping worker


@dataclass
class _Active:
    """A run in progress: the worker training it and where its progress shows."""

    run: PlannedRun
    worker: WorkerProcess
    log_path: Path
    started: float  # when the launcher handed the run over (or started the worker, for a worker's first run)
    task: TaskID | None = None


@dataclass
class WorkerProcess:
    """One slot's `python -m sweeps.worker --serve` process, and the run it is training.

    Requests go to the process's stdin, one JSON line per run. Replies come back on its stdout, one JSON
    line per finished run (sweeps.worker). Its stderr is the log of the first run it was started for, and
    the worker points it at each run's log in turn.
    """

    slot: WorkerSlot
    process: subprocess.Popen
    active: _Active | None = None
    cpu_replied: float = 0.0  # CPU seconds the replies accounted for, so a crash can be charged the rest
    retiring: bool = False  # its input is closed, or its last reply had a status after which it exits
    reply_buffer: bytes = b""
    replies_closed: bool = False  # its stdout reached end of file: the process is exiting or gone
    cpu_total: float | None = None  # CPU seconds of the whole process, set once it is reaped
    returncode: int | None = None
    programs: list[tuple] = field(default_factory=list)  # program identities of the runs it trained, newest last

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def send(self, run: PlannedRun, runs_root: Path, log_path: Path) -> None:
        """Ask the worker to train `run` next, with its output appended to `log_path`.

        Raises BrokenPipeError when the process has already exited.
        """
        assert self.process.stdin is not None
        request = {"config": run.config.to_dict(), "runs_root": str(runs_root), "log_path": str(log_path)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        identity = program_identity(run.config)
        self.programs = [known for known in self.programs if known != identity][-(PROGRAMS_KEPT - 1):] + [identity]

    def read_replies(self) -> list[dict[str, Any]]:
        """Return the complete reply lines the worker has written so far, without waiting for more."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while not self.replies_closed:
            try:
                chunk = os.read(descriptor, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.replies_closed = True
                break
            self.reply_buffer += chunk
        *lines, self.reply_buffer = self.reply_buffer.split(b"\n")
        replies = []
        for line in lines:
            try:
                replies.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("worker %d on cores %s wrote a reply that is not JSON: %r", self.pid,
                            list(self.slot.cores), line[:200])
        return replies

    def reap(self) -> bool:
        """Collect the exit status and CPU time of the process if it has exited, and return whether it has."""
        if self.returncode is not None:
            return True
        ended = _reap(self.process)
        if ended is None:
            return False
        self.returncode, self.cpu_total = ended
        return True

    def close_input(self) -> None:
        """Close the worker's stdin, so it exits once its run in flight (if any) ends."""
        self.retiring = True
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass


def _append_header(log_path: Path, event: str, where: str) -> None:
    """Append one header line per attempt, e.g. `--- worker start 2026-12-04 22:44:46 on cores [0]`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:  # appended: a resumed run keeps the log of its earlier attempts
        log_file.write(f"--- {event} {time.strftime('%Y-%m-%d %H:%M:%S')} {where}\n")


def start_worker(slot: WorkerSlot, log_path: Path) -> WorkerProcess:
    """Start `python -m sweeps.worker --serve` on `slot`; its start-up output goes to `log_path` (appended)."""
    _append_header(log_path, "worker start", f"on cores {list(slot.cores)}")
    env = slot.environment()
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sweeps.worker", "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log_file, env=env, text=True, bufsize=1,
        )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    return WorkerProcess(slot, process)


SAME_PROGRAM_MIN_SHARE = 0.5  # shortest length, relative to the longest run, at which a run reusing programs goes first


def next_run_index(todo: list[PlannedRun], worker: WorkerProcess | None, weights: dict[str, float]) -> int:
    """Return the index in `todo` (longest first) of the run to hand to `worker` next.

    A worker keeps the compiled programs of its recent runs (scaling.train.trainer_for), so a run of the
    same shape starts there 0.5-0.7 s sooner on the demo's models. The longest run waiting goes first,
    unless a run that reuses the worker's programs is at least SAME_PROGRAM_MIN_SHARE of its length.
    Longest first keeps the workers finishing together, and the share limits how far the preference moves
    a long run back.
    """
    if worker is None or not worker.programs or not worker.alive:
        return 0
    longest = weights[todo[0].run_id]
    for index, run in enumerate(todo):
        if weights[run.run_id] < SAME_PROGRAM_MIN_SHARE * longest:
            break
        if program_identity(run.config) in worker.programs:
            return index
    return 0


def start_run(run: PlannedRun, slot: WorkerSlot, runs_root: Path, worker: WorkerProcess | None) -> _Active:
    """Hand `run` to the slot's idle `worker`, or to a fresh worker when there is none or it has exited."""
    log_path = run_log_path(runs_root, run.config.sweep, run.run_id)
    # A worker whose replies reached end of file is exiting even when it has not been reaped yet.
    if worker is not None and worker.alive and not worker.retiring and not worker.replies_closed:
        started = time.time()
        _append_header(log_path, "run start", f"in worker {worker.pid} on cores {list(slot.cores)}")
        try:
            worker.send(run, runs_root, log_path)
            worker.active = _Active(run, worker, log_path, started)
            return worker.active
        except BrokenPipeError:  # it exited between runs: the run has not started, so give it a fresh worker
            log.warning("worker %d on cores %s exited between runs; starting another", worker.pid, list(slot.cores))
    started = time.time()
    worker = start_worker(slot, log_path)
    worker.active = _Active(run, worker, log_path, started)
    try:
        worker.send(run, runs_root, log_path)
    except BrokenPipeError:  # it died while starting: the launcher's loop reaps it and fails the run
        log.error("worker %d on cores %s exited before it read its first run; see %s", worker.pid,
                  list(slot.cores), log_path)
    return worker.active


def check_meshes_fit(runs: list[PlannedRun], slot: WorkerSlot) -> None:
    """Raise UserError naming the first run whose `mesh` requests more devices than a worker on `slot` has.

    Each worker would refuse such a run by itself, so the check only saves starting a sweep that cannot run.
    It costs one short JAX process, so it runs only when some run names a device count.
    """
    counted = [(run, parse_mesh(run.config.mesh, "train.mesh")) for run in runs if run.config.mesh.strip()]
    counted = [(run, plan) for run, plan in counted if plan.devices is not None and plan.devices > 1]
    if not counted:
        return
    env = slot.environment()
    probe = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices(); print(len(d), d[0].platform)"],
                           env=env, capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        log.warning("could not count a worker's devices before the sweep; each run checks its mesh itself")
        return
    count, platform = probe.stdout.split()[-2:]
    for run, plan in counted:
        if plan.devices > int(count):
            hint = (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices)"
                    if platform == "cpu" else "")
            raise UserError(f"run {run.run_id}: train.mesh {run.config.mesh!r} asks for {plan.devices} devices, but a "
                            f"worker sees {count} ({platform}); lower train.mesh or launch where the devices are{hint}")


def check_existing_runs(runs: list[PlannedRun], runs_root: Path) -> None:
    """Raise UserError when a run of the sweep cannot train as the spec now gives it: its corpus has less
    than one batch, or its folder already contains another run (the spec or its corpus changed).

    scaling.train would refuse such a run too, but only inside its worker, and a completed run would be
    skipped as if it were the new one. Checking here stops the sweep before anything runs and names the
    folder. A change of `train.mesh` alone is allowed, because it lays the run out differently but trains
    the same model.
    """
    metas: dict[str, dict[str, Any]] = {}
    for run in runs:
        path = str(run.config.data.path)
        if path not in metas:  # every run of a spec shares one corpus: read its meta.json once
            metas[path] = prepared_meta(path)
        meta = metas[path]
        tokens = meta.get("tokens") or {}
        if "train" in tokens and "val" in tokens:
            problem = corpus_size_problem(run.config.data, int(tokens["train"]), int(tokens["val"]), in_spec=True)
            if problem:
                raise UserError(f"run {run.run_id}: {problem}")
        run_dir = RunDir.at(runs_root, run.config.sweep, run.run_id)
        conflict = folder_conflict(run_dir, run.config, meta)
        if conflict:
            raise UserError(f"run folder {run_dir.path} contains {conflict}, not the run {run.run_id} that the spec "
                            "now gives; rename the sweep (name:) or delete that folder")


def run_sweep(spec: SweepSpec, runs_root: str | Path | None = None, workers: int = 2, progress: bool = True,
              show_table: bool | None = None, console: Console | None = None) -> list[RunOutcome]:
    """Run every run of the sweep that is not completed yet; return one outcome per run, in plan order.

    `progress` shows the bars; `show_table` (default: same as `progress`) prints the final table of runs.
    """
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    root = resolve_runs_root(runs_root)
    runs = expand(spec, root, progress=progress)
    check_existing_runs(runs, root)
    console = console or get_console()  # the console logging's RichHandler uses, so logs print above the bars

    outcomes, todo = split_completed(runs, root)
    too_large = sizes_beyond_memory(todo)
    if too_large:
        # A worker of such a size would grow until the kernel's out-of-memory killer stopped it, or another
        # process on the machine.
        from scaling.machine_memory import format_bytes

        named = ", ".join(f"{format_count(target)} (at least {format_bytes(needed)})"
                          for target, (needed, _) in too_large.items())
        raise UserError(f"model size(s) {named} need more memory to train than this machine has; nothing was "
                        "started: drop them from the spec, or launch them on machines with more memory "
                        "(--backend ray or slurm)")

    cost = assumed_cost_model()  # relative run sizes for the overall progress bar; its ETA rescales by the pace seen
    weights = {run.run_id: cost.run_seconds(run) for run in runs}
    todo.sort(key=lambda run: weights[run.run_id], reverse=True)
    # Each worker keeps the cores that --workers gives it, but no more workers start than there are runs to train.
    slots = split_cores(workers, warn=False)[:max(1, len(todo))]
    if todo and len(slots) < workers:
        log.info("--workers %d: starting %s, one per run left to train", workers, counted(len(slots), "worker"))
    cores = {core for slot in slots for core in slot.cores}
    if len(slots) > len(cores):
        log.warning("%s on %s: workers share cores and each runs slower", counted(len(slots), "worker"),
                    counted(len(cores), "core"))
    check_meshes_fit(todo, slots[0])
    switch_setting()  # a bad SCALING_KEEP_FREED_MEMORY would fail every run in its worker
    if todo:
        log.info("sweep %s: %s, %d to run on %s (cores %s)", spec.name, counted(len(runs), "run"), len(todo),
                 counted(len(slots), "worker"),
                 " | ".join(",".join(map(str, slot.cores)) for slot in slots))
    else:
        log.info("sweep %s: %s, none left to run here, so no worker starts", spec.name, counted(len(runs), "run"))

    bar = SweepProgress(console, enabled=progress, total_weight=sum(weights[run.run_id] for run in todo),
                         runs_total=len(todo))
    pool: dict[int, WorkerProcess] = {}  # slot index -> the slot's current worker process
    exiting: list[WorkerProcess] = []  # workers replaced in their slot that have not been reaped yet
    selector = selectors.DefaultSelector()  # wakes the loop when a worker replies or exits

    try:
        with bar, interrupts_on_stop_signals():
            while todo or any(worker.active is not None for worker in pool.values()):
                if stop_requested():  # a signal whose KeyboardInterrupt Python dropped (scaling/interrupts.py)
                    raise KeyboardInterrupt
                for slot in slots:
                    worker = pool.get(slot.index)
                    if todo and (worker is None or worker.active is None):
                        run = todo.pop(next_run_index(todo, worker, weights))
                        done_elsewhere = _completed_meanwhile(run, root)
                        if done_elsewhere is not None:
                            outcomes[run.run_id] = done_elsewhere
                            bar.skip_run(weights[run.run_id])
                            continue
                        entry = start_run(run, slot, root, worker)
                        if entry.worker is not worker:
                            if worker is not None:
                                _unwatch(worker, selector)
                                exiting.append(worker)
                            pool[slot.index] = entry.worker
                            selector.register(entry.worker.process.stdout, selectors.EVENT_READ)
                        entry.task = bar.add_run(entry.run)
                        log.info("run %s started in worker %d on cores %s (log %s)", entry.run.run_id,
                                 entry.worker.pid, list(slot.cores), entry.log_path)
                    elif not todo and worker is not None and worker.active is None and not worker.retiring:
                        worker.close_input()  # nothing left for this slot: let the process exit now
                selector.select(timeout=POLL_S)
                for index, worker in list(pool.items()):
                    for entry, outcome in _collect(worker, root):
                        outcomes[entry.run.run_id] = outcome
                        bar.finish_run(entry, weights[entry.run.run_id], outcome)
                    if worker.active is not None:
                        bar.update_run(worker.active, weights[worker.active.run.run_id], root)
                    if worker.replies_closed:
                        _unwatch(worker, selector)  # at end of file the pipe is always readable
                        if worker.active is None and worker.reap():
                            del pool[index]
                exiting = [worker for worker in exiting if not worker.reap()]
    except KeyboardInterrupt:
        cpu_in_flight = _stop_workers([*pool.values(), *exiting])
        with stop_signals_deferred():  # a further Ctrl-C waits for the table, which takes a moment
            ordered = outcomes_after_interrupt(runs, root, outcomes, cpu_in_flight)
            if progress if show_table is None else show_table:
                print_outcomes(spec, ordered, console)
        raise SweepInterrupted(ordered) from None
    finally:
        selector.close()
    _shut_down([*pool.values(), *exiting])

    ordered = [outcomes[run.run_id] for run in runs]
    if progress if show_table is None else show_table:
        print_outcomes(spec, ordered, console)
    return ordered


def print_outcomes(spec: SweepSpec, outcomes: list[RunOutcome], console: Console) -> None:
    """Print the table of a launch's runs."""
    # Piped output has no terminal width; rich would assume 80 columns and wrap the cells.
    table_console = console if console.is_terminal else Console(width=WIDE_OUTPUT, file=console.file)
    table_console.print(outcomes_table(spec, outcomes))


def launch(spec: SweepSpec, runs_root: str | Path | None = None, workers: int = 2, progress: bool = True) -> list[dict]:
    """Run the sweep (see `run_sweep`) and return each run's summary, in plan order."""
    return [outcome.summary for outcome in run_sweep(spec, runs_root, workers=workers, progress=progress)]


def _collect(worker: WorkerProcess, runs_root: Path) -> list[tuple[_Active, RunOutcome]]:
    """Return the runs of `worker` that ended since the last look, each with its outcome.

    A reply ends the run in flight. A process that exited with a run still in flight (killed, crashed)
    ends that run as failed, charged the CPU time the earlier replies did not account for.
    """
    ended = []
    for reply in worker.read_replies():
        entry = worker.active
        if entry is None or reply.get("run_id") != entry.run.run_id:
            log.warning("worker %d replied for run %s, which it was not training; ignoring the reply",
                        worker.pid, reply.get("run_id"))
            continue
        if "warning" in reply:  # a warning the run logged; the run goes on
            message = str(reply["warning"])
            named = message.startswith(f"run {entry.run.run_id} ")  # most of train()'s warnings name their run
            log.warning("%s", message if named else f"run {entry.run.run_id}: {message}")
            continue
        worker.active = None
        status = int(reply["exit_status"])
        cpu_s = float(reply.get("cpu_s", 0.0))
        worker.cpu_replied += cpu_s
        if status in EXIT_AFTER:
            worker.retiring = True  # the worker exits after this reply
        ended.append((entry, _finish(entry, status, cpu_s, runs_root, replied=True, message=reply.get("error"))))
    if worker.active is not None and worker.replies_closed and worker.reap():
        entry, worker.active = worker.active, None
        cpu_s = max(0.0, (worker.cpu_total or 0.0) - worker.cpu_replied)
        ended.append((entry, _finish(entry, worker.returncode, cpu_s, runs_root, replied=False)))
    return ended


def _unwatch(worker: WorkerProcess, selector: selectors.BaseSelector) -> None:
    """Stop waking the loop for `worker`: it exited, or another worker replaced it in its slot."""
    worker.close_input()
    try:
        selector.unregister(worker.process.stdout)
    except (KeyError, ValueError):  # not registered, or unregistered before
        pass


def _reap(process: subprocess.Popen) -> tuple[int, float] | None:
    """Return (exit status, CPU seconds) of a worker that has ended, or None while it runs.

    os.wait4 reports the child's resource usage, which Popen.poll does not. A negative status is the
    signal that ended the process, as in Popen.returncode.
    """
    if process.returncode is not None:  # reaped already, by Popen.wait
        return process.returncode, 0.0
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    # The child is reaped now, and Popen.poll and Popen.wait return a set returncode without waiting again.
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def _finish(entry: _Active, returncode: int, cpu_s: float, runs_root: Path, replied: bool = False,
            message: str | None = None) -> RunOutcome:
    """Read the run's summary after it ended; record a failure the worker could not record itself.

    `returncode` is the run's exit status from the worker's reply (`replied`), or the exit status of a
    worker process that ended without replying. `message` is the worker's one-line reason, when it gave one.
    """
    reason = _run_status_reason(returncode) if replied else f"worker {exit_reason(returncode)}"
    return ended_outcome(entry.run, runs_root, returncode, reason=reason, message=message,
                         wall_s=time.time() - entry.started, cpu_s=cpu_s)


RUN_STATUS_WORDS = {EXIT_USER_ERROR: "user error", EXIT_DIVERGED: "diverged", EXIT_LOCKED: "locked",
                    EXIT_INTERRUPTED: "interrupted"}


def _run_status_reason(status: int) -> str:
    """Describe the exit status a worker replied for one run (sweeps.worker lists them)."""
    return f"run ended with status {status}: {RUN_STATUS_WORDS.get(status, 'failed')}"


def _shut_down(workers: list[WorkerProcess]) -> None:
    """Close the input of idle workers and wait for them to exit; kill any still running after STOP_GRACE_S."""
    for worker in workers:
        worker.close_input()
    deadline = time.time() + STOP_GRACE_S
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not exit within %.0f s of the sweep's end; killing it", worker.pid,
                        STOP_GRACE_S)
            worker.process.kill()
            worker.process.wait()
        _close_pipes(worker)


def _completed_meanwhile(run: PlannedRun, root: Path) -> RunOutcome | None:
    """Return a "skipped" outcome when another launch completed `run` after this launch planned it, else None."""
    summary = RunDir.at(root, run.config.sweep, run.run_id).summary()
    if (summary or {}).get("status") != "completed":
        return None
    log.info("run %s was completed by another launch meanwhile; skipping", run.run_id)
    return RunOutcome(run, "skipped", summary, 0.0, None)


def _stop_workers(workers: list[WorkerProcess]) -> dict[str, float]:
    """Interrupt the workers (they keep their checkpoints), wait briefly, then kill the ones still running.

    A second Ctrl-C while they finish their checkpoints is passed on: a second signal stops a worker's run at
    once, without that checkpoint, as it does in `scaling train`. The launch still ends with its table.
    Return the CPU seconds of each run in flight: its worker's CPU time not accounted for by earlier replies.
    """
    _signal_running(workers)
    deadline = time.time() + STOP_GRACE_S
    for worker in workers:
        while not worker.reap():  # os.wait4, which also gives the worker's CPU time
            try:
                if time.time() >= deadline:
                    running = worker.active.run.run_id if worker.active is not None else "none"
                    log.warning("worker %d (run %s) did not stop within %.0f s; killing it", worker.pid, running,
                                STOP_GRACE_S)
                    worker.process.kill()
                    deadline = math.inf  # the kill ends it; wait for that
                time.sleep(STOP_POLL_S)
            except KeyboardInterrupt:
                log.warning("second interrupt: the workers stop now, without checkpointing their step in flight")
                _signal_running(workers)
                deadline = min(deadline, time.time() + SECOND_STOP_GRACE_S)
        _close_pipes(worker)
    return {worker.active.run.run_id: max(0.0, (worker.cpu_total or 0.0) - worker.cpu_replied)
            for worker in workers if worker.active is not None and worker.cpu_total}


def _signal_running(workers: list[WorkerProcess]) -> None:
    """Send SIGINT to each worker that is still running."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGINT)


def _close_pipes(worker: WorkerProcess) -> None:
    for pipe in (worker.process.stdin, worker.process.stdout):
        if pipe is not None and not pipe.closed:
            try:
                pipe.close()
            except BrokenPipeError:
                pass
