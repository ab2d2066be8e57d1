"""Registry data migrations, run forward over rows made by the schema before them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("registry", "0001_initial")]
AFTER = [("registry", "0002_chat_templates_and_derived_versions")]


def test_existing_adapters_get_their_bases_chat_template_flag(team):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Model, Version = old.get_model("registry", "Model"), old.get_model("registry", "ModelVersion")
    model = Model.objects.create(name="m", owner_team_id=team.pk)

    def version(number, **fields):
        return Version.objects.create(model=model, number=number, source="local", status="ready", **fields)

    templated, templateless = version(1, has_chat_template=True), version(2, has_chat_template=False)
    # Imports read the flag from the adapter's own files, which rarely carry a tokenizer.
    on_templated = version(3, kind="adapter", base_version=templated, has_chat_template=False)
    on_templateless = version(4, kind="adapter", base_version=templateless, has_chat_template=True)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("registry", "ModelVersion")
    flags = dict(new.objects.values_list("pk", "has_chat_template"))
    assert flags == {
        templated.pk: True,
        templateless.pk: False,
        on_templated.pk: True,
        on_templateless.pk: False,
    }
