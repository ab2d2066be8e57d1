"""A team keeps at most ``MERGES_PER_TEAM`` merges queued or running: each holds a long control worker for
hours at most, and those workers run every team's eval runs, imports and ingests. Found by review: one team
merging each of its adapters filled the long workers, and other teams' queued eval runs and merges were failed
as lost messages."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict
from portfolio.registry import merging
from portfolio.registry import services as registry
from portfolio.registry.choices import Source
from portfolio.registry.tasks import import_version
from training.choices import JobStatus
from training.models import MergeJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_adapters(versions, engineer, team):
    """The team's adapter and a second one of the same base (imported from the same folder)."""
    base, adapter = versions
    model = registry.create_model(actor=engineer, name="tiny-router-two", owner_team=team)
    second = registry.start_import(
        actor=engineer, model=model, source=Source.LOCAL, ref=adapter.source_ref, base_version=base,
        enqueue=False,
    )  # fmt: skip
    import_version(second.pk)
    second.refresh_from_db()
    return adapter, second


def test_a_teams_second_merge_waits_for_its_first_to_end(two_adapters, engineer):
    adapter, second = two_adapters
    first = merging.request_merge(actor=engineer, version=adapter)
    with pytest.raises(Conflict, match=r"1 merge\(s\) queued or running, the most at once \(1\)"):
        merging.request_merge(actor=engineer, version=second)
    assert MergeJob.objects.count() == 1
    assert AuditEvent.objects.filter(action="model_version.merge_start").count() == 1

    MergeJob.objects.filter(pk=first.id).update(status=JobStatus.SUCCEEDED)
    assert merging.request_merge(actor=engineer, version=second).id != first.id


def test_the_share_is_a_setting(two_adapters, engineer, settings):
    settings.MERGES_PER_TEAM = 2
    adapter, second = two_adapters
    merging.request_merge(actor=engineer, version=adapter)
    merging.request_merge(actor=engineer, version=second)
    assert MergeJob.objects.filter(status=JobStatus.QUEUED).count() == 2
