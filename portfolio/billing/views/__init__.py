"""The billing pages: this month's spend (``spend``), statements (``statements``), the price book
(``prices``). Server-rendered, htmx where a part of a page changes.

Permission, for every page: the actor holds ``billing.view`` somewhere (owner, auditor, department
manager; admins), else 403; a department the actor reads nothing of answers 404
(``portfolio.billing.access``). Team owners read only their teams' lines. Changes (a new price version,
a statement's re-issue) are admins' and go through ``portfolio.billing.services`` / ``statements``.
"""

from __future__ import annotations

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.billing import access
from portfolio.errors import Forbidden


def billing_reader(request) -> tuple[Actor, access.Reader]:
    """The actor and what they read of billing; 403 for a role that reads none of it."""
    actor = actor_of(request)
    if not gate.can(actor, "billing.view"):
        raise Forbidden("Your role does not allow billing.view.")
    return actor, access.reader(actor)
