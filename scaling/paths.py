"""Locations on disk of runs and prepared corpora.

RUNS is the folder named explicitly (`--runs DIR`), else the environment variable `SCALING_RUNS`, else `./runs`
in the current folder. Prepared corpora live beside the sweeps, under `RUNS/_data/`.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_ENV = "SCALING_RUNS"
DATA_FOLDER = "_data"  # prepared corpora: RUNS/_data/<corpus folder>


def runs_root(explicit: str | Path | None = None) -> Path:
    """Return the runs folder as an absolute path: `explicit`, else $SCALING_RUNS, else ./runs.

    The path is made absolute against the current folder now, so a later change of folder does not move it.
    """
    if explicit is not None and str(explicit) != "":
        chosen = Path(explicit)
    elif os.environ.get(RUNS_ENV):
        chosen = Path(os.environ[RUNS_ENV])
    else:
        chosen = Path("runs")
    return chosen.expanduser().absolute()


def data_root(runs: str | Path | None = None) -> Path:
    """Return the folder of prepared corpora: `<runs_root(runs)>/_data`."""
    return runs_root(runs) / DATA_FOLDER
