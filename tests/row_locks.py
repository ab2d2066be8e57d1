"""A guard the whole suite runs under: a row lock (``SELECT ... FOR UPDATE``) over a join must name what it
locks (``select_for_update(of=("self",))``). PostgreSQL locks the rows of every table in a locking query's
FROM clause: ``select_related("team")`` beside ``select_for_update()`` also locks the team's row FOR UPDATE,
which blocks every insert that refers to the team (its foreign-key check takes FOR KEY SHARE) until the
transaction ends, and it orders locks by the query plan, not by the code. Twice such a lock, taken by
accident, hid a race a test then missed; locks a transaction needs are taken on their own rows, on purpose."""

from __future__ import annotations

import re

_LOCKING = re.compile(r"\bFOR (?:NO KEY )?UPDATE\b(?! OF\b)")
_QUOTED = re.compile(r'"[^"]*"')


def _top_level(sql: str) -> str:
    """``sql`` without what parentheses hold: a subquery's joins lock nothing."""
    out, depth = [], 0
    for char in _QUOTED.sub('""', sql):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def locks_joined_rows(sql: str) -> bool:
    """Whether ``sql`` locks the rows of every table it joins."""
    top = _top_level(sql)
    return bool(_LOCKING.search(top)) and " JOIN " in top


class JoinedRowLock(AssertionError):
    pass


def refuse_joined_locks(execute, sql, params, many, context):
    if isinstance(sql, str) and locks_joined_rows(sql):
        raise JoinedRowLock(
            'a row lock over a join locks every joined row; name what it locks (of=("self",)) and lock other '
            f"rows on purpose: {sql}"
        )
    return execute(sql, params, many, context)


def _on_connection(sender, connection, **kwargs) -> None:
    if refuse_joined_locks not in connection.execute_wrappers:
        connection.execute_wrappers.append(refuse_joined_locks)


def install() -> None:
    """Every database connection of the test process, in any thread, refuses a row lock over a join."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection, dispatch_uid="tests.row_locks")
