"""A version without a chat template answers completions only: the gateway refuses chat calls to it with a
reason the caller can act on (the engine's own refusal is a bare 400 nobody can act on), and an endpoint
whose routes mix versions sends chat calls only to the versions that have one."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import wait_for_model
from tests.gateway.test_gateway import client

pytestmark = pytest.mark.django_db(transaction=True)


def _without_template(deployment) -> None:
    version = deployment.version
    version.has_chat_template = False
    version.save(update_fields=["has_chat_template"])


def test_a_chat_call_to_a_version_without_a_chat_template_is_refused_saying_how_to_fix_it(gateway_url, stack):
    dep, engines = stack["deployment"]("gemma-dep")
    _without_template(dep)
    stack["endpoint"]("gemma", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "gemma")
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(gateway_url, secret).chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    error = excinfo.value.body
    assert error["code"] == "unsupported_endpoint" and error["param"] == "model"
    assert "no chat template (gemma-dep-model v1)" in error["message"]
    assert "/v1/completions" in error["message"] and "chat-template" in error["message"]
    assert engines[0].requests == [], "refused before the engine is asked"
    answer = client(gateway_url, secret).completions.create(
        model="gemma", prompt="The capital of France is", max_tokens=3
    )
    assert answer.usage.completion_tokens == 3, "completions keep working"


def test_chat_calls_go_only_to_routes_whose_version_has_a_chat_template(gateway_url, stack):
    from django.db import transaction

    from serving.models import Endpoint, EndpointRoute

    bare, bare_engines = stack["deployment"]("bare-dep")
    _without_template(bare)
    chatty, chatty_engines = stack["deployment"]("chatty-dep")
    with transaction.atomic():
        endpoint = Endpoint.objects.create(name="mixed", owner_team=bare.owner_team)
        EndpointRoute.objects.create(endpoint=endpoint, deployment=bare, weight=90)
        EndpointRoute.objects.create(endpoint=endpoint, deployment=chatty, weight=10)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "mixed")
    sdk = client(gateway_url, secret)
    for _ in range(8):
        sdk.chat.completions.create(model="mixed", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert len(chatty_engines[0].requests) == 8 and bare_engines[0].requests == []
