"""Printing to stdout for the command line: wide tables in pipes, and a quiet exit when the reader is gone.

`scaling ask ... | head -2` closes the pipe after two lines. The next write raises BrokenPipeError, and rich
then exits with status 1, which reads as a failure of the command. A command here instead ends the way a
writer killed by SIGPIPE does: no message, status PIPE_CLOSED_STATUS.
"""

from __future__ import annotations

import os
import sys

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
    # In a pipe, tables take `pipe_width` columns and lines of text are never folded (soft_wrap).
    return console if console.is_terminal else PipeAwareConsole(width=pipe_width, soft_wrap=True)


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

