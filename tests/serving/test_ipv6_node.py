"""A node whose address is IPv6 (``PORTFOLIO_NODE_ADDRESS=::1``): found by review, its engines could not
start (the free port was looked for on an IPv4 socket) nor be reached (the address was not bracketed in
the replica's URL nor in the Host header)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from serving import processes
from serving.gateway.upstream import Upstream
from serving.models import Replica

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback to bind")


@needs_ipv6
def test_a_free_port_is_found_on_an_ipv6_address():
    port = processes.free_port("::1")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


def test_an_ipv4_address_and_a_name_still_get_a_port():
    assert processes.free_port("127.0.0.1") > 0
    assert processes.free_port("localhost") > 0


def test_an_ipv6_replicas_url_brackets_its_address():
    assert Replica(host="::1", port=8123).base_url == "http://[::1]:8123"
    assert Replica(host="10.0.0.5", port=8123).base_url == "http://10.0.0.5:8123"


@needs_ipv6
def test_the_gateway_reaches_an_engine_on_an_ipv6_address_and_names_it_in_the_host_header():
    async def scenario() -> bytes:
        received: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.readuntil(b"\r\n\r\n"))
            await reader.readexactly(2)
            writer.write(OK)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = Upstream(connect_timeout=2, read_timeout=2)
        try:
            replica = Replica(host="::1", port=port)
            response = await upstream.post(replica.base_url, "/v1/models", b"{}", [])
            assert await response.read() == b'{"ok":true}'
        finally:
            await upstream.close()
            server.close()
        return received[0]

    head = asyncio.run(scenario())
    assert b"\r\nhost: [::1]:" in head.lower()
