"""A load the engine did but the node agent did not record: the 30 s client timeout passed while vLLM finished
it, or the agent stopped between the load and its save at the end of the pass. Found by review: vLLM refuses to
load a name it has ("has already been loaded", 400), so the load was refused on every later pass: the adapter
was never routed to that replica, nor unloaded once removed. Each load is now saved at once, and a load refused
as already loaded is checked against the engine's ``/v1/models`` (which says where each adapter was loaded
from): from the same path it is loaded; from another (a version once served under the name), replaced."""

from __future__ import annotations

import io
import urllib.error
from collections.abc import Callable
from email.message import Message

import pytest

from serving import adapter_sync, services
from serving.models import DeploymentEvent, Replica
from tests.serving.conftest import deploy, make_adapter
from tests.serving.views.conftest import add_replica

pytestmark = pytest.mark.django_db

PATH = "/cache/adapter"  # where the node's copy of every adapter is, here


def _http_error(code: int, body: bytes) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(
        "http://engine/v1/load_lora_adapter", code, "engine", Message(), io.BytesIO(body)
    )


class Engine:
    """A stand-in vLLM engine's adapter routes, as vLLM 0.32 answers them: ``has`` maps each adapter it has to
    the path it was loaded from; the first ``time_out`` loads are done, but answered after the client gave up."""

    def __init__(self, has: dict[str, str] | None = None, time_out: int = 0):
        self.has, self.time_out = dict(has or {}), time_out
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, replica, method, path, body=None, timeout=30):
        self.calls.append((path, (body or {}).get("lora_name")))
        if path == "/v1/models":
            adapters = [{"id": name, "root": root, "parent": "base"} for name, root in self.has.items()]
            return {"object": "list", "data": [{"id": "base", "root": "/models/base"}, *adapters]}
        name = body["lora_name"]
        if path == "/v1/unload_lora_adapter":
            if self.has.pop(name, None) is None:
                raise _http_error(404, f'{{"error": {{"message": "{name} cannot be found."}}}}'.encode())
            return f"Success: LoRA adapter '{name}' removed successfully."
        if name in self.has:
            message = (
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place"
            )
            raise _http_error(400, f'{{"error": {{"message": "{message}", "code": 400}}}}'.encode())
        self.has[name] = body["lora_path"]
        if self.time_out:
            self.time_out -= 1
            raise TimeoutError("timed out")
        return f"Success: LoRA adapter '{name}' added successfully."


@pytest.fixture
def serving(org, owner, team, base_version, pool, node, artifact, monkeypatch):
    """A ready replica of a deployment with LoRA on, and the adapter ``tone`` just added to it."""
    monkeypatch.setattr(adapter_sync.prefetch, "local_copy", lambda version, **_: PATH)
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    adapter = make_adapter(org, team, artifact, base_version, model_name="support-tone")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    replica = add_replica(deployment, node)
    return replica, attached


def _sync(replica: Replica, engine: Callable[..., object], monkeypatch) -> list[str]:
    monkeypatch.setattr(adapter_sync, "engine_request", engine)
    replica.refresh_from_db()
    adapter_sync.sync(replica)
    replica.refresh_from_db()
    return replica.loaded_adapters


def _said(replica: Replica) -> list[tuple[str, str]]:
    events = DeploymentEvent.objects.filter(replica=replica).order_by("at", "id")
    return list(events.values_list("kind", "message"))


def test_a_load_done_after_the_timeout_is_recorded_on_the_next_pass_and_unloaded_once_removed(
    owner, serving, monkeypatch
):
    replica, attached = serving
    engine = Engine(time_out=1)
    assert _sync(replica, engine, monkeypatch) == []
    assert _said(replica) == [("adapter_failed", "Could not load adapter tone: timed out")]
    assert _sync(replica, engine, monkeypatch) == ["tone"]  # refused as already loaded, from this path
    assert _said(replica)[-1] == ("adapter_loaded", "Adapter tone loaded without a restart.")
    assert ("/v1/unload_lora_adapter", "tone") not in engine.calls
    services.remove_adapter(actor=owner, attached=attached)
    assert _sync(replica, engine, monkeypatch) == []
    assert engine.has == {}


def test_an_adapter_the_engine_loaded_from_another_path_is_replaced(serving, monkeypatch):
    """Another version once served under the name, whose unload was never recorded either."""
    replica, _ = serving
    engine = Engine(has={"tone": "/cache/another-version"})
    assert _sync(replica, engine, monkeypatch) == ["tone"]
    assert engine.has == {"tone": PATH}
    assert engine.calls[-2:] == [("/v1/unload_lora_adapter", "tone"), ("/v1/load_lora_adapter", "tone")]


def test_the_loads_done_before_the_agent_stopped_midway_are_kept(
    org, owner, team, artifact, base_version, serving, monkeypatch
):
    replica, _ = serving
    second = make_adapter(org, team, artifact, base_version, model_name="support-zest")
    services.add_adapter(actor=owner, deployment=replica.deployment, adapter=second, name="zest")
    engine = Engine()
    loads = engine.__call__

    def stopped_at_the_second_load(replica, method, path, body=None, timeout=30):
        if body and body["lora_name"] == "zest":
            raise SystemExit("the agent is stopped")
        return loads(replica, method, path, body, timeout)

    with pytest.raises(SystemExit):
        _sync(replica, stopped_at_the_second_load, monkeypatch)
    replica.refresh_from_db()
    assert replica.loaded_adapters == ["tone"]
    assert _sync(replica, engine, monkeypatch) == ["tone", "zest"]
    assert engine.calls.count(("/v1/load_lora_adapter", "tone")) == 1


@pytest.mark.parametrize(
    "listing", [{"data": ["tone", 3]}, {"data": "tone"}, {"data": None}, {"data": 5}, ["tone"], "not json"]
)
def test_a_malformed_model_list_is_said_as_the_engines_refusal_not_as_an_agent_error(
    serving, monkeypatch, listing
):
    """The engine refused the load as already loaded and then answered ``/v1/models`` with something that is
    not OpenAI's model list: the agent said its own attribute error ("'str' object has no attribute 'get'")."""
    replica, _ = serving
    engine = Engine(has={"tone": "/cache/unknown"})
    real = engine.__call__

    def malformed(replica, method, path, body=None, timeout=30):
        return listing if path == "/v1/models" else real(replica, method, path, body, timeout)

    assert _sync(replica, malformed, monkeypatch) == []
    ((kind, message),) = _said(replica)
    assert kind == "adapter_failed" and "has already been loaded" in message, message
    assert replica.adapter_versions == {}  # the engine's refusal: it is not taken as holding this version
