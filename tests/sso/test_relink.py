"""A person deleted and created again at the realm (a new `sub`), or a realm whose address changed (a new
issuer), was refused for good: the sign-in finds no account by the new identity and the name is taken, and no
admin could do anything about it. A platform admin relinks the account (`manage.py sso_relink`), audited, and
the next sign-in finds it with its memberships; nobody else can, nor onto another account's identity."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import ExternalIdentity, Membership
from portfolio.accounts.sso import relink
from portfolio.accounts.sso import services as sso_services
from portfolio.accounts.sso.client import Refused
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db
ISSUER = "http://127.0.0.1:1/realms/portfolio"
FIRST, AGAIN = "7a1c2e34-0b5d-4f6a-8c9d-0e1f2a3b4c5d", "0f9e8d7c-6b5a-4433-2211-00ffeeddccbb"


def signed_in(subject: str, username: str = "alice"):
    claims = {"sub": subject, "preferred_username": username, "iat": int(time.time())}
    return sso_services.account_for(
        actor=Actor(ip="127.0.0.1"), issuer=ISSUER, claims=claims, organisation="Acme"
    )


def test_an_account_relinked_to_its_persons_new_identity_signs_in_with_its_memberships(team):
    alice = signed_in(FIRST)
    Membership.objects.create(user=alice, team=team, role="developer")
    with pytest.raises(Refused) as refused:
        signed_in(AGAIN)
    assert refused.value.reason == "username_taken" and "manage.py sso_relink" in refused.value.message
    call_command("sso_relink", "alice", subject=AGAIN, issuer=ISSUER)
    assert signed_in(AGAIN).pk == alice.pk
    assert Membership.objects.filter(user=alice, team=team).exists()
    assert list(ExternalIdentity.objects.filter(user=alice).values_list("subject", flat=True)) == [AGAIN]
    event = AuditEvent.objects.get(action="user.sso_relink")
    assert event.before == {"identities": [{"issuer": ISSUER, "subject": FIRST}]}
    assert event.after == {"identities": [{"issuer": ISSUER, "subject": AGAIN}]}
    assert event.actor_label.startswith("system:") and event.object_repr == "alice"


def test_only_admins_relink_and_never_onto_another_accounts_identity(org):
    alice, bob = signed_in(FIRST), signed_in(AGAIN, "bob")
    with pytest.raises(Forbidden):
        relink.relink(actor=actor_for(org["owner"]), user=alice, issuer=ISSUER, subject="x")
    with pytest.raises(Conflict, match="'bob'"):
        relink.relink(actor=actor_for(org["admin"]), user=alice, issuer=ISSUER, subject=AGAIN)
    assert ExternalIdentity.objects.get(user=bob).subject == AGAIN
    assert ExternalIdentity.objects.get(user=alice).subject == FIRST
    assert not AuditEvent.objects.filter(action="user.sso_relink").exists()


def test_the_command_needs_an_issuer_where_single_sign_on_is_not_set_up(settings):
    settings.OIDC = None
    signed_in(FIRST)
    with pytest.raises(CommandError, match="give --issuer"):
        call_command("sso_relink", "alice", subject=AGAIN)
    with pytest.raises(CommandError, match="No account 'nobody'"):
        call_command("sso_relink", "nobody", subject=AGAIN, issuer=ISSUER)
