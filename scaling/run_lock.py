"""A lock per run folder, so two launchers on one sweep never train the same run at once.

The lock is an exclusive `flock` on `<run>/.lock`. The kernel releases it when the holder exits, however it
exits (SIGKILL included), so a dead launcher never keeps a run locked. The file records the holder's
host and process id for the message another launcher prints. NOTE: flock is reliable on local disks; on
network file systems check that your mount supports it before sharing one RUNS folder between hosts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from scaling.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLocked(Exception):
    """The run is being trained by another live process."""

    def __init__(self, run_path: Path, holder: str):
        super().__init__(f"run {run_path.name} is being trained by {holder}")
        self.holder = holder


def describe_holder(text: str) -> str:
    """Return "process PID on HOST since HH:MM:SS" from a lock file's JSON, or the text itself if it is not that."""
    try:
        holder = json.loads(text)
        since = time.strftime("%H:%M:%S", time.localtime(float(holder["since"])))
        return f"process {int(holder['pid'])} on {holder['host']} since {since}"
    except (ValueError, TypeError, KeyError):
        return text.strip() or "another process"


def lock_holder(run_path: Path) -> str | None:
    """Return who holds the run's lock (`describe_holder`), or None when no live process holds it.

    It only tests the lock: a shared lock taken and released at once, on a lock file that must already exist.
    """
    try:
        handle = open(Path(run_path) / LOCK_NAME)
    except (FileNotFoundError, NotADirectoryError):  # no lock yet, or a file where the run folder should be
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe_holder(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class RunLock:
    """Exclusive ownership of one run folder while it trains; use as a context manager."""

    def __init__(self, run_path: Path):
        self.run_path = Path(run_path)
        self.path = self.run_path / LOCK_NAME
        self.handle = None
        self.created: list[Path] = []  # folders this lock made, deepest first

    def acquire(self) -> None:
        """Take the lock, or raise RunLocked naming the live holder."""
        self.created = [folder for folder in (self.run_path, *self.run_path.parents) if not folder.exists()]
        try:
            self.run_path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except (FileExistsError, NotADirectoryError):
            blocker = next(path for path in (self.run_path, *self.run_path.parents) if path.exists())
            raise UserError(f"run folder {self.run_path} cannot be created: {blocker} is a file; move it, or "
                            "choose another runs folder, sweep or run_id") from None
        except OSError as error:
            raise UserError(f"run folder {self.run_path} cannot be written ({error.strerror}); pass --runs (or set "
                            "SCALING_RUNS) to a folder you can write to") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = describe_holder(handle.read())
            handle.close()
            raise RunLocked(self.run_path, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is None:
            return
        if self.created and [path.name for path in self.run_path.iterdir()] == [LOCK_NAME]:
            # Rejected before it wrote anything (a bad config, for example): leave no folder that looks like a run.
            self.path.unlink(missing_ok=True)
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:  # another process has put something there since
                    break
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
