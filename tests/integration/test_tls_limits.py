"""The per-source connection limit on a real TLS endpoint counts a connection from accept,
not from the end of its handshake: a source that opens many TLS connections and never
finishes a handshake is refused at the limit, while a call from another source carries on
over its own connection. Test certificates are made at test time with openssl."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import pytest

from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.tls import TlsContexts, TlsFiles
from tests.support.certs import TestPki, make_pki
from tests.support.streams import closed_by_peer, eventually

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"  # loopback too: every 127.x address reaches lo on Linux
LIMIT = 4
EXTRA = 3


def request(method: str, cseq: int) -> bytes:
    return (f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {OTHER_SOURCE}:5061;branch=z9hG4bK-{method.lower()}-{cseq}\r\n"
            "From: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: limits-call\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
            ).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


async def answer(reader: asyncio.StreamReader) -> bytes:
    """The next message's start line and CSeq (every answer here has no body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head.split(b"Content-Length")[0]


@pytest.mark.asyncio
async def test_silent_tls_handshakes_count_against_their_source_from_accept(
        pki: TestPki) -> None:
    cert = pki.issue("server")
    tls = TlsContexts(TlsFiles(str(cert.certificate), str(cert.private_key), str(pki.ca_file)),
                      server=True)
    got: list[tuple[bytes, Address]] = []
    # The handshake timeout is far longer than the test: whatever is closed here was closed
    # by the per-source limit.
    endpoint = await TcpEndpoint.bind(HOST, 0, lambda data, source, local: got.append(
        (data, source)), server_ssl=tls.server, client_ssl=tls.client, idle_timeout=0,
        max_per_source=LIMIT, handshake_timeout=600.0)
    port = endpoint.local.port
    client = ssl.create_default_context(cafile=str(pki.ca_file))
    silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # A call from another source, up before the flood.
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client, server_hostname="localhost",
            local_addr=(OTHER_SOURCE, 0))
        writer.write(request("INVITE", 1))
        await eventually(lambda: len(got) == 1, "the INVITE received")
        caller = got[0][1]
        assert caller.host == OTHER_SOURCE and caller.transport == "tls"
        endpoint.send(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", caller)
        assert await answer(reader) == b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n"

        # The flood: TCP connections to the TLS port that never send a ClientHello.
        for _ in range(LIMIT + EXTRA):
            silent.append(await asyncio.open_connection(HOST, port))
        closed = [await closed_by_peer(r, 5.0 if i >= LIMIT else 0.5)
                  for i, (r, _) in enumerate(silent)]
        assert closed == [False] * LIMIT + [True] * EXTRA
        assert endpoint.refused == EXTRA

        # The call goes on over its connection, both ways.
        writer.write(request("ACK", 1) + request("BYE", 2))
        await eventually(lambda: len(got) == 3, "the ACK and BYE received")
        assert [data.split(b" ", 1)[0] for data, _ in got] == [b"INVITE", b"ACK", b"BYE"]
        assert all(source == caller for _, source in got)
        endpoint.send(b"SIP/2.0 200 OK\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n", caller)
        assert await answer(reader) == b"SIP/2.0 200 OK\r\nCSeq: 2 BYE\r\n"

        # Places come back as silent connections go: one more is admitted, then refused.
        silent[0][1].close()
        await eventually(lambda: endpoint.refused == EXTRA and endpoint.counted_from(HOST) == LIMIT - 1,
                         "a place given back")
        late_reader, late_writer = await asyncio.open_connection(HOST, port)
        silent.append((late_reader, late_writer))
        assert not await closed_by_peer(late_reader, 0.5)
        over_reader, over_writer = await asyncio.open_connection(HOST, port)
        silent.append((over_reader, over_writer))
        assert await closed_by_peer(over_reader, 5.0)
        assert endpoint.refused == EXTRA + 1
        writer.close()
    finally:
        for _, w in silent:
            w.close()
        endpoint.close()


@pytest.mark.asyncio
async def test_a_failed_handshake_gives_its_place_back(pki: TestPki) -> None:
    """Garbage instead of a ClientHello ends the handshake; the source may connect again."""
    cert = pki.issue("server")
    tls = TlsContexts(TlsFiles(str(cert.certificate), str(cert.private_key), str(pki.ca_file)),
                      server=True)
    endpoint = await TcpEndpoint.bind(HOST, 0, lambda data, source, local: None,
                                      server_ssl=tls.server, client_ssl=tls.client,
                                      idle_timeout=0, max_per_source=1, handshake_timeout=600.0)
    port = endpoint.local.port
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"\x16\x03\x01\x00\x05garbage-garbage")
            assert await closed_by_peer(reader, 5.0)
            writer.close()
            await eventually(lambda: endpoint.counted_from(HOST) == 0, "the place given back")
        assert endpoint.refused == 0
        client = ssl.create_default_context(cafile=str(pki.ca_file))
        _, good = await asyncio.open_connection(HOST, port, ssl=client,
                                                server_hostname="localhost")
        await eventually(lambda: len(endpoint.connections) == 1, "connected")
        good.close()
    finally:
        endpoint.close()
