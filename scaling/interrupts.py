"""Ctrl-C and SIGTERM as an interrupt that training and the sweep launcher notice even when Python drops it.

Inside `interrupts_on_stop_signals()`, SIGINT and SIGTERM raise KeyboardInterrupt, as Ctrl-C does by
default, and also set a flag. Schedulers and `kill` send SIGTERM, and a shell starts background jobs with
SIGINT ignored, so SIGTERM may be the only signal that arrives. The flag is there because Python drops an
exception raised inside a garbage-collection callback or a `__del__` method ("Exception ignored in ...").
A signal that lands there would be lost, and the run would go on to its end. Training checks
`stop_requested()` once per step, and the launcher once per pass of its loop, and each raises
KeyboardInterrupt itself when a signal was dropped.

A Ctrl-C in a terminal, or `timeout -s INT`, reaches the launcher and its workers together, and the
launcher then stops its workers again, so a second signal can arrive while a worker records the first.
A training process therefore passes `once=True`: a signal that follows the first within
DUPLICATE_WINDOW_S is only recorded, because the process is already stopping. `stop_signals_deferred()`
also protects the few writes that record an interrupt: inside that block a signal is only recorded,
whatever the mode.

The training loop runs inside `stop_after_step()`: there the first signal is only recorded, and the loop
stops at the end of the step in flight, after saving a checkpoint of it. A later signal, beyond the
duplicate window, raises KeyboardInterrupt at once, for a step or an evaluation that takes too long.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

log = logging.getLogger(__name__)

_requested: int | None = None  # the signal number received inside the block, None when none was
_first_at: float | None = None  # time.monotonic() of the first signal inside the block
# With once=True, a signal this soon after the first is a duplicate of it (seconds). A process group's
# signal and the launcher's own reach a worker within milliseconds; a person's second Ctrl-C comes later.
DUPLICATE_WINDOW_S = 2.0
_blocks_open = 0  # open interrupts_on_stop_signals() blocks, which clear the recorded signal when they end


def stop_requested() -> bool:
    """Return whether SIGINT or SIGTERM arrived inside `interrupts_on_stop_signals()`."""
    return _requested is not None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _record(signum, frame):
    global _requested
    _requested = signum


def _interrupt(signum, frame):
    _record(signum, frame)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals_handled_by(handler):
    """Install `handler` for SIGINT and SIGTERM inside the block, then restore the previous handlers."""
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old_handler in previous.items():
            signal.signal(number, old_handler)


def _interrupt_once(signum, frame):
    global _first_at
    now = time.monotonic()
    if _first_at is not None and now - _first_at < DUPLICATE_WINDOW_S:
        _record(signum, frame)  # a duplicate of the first: its handling goes on undisturbed
        return
    _first_at = now if _first_at is None else _first_at
    _record(signum, frame)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_on_stop_signals(*, once: bool = False):
    """Raise KeyboardInterrupt on SIGINT and SIGTERM inside the block, and remember that one arrived.

    With `once`, a signal within DUPLICATE_WINDOW_S of the first is only recorded, so that the code
    handling the first (a run writing its "interrupted" summary) is not cut short. Such duplicates happen:
    `timeout -s INT` signals a launcher's whole process group, and the launcher then stops each worker
    again, so a worker can get two signals within milliseconds. A later signal raises again, so a second
    Ctrl-C still stops a process that hangs while it shuts down.
    """
    global _requested, _first_at, _blocks_open
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    _requested, _first_at = None, None
    _blocks_open += 1
    try:
        with _stop_signals_handled_by(_interrupt_once if once else _interrupt):
            yield
    finally:
        _blocks_open -= 1
        _requested, _first_at = None, None


@contextlib.contextmanager
def stop_signals_deferred():
    """Record SIGINT and SIGTERM inside the block without raising, so that short cleanup writes complete."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    with _stop_signals_handled_by(_record):
        yield


def _stop_after_step(signum, frame):
    global _first_at
    now = time.monotonic()
    if _requested is None:
        _first_at = now
        _record(signum, frame)
        log.warning("%s received: stopping after the current step, with a checkpoint of it; send it again to "
                    "stop at once", signal.Signals(signum).name)
        return
    if _first_at is not None and now - _first_at < DUPLICATE_WINDOW_S:
        _record(signum, frame)  # a duplicate of the first, which the loop is already acting on
        return
    _record(signum, frame)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_after_step():
    """Record the first SIGINT or SIGTERM inside the block for the training loop to act on at its next step
    boundary, and raise KeyboardInterrupt at a later one (beyond DUPLICATE_WINDOW_S of the first)."""
    global _requested, _first_at
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    try:
        with _stop_signals_handled_by(_stop_after_step):
            yield
    finally:
        if not _blocks_open:  # no surrounding block clears the record, so the next train() call would stop
            _requested, _first_at = None, None
