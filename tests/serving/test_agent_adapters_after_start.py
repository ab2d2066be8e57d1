"""An engine starts with LoRA on but no adapter loaded; the node agent hot-loads them once it is ready. Found by
review: engines were started with every attached adapter as ``--lora-modules``, and vLLM exits when it cannot
load one (its stored files corrupt, or one attached before serving/adapter_checks.py existed): every start of
the deployment crashed, and it crash-looped to FAILED: one bad adapter took the base model down. Hot-loaded, a
bad adapter's refusal is said on the timeline and the base serves.

The engine is tests/gateway/fake_engine.py's stand-in vLLM, refusing every adapter load as vLLM refuses one it
cannot load; the process the agent starts stands in for vLLM's: it exits at once when given ``--lora-modules``
(vLLM failing to load the adapter), else it runs."""

from __future__ import annotations

import io
import sys
import time
import urllib.error
from datetime import timedelta

import pytest
from aiohttp import web
from django.utils import timezone

from serving import adapter_sync, agent, engine_args, prefetch, processes, services
from serving.choices import ReplicaState
from serving.gateway.routing import _read_snapshot
from serving.models import DeploymentEvent, Replica
from tests.gateway.fake_engine import FakeEngine
from tests.serving.conftest import deploy, make_adapter

pytestmark = pytest.mark.django_db

REFUSAL = "Loading lora tone failed: the adapter's safetensors file is truncated"


class RefusingEngine(FakeEngine):
    """Serves the base; refuses every adapter load (vLLM's 400, with its reason)."""

    async def not_found(self, request: web.Request) -> web.Response:
        if request.path == "/v1/load_lora_adapter":
            return self._error(REFUSAL, status=400)
        return await super().not_found(request)


@pytest.fixture
def started(settings, tmp_path, monkeypatch):
    """The argv of each engine the agent starts (the real command line); the engine answering is the stand-in."""
    settings.DATA_DIR = tmp_path / "data"
    settings.ENGINE_RESTART_BACKOFF = 1
    engine = RefusingEngine().start()
    real_build = engine_args.build
    argvs: list[list[str]] = []

    def build(**kwargs) -> engine_args.EngineLaunch:
        launch = real_build(**kwargs)
        argvs.append(launch.argv)
        exits = "--lora-modules" in launch.argv  # vLLM cannot load the adapter: it exits
        code = "raise SystemExit('cannot load adapter tone')" if exits else "import time; time.sleep(300)"
        return engine_args.EngineLaunch(argv=[sys.executable, "-c", code], env=launch.env)

    monkeypatch.setattr(engine_args, "build", build)
    monkeypatch.setattr(processes, "free_port", lambda host: engine.port)
    monkeypatch.setattr(prefetch, "local_copy", lambda version, **_: tmp_path)
    yield argvs
    for _, process in processes.all_engines(under=tmp_path):
        processes.stop(process, grace=1)
    engine.stop()


@pytest.fixture
def replica(org, owner, team, artifact, base_version, pool, node):
    """A replica to start of a deployment (LoRA not asked for) with the adapter ``tone`` attached."""
    deployment = deploy(owner, team, base_version, pool, replicas=0)
    adapter = make_adapter(org, team, artifact, base_version)
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    deployment.refresh_from_db()
    return Replica.objects.create(deployment=deployment, node=node, generation=deployment.generation)


def _reconcile(replica: Replica, passes: int) -> Replica:
    for _ in range(passes):
        agent.reconcile_node(replica.node.name)
    replica.refresh_from_db()
    return replica


def test_an_adapter_the_engine_cannot_load_leaves_the_base_serving(started, replica):
    replica = _reconcile(replica, 3)
    assert replica.state == ReplicaState.READY
    assert (replica.restarts, replica.loaded_adapters, replica.adapter_versions) == (0, [], {})
    failed = DeploymentEvent.objects.filter(replica=replica, kind="adapter_failed").values_list(
        "message", flat=True
    )
    assert list(failed) == [f"Could not load adapter tone: HTTP Error 400: {REFUSAL}"]
    table = _read_snapshot()
    assert [r.id for r in table.replicas["support-bot"]] == [replica.pk]  # the base is routed to
    assert ("support-bot", "tone") not in table.adapter_replicas


