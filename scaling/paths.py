"""Locations on disk of runs and prepared corpora.

RUNS is the folder named explicitly (`--runs DIR`), else the environment variable `SCALING_RUNS`, else `./runs`
in the current folder. Prepared corpora live beside the sweeps, under `RUNS/_data/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from scaling.errors import UserError

RUNS_ENV = "SCALING_RUNS"
DATA_FOLDER = "_data"  # prepared corpora: RUNS/_data/<corpus folder>


def runs_root(explicit: str | Path | None = None, *, folder: bool = True) -> Path:
    """Return the runs folder as an absolute path: `explicit`, else $SCALING_RUNS, else ./runs.

    The path is made absolute against the current folder now, so a later change of folder does not move it.
    With `folder` (the default), a path that exists but is not a folder raises UserError; `scaling fit`
    passes False, because it also reads a CSV file in that place.
    """
    if explicit is not None and str(explicit) != "":
        chosen, source = Path(explicit), "--runs"
    elif os.environ.get(RUNS_ENV):
        chosen, source = Path(os.environ[RUNS_ENV]), RUNS_ENV
    else:
        chosen, source = Path("runs"), "the default runs folder"
    chosen = chosen.expanduser().absolute()
    if folder:
        # The folder, or the nearest part of its path that exists, must be a folder: it is created below it.
        existing = next(path for path in (chosen, *chosen.parents) if path.exists())
        if not existing.is_dir():
            problem = "is a file" if existing == chosen else f"lies inside {existing}, which is a file"
            raise UserError(f"{source} {chosen} {problem}, not a folder; name a folder for the runs "
                            "(it is created when missing)")
    return chosen


def data_root(runs: str | Path | None = None) -> Path:
    """Return the folder of prepared corpora: `<runs_root(runs)>/_data`."""
    return runs_root(runs) / DATA_FOLDER
