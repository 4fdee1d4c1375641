"""A worker process of a sweep: `python -m sweeps.worker` trains runs whose configs arrive on stdin.

JAX is first imported here, after the process has pinned itself to its cores (sweeps.resources) and with
XLA_FLAGS already in its environment. Two modes:

- `python -m sweeps.worker` (the Ray and SLURM backends) reads one JSON object from stdin,
  {"config": TrainConfig as a dict, "runs_root": path}, trains that run and exits with its exit status.
  Output goes to the process's own stdout and stderr.
- `python -m sweeps.worker --serve` (the local launcher, one long-lived process per worker slot) reads
  one request per line, {"config": ..., "runs_root": ..., "log_path": path}, and trains the runs one after
  another. For each run it points file descriptors 1 and 2 at `log_path` (appending), so the run's
  logging, warnings and native output (XLA, tracebacks) go to that run's log. Each warning this project's
  code logs during the run is also written, as it happens, as a JSON line {"run_id", "warning"} to the
  stdout the worker started with. When the run ends it writes
  one JSON line to that stdout: {"run_id", "exit_status", "cpu_s", "wall_s"}, where
  `cpu_s` is the user plus system CPU time of this process and its reaped children during the run
  (resource.getrusage deltas). It exits at the end of stdin (status 0), after an interrupted run (130),
  and after a run that failed with an unexpected exception (1), so that the next run gets a clean process.

Each run's outcome is in its run directory (summary.json), and the exit status repeats it: 0 completed,
3 diverged, 2 a user error (bad config or corpus), 4 the run is being trained by another live process (its
lock is held), 130 interrupted (SIGINT or SIGTERM), 1 any other failure.

A crash or a kill of the process takes down the run in flight only. JAX keeps no state between runs that
changes their results: tests/test_worker_serve.py checks that runs trained one after another in one
worker give the same metrics, bit for bit, as each run trained in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import time
from typing import IO, Any

from scaling.interrupts import interrupts_on_stop_signals
from sweeps.resources import pin_to_assigned_cores

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT

# Statuses after which a serving worker exits instead of taking the next run.
EXIT_AFTER = (EXIT_FAILED, EXIT_INTERRUPTED)
RELAYED_LOGGERS = ("scaling.", "models.", "analysis.")  # whose warnings a serving worker also sends the launcher

log = logging.getLogger("sweeps.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true",
                        help="train runs one after another, one JSON request per stdin line (the local launcher)")
    args = parser.parse_args(argv)

    # The launcher stops workers with SIGINT. A launcher started as a shell's background job has SIGINT
    # ignored, and its children would inherit that, so the worker restores Python's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Ray starts its worker processes with SIGINT blocked, and a child inherits the mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    cores = pin_to_assigned_cores()  # before JAX is imported: XLA sizes its thread pools from the affinity
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "wandb", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # `kill`, or a scheduler cancelling the job, stops the run as SIGINT does. The launcher's own SIGINT often
    # follows one sent to its whole process group, and must not cut short the recording of the first.
    try:
        with interrupts_on_stop_signals(once=True):
            if args.serve:
                return serve(cores)
            request = json.loads(sys.stdin.read())
            status, _ = train_request(request, cores)
            return status
    finally:
        # The outcome is recorded. A second Ctrl-C while the interpreter exits would only print a traceback from
        # an exit handler (JAX's clear_backends) into the run's log.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_request(request: dict[str, Any], cores: tuple[int, ...] | None) -> tuple[int, str | None]:
    """Train the run of one request; return its exit status (see the module docstring) and why it stopped.

    The message is the one-line error of a run that did not complete, None for a completed or diverged run.
    """
    from scaling.config import TrainConfig  # these three import no JAX
    from scaling.errors import UserError
    from scaling.run_lock import RunLocked

    run_id = request["config"].get("run_id")
    started = False
    try:
        # Importing JAX takes seconds on a busy machine. An interrupt during it is logged like any other.
        from scaling.train import train

        config = TrainConfig.from_dict(request["config"])
        log.info("worker %d for run %s on cores %s", os.getpid(), run_id, cores if cores is not None else "all")
        started = True
        summary = train(config, request["runs_root"], progress=False)
    except UserError as error:
        log.error("run %s stopped: %s", run_id, error)
        return EXIT_USER_ERROR, str(error)
    except RunLocked as error:
        log.error("run %s not started: %s", run_id, error)
        return EXIT_LOCKED, str(error)
    except KeyboardInterrupt:
        if started:
            log.warning("run %s interrupted; a later launch resumes it from its newest checkpoint, or starts it "
                        "afresh if it has none", run_id)
        else:
            log.warning("run %s interrupted before it started; a later launch starts it", run_id)
        return EXIT_INTERRUPTED, "interrupted"
    except Exception as error:
        log.exception("run %s failed", run_id)
        return EXIT_FAILED, f"{type(error).__name__}: {error}"
    status = summary.get("status")
    log.info("run %s finished with status %s", run_id, status)
    if status == "completed":
        return EXIT_COMPLETED, None
    if status == "diverged":
        return EXIT_DIVERGED, None
    return EXIT_FAILED, summary.get("error")


def serve(cores: tuple[int, ...] | None) -> int:
    """Train the requests on stdin one after another and write one JSON reply line per run."""
    # Replies go to a private copy of the stdout pipe. Descriptor 1 itself joins descriptor 2, so a stray
    # print can never corrupt the replies.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            status = _serve_one(request, cores, replies)
            if status in EXIT_AFTER:
                return status
    except KeyboardInterrupt:  # SIGINT while waiting for the next request
        return EXIT_INTERRUPTED
    return EXIT_COMPLETED


class _RelayWarnings(logging.Handler):
    """Writes each warning that this project's code logs during a run to the replies, as it happens.

    The run's log has every message. These reach the launcher's console too, where the person who started
    the sweep reads them: a clipped warmup, a corpus seen more than once, a checkpoint set aside.
    """

    def __init__(self, run_id: str, replies: IO[str]):
        super().__init__(level=logging.WARNING)
        self.run_id = run_id
        self.replies = replies

    def emit(self, record: logging.LogRecord) -> None:
        # Errors end the run, and the final reply carries them; the worker's own warnings repeat the outcome.
        if record.levelno != logging.WARNING or not record.name.startswith(RELAYED_LOGGERS):
            return
        try:
            self.replies.write(json.dumps({"run_id": self.run_id, "warning": record.getMessage()}) + "\n")
        except (OSError, ValueError):  # the launcher is gone; the run's log keeps the message
            pass
        except Exception:  # a message that cannot be formatted: logging's own report, never a failed run
            self.handleError(record)


def _serve_one(request: dict[str, Any], cores: tuple[int, ...] | None, replies: IO[str]) -> int:
    """Train one request with descriptors 1 and 2 on its log; write its reply; return its exit status."""
    _redirect_output(request["log_path"])
    started = time.time()
    cpu_before = _cpu_seconds()
    relay = _RelayWarnings(request["config"]["run_id"], replies)
    logging.getLogger().addHandler(relay)
    try:
        status, error = train_request(request, cores)
    finally:
        logging.getLogger().removeHandler(relay)
    reply = {"run_id": request["config"]["run_id"], "exit_status": status, "error": error,
             "cpu_s": round(_cpu_seconds() - cpu_before, 3), "wall_s": round(time.time() - started, 3)}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        replies.write(json.dumps(reply) + "\n")
    except BrokenPipeError:
        # The launcher has exited, for instance after an interrupt. The run's summary.json records how it ended.
        # Later flushes of the replies go to /dev/null, so that exiting prints no second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), replies.fileno())
        log.warning("run %s: the launcher is gone, so the worker exits without replying", reply["run_id"])
        return EXIT_INTERRUPTED
    return status


def _redirect_output(log_path: str) -> None:
    """Point descriptors 1 and 2 (and so sys.stdout, sys.stderr and native code) at `log_path`, appended."""
    sys.stdout.flush()
    sys.stderr.flush()
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(descriptor, sys.stdout.fileno())
        os.dup2(descriptor, sys.stderr.fileno())
    finally:
        os.close(descriptor)


def _cpu_seconds() -> float:
    """Return the user plus system CPU seconds of this process and of its children that were reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
