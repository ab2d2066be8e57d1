"""Service functions: every change has its audit row in the same transaction, and only then."""

import pytest
from django.db import transaction

from portfolio.accounts import personal_tokens, services
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Department, Membership, Team
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

pytestmark = pytest.mark.django_db


def test_creating_a_team_writes_its_audit_row(org, department):
    team = services.create_team(actor=actor_for(org["admin"]), department=department, name="Fraud Models")
    event = AuditEvent.objects.get(action="team.create")
    assert (event.object_id, event.team_id, event.department_id) == (str(team.pk), team.pk, department.pk)
    assert event.after["slug"] == "fraud-models"
    assert event.actor_label == "admin" and event.ip == "127.0.0.1"


def test_a_refused_change_leaves_no_audit_row(org, department):
    with pytest.raises(Forbidden):
        services.create_team(actor=actor_for(org["owner"]), department=department, name="Rogue")
    assert not AuditEvent.objects.exists()
    assert not Team.objects.filter(name="Rogue").exists()


def test_a_failing_audit_write_rolls_the_change_back(org, department, monkeypatch):
    from portfolio.audit import services as audit

    def broken(*args, **kwargs):
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        services.create_department(actor=actor_for(org["admin"]), name="Finance", cost_center="CC-900")
    assert not Department.objects.filter(cost_center="CC-900").exists()


def test_a_duplicate_team_name_is_a_conflict_with_a_clear_message(org, team):
    with pytest.raises(Conflict, match="already exists"):
        services.create_team(actor=actor_for(org["admin"]), department=team.department, name=team.name)


def test_a_malformed_cost_center_is_refused_with_the_field_named(org):
    with pytest.raises(Invalid) as excinfo:
        services.create_department(actor=actor_for(org["admin"]), name="Ops", cost_center="lower case!")
    assert "cost_center" in excinfo.value.fields


def test_audit_rows_are_only_written_inside_the_change_transaction(org):
    from portfolio.audit import services as audit

    with pytest.raises(RuntimeError, match="inside the transaction"):
        # pytest-django wraps the test in a transaction; leave it to show the guard.
        with transaction.atomic():
            pass
        transaction.get_connection().in_atomic_block = False
        try:
            audit.record(actor_for(org["admin"]), "noop")
        finally:
            transaction.get_connection().in_atomic_block = True


def test_an_owner_adds_changes_and_removes_a_member_each_audited(org, team, make_user):
    owner = actor_for(org["owner"])
    newcomer = make_user("newcomer")
    membership = services.add_member(actor=owner, team=team, user=newcomer, role=TeamRole.VIEWER)
    services.change_member_role(actor=owner, membership=membership, role=TeamRole.ENGINEER)
    services.remove_member(actor=owner, membership=membership)
    actions = list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))
    assert actions == ["membership.create", "membership.update", "membership.delete"]
    update = AuditEvent.objects.get(action="membership.update")
    assert (update.before["role"], update.after["role"]) == ("viewer", "engineer")


def test_the_last_owner_cannot_be_removed_or_demoted(org, team):
    membership = Membership.objects.get(team=team, role=TeamRole.OWNER)
    with pytest.raises(Conflict, match="at least one owner"):
        services.remove_member(actor=actor_for(org["admin"]), membership=membership)
    with pytest.raises(Conflict, match="at least one owner"):
        services.change_member_role(
            actor=actor_for(org["admin"]), membership=membership, role=TeamRole.VIEWER
        )


def test_a_deactivated_owner_does_not_count_as_the_owner_left(org, team, make_user):
    """Memberships are kept on deactivation: counting the deactivated owner let the last active one leave,
    and nobody could manage the team's members, keys or budget."""
    gone = make_user("gone-owner")
    Membership.objects.create(user=gone, team=team, role=TeamRole.OWNER)
    services.deactivate_user(actor=actor_for(org["admin"]), user=gone)
    membership = Membership.objects.get(team=team, user=org["owner"])
    with pytest.raises(Conflict, match="at least one owner"):
        services.change_member_role(
            actor=actor_for(org["owner"]), membership=membership, role=TeamRole.VIEWER
        )
    with pytest.raises(Conflict, match="at least one owner"):
        services.remove_member(actor=actor_for(org["owner"]), membership=membership)


LEAVE = {
    "remove": lambda actor, membership: services.remove_member(actor=actor, membership=membership),
    "demote": lambda actor, membership: services.change_member_role(
        actor=actor, membership=membership, role=TeamRole.ENGINEER
    ),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("first", "second"), [("remove", "remove"), ("demote", "remove"), ("remove", "demote")]
)
def test_two_owners_leaving_at_once_leave_one_owner(org, team, make_user, monkeypatch, first, second):
    """The first has found another owner left and not committed yet when the second asks the same: it waits
    for the first, then finds itself the last owner."""
    Membership.objects.create(user=make_user("co-owner"), team=team, role=TeamRole.OWNER)
    one, two = Membership.objects.filter(team=team, role=TeamRole.OWNER).order_by("pk")
    admin = actor_for(org["admin"])
    pause = Pause()
    monkeypatch.setattr(services, "_would_leave_no_owner", pause.hook(services._would_leave_no_owner))

    left, refused = interleave(pause, lambda: LEAVE[first](admin, one), lambda: LEAVE[second](admin, two))

    assert left.error is None
    assert isinstance(refused.error, Conflict) and "at least one owner" in str(refused.error)
    assert list(Membership.objects.filter(team=team, role=TeamRole.OWNER)) == [two]


def test_a_deactivated_account_makes_no_personal_token(org):
    """Deactivation locks the account and revokes its tokens: one made at the same moment (it waited for that
    lock) would have been missed, and back alive with a reactivation."""
    from portfolio.errors import Invalid

    actor = actor_for(org["viewer"])
    services.deactivate_user(actor=actor_for(org["admin"]), user=org["viewer"])
    with pytest.raises(Invalid, match="deactivated"):
        personal_tokens.create_personal_token(actor=actor, name="late")
    assert not org["viewer"].personal_tokens.exists()


def test_a_deactivated_person_cannot_be_added_to_a_team(org, team, make_user):
    """The routes look people up among active accounts; the service itself refused no one, so a deactivation
    committed between the lookup and the add left a deactivated account a new member."""
    leaver = make_user("leaver")
    services.deactivate_user(actor=actor_for(org["admin"]), user=leaver)
    with pytest.raises(Invalid, match="deactivated"):
        services.add_member(actor=actor_for(org["owner"]), team=team, user=leaver, role=TeamRole.VIEWER)
    assert not team.memberships.filter(user=leaver).exists()


def test_adding_someone_twice_is_a_conflict(org, team):
    with pytest.raises(Conflict, match="already a member"):
        services.add_member(
            actor=actor_for(org["owner"]), team=team, user=org["viewer"], role=TeamRole.VIEWER
        )


def test_a_new_user_gets_a_strong_one_time_password_that_is_not_audited(org):
    user, password = services.create_user(
        actor=actor_for(org["admin"]), username="dana", email="dana@example.com"
    )
    assert user.check_password(password) and len(password) >= 16
    event = AuditEvent.objects.get(action="user.create")
    assert password not in str(event.after)


def test_a_team_address_that_collides_with_a_page_is_refused(org, department):
    with pytest.raises(Invalid, match="reserved"):
        services.create_team(actor=actor_for(org["admin"]), department=department, name="New")
