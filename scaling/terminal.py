"""The command line's terminal: wide tables in pipes, a quiet exit when the reader is gone, SIGTERM as Ctrl-C.

`scaling ask ... | head -2` closes the pipe after two lines. The next write raises BrokenPipeError, and rich
then exits with status 1, which reads as a failure of the command. A command here instead ends the way a
writer killed by SIGPIPE does: no message, status PIPE_CLOSED_STATUS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

PIPE_CLOSED_STATUS = 141  # 128 + SIGPIPE (13), what a shell reports for a writer killed by a closed pipe


def stdout_console(pipe_width: int):
    """Return a rich Console on stdout: the terminal's width, or `pipe_width` columns in a pipe or file
    (where rich would assume 80 and fold every table), exiting quietly when the pipe closes."""
    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            exit_on_closed_stdout()

    console = PipeAwareConsole()
    return console if console.is_terminal else PipeAwareConsole(width=pipe_width)


def print_stdout(text: str) -> None:
    """Print `text` to stdout and flush it, exiting quietly when the reader has closed the pipe."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        exit_on_closed_stdout()


def exit_on_closed_stdout() -> None:
    """Exit with PIPE_CLOSED_STATUS and no message. stdout is pointed at /dev/null first, so that Python's
    flush of the unwritten rest at exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(PIPE_CLOSED_STATUS)


@contextlib.contextmanager
def sigterm_interrupts():
    """Treat SIGTERM like Ctrl-C inside the block: KeyboardInterrupt, so runs close their checkpoints, record
    the status "interrupted", and a sweep launcher stops its workers.

    Schedulers and `kill` send SIGTERM, and a shell starts background jobs with SIGINT ignored, so SIGTERM
    may be the only signal that arrives. Python's default ends the process at once: a run would keep the status
    "running", and a launcher's workers would go on training unattended.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
