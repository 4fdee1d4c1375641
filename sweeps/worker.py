"""One worker process of a local sweep: `python -m sweeps.worker` trains the run whose config arrives on stdin.

The launcher starts one fresh process per run. JAX is first imported here, after the process has pinned
itself to its cores (sweeps.resources) and with XLA_FLAGS already in its environment. A crash or a kill
takes down one run only. Input is one JSON object: {"config": TrainConfig as a dict, "runs_root": path}.
The run's outcome is in its run directory (summary.json), and the exit status repeats it: 0 completed,
3 diverged, 2 a user error (bad config or corpus), 4 the run is being trained by another live process (its
lock is held), 130 interrupted (SIGINT), 1 any other failure.
"""

from __future__ import annotations

import json
import logging
import sys

from sweeps.resources import pin_to_assigned_cores

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT

log = logging.getLogger("sweeps.worker")


def main() -> int:
    cores = pin_to_assigned_cores()  # before JAX is imported: XLA sizes its thread pools from the affinity
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "wandb", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    request = json.loads(sys.stdin.read())
    from scaling.config import TrainConfig
    from scaling.errors import UserError
    from scaling.run_lock import RunLocked
    from scaling.train import train

    config = TrainConfig.from_dict(request["config"])
    log.info("worker for run %s on cores %s", config.run_id, cores if cores is not None else "all")
    try:
        summary = train(config, request["runs_root"], progress=False)
    except UserError as error:
        log.error("run %s stopped: %s", config.run_id, error)
        return EXIT_USER_ERROR
    except RunLocked as error:
        log.error("run %s not started: %s", config.run_id, error)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        log.warning("run %s interrupted; a later launch resumes it from its newest checkpoint", config.run_id)
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("run %s failed", config.run_id)
        return EXIT_FAILED
    status = summary.get("status")
    log.info("run %s finished with status %s", config.run_id, status)
    if status == "completed":
        return EXIT_COMPLETED
    return EXIT_DIVERGED if status == "diverged" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
