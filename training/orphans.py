"""A child process that ends when the process that started it does.

A merge runs in a process of its own session (``training.tasks._start_child``), so that the task watching it
can stop it as a whole; that also means it outlives its watcher. A worker that dies mid-merge is found by
the reaper (``training.merges.services.reap_stale``), which fails the job and deletes what it wrote. With
nobody left to watch it, the merge itself would run on to its end, using the node's cores for a result
nobody records. ``exit_with_parent`` ends it within a second of its watcher's death instead.

Fine-tunes do not use it: a restarted node task adopts a trainer that survived its worker
(``training.tasks._watch``), so they are meant to run on; one that nobody adopts is stopped by the node agent
(``training.trainer_sweep``).
"""

from __future__ import annotations

import os
import sys
import threading
import time

# The exit code of a process whose parent died (the log says why; nobody reads the code).
ORPHANED = 3
# Where the starting process puts its own id: read at the child's start, the parent could already be gone.
PARENT_ENV = "PORTFOLIO_PARENT_PID"


def exit_with_parent(interval: float = 1.0) -> None:
    """From now on, end this process (every thread, at once) when the process that started it is gone: the
    kernel then gives it another parent, so its parent process id is no longer the one ``PARENT_ENV`` names
    (or, without it, the one it had at this call)."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        print(f"the process that started this one ({parent}) is gone: stopping", file=sys.stderr, flush=True)
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
