"""An adapter removed from a deployment is unloaded from its engines. An unload the engine did not do (a timeout, a
5xx) kept no trace: the name was dropped from the replica's loaded adapters, the timeline said "unloaded", and the
name could be added again with another version, which vLLM then refused ("already been loaded") on every pass
until the engine restarted. The name is dropped only once the engine unloaded it, or said it does not have it."""

from __future__ import annotations

import io
import urllib.error

import pytest

from portfolio.errors import Conflict
from serving import adapter_sync, services
from serving.models import DeploymentEvent, Replica
from tests.serving.conftest import deploy, make_adapter
from tests.serving.views.conftest import add_replica

pytestmark = pytest.mark.django_db


def _http_error(code: int, body: bytes = b"") -> urllib.error.HTTPError:
    return urllib.error.HTTPError(
        "http://engine/v1/unload_lora_adapter", code, "engine", {}, io.BytesIO(body)
    )


class Engine:
    """A stand-in vLLM engine's adapter routes: ``unload`` is what the unload route does (an exception to raise,
    or None: unloaded); a load of a name it has is refused with 400 as vLLM refuses it."""

    def __init__(self, has: set[str]):
        self.has, self.unload, self.calls = has, None, []

    def __call__(self, replica, method, path, body=None, timeout=30):
        self.calls.append((path, body["lora_name"]))
        if path == "/v1/unload_lora_adapter":
            if self.unload is not None:
                raise self.unload
            self.has.discard(body["lora_name"])
        elif body["lora_name"] in self.has:
            raise _http_error(400, b'{"message": "The lora adapter has already been loaded."}')
        else:
            self.has.add(body["lora_name"])


@pytest.fixture
def removed(org, owner, team, base_version, pool, node, artifact, monkeypatch):
    """A ready replica that loaded the adapter "tone", which has just been removed from its deployment; the
    engine, ``removed.engine``, still has it."""
    monkeypatch.setattr(adapter_sync.prefetch, "local_copy", lambda version, **_: "/cache/adapter")
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    first = make_adapter(org, team, artifact, base_version, model_name="support-tone")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=first, name="tone")
    replica = add_replica(deployment, node, loaded_adapters=["tone"])
    services.remove_adapter(actor=owner, attached=attached)
    engine = Engine({"tone"})
    monkeypatch.setattr(adapter_sync, "engine_request", engine)
    replica.engine = engine
    return replica


def _sync(replica: Replica) -> Replica:
    replica.refresh_from_db()
    adapter_sync.sync(replica)
    replica.refresh_from_db()
    return replica


def _timeline(replica: Replica) -> list[tuple[str, str]]:
    events = DeploymentEvent.objects.filter(replica=replica).order_by("at", "id")
    return list(events.values_list("kind", "message"))


@pytest.mark.parametrize(
    "failure",
    [TimeoutError("timed out"), _http_error(500), _http_error(503)],
    ids=["timeout", "500", "503"],
)
def test_an_unload_the_engine_did_not_do_keeps_the_adapter_loaded_and_is_retried(removed, failure):
    removed.engine.unload = failure
    assert _sync(removed).loaded_adapters == ["tone"]
    assert ("adapter_unloaded", "Adapter tone unloaded.") not in _timeline(removed)
    assert _timeline(removed)[-1] == ("adapter_failed", f"Could not unload adapter tone: {failure}")
    removed.engine.unload = None  # the engine answers again: the next pass unloads it
    assert _sync(removed).loaded_adapters == []
    assert removed.engine.calls.count(("/v1/unload_lora_adapter", "tone")) == 2
    assert _timeline(removed)[-1] == ("adapter_unloaded", "Adapter tone unloaded.")


def test_the_name_of_an_adapter_still_loaded_cannot_be_reused_until_it_is_unloaded(
    removed, org, owner, team, artifact, base_version
):
    deployment = removed.deployment
    second = make_adapter(org, team, artifact, base_version, model_name="support-tone-b")
    removed.engine.unload = TimeoutError("timed out")
    _sync(removed)
    with pytest.raises(Conflict, match="have not unloaded it yet"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="tone")
    removed.engine.unload = None
    _sync(removed)
    services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="tone")
    assert _sync(removed).loaded_adapters == ["tone"]  # the new version, loaded: the engine no longer had it
    assert ("adapter_loaded", "Adapter tone loaded without a restart.") in _timeline(removed)


def test_an_engine_that_does_not_have_the_adapter_has_it_dropped(removed):
    removed.engine.unload = _http_error(404, b'{"message": "The lora adapter \'tone\' cannot be found."}')
    assert _sync(removed).loaded_adapters == []
    assert _timeline(removed)[-1] == ("adapter_unloaded", "Adapter tone unloaded.")


def test_a_failing_unload_is_said_once_not_at_every_pass(removed):
    removed.engine.unload = TimeoutError("timed out")
    for _ in range(3):
        _sync(removed)
    failures = [message for kind, message in _timeline(removed) if kind == "adapter_failed"]
    assert failures == ["Could not unload adapter tone: timed out"]
    removed.engine.unload = _http_error(500)  # the engine says something else: said
    _sync(removed)
    failures = [message for kind, message in _timeline(removed) if kind == "adapter_failed"]
    assert failures[-1] == "Could not unload adapter tone: HTTP Error 500: engine" and len(failures) == 2


def test_the_same_failure_is_said_again_once_the_name_is_reused_and_removed_again(
    removed, org, owner, team, artifact, base_version
):
    removed.engine.unload = TimeoutError("timed out")
    _sync(removed)
    removed.engine.unload = None
    _sync(removed)
    second = make_adapter(org, team, artifact, base_version, model_name="support-tone-b")
    attached = services.add_adapter(actor=owner, deployment=removed.deployment, adapter=second, name="tone")
    _sync(removed)
    services.remove_adapter(actor=owner, attached=attached)
    removed.engine.unload = TimeoutError("timed out")
    assert _sync(removed).loaded_adapters == ["tone"]
    failures = [message for kind, message in _timeline(removed) if kind == "adapter_failed"]
    assert failures == ["Could not unload adapter tone: timed out"] * 2
