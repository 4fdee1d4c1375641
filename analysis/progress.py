"""A progress line for the steps of a fit: which step runs now, how many are done, and the time so far.

`scaling fit` runs up to seven steps of one to several seconds each (approach 3 from its start grid, its
bootstrap, approaches 2 and 1, the Kaplan-style fits, the extrapolation check, the plots). The line goes to
stderr, only on a terminal, and disappears when the fit ends; the fit logs what each step found.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class StepProgress:
    """Show `total` named steps as they run: use `with progress.step("approach 3"): ...` for each."""

    def __init__(self, total: int, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        # Off a terminal, rich would print an empty line where the transient bar was.
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, disable=not (enabled and console.is_terminal),
                             transient=True)
        self._task = self._bar.add_task("fitting", total=total)

    def __enter__(self) -> StepProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._bar.stop()

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show `description` while the block runs, then count the step done."""
        self._bar.update(self._task, description=description)
        yield
        self._bar.advance(self._task)
