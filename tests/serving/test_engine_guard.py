"""Every engine path behind the replica's key: the guard vLLM loads with ``--middleware``, tested inside the real
vLLM OpenAI server app (built by the engine's own Python, served by uvicorn, no model behind it), over HTTP.

vLLM's own key check covers /v1, /v2, /inference and /cohere only; the guard must refuse everything else
too (/invocations, /tokenize, /metrics, /health, ... and paths that do not exist), and let the key through.
A real engine with a model is exercised the same way in tests/e2e/test_serving.py.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from serving import engine_args
from serving.choices import PoolKind

KEY = "b" * 64
ENGINE_APP = Path(__file__).with_name("engine_app.py")
# Paths the issue found open, and more that vLLM serves (or may serve) outside its own key check.
UNGUARDED_BY_VLLM = (
    "/invocations",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/score",
    "/rerank",
    "/classify",
    "/metrics",
    "/health",
    "/ping",
    "/load",
    "/version",
    "/openapi.json",
    "/docs",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/server_info",
    "/no-such-path",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def the_launch() -> engine_args.EngineLaunch:
    """What the node agent starts an engine with (serving/agent.py: _start)."""
    return engine_args.build(
        python=settings.ENGINE_PYTHON[PoolKind.CPU],
        pool_kind=PoolKind.CPU,
        args=engine_args.validate({}, PoolKind.CPU),
        model_dir=Path("/models/none"),
        served_name="support-bot",
        host="127.0.0.1",
        port=8101,
        adapters={},
        gpu_indices=[],
        api_key=KEY,
    )


@pytest.fixture(scope="module")
def engine_app(tmp_path_factory):
    """The real vLLM app with the guard the agent passes, in the engine's Python: (base URL, its route paths)."""
    python = settings.ENGINE_PYTHON[PoolKind.CPU]
    if not os.path.exists(python):
        pytest.skip(f"no engine environment at {python} (make engine)")
    launch = the_launch()
    middleware = launch.argv[launch.argv.index("--middleware") + 1]
    port = free_port()
    log = tmp_path_factory.mktemp("engine-app") / "app.log"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""), **launch.env}
    process = subprocess.Popen(
        [python, str(ENGINE_APP), str(port), middleware],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        if not first_line:
            pytest.fail(f"the engine app did not start:\n{log.read_text()[-4000:]}")
        paths = json.loads(first_line)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"the engine app does not listen:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", paths
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def call(address: str, method: str, path: str, headers: list[tuple[str, str]] = ()) -> tuple[int, bytes]:
    """One request; ``headers`` as a list, so that a header can be sent twice."""
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path)
        body = b"{}" if method == "POST" else b""
        for name, value in [
            *headers,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def concrete(path: str) -> str:
    return path.replace("{response_id}", "resp-1")


def test_every_route_of_the_engine_refuses_a_request_without_the_key(engine_app):
    address, paths = engine_app
    assert "/invocations" in paths and "/tokenize" in paths and "/metrics" in paths, paths
    for path in paths:
        for method in ("GET", "POST"):
            status, body = call(address, method, concrete(path))
            assert status == 401, f"{method} {path} answered {status} without the key"
            assert json.loads(body)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", UNGUARDED_BY_VLLM)
def test_paths_outside_vllms_own_key_check_refuse_a_caller_without_the_key(engine_app, path):
    address, _ = engine_app
    assert call(address, "GET", path)[0] == 401
    assert call(address, "POST", path)[0] == 401


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer " + "c" * 64)],  # another replica's key, say
        [("Authorization", f"Bearer {KEY}x")],
        [("Authorization", f"Bearer {KEY[:-1]}")],
        [("Authorization", "Basic " + base64.b64encode(f"x:{KEY}".encode()).decode())],
        [("Authorization", KEY)],
        [("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer other")],  # which one would count?
        [("X-Api-Key", KEY)],
    ],
    ids=["other-key", "longer", "shorter", "basic", "no-scheme", "two-headers", "other-header"],
)
def test_anything_but_the_replicas_bearer_key_is_refused(engine_app, headers):
    address, _ = engine_app
    for path in ("/invocations", "/tokenize", "/metrics", "/v1/models"):
        assert call(address, "POST" if path != "/metrics" else "GET", path, headers)[0] == 401, path


def test_with_the_key_the_engine_answers(engine_app):
    address, _ = engine_app
    key = [("Authorization", f"Bearer {KEY}")]
    status, body = call(address, "GET", "/version", key)
    assert status == 200 and "version" in json.loads(body)
    status, body = call(address, "GET", "/metrics", key)
    assert status == 200 and b"# HELP" in body
    assert call(address, "GET", "/openapi.json", [("authorization", f"bearer {KEY}")])[0] == 200
    assert call(address, "GET", "/no-such-path", key)[0] == 404  # past the guard, vLLM's own answer


def test_a_websocket_without_the_key_is_refused_before_the_handshake(engine_app):
    address, _ = engine_app
    host, port = address.split(":")

    def handshake(extra: str = "") -> str:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                (
                    "GET /v1/realtime HTTP/1.1\r\n"
                    f"Host: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    f"{extra}\r\n"
                ).encode()
            )
            return sock.recv(4096).decode(errors="replace").split("\r\n", 1)[0]

    assert handshake().startswith("HTTP/1.1 403")
    assert handshake("Authorization: Bearer wrong\r\n").startswith("HTTP/1.1 403")
    # With the key the handshake reaches vLLM's handler (which fails here: no engine behind the app).
    assert not handshake(f"Authorization: Bearer {KEY}\r\n").startswith("HTTP/1.1 403")


def test_the_guard_needs_only_the_standard_library():
    # It runs inside the engine's Python: import it in an interpreter that sees no site-packages at all.
    code = f"import sys; sys.path.insert(0, {str(engine_args.GUARD_DIR)!r}); import portfolio_engine_guard"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_an_engine_without_a_key_refuses_to_build_its_app(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "guard", engine_args.GUARD_DIR / "portfolio_engine_guard.py"
    )
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="never runs without its key"):
        guard.RequireEngineKey(app=None)
    monkeypatch.setenv("VLLM_API_KEY", "")
    with pytest.raises(RuntimeError):
        guard.RequireEngineKey(app=None)
