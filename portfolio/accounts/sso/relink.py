"""Relinking an account to its person's new identity at the realm.

A sign-in finds its account by the identity's issuer and subject, never by the user name (a name can be
reused; a subject names one person for good). A person deleted and created again at the realm, everyone when
a federated directory is attached again, or every account when the realm's address (its issuer) changed,
comes back with a new identity: the sign-in finds no account, and is refused because the name is taken. A
platform admin relinks the account to the new identity (``manage.py sso_relink``), audited; the account keeps
its memberships and roles, and the realm's claims apply to it again from its next sign-in or sync.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid

User = get_user_model()
LONGEST = 255  # ExternalIdentity.issuer and .subject


def _identities(user) -> list[dict[str, str]]:
    return [
        {"issuer": issuer, "subject": subject}
        for issuer, subject in ExternalIdentity.objects.filter(user=user).values_list("issuer", "subject")
    ]


@transaction.atomic
def relink(*, actor: Actor, user, issuer: str, subject: str) -> ExternalIdentity:
    """Make (``issuer``, ``subject``) the one identity of ``user``, in place of any it had. Refused when
    another account holds that identity (relink that one first)."""
    gate.require(actor, "user.manage")
    issuer, subject = issuer.strip(), subject.strip()
    for name, value in (("issuer", issuer), ("subject", subject)):
        if not value or len(value) > LONGEST:
            raise Invalid(
                f"{name}: 1 to {LONGEST} characters.", fields={name: [f"1 to {LONGEST} characters."]}
            )
    user = User.objects.select_for_update().get(pk=user.pk)
    holder = ExternalIdentity.objects.select_for_update().filter(issuer=issuer, subject=subject).first()
    if holder is not None and holder.user_id == user.pk and len(_identities(user)) == 1:
        return holder
    if holder is not None and holder.user_id != user.pk:
        raise Conflict(
            f"That identity is the account {holder.user.get_username()!r}'s; relink that one first."
        )
    before = _identities(user)
    ExternalIdentity.objects.filter(user=user).delete()
    identity = ExternalIdentity.objects.create(
        user=user, issuer=issuer, subject=subject, username=user.get_username()
    )
    audit.record(
        actor,
        "user.sso_relink",
        user,
        before={"identities": before},
        after={"identities": _identities(user)},
        object_repr=user.get_username(),
    )
    return identity
