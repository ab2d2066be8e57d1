import argparse
import math
import time
from dataclasses import dataclass

from django.core.management.base import BaseCommand
from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from serving.models import DeploymentEvent

# What a person at the terminal waits for; each deployment's page keeps its whole timeline.
DEPLOYMENT_KINDS = ("ready", "crashed", "failed", "adapter_loaded", "adapter_failed", "unschedulable")
# The outcome of a fine-tune, read from its audit row (the audit vocabulary is shared by every layer).
JOB_OUTCOMES = ("training.job_succeeded", "training.job_failed", "training.job_errored")


@dataclass
class Cursor:
    """The last deployment event and audit row already told."""

    event_id: int = 0
    audit_sequence: int = 0

    @classmethod
    def now(cls) -> "Cursor":
        return cls(
            DeploymentEvent.objects.aggregate(last=Max("pk"))["last"] or 0,
            AuditEvent.objects.aggregate(last=Max("sequence"))["last"] or 0,
        )


def new_lines(cursor: Cursor) -> list[str]:
    """One line per event since ``cursor``, oldest first; the cursor moves past them."""
    told: list[tuple] = []
    events = (
        DeploymentEvent.objects.filter(pk__gt=cursor.event_id).select_related("deployment").order_by("pk")
    )
    for event in events:
        cursor.event_id = event.pk
        if event.kind in DEPLOYMENT_KINDS:
            told.append((event.at, f"{event.deployment.name}: {event.message}"))
    for row in AuditEvent.objects.filter(sequence__gt=cursor.audit_sequence).order_by("sequence"):
        cursor.audit_sequence = row.sequence
        if row.action in JOB_OUTCOMES:
            outcome = row.action.removeprefix("training.job_")
            adapter = (row.after or {}).get("output_version")
            told.append(
                (row.occurred_at, f"{row.object_repr} {outcome}" + (f": {adapter}" if adapter else "."))
            )
    return [f"{timezone.localtime(when):%H:%M:%S} {text}" for when, text in sorted(told, key=lambda t: t[0])]


def positive_seconds(text: str) -> float:
    """An ``--interval``: a finite number of seconds above zero (time.sleep refuses the rest mid-loop)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return seconds


class Command(BaseCommand):
    help = (
        "`portfolio run`'s terminal: from now on, one line per event a person waits for (an engine ready, "
        "crashed or failed, an adapter loaded, a fine-tune finished), until stopped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=positive_seconds, default=2.0, help="seconds between looks")

    def handle(self, *args, interval: float, **options):
        cursor = Cursor.now()
        while True:
            close_old_connections()
            for line in new_lines(cursor):
                self.stdout.write(line)
            self.stdout.flush()
            time.sleep(interval)
