"""The deployment page's prompt box goes through a real gateway process: the answer comes from the
engine behind it, the call is metered for the deployment's team and rate-limited per user, a deployment
with no endpoint can be tried, and neither API keys nor tampered tickets reach a deployment by name."""

from __future__ import annotations

import time

import httpx
import pytest
from django.urls import reverse

from serving.gateway import tickets
from serving.gateway.models import UsageEvent
from tests.gateway.conftest import flush_settled, wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def prompt_box(client, settings, gateway_url):
    settings.GATEWAY_INTERNAL_URL = gateway_url

    def ask(user, deployment: str, prompt: str = "Say hello in French", **fields) -> str:
        client.force_login(user)
        response = client.post(
            reverse("deployment-try", args=[deployment]),
            {"model": deployment, "prompt": prompt, "max_tokens": 4, **fields},
            **HTMX,
        )
        return response.content.decode() if response.status_code == 200 else str(response.status_code)

    return ask


def wait_until_routed(base: str, deployment, team) -> None:
    """The gateway's routing table has the deployment (tried with a ticket, as the prompt box does)."""
    ticket = tickets.mint(
        deployment=deployment.name,
        model=deployment.name,
        team_id=team.pk,
        team=team.slug,
        department_id=team.department_id,
        user_id=0,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {ticket}"},
            json={"model": deployment.name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        )
        if response.status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{deployment.name} never became routable: {response.status_code} {response.text}")


def test_the_prompt_box_answers_through_the_gateway_and_is_metered(prompt_box, stack, org, team, gateway_url):
    dep, engines = stack["deployment"]("no-endpoint-dep")  # no endpoint routes to it
    wait_until_routed(gateway_url, dep, team)
    page = prompt_box(org["developer"], dep.name)
    assert page.lstrip().startswith('<div id="try-result"')
    assert "word word word word" in page, page
    assert "10 prompt tokens" in page and "4 completion tokens" in page
    asked = engines[0].requests[-1]
    assert asked["model"] == dep.name and asked["messages"][0]["content"] == "Say hello in French"
    flush_settled()
    event = UsageEvent.objects.filter(output_tokens=4).get()
    assert (event.endpoint, event.deployment, event.team_id, event.api_key_id) == (
        tickets.PLAYGROUND_ENDPOINT,
        dep.name,
        team.pk,
        None,
    )
    assert f"request <code>{event.event_id}</code>" in page


def test_the_prompt_box_shows_the_engines_reason_when_it_refuses_the_request(
    prompt_box, stack, org, team, gateway_url
):
    dep, engines = stack["deployment"]("small-context-dep")
    wait_until_routed(gateway_url, dep, team)
    engines[0].max_model_len = 2  # the engine now refuses 4 tokens with vLLM's 400 and its reason
    page = prompt_box(org["developer"], dep.name)
    assert 'class="alert alert--error"' in page
    assert "max_tokens=4 cannot be greater than max_model_len=2" in page, page
    assert "Bad Request" not in page


def test_the_prompt_box_is_rate_limited_per_user(prompt_box, stack, org, team, gateway_url):
    dep, _ = stack["deployment"]("busy-dep")
    wait_until_routed(gateway_url, dep, team)
    # The test gateway allows 3 prompt box calls a minute per user (7 tries: a new minute may begin in between).
    pages = [prompt_box(org["engineer"], dep.name) for _ in range(7)]
    refused = [
        i
        for i, page in enumerate(pages)
        if "Rate limit reached for requests per minute on the prompt box (per user)." in page
    ]
    assert refused and 3 <= refused[0] <= 6 and all("completion tokens" in page for page in pages[:3])
    assert "completion tokens" in prompt_box(org["owner"], dep.name), "another user has a minute of their own"


def test_outsiders_and_viewers_cannot_use_the_prompt_box(prompt_box, stack, org, team, gateway_url):
    dep, engines = stack["deployment"]("private-dep")
    assert prompt_box(org["outsider"], dep.name) == "404"
    assert prompt_box(org["viewer"], dep.name) == "403"
    assert engines[0].requests == []


def test_api_keys_and_tampered_tickets_do_not_reach_a_deployment_by_name(
    stack, team, other_team, gateway_url
):
    dep, engines = stack["deployment"]("hidden-dep")
    other, _ = stack["deployment"]("other-dep", owner=other_team)
    stack["endpoint"]("visible", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "visible")
    wait_until_routed(gateway_url, dep, team)
    engines[0].requests.clear()
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}

    def post(credential: str, model: str) -> httpx.Response:
        return httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={**body, "model": model},
            headers={"Authorization": f"Bearer {credential}"},
        )

    assert post(secret, dep.name).status_code == 404, "a key reaches endpoints only"

    def ticket(**changes) -> str:
        fields = {
            "deployment": dep.name,
            "model": dep.name,
            "team_id": team.pk,
            "team": team.slug,
            "department_id": team.department_id,
            "user_id": 1,
        }
        return tickets.mint(**{**fields, **changes})

    assert post(ticket(), "visible").status_code == 404, "a ticket reaches its one model only"
    assert post(ticket(deployment=other.name, model=other.name), other.name).status_code == 404, (
        "another team's"
    )
    assert post(ticket(now=time.time() - tickets.TTL - 1), dep.name).status_code == 401, "expired"
    good = ticket()
    payload, signature = good.split(".")
    assert post(f"{payload[:-2]}xx.{signature}", dep.name).status_code == 401, "tampered"
    assert post(good.replace("slmt_", "slm_"), dep.name).status_code == 401
    assert engines[0].requests == []
    assert post(good, dep.name).status_code == 200