def test_an_attached_adapter_turns_lora_on_without_being_given_on_the_command_line(started, replica):
    _reconcile(replica, 1)
    (argv,) = started
    assert "--enable-lora" in argv and "--lora-modules" not in argv


def _copying(replica: Replica, tmp_path, monkeypatch) -> dict:
    """The base's files are in place; the adapters' are being copied until ``done`` is set."""
    base_id = replica.deployment.version_id
    copied = {"done": False}
    monkeypatch.setattr(
        prefetch,
        "local_copy",
        lambda version, **_: tmp_path if version.pk == base_id or copied["done"] else None,
    )
    return copied


def test_an_engine_boots_while_its_adapters_are_copied_and_takes_traffic_once_they_are_loaded(
    started, replica, tmp_path, monkeypatch
):
    """The adapters' copies start with the engine, not after it is ready; and it is ready (routed to, and a
    rolling change stops an old replica for it) only once they are loaded or refused. Found by review: ready
    first, a new replica of a rolling change took the old one's place with none of its adapters loaded, and
    an endpoint of an adapter had nowhere to go until their files were copied (minutes for a large one)."""
    copied = _copying(replica, tmp_path, monkeypatch)
    begun: list[int] = []
    monkeypatch.setattr(prefetch, "begin", lambda version: begun.append(version.pk))
    adapter_id = replica.deployment.adapters.get().version_id
    replica = _reconcile(replica, 1)
    assert begun == [adapter_id], "the adapter's copy is begun before the engine starts, not waited for"
    replica = _reconcile(replica, 2)
    assert replica.state == ReplicaState.STARTING and replica.pid, "up, but not ready while it copies"
    assert "loading adapters tone" in replica.state_detail
    assert not _read_snapshot().replicas.get("support-bot")
    assert not DeploymentEvent.objects.filter(replica=replica, kind="adapter_failed").exists()

    copied["done"] = True
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.READY and replica.state_detail == ""
    # Refused by this engine: said on the timeline, and the base serves.
    assert DeploymentEvent.objects.filter(replica=replica, kind="adapter_failed").count() == 1
    assert [r.id for r in _read_snapshot().replicas["support-bot"]] == [replica.pk]


def test_a_replica_back_from_unhealthy_serves_at_once_whatever_its_adapters(
    started, replica, tmp_path, monkeypatch
):
    """Only a new engine waits for its adapters: one that served, whose health check failed a moment, is
    routed to again as soon as it answers (found by review: it waited for an adapter still being copied)."""
    replica = _reconcile(replica, 3)
    assert replica.state == ReplicaState.READY
    _copying(replica, tmp_path, monkeypatch)  # the refused adapter, retried, is being copied again
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.UNHEALTHY)
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.READY


def test_an_engine_waits_for_its_adapters_no_longer_than_its_start_limit(
    started, replica, tmp_path, monkeypatch, settings
):
    settings.ENGINE_START_TIMEOUT = 30
    _copying(replica, tmp_path, monkeypatch)
    replica = _reconcile(replica, 2)
    assert replica.state == ReplicaState.STARTING
    Replica.objects.filter(pk=replica.pk).update(started_at=replica.started_at - timedelta(seconds=31))
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.READY
    said = DeploymentEvent.objects.filter(replica=replica, kind="adapter_failed").values_list(
        "message", flat=True
    )
    assert list(said) == [
        "Adapters tone not loaded within 30s of the start: ready without them; loaded once they can be."
    ]


def test_an_engine_that_answered_while_loading_adapters_gets_the_unhealthy_grace(
    started, replica, tmp_path, monkeypatch, settings
):
    """Past its start limit, one failed health check killed an engine that had answered for minutes, as one
    that never came up ("did not become healthy"); it gets the grace of a serving one."""
    _copying(replica, tmp_path, monkeypatch)
    replica = _reconcile(replica, 2)
    assert replica.state == ReplicaState.STARTING and replica.last_health_at >= replica.started_at
    settings.ENGINE_START_TIMEOUT = 30
    earlier = timedelta(seconds=31)
    Replica.objects.filter(pk=replica.pk).update(
        started_at=replica.started_at - earlier,
        last_health_at=replica.last_health_at - earlier + timedelta(seconds=20),
    )
    monkeypatch.setattr(processes, "probe", lambda url, key: processes.DOWN)
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.STARTING and replica.restarts == 0, "not killed within the grace"
    now = timezone.now()
    Replica.objects.filter(pk=replica.pk).update(
        started_at=now - timedelta(seconds=200), last_health_at=now - timedelta(seconds=100)
    )
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.BACKOFF and replica.state_detail == "Engine stayed unhealthy"


