"""The threads that load API keys from PostgreSQL for the key cache (keycache.py), as an executor.

Each thread keeps its database connection while loads keep coming, and closes it once it has waited
``IDLE_CLOSE_SECONDS`` for the next: an idle gateway holds no connection for them, and a flood of made-up key
ids (every one a load: a random id is never cached) reuses the threads' connections instead of costing
PostgreSQL a new one per id, as closing after every load did. The threads start with the first load and end
once the executor is gone.
"""

from __future__ import annotations

import queue
import threading
import weakref
from concurrent.futures import Executor, Future

IDLE_CLOSE_SECONDS = 1.0
_STOP = object()


def _work(tasks: queue.SimpleQueue) -> None:
    from django.db import connection

    while True:
        try:
            task = tasks.get(timeout=IDLE_CLOSE_SECONDS)
        except queue.Empty:
            connection.close()  # this thread's; a no-op when it has none open
            task = tasks.get()
        if task is _STOP:
            connection.close()
            return
        future, fn, args = task
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # the caller's future carries it, as a ThreadPoolExecutor's does
            future.set_exception(exc)


class KeyLoaders(Executor):
    def __init__(self, threads: int, name: str = "gateway-keys"):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads, self._name, self._started = threads, name, False
        self._lock = threading.Lock()
        # The threads hold the queue, never the executor: once it is collected they are told to end.
        weakref.finalize(self, _stop, self._tasks, threads)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if kwargs:
            raise TypeError("KeyLoaders.submit takes positional arguments only")
        with self._lock:
            if not self._started:
                for number in range(self._threads):
                    threading.Thread(
                        target=_work, args=(self._tasks,), name=f"{self._name}-{number}", daemon=True
                    ).start()
                self._started = True
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future


def _stop(tasks: queue.SimpleQueue, threads: int) -> None:
    for _ in range(threads):
        tasks.put(_STOP)
