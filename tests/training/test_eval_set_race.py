"""The same eval set registered twice at once (a double click, a retried request): both pass the check for
an existing one; the second's insert then waits on the first's and finds it committed. It answers the
first's eval set, as a registration after it does, instead of an IntegrityError (a 500)."""

from __future__ import annotations

import pytest

from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from tests.interleave import Pause, interleave
from training.evals import catalogue
from training.evals.models import EvalSet


@pytest.mark.django_db(transaction=True)
def test_the_same_eval_set_registered_twice_at_once_is_one_eval_set(
    engineer, team, dataset_version, monkeypatch
):
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    pause = Pause()  # the first stops once it has inserted its row and written its audit row, uncommitted
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))

    def register():
        return catalogue.add_eval_set(actor=engineer, task=task, dataset_version=dataset_version)

    first, second = interleave(pause, register, register)

    assert first.error is None and second.error is None, (first.error, second.error)
    assert first.result.pk == second.result.pk
    assert EvalSet.objects.filter(task=task).count() == 1
    assert AuditEvent.objects.filter(action="eval_set.create").count() == 1
