"""Claims on stored blobs and manifests while a registration that will refer to them is in flight.

Blobs are shared by content: a registration that finds a file's blob already stored does not upload it
again, and records its artifact later. Deleting a blob no recorded artifact refers to (a superseded
checkpoint's, a failed import's) must not take one such a registration has counted on and not yet recorded.

A registration runs inside ``registering()``: before it looks a blob (or manifest) up in the store it takes
a shared PostgreSQL advisory lock on it, on its own database session, and keeps them all until the block
ends, after its artifact is committed. A deleter checks and deletes under an exclusive lock it waits for
only a moment (``free``): a blob a registration holds is kept (it is about to be referred to), and one being
deleted makes the registration wait until the delete is done, then upload it again.

Keys are the first 32 bits of the digest under a namespace of their own: a collision only keeps a blob
that could have gone. Requires a session that lasts the block (no transaction-pooling proxy in between).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DatabaseError, OperationalError, connection, transaction

from portfolio.registry import storage

NAMESPACE = 0x626C6F62  # "blob"
WAIT_SECONDS = 2.0
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"


def _key(digest: str) -> int:
    """A digest's (or manifest id's) lock key: its first 32 bits, as PostgreSQL's signed int4."""
    value = int(digest[:8], 16)
    return value - 2**32 if value >= 2**31 else value


class Claims:
    """The shared locks one registration holds (each key once)."""

    def __init__(self) -> None:
        self.keys: set[int] = set()

    def __call__(self, digest: str) -> None:
        key = _key(digest)
        if key in self.keys:
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock_shared(%s, %s)", [NAMESPACE, key])
        self.keys.add(key)

    def release(self) -> None:
        with connection.cursor() as cursor:
            for key in self.keys:
                cursor.execute("SELECT pg_advisory_unlock_shared(%s, %s)", [NAMESPACE, key])
        self.keys.clear()


@contextlib.contextmanager
def registering() -> Iterator[Claims]:
    """Claim every blob and manifest the store is asked about in this block; released when it ends. Commit
    the artifact inside the block (not in a transaction that outlives it), and delete what a failed
    registration wrote after it: its own claims would keep what another failed registration also wrote."""
    claims = Claims()
    with storage.claiming(claims):
        try:
            yield claims
        finally:
            with contextlib.suppress(DatabaseError):  # the session is gone, and its locks with it
                claims.release()


def free(digest: str, wait: float = WAIT_SECONDS) -> bool:
    """Whether no registration in flight holds ``digest`` (waiting up to ``wait`` seconds for one to end:
    a process just killed holds its claims until PostgreSQL notices it is gone). If so it stays held,
    exclusively, by the caller's transaction until that ends: check the references and delete inside it."""
    if not connection.in_atomic_block:
        raise RuntimeError("blobclaims.free holds its lock for the caller's transaction: call it in one")
    try:
        with transaction.atomic(), connection.cursor() as cursor:  # a savepoint: a timeout undoes only it
            cursor.execute(
                "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                [f"{max(1, int(wait * 1000))}ms"],  # 0 would mean for ever
            )
            before = cursor.fetchone()[0]
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [NAMESPACE, _key(digest)])
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [before])
    except OperationalError as exc:
        # Held past the wait; or held by another registration that is itself waiting to delete it while
        # holding its claim (two failed registrations that both wrote it): PostgreSQL then ends one wait.
        if getattr(exc.__cause__, "sqlstate", None) in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED):
            return False
        raise
    return True
