"""Migration training 0017: the eval runs made before runs sampled their sets scored the sets' first rows,
and are marked so (comparability keeps them apart from later runs of part of the same set); every run
made after it is not."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.training.test_purge_derived_and_eval_sets import eval_set as eval_set  # noqa: PLC0414 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("training", "0016_dataset_version_purged_artifact")]
AFTER = [("training", "0017_endpointevalrun_scored_first_rows")]


def test_runs_made_before_are_marked_as_scoring_first_rows_and_new_ones_are_not(eval_set):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("training", "EndpointEvalRun")
    for limit in (5, 50):
        old.objects.create(owner_team_id=eval_set.task.owner_team_id, eval_set_id=eval_set.pk,
                           endpoint_name="ep", row_limit=limit, status="succeeded")  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("training", "EndpointEvalRun")
    assert sorted(new.objects.values_list("row_limit", "scored_first_rows")) == [(5, True), (50, True)]
    made_now = new.objects.create(owner_team_id=eval_set.task.owner_team_id, eval_set_id=eval_set.pk,
                                  endpoint_name="ep", row_limit=5, status="queued")  # fmt: skip
    assert new.objects.get(pk=made_now.pk).scored_first_rows is False
