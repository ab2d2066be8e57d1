"""A hot load the engine refuses says, on the deployment's timeline, why the engine refused it. Found by review:
the event held urllib's status line only ("HTTP Error 500: Internal Server Error"); vLLM's reason (a rank above
``max_lora_rank``, DoRA, a missing file ...) is in the body of its answer, which was never read.

The engine here is a stand-in answering over HTTP as vLLM 0.32 does (``{"error": {"message": ...}}``)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving import adapter_sync, services
from serving.models import DeploymentEvent
from tests.serving.conftest import deploy, make_adapter
from tests.serving.views.conftest import add_replica

pytestmark = pytest.mark.django_db


class Engine(ThreadingHTTPServer):
    status = 200
    body: dict = {}


@pytest.fixture
def engine():
    """An engine that answers every adapter load with ``engine.status`` and ``engine.body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(server.body).encode()
            self.send_response(server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = Engine(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def replica(org, owner, team, base_version, pool, node, artifact, engine, monkeypatch):
    """A ready replica, listening where the engine does, of a deployment the adapter ``tone`` was added to."""
    monkeypatch.setattr(adapter_sync.prefetch, "local_copy", lambda version, **_: "/cache/adapter")
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    adapter = make_adapter(org, team, artifact, base_version)
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    return add_replica(deployment, node, port=engine.server_address[1])


def _failure(replica) -> str:
    adapter_sync.sync(replica)
    return DeploymentEvent.objects.get(replica=replica, kind="adapter_failed").message


RANK = "LoRA rank 64 is greater than max_lora_rank 16."


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (
            500,
            {"error": {"message": RANK, "type": "InternalServerError", "code": 500}},
            f"HTTP Error 500: {RANK}",
        ),
        (
            400,
            {"error": {"message": "Both 'lora_name' and 'lora_path' must be provided.", "code": 400}},
            "HTTP Error 400: Both 'lora_name' and 'lora_path' must be provided.",
        ),
        (
            404,
            {"object": "error", "message": "Loading lora tone failed: No adapter found"},
            "No adapter found",
        ),
        (404, {"detail": "Not Found"}, "HTTP Error 404: Not Found"),  # an engine without runtime LoRA
    ],
    ids=["500", "400", "older-vllm", "no-route"],
)
def test_a_refused_load_says_the_engines_reason(replica, engine, status, body, said):
    engine.status, engine.body = status, body
    message = _failure(replica)
    assert message.startswith("Could not load adapter tone: HTTP Error") and message.endswith(said)
    replica.refresh_from_db()
    assert replica.loaded_adapters == []


def test_a_long_reason_is_cut_short(replica, engine):
    engine.status, engine.body = 500, {"error": {"message": "Traceback:\n" + "frame " * 2000}}
    message = _failure(replica)
    reason = message.removeprefix("Could not load adapter tone: HTTP Error 500: ")
    assert len(reason) == adapter_sync.MAX_MESSAGE and reason.startswith("Traceback: frame frame")
    assert reason.endswith("…")
