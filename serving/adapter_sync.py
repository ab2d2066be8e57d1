"""Adapters on a running engine: hot-loaded once it is ready (an engine starts with none: one adapter it cannot
load would crash every start, taking the base model down) or when added to the deployment, and unloaded when
removed, without a restart (vLLM's runtime LoRA routes). Part of the node agent's reconcile
(``serving.agent``), which calls ``sync`` for each ready replica of its node."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from django.db.models import Q

from portfolio import direct_http
from serving import prefetch
from serving.engine_keys import engine_key
from serving.models import DeploymentAdapter, DeploymentEvent, Replica
from serving.timeline import event

logger = logging.getLogger(__name__)
ALREADY_LOADED = "has already been loaded"  # vLLM's 400 to a load of a name it has
MAX_ERROR_BODY = 64 * 1024  # of an engine's error answer, read to find its message
MAX_MESSAGE = 300  # characters of the engine's message said on the timeline


class EngineRefused(Exception):
    """An engine's refusal of an adapter call, in its own words (its HTTP error's body, already read)."""


def engine_request(replica: Replica, method: str, path: str, body: dict | None = None, timeout: float = 30):
    request = urllib.request.Request(  # noqa: S310 - the engine's own loopback/private address
        f"{replica.base_url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {engine_key(replica.pk)}",
            "Content-Type": "application/json",
        },
    )
    with direct_http.urlopen(request, timeout=timeout) as response:  # the engine key: no proxy
        data = response.read()
    return json.loads(data) if data[:1] in (b"{", b"[") else data.decode()


def sync(replica: Replica) -> list[str]:
    """Hot-load adapters added to the deployment (all of them, once a new engine is ready: it starts with
    none) and unload removed ones, without a restart.

    Two records: ``adapter_versions``, {name: version id} of what the engine may hold, written before a load
    is asked (from then on the engine may have it, even if the answer never comes: a timeout); and
    ``loaded_adapters``, the loads the engine confirmed, which the gateway routes to when their version is
    the one attached. A name removed and added again with another version while its load was under way is
    then seen as another version, and reloaded; a load that timed out is unloaded once its adapter is removed.

    Returns the names to be loaded by a later pass: still being copied to the node, or failed for a passing
    reason (not refused by the engine, nor corrupt): a new engine waits for them (``agent._adapters_pending``)."""
    wanted = {a.name: a for a in replica.deployment.adapters.select_related("version")}
    loaded = set(replica.loaded_adapters)
    versions = dict(replica.adapter_versions or {})
    held = loaded | set(versions)  # what the engine may hold
    # Held under a wanted name as another version (or none recorded, before versions were): reloaded.
    stale = {name for name in held & set(wanted) if versions.get(name) != wanted[name].version_id}
    # A replica of an older generation is being replaced, and may run an engine started without LoRA (adding
    # an adapter turns it on with a new generation): asked to load, it answered 404 on every pass. Its
    # successor loads the adapters; what it must no longer serve is still unloaded.
    current = replica.generation == replica.deployment.generation
    to_load = {name for name in wanted if name not in loaded or name in stale} if current else set()
    to_unload = (held - set(wanted)) | stale
    if not to_load and not to_unload:
        return []
    waiting = []  # copying, or failed for a passing reason: loaded on a later pass
    for name in sorted(to_unload):  # first: a stale version is replaced, a removed one frees its slot
        try:
            engine_request(replica, "POST", "/v1/unload_lora_adapter", {"lora_name": name})
            said = True
        except Exception as exc:  # noqa: BLE001 - kept as held and retried next round; 404: not loaded
            # Forgotten while the engine still had it, the name could be reused for another version, which
            # the engine then refused to load ("already been loaded") until it restarted.
            if not (isinstance(exc, urllib.error.HTTPError) and exc.code == 404):
                _unload_failed(replica, name, f"Could not unload adapter {name}: {_said(exc)}")
                to_load.discard(name)
                continue
            said = name in loaded  # a load that never answered, and never happened: nothing to say
        loaded.discard(name)
        versions.pop(name, None)
        _record(replica, loaded, versions)
        if said:
            event(replica, "adapter_unloaded", f"Adapter {name} unloaded.")
    for name in sorted(to_load):
        adapter = wanted[name]
        try:
            path = prefetch.local_copy(adapter.version, repeat_error=True)  # to each replica asking
            if path is None:
                waiting.append(name)
                continue  # still being copied: loaded on a later pass
            versions[name] = adapter.version_id  # before the request: the engine may hold it from now on
            _record(replica, loaded, versions)
            _load(replica, name, str(path))
        except Exception as exc:  # noqa: BLE001 - said on the timeline; retried (a copy once its error is old)
            if isinstance(exc, EngineRefused):  # the engine said no: it does not hold this version
                versions.pop(name, None)
                _record(replica, loaded, versions)
            elif isinstance(exc, OSError) and not isinstance(exc, urllib.error.HTTPError):
                waiting.append(name)  # a time-out, a connection or a store away: it may yet load
            _load_failed(replica, adapter, f"Could not load adapter {name}: {_said(exc)}")
            continue
        loaded.add(name)
        _record(replica, loaded, versions)
        event(replica, "adapter_loaded", f"Adapter {name} loaded without a restart.")
    return waiting


def _record(replica: Replica, loaded: set[str], versions: dict[str, int]) -> None:
    """Saved before each load and after each load and unload, not once at the end of the pass: an agent
    stopped midway would otherwise forget what the engine did, and ask it again for what it has."""
    replica.loaded_adapters = sorted(loaded)
    replica.adapter_versions = dict(sorted(versions.items()))
    replica.save(update_fields=["loaded_adapters", "adapter_versions"])


def _load(replica: Replica, name: str, path: str) -> None:
    """Load the adapter. One the engine already has was loaded by an earlier pass that did not record it (its
    answer came after the client's timeout; the agent stopped before saving): vLLM refuses to load a name
    twice, so, asked again on every pass, the adapter would never be served there, nor unloaded once removed.
    The engine's ``/v1/models`` says where each adapter was loaded from: from this path, it is loaded; from
    another (a version once served under the name), it is unloaded and loaded from this one."""
    body = {"lora_name": name, "lora_path": path}
    try:
        engine_request(replica, "POST", "/v1/load_lora_adapter", body)
        return
    except urllib.error.HTTPError as exc:
        said = _said(exc)  # the body is read once: say it from here
        if exc.code != 400 or ALREADY_LOADED not in said:
            raise EngineRefused(said) from exc
    try:
        models = engine_request(replica, "GET", "/v1/models")
        found = models.get("data") if isinstance(models, dict) else None
        found = found if isinstance(found, list) else []
        roots = {m.get("id"): m.get("root") for m in found if isinstance(m, dict)}
        if roots.get(name) == path:
            return
        if name in roots:
            engine_request(replica, "POST", "/v1/unload_lora_adapter", {"lora_name": name})
        engine_request(replica, "POST", "/v1/load_lora_adapter", body)
    except urllib.error.HTTPError as exc:  # the engine's answer, as on the first load
        raise EngineRefused(_said(exc)) from exc


def _said(exc: Exception) -> str:
    """What went wrong, in the engine's words where it answered: an HTTP error's ``str`` is its status line
    only ("HTTP Error 500: Internal Server Error"); vLLM says why in the body (``{"error": {"message": ...}}``;
    FastAPI's ``{"detail": ...}``), said on one line and cut short (a traceback would fill the timeline)."""
    if not isinstance(exc, urllib.error.HTTPError):
        return str(exc)
    try:
        body = exc.read(MAX_ERROR_BODY)
        answer = json.loads(body) if body[:1] == b"{" else body.decode(errors="replace")
    except Exception:  # noqa: BLE001 - no body, cut short, or not JSON: the status line says enough
        answer = ""
    if isinstance(answer, dict):
        error = answer.get("error")
        answer = (
            error.get("message") if isinstance(error, dict) else answer.get("message") or answer.get("detail")
        )
    message = " ".join(str(answer or "").split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return f"HTTP Error {exc.code}: {message or exc.reason}"


def _unload_failed(replica: Replica, name: str, message: str) -> None:
    """Said once since the adapter was removed, not at every pass: again only when the engine says otherwise."""
    said = DeploymentEvent.objects.filter(
        Q(replica=replica, kind="adapter_failed", message__startswith=f"Could not unload adapter {name}: ")
        | Q(kind="adapter_removed", message=f"Adapter {name} removed."),
        deployment_id=replica.deployment_id,
    ).first()  # the latest
    if said is None or said.message != message:
        logger.warning("replica %s: %s", replica.pk, message)
        event(replica, "adapter_failed", message)


def _load_failed(replica: Replica, adapter: DeploymentAdapter, message: str) -> None:
    """Said once, not at every pass the load is retried: again only when the engine says something else."""
    said = replica.events.filter(
        kind="adapter_failed",
        at__gte=adapter.added_at,
        message__startswith=f"Could not load adapter {adapter.name}: ",
    ).first()  # the latest (events are ordered newest first)
    if said is None or said.message != message:
        event(replica, "adapter_failed", message)
