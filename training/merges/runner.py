"""One merge, in its own process (``python -m training.merges.runner JOB_ID``), started by the control task
``training.merge_adapter`` as a fine-tune's trainer is started by its node task (``training.tasks``), so a
model loaded for merging never sits in a control worker. It writes its own outcome to the database; the
task watches it, stops it past its time, and fails the job if it dies without saying how it went. It stops
when that task's process dies (``training.orphans``): the reaper fails the job then."""

from __future__ import annotations

import os
import signal
import sys

# Exit codes by final status: the watcher reads the job's row, these are for the log.
CODES = {"succeeded": 0, "failed": 2, "errored": 1, None: 4}


def _stop(signum, frame) -> None:
    # Unwinds like an exception: the work folder of merged weights is removed on the way out (the job is the
    # watcher's to fail). Python's default would leave it on the disk.
    sys.exit(128 + signum)


def main() -> None:
    from training.orphans import exit_with_parent

    # Past its time the watcher sends the process group SIGTERM, then SIGKILL after a grace
    # (``training.tasks._kill``).
    signal.signal(signal.SIGTERM, _stop)
    exit_with_parent()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    import django

    django.setup()
    from training.merges.services import compute

    sys.exit(CODES.get(compute(int(sys.argv[1])), 1))


if __name__ == "__main__":
    main()
