"""Shared fixtures: a small real corpus prepared once per session, and the shared data folder."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a Ray instance of the tests stays on 127.0.0.1

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Real text for small end-to-end tests: a few modules of Python's standard library, about 200 KB.
STDLIB_MODULES = ("argparse.py", "dataclasses.py", "textwrap.py", "fractions.py", "heapq.py", "bisect.py",
                  "functools.py", "shlex.py")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return ../shared, or skip the test where it is absent (the product never needs it)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """Prepare a byte-level corpus from a few standard-library modules; return its folder."""
    from scaling.data import prepare

    source = tmp_path_factory.mktemp("stdlib_text")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_MODULES:
        (source / name).write_bytes((stdlib / name).read_bytes())
    out = tmp_path_factory.mktemp("prepared") / "stdlib-small-bytes"
    prepare(str(source), out, tokenizer="bytes", val_fraction=0.25, progress=False)
    return out