def test_a_load_that_timed_out_keeps_a_new_engine_waiting(started, replica, monkeypatch):
    """A load the engine did not answer in time may yet succeed: a new engine waits for it (within its start
    limit), as for a copy; one the engine refused does not (the first test)."""
    monkeypatch.setattr(
        adapter_sync, "_load", lambda replica, name, path: (_ for _ in ()).throw(TimeoutError("timed out"))
    )
    replica = _reconcile(replica, 3)
    assert replica.state == ReplicaState.STARTING and "loading adapters tone" in replica.state_detail


def test_an_adapter_whose_copy_cannot_even_begin_does_not_stop_the_engine_starting(
    started, replica, monkeypatch
):
    """Beginning an adapter's copy reads its manifest and starts a thread: either failing failed the launch,
    a crash and back-off of the base model (found by review); it is said when the adapter is loaded."""

    def begin(version):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(prefetch, "begin", begin)
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.STARTING and replica.pid and replica.restarts == 0


def test_a_new_engine_forgets_the_health_of_the_one_before(started, replica):
    """Its grace (an engine that answered) is told from ``last_health_at``: one left from the engine before,
    later than this start (the clock stepped back at a reboot), gave an engine that never answered 30 s in
    place of its start limit."""
    Replica.objects.filter(pk=replica.pk).update(last_health_at=timezone.now() + timedelta(hours=1))
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.STARTING and replica.last_health_at is None


def test_the_grace_of_an_engine_loading_adapters_counts_from_the_end_of_the_loads(
    started, replica, monkeypatch
):
    """A load that timed out took 30 s of the pass, as long as the grace: stamped with the pass's start, one
    failed health check at the next pass killed the engine."""

    def slow_sync(replica):
        time.sleep(0.5)
        return ["tone"]

    replica = _reconcile(replica, 1)
    monkeypatch.setattr(adapter_sync, "sync", slow_sync)
    before = timezone.now()
    replica = _reconcile(replica, 1)
    assert replica.state == ReplicaState.STARTING
    assert replica.last_health_at >= before + timedelta(seconds=0.5)


@pytest.mark.parametrize(
    ("error", "waits"),
    [
        (TimeoutError("timed out"), True),
        (ConnectionResetError("reset"), True),
        (
            ValueError("Expecting value: line 1 column 1"),
            False,
        ),  # an answer that is not JSON: no passing hitch
        (adapter_sync.EngineRefused("HTTP Error 500: boom"), False),
    ],
)
def test_only_a_passing_failure_keeps_a_new_engine_waiting(started, replica, monkeypatch, error, waits):
    def load(replica, name, path):
        raise error

    monkeypatch.setattr(adapter_sync, "_load", load)
    replica = _reconcile(replica, 3)
    assert (replica.state == ReplicaState.STARTING) is waits


def test_a_reload_the_engine_refuses_is_a_refusal(monkeypatch, replica):
    """Settling "already loaded" asks the engine again; its HTTP error there is its refusal too (it was taken
    for a passing failure, a new engine waiting its whole start limit for it)."""
    calls = []

    def engine_request(replica, method, path, body=None, timeout=30):
        calls.append(path)
        if path == "/v1/models":
            return {"data": [{"id": "tone", "root": "/elsewhere"}]}
        if len(calls) == 1:  # the first load: already loaded
            raise urllib.error.HTTPError(
                path, 400, "Bad Request", {}, io.BytesIO(b'{"message": "has already been loaded"}')
            )
        raise urllib.error.HTTPError(
            path, 500, "Internal Server Error", {}, io.BytesIO(b'{"message": "no room"}')
        )

    monkeypatch.setattr(adapter_sync, "engine_request", engine_request)
    with pytest.raises(adapter_sync.EngineRefused, match="HTTP Error 500: no room"):
        adapter_sync._load(replica, "tone", "/here")  # noqa: SLF001
