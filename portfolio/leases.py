"""Leases: one live runner per long task (an import, a fine-tune watch), whatever the broker redelivers.

Celery acknowledges our tasks late, and Redis hands a task not acknowledged within its visibility timeout to
another worker, even while the first still runs it; a worker's pool process that dies has its task
redelivered at once. Each long task therefore takes a lease in Redis before touching its job: a key holding
the holder's name (``host:pid:start:random``, ``start`` the process's start time) with a short expiry that a
thread of the live runner renews.

- The lease is free: the delivery takes it and runs.
- It is held by a process of this host that no longer runs (its worker died): taken over at once. A pid alone
  does not tell: a container restarted without an init runs its new process as pid 1 again, as its predecessor
  was, so the holder is gone unless its pid names a process started at the same moment.
- Otherwise the holder may be alive elsewhere: wait out one expiry. Still held then, the holder renewed it,
  so it is alive: this delivery exits without touching the job. Lapsed: taken over.

The holder's renewal thread notices when the lease is no longer its own (``lost``): it was paused past the
expiry, and a redelivery may have taken over, run and released it meanwhile, so the lease is never taken back.
The run calls ``ensure_held`` before each write to its job, and stops (``LeaseLost``) without ending the job
or deleting its files: they are the live holder's, or the reaper's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# Extend the expiry only while the key still names us. A missing key is not taken back: it lapsed (or Redis lost
# it), and another run may have held it and ended meanwhile; only an unbroken key proves nobody else ran.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# Compare-and-delete: only the holder releases, and a dead holder is removed only if still the one named.
_DROP_IF_HELD_BY = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class LeaseLost(Exception):
    """The lease is no longer this run's: it must not write to its job, end it, or delete its files."""


# The lease ``Lease.kept`` keeps in this thread: a task's run finds it without each caller passing it down.
_kept_here = threading.local()


def kept_here() -> Lease | None:
    """The lease this thread keeps (inside ``Lease.kept``), or None (a run called outside a task, as tests do)."""
    return getattr(_kept_here, "lease", None)


# The tokens this process took and has not released: a token naming this process but none of these was left by
# a lease of it whose release failed (Redis away for a moment), and nobody here holds it any more.
_taken_here: set[str] = set()


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)


