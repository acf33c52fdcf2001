"""The per-source connection limit on real WebSocket endpoints (ws: and wss:) counts a
connection from accept, not from its upgrade: a source that opens many connections and
never sends a ClientHello or an HTTP request has the ones over the limit reset at once,
while a call from another source carries on over its own WebSocket. The slow-upgrade
timeout still closes what the limit lets in. Test certificates are made at test time with
openssl."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import aiohttp
import pytest

from switchboard.sip.wire import Address
from switchboard.transport.tls import TlsContexts, TlsFiles
from switchboard.transport.ws import WsEndpoint
from tests.support.certs import TestPki, make_pki
from tests.support.streams import closed_by_peer, eventually

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"  # loopback too: every 127.x address reaches lo on Linux
LIMIT = 4
EXTRA = 3


def request(method: str, cseq: int) -> str:
    return (f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/WS k2h3.invalid;branch=z9hG4bK-{method.lower()}-{cseq}\r\n"
            "From: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: ws-limits-call\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


async def bind(transport: str, pki: TestPki, got: list[tuple[bytes, Address]],
               **options: float) -> tuple[WsEndpoint, ssl.SSLContext | None]:
    server_ssl = client_ssl = None
    if transport == "wss":
        cert = pki.issue("server")
        server_ssl = TlsContexts(TlsFiles(str(cert.certificate), str(cert.private_key),
                                          str(pki.ca_file)), server=True).server
        client_ssl = ssl.create_default_context(cafile=str(pki.ca_file))
    endpoint = await WsEndpoint.bind(
        transport, HOST, 0, lambda data, source, local: got.append((data, source)),
        server_ssl=server_ssl, idle_timeout=0, ping_interval=0, max_per_source=LIMIT,
        **options)
    return endpoint, client_ssl


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_silent_connections_count_against_their_source_from_accept(
        pki: TestPki, transport: str) -> None:
    got: list[tuple[bytes, Address]] = []
    # The handshake timeout is far longer than the test: whatever is closed here was closed
    # by the per-source limit.
    endpoint, client_ssl = await bind(transport, pki, got, handshake_timeout=600.0)
    port = endpoint.local.port
    silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    connector = aiohttp.TCPConnector(local_addr=(OTHER_SOURCE, 0), ssl=client_ssl or False)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            # A call from another source, up before the flood.
            scheme = "https" if transport == "wss" else "http"
            call = await session.ws_connect(f"{scheme}://{HOST}:{port}/", protocols=("sip",))
            await call.send_str(request("INVITE", 1))
            await eventually(lambda: len(got) == 1, "the INVITE received")
            caller = got[0][1]
            assert caller.host == OTHER_SOURCE and caller.transport == transport
            assert endpoint.send(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n", caller)
            assert (await call.receive(timeout=5)).data.startswith("SIP/2.0 200 OK")

            # The flood: TCP connections that never send a ClientHello or an HTTP request.
            for _ in range(LIMIT + EXTRA):
                silent.append(await asyncio.open_connection(HOST, port))
            closed = [await closed_by_peer(r, 5.0 if i >= LIMIT else 0.5)
                      for i, (r, _) in enumerate(silent)]
            assert closed == [False] * LIMIT + [True] * EXTRA
            assert endpoint.refused_connections == EXTRA
            assert endpoint.counted_from(HOST) == LIMIT

            # The call goes on over its connection, both ways.
            await call.send_str(request("ACK", 1))
            await call.send_str(request("BYE", 2))
            await eventually(lambda: len(got) == 3, "the ACK and BYE received")
            assert [data.split(b" ", 1)[0] for data, _ in got] == [b"INVITE", b"ACK", b"BYE"]
            assert all(source == caller for _, source in got)
            assert endpoint.send(b"SIP/2.0 200 OK\r\nCSeq: 2 BYE\r\n\r\n", caller)
            assert (await call.receive(timeout=5)).data.startswith("SIP/2.0 200 OK")

            # Places come back as silent connections go: one more is admitted, then refused.
            silent[0][1].close()
            await eventually(lambda: endpoint.counted_from(HOST) == LIMIT - 1,
                             "a place given back")
            silent.append(await asyncio.open_connection(HOST, port))
            assert not await closed_by_peer(silent[-1][0], 0.5)
            silent.append(await asyncio.open_connection(HOST, port))
            assert await closed_by_peer(silent[-1][0], 5.0)
            assert endpoint.refused_connections == EXTRA + 1
            assert endpoint.refused == 0  # no handshake was refused: none got that far
            await call.close()
            await eventually(lambda: endpoint.counted_from(OTHER_SOURCE) == 0,
                             "the call's place given back")
    finally:
        for _, w in silent:
            w.close()
        endpoint.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_a_slow_handshake_is_closed_and_gives_its_place_back(
        pki: TestPki, transport: str) -> None:
    """Within the limit, a connection that never gets to its upgrade is closed at the
    handshake time (TLS included for wss:), and its source may connect again."""
    got: list[tuple[bytes, Address]] = []
    endpoint, _ = await bind(transport, pki, got, handshake_timeout=0.5)
    port = endpoint.local.port
    try:
        for _ in range(2):
            readers = [await asyncio.open_connection(HOST, port) for _ in range(LIMIT)]
            await eventually(lambda: endpoint.counted_from(HOST) == LIMIT, "counted")
            for reader, writer in readers:
                assert await closed_by_peer(reader, 5.0)
                writer.close()
            await eventually(lambda: endpoint.counted_from(HOST) == 0, "the places given back")
        assert endpoint.refused_connections == 0
    finally:
        endpoint.close()
