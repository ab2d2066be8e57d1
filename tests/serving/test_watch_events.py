"""`portfolio run`'s event lines (`manage.py watch_events`): from the moment it starts, one line per event a
person waits for (an engine ready or failed, an adapter loaded, a fine-tune finished), nothing of the rest of
the timeline, and nothing from before it started."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from serving.management.commands.watch_events import Cursor, new_lines
from serving.models import DeploymentEvent

pytestmark = pytest.mark.django_db(transaction=True)


def timeline(replica, kind: str, message: str) -> None:
    DeploymentEvent.objects.create(deployment=replica.deployment, replica=replica, kind=kind, message=message)


def job_finished(outcome: str, adapter: str | None) -> None:
    audit.record_standalone(
        Actor.for_system("training"),
        f"training.job_{outcome}",
        object_type="training.finetunejob",
        object_id="7",
        object_repr="fine-tune #7 of smollm2:v1",
        after={"status": outcome, "output_version": adapter},
    )


def texts(cursor: Cursor) -> list[str]:
    return [line.split(" ", 1)[1] for line in new_lines(cursor)]


def test_only_what_a_person_waits_for_is_told_once_and_in_order(replica):
    cursor = Cursor.now()
    timeline(replica, "scheduled", "Replica #1 scheduled on keys-node.")
    timeline(replica, "started", "Engine started on keys-node.")
    timeline(replica, "ready", "Replica ready.")
    job_finished("succeeded", "ticket-router:v1")
    timeline(replica, "adapter_loaded", "Adapter ticket-router-lora loaded without a restart.")
    assert texts(cursor) == [
        "support-bot: Replica ready.",
        "fine-tune #7 of smollm2:v1 succeeded: ticket-router:v1",
        "support-bot: Adapter ticket-router-lora loaded without a restart.",
    ]
    assert new_lines(cursor) == []
    job_finished("failed", None)
    timeline(replica, "crashed", "Engine process exited. Restart 1 in 5s.")
    assert texts(cursor) == [
        "fine-tune #7 of smollm2:v1 failed.",
        "support-bot: Engine process exited. Restart 1 in 5s.",
    ]


def test_events_from_before_the_start_are_not_told_again(replica):
    timeline(replica, "ready", "Replica ready.")
    job_finished("succeeded", "ticket-router:v1")
    assert new_lines(Cursor.now()) == []


@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf", "soon"])
def test_an_interval_that_is_not_a_positive_number_of_seconds_is_refused_before_watching(interval):
    with pytest.raises(CommandError, match="--interval"):
        call_command("watch_events", "--interval", interval)
