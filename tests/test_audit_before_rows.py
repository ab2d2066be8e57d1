"""An edit's audit row says what it replaced: its "before" is the row as stored when it saved, under a lock,
not the copy its caller read earlier. Else a change committed in between (another request's) is on no row:
found by review, a model's visibility narrowed from organisation back to team showed as team -> team."""

from __future__ import annotations

import pytest

from portfolio.accounts import services as accounts
from portfolio.accounts.models import Department, Team
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.billing import budgets
from portfolio.registry import services as registry
from portfolio.registry.models import Model
from serving import services as serving
from serving.choices import PoolKind
from serving.models import ComputePool
from tests.conftest import actor_for
from tests.interleave import Pause, interleave


def rows(action: str) -> list[dict]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence").values("before", "after"))


@pytest.mark.django_db
def test_a_model_saved_from_a_stale_copy_audits_the_change_it_undoes(org, team):
    engineer = actor_for(org["engineer"])
    registry.create_model(actor=engineer, name="m1", owner_team=team)
    stale = Model.objects.get(name="m1")  # request B reads the model ...
    registry.update_model(  # ... request A opens it to the organisation and commits ...
        actor=actor_for(org["owner"]),
        model=Model.objects.get(name="m1"),
        description="",
        visibility="organisation",
        tags=[],
        license="",
        task=stale.task,
    )
    saved = registry.update_model(  # ... then B saves what it read
        actor=engineer,
        model=stale,
        description="",
        visibility="team",
        tags=["b"],
        license="",
        task=stale.task,
    )

    first, second = rows("model.update")
    assert second["before"] == first["after"]
    assert (second["before"]["visibility"], second["after"]["visibility"]) == ("organisation", "team")
    assert saved.visibility == stale.visibility == "team" and stale.tags == ["b"]


@pytest.mark.django_db
def test_a_team_saved_from_a_stale_copy_audits_the_change_it_undoes(org, team):
    admin = actor_for(org["admin"])
    stale = Team.objects.get(pk=team.pk)
    accounts.update_team(actor=admin, team=Team.objects.get(pk=team.pk), name="Renamed", description="A")
    accounts.update_team(actor=actor_for(org["owner"]), team=stale, name="Support AI", description="B")

    first, second = rows("team.update")
    assert second["before"] == first["after"]
    assert second["before"]["name"] == "Renamed" and second["after"]["name"] == "Support AI"
    assert (stale.name, stale.description) == ("Support AI", "B")


@pytest.mark.django_db
def test_a_department_saved_from_a_stale_copy_audits_the_change_it_undoes(org, department):
    admin = actor_for(org["admin"])
    stale = Department.objects.get(pk=department.pk)
    fresh = Department.objects.get(pk=department.pk)
    accounts.update_department(actor=admin, department=fresh, name="Renamed", cost_center="CC-101")
    accounts.update_department(actor=admin, department=stale, name=department.name, cost_center="CC-101")

    first, second = rows("department.update")
    assert second["before"] == first["after"]
    assert second["before"]["name"] == "Renamed" and stale.name == department.name


@pytest.mark.django_db(transaction=True)
def test_two_changes_of_a_pools_teams_take_turns_and_the_second_lists_the_first_s_teams(
    monkeypatch, org, team, other_team
):
    admin = actor_for(org["admin"])
    serving.create_pool(actor=admin, name="cpu-pool", kind=PoolKind.CPU, teams=[team])
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))

    first, second = interleave(
        pause,
        lambda: serving.update_pool(
            actor=admin, pool=ComputePool.objects.get(name="cpu-pool"), description="", teams=[other_team]
        ),
        lambda: serving.update_pool(
            actor=admin, pool=ComputePool.objects.get(name="cpu-pool"), description="", teams=[]
        ),
    )

    assert first.error is None and second.error is None, (first.error, second.error)
    one, two = rows("pool.update")
    assert two["before"] == one["after"] and two["before"]["allowed_teams"] == [other_team.slug]


@pytest.mark.django_db(transaction=True)
def test_a_budget_deleted_while_it_is_changed_audits_the_amount_it_removed(monkeypatch, org, team):
    admin = actor_for(org["admin"])
    budget = budgets.set_budget(actor=admin, team=team, amount="100")
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))

    changed, deleted = interleave(
        pause,
        lambda: budgets.set_budget(actor=admin, team=team, amount="250"),
        lambda: budgets.delete_budget(actor=admin, budget=budget),
    )

    assert changed.error is None and deleted.error is None, (changed.error, deleted.error)
    (removed,) = rows("budget.delete")
    assert removed["before"]["amount"] == "250.00"
