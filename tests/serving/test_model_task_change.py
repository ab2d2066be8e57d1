"""A model's task decides how serving runs and calls its versions (an engine's runner, which calls an endpoint
takes): changed while a version is deployed, every call of the endpoints to it was refused, another team's
too. The change is refused while any version of the model is deployed, naming the model's own team's
deployments and counting other teams'; a model nobody deploys changes task as before."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from portfolio.registry import services as registry
from portfolio.registry.models import Model
from serving.models import Deployment, EndpointRoute
from tests.conftest import actor_for
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db


def change_task(org, model: Model, task: str) -> Model:
    return registry.update_model(
        actor=actor_for(org["engineer"]),
        model=model,
        description=model.description,
        visibility=model.visibility,
        tags=model.tags,
        license=model.license,
        task=task,
    )


def test_a_deployed_models_task_does_not_change(world, org):
    model = Model.objects.get(name="smollm2")
    with pytest.raises(Conflict, match="support-bot, support-next"):
        change_task(org, model, "embedding")
    assert Model.objects.get(pk=model.pk).task == "chat"
    change_task(org, model, "chat")  # the same task: the rest of the model may still be edited


def test_a_model_nobody_deploys_changes_task(world, org):
    model = Model.objects.get(name="smollm2")
    EndpointRoute.objects.all().delete()
    Deployment.objects.filter(version__model=model).delete()
    assert change_task(org, model, "embedding").task == "embedding"
