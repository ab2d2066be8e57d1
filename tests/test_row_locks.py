"""The suite's guard against row locks over joins (``tests/row_locks.py``), which every test runs under."""

from __future__ import annotations

import pytest
from django.db import transaction

from portfolio.accounts.models import Membership
from tests.row_locks import JoinedRowLock, locks_joined_rows


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ('SELECT "a"."id" FROM "a" INNER JOIN "b" ON ("a"."b_id" = "b"."id") FOR UPDATE', True),
        ('SELECT "a"."id" FROM "a" LEFT OUTER JOIN "b" ON ("a"."b_id" = "b"."id") FOR NO KEY UPDATE', True),
        ('SELECT "a"."id" FROM "a" INNER JOIN "b" ON ("a"."b_id" = "b"."id") FOR UPDATE OF "a"', False),
        ('SELECT "a"."id" FROM "a" WHERE "a"."id" = %s FOR UPDATE', False),
        # A join inside a subquery locks nothing: only the outer FROM clause's rows are locked.
        (
            'SELECT "a"."id" FROM "a" WHERE "a"."id" IN (SELECT "c"."id" FROM "c" INNER JOIN "d" ON (1=1)) '
            "FOR UPDATE",
            False,
        ),  # fmt: skip
        ('SELECT "a"."id" FROM "a" INNER JOIN "b" ON ("a"."b_id" = "b"."id")', False),
        ('SELECT "a"."id" FROM "a" AS "FOR UPDATE" INNER JOIN "b" ON (1=1)', False),
    ],
)
def test_which_statements_the_guard_refuses(sql, refused):
    assert locks_joined_rows(sql) is refused


@pytest.mark.django_db
def test_a_query_locking_its_joined_rows_is_refused(org, team):
    """``select_related`` beside a bare ``select_for_update()`` would lock the team's and user's rows too."""
    with transaction.atomic():
        with pytest.raises(JoinedRowLock, match="of="):
            list(Membership.objects.select_for_update().select_related("team", "user").filter(team=team))
        assert list(
            Membership.objects.select_for_update(of=("self",))
            .select_related("team", "user")
            .filter(team=team)
        )