class Lease:
    """A lease on ``name`` (for example ``training.run_job:42:1``) that lapses ``seconds`` after its last renewal."""

    def __init__(self, name: str, seconds: float | None = None) -> None:
        self.key = f"portfolio:lease:{name}"
        self.seconds = float(seconds if seconds is not None else settings.TASK_LEASE_SECONDS)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}:{secrets.token_hex(8)}"
        self.lost = threading.Event()
        self.renewed_at = time.monotonic()  # when the lease was last known to be ours
        self._client = _client()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _ms(self) -> int:
        return max(1, int(self.seconds * 1000))

    def _take(self) -> bool:
        now = time.monotonic()
        if self._client.set(self.key, self.token, nx=True, px=self._ms):
            self.renewed_at = now
            _taken_here.add(self.token)
            return True
        return False

    def holder(self) -> str | None:
        held = self._client.get(self.key)
        return held.decode(errors="replace") if isinstance(held, bytes) else held

    def acquire(self, *, wait: bool = True) -> bool:
        """Take the lease; False while a live holder keeps it (see the module docstring)."""
        if self._take():
            return True
        holder = self.holder()
        if holder and _holder_is_gone(holder) and self._client.eval(_DROP_IF_HELD_BY, 1, self.key, holder):
            logger.warning("%s: took over from %s, a process that no longer runs", self.key, holder)
            return self._take()
        if not wait:
            return False
        remaining_ms = self._client.pttl(self.key)
        deadline = time.monotonic() + max(remaining_ms, 0) / 1000 + 0.5
        while time.monotonic() < deadline:
            time.sleep(min(0.25, self.seconds / 4))
            if self._take():
                logger.warning("%s: took over from %s, whose lease lapsed", self.key, holder)
                return True
        return False

    def renew(self) -> bool:
        """Extend the lease; False, and ``lost`` set, once it is not ours (another holds it, or it lapsed)."""
        now = time.monotonic()
        if self._client.eval(_RENEW, 1, self.key, self.token, self._ms):
            self.renewed_at = now
            return True
        self.lost.set()
        return False

    def ensure_held(self) -> None:
        """Raise ``LeaseLost`` once the lease is known lost, or unrenewed for its whole expiry: the key may have
        lapsed and gone to another run before the renewal thread (paused too, or Redis away) finds out."""
        if self.lost.is_set() or time.monotonic() - self.renewed_at >= self.seconds:
            raise LeaseLost(self.key)

    def release(self) -> None:
        _taken_here.discard(self.token)  # done with it, even if Redis does not hear so now
        self._client.eval(_DROP_IF_HELD_BY, 1, self.key, self.token)

    def regain(self, still_ours: Callable[[], bool]) -> bool:
        """Take back a lease found lost, if nobody holds it now, and go on renewing it (inside ``kept``). Only
        for a run that can tell, with ``still_ours`` (asked once the key is taken), that nobody else ran its
        job meanwhile: a key that lapsed (Redis away longer than its expiry, or restarted without it) proves
        nothing by itself."""
        if not self.acquire(wait=False):
            return False
        try:
            ours = still_ours()
        except BaseException:
            self.release()
            raise
        if not ours:
            self.release()
            return False
        self.lost.clear()
        self._renew_in_background()
        return True

    def _renew_in_background(self) -> None:
        """Renew the lease from a thread every third of its expiry until ``kept`` ends or it is lost."""

        def renew_until_stopped() -> None:
            while not self._stop.wait(self.seconds / 3):
                try:
                    if not self.renew():
                        logger.error(
                            "%s: lost to %s; this run stops touching its job", self.key, self.holder()
                        )
                        return
                except redis.RedisError as exc:  # Redis away for a moment: the next round tries again
                    logger.warning("%s: could not renew (%s)", self.key, exc)

        self._thread = threading.Thread(target=renew_until_stopped, name=f"lease {self.key}", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def kept(self) -> Iterator[Lease]:
        """Renew the (acquired) lease from a thread every third of its expiry until the block ends, then release."""
        self._renew_in_background()
        outer, _kept_here.lease = kept_here(), self
        try:
            yield self
        finally:
            _kept_here.lease = outer
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=10)
            with contextlib.suppress(redis.RedisError):
                self.release()


def _started(pid: int) -> str | None:
    """When process ``pid`` started, as a string compared by equality; None when no such process runs.

    Linux: clock ticks from boot to its start (/proc/<pid>/stat, field 22), fixed for the process's life and
    read alike by every process of the machine; psutil's ``create_time`` adds the boot time, which moves when the
    clock is stepped, and would make a live holder look gone. Elsewhere (a developer's Mac): ``create_time``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2, in parentheses) may hold spaces: count the fields after it.
            return stat.read().rpartition(b")")[2].split()[19].decode()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux, and no such process
    except OSError:
        return None
    try:
        return repr(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _holder_is_gone(token: str) -> bool:
    """Whether the holder named by ``token`` surely no longer runs. One naming this very process is gone unless
    a lease of this process took it and has not released it (one of its threads may still run under it)."""
    host, _, named = token.partition(":")
    pid, *rest = named.split(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: only its lease's expiry tells
    if len(rest) == 2:  # host:pid:start:random
        if int(pid) == os.getpid() and rest[0] == _started(os.getpid()):
            return token not in _taken_here
        return _started(int(pid)) != rest[0]
    # host:pid:random, from before tokens named the start time: never written by this process, so a token of
    # our own pid is a predecessor's (pid 1 of the same container, restarted).
    return int(pid) == os.getpid() or not psutil.pid_exists(int(pid))


def still_held(lease: Lease | None) -> bool:
    """Whether a run may still end its job or delete what its replacement would read: ``ensure_held`` without
    raising; a run without a lease (inline) always may."""
    if lease is None:
        return True
    try:
        lease.ensure_held()
    except LeaseLost:
        return False
    return True
